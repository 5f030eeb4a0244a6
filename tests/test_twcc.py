"""Transport-wide CC feedback: wire format, receiver recorder, sender history (fake clock)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confero.protocol import rtcp
from confero.protocol.rtcp import MAX_TWCC_STATUS, RtcpError, TransportFeedback
from confero.protocol.twcc import (
    FEEDBACK_MAX_STATUS,
    SentHistory,
    TwccRecorder,
    read_transport_seq,
    stamp_transport_seq,
)


def _fb(deltas: list[int | None], base: int = 10) -> TransportFeedback:
    return TransportFeedback(0x11, 0x22, base, 0x123456, 7, deltas)


def _parse_one(data: bytes) -> TransportFeedback:
    (packet,) = rtcp.parse_compound(data)
    assert isinstance(packet, TransportFeedback)
    return packet


# -- wire format -----------------------------------------------------------------------


def test_hand_built_packet_parses() -> None:
    """Bytes written from the draft's layout, not by our packer."""
    body = struct.pack("!IIHHI", 1, 2, 65534, 3, (5 << 8) | 9)
    body += struct.pack("!H", (1 << 13) | 3)  # run-length chunk: 3 x "small delta"
    body += bytes([4, 8, 255]) + b"\x00\x00\x00"  # deltas + padding to 32 bits
    data = struct.pack("!BBH", 0x80 | 15, 205, len(body) // 4) + body
    fb = _parse_one(data)
    assert fb == TransportFeedback(1, 2, 65534, 5, 9, [4, 8, 255])


def test_two_bit_vector_with_large_and_negative_deltas() -> None:
    fb = _fb([5, None, 300, -4, 0, None, 70])
    data = fb.pack()
    # one two-bit status vector chunk right after the fixed fields
    (chunk,) = struct.unpack_from("!H", data, 20)
    assert chunk >> 14 == 0b11
    assert _parse_one(data) == fb


def test_one_bit_vector_for_mixed_small_and_lost() -> None:
    deltas: list[int | None] = [1, None, 2, None, 3, None, 4, None, 5, None, 6, None, 7, None]
    data = _fb(deltas).pack()
    (chunk,) = struct.unpack_from("!H", data, 20)
    assert chunk >> 14 == 0b10
    assert _parse_one(data).deltas == deltas


def test_long_loss_run_is_compact() -> None:
    deltas: list[int | None] = [3] + [None] * 3000 + [4]
    data = _fb(deltas).pack()
    assert len(data) <= 32  # header + fixed fields + 3 chunks + 2 deltas + padding
    assert _parse_one(data).deltas == deltas


def test_pack_is_padded_to_words() -> None:
    for n in range(1, 30):
        data = _fb([n] * n).pack()
        assert len(data) % 4 == 0
        assert _parse_one(data).deltas == [n] * n


def test_pack_refuses_what_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        _fb([0x8000]).pack()
    with pytest.raises(ValueError):
        _fb([]).pack()
    with pytest.raises(ValueError):
        _fb([None] * (MAX_TWCC_STATUS + 1)).pack()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(0, 255), st.integers(-0x8000, 0x7FFF)),
             min_size=1, max_size=300),
    st.integers(0, 0xFFFF),
)
def test_round_trip_any_statuses(deltas: list[int | None], base: int) -> None:
    assert _parse_one(_fb(deltas, base).pack()) == _fb(deltas, base)


def _raw(status_count: int, chunks: list[int], tail: bytes = b"") -> bytes:
    body = struct.pack("!IIHHI", 1, 2, 0, status_count, 0)
    body += b"".join(struct.pack("!H", c) for c in chunks) + tail
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!BBH", 0x80 | 15, 205, len(body) // 4) + body


@pytest.mark.parametrize(
    "data",
    [
        _raw(0, [0x0001]),  # no statuses
        _raw(MAX_TWCC_STATUS + 1, [0x1FFF]),  # more than we accept
        _raw(3, [(3 << 13) | 3]),  # reserved symbol in a run
        _raw(2, [0xC000 | (3 << 12)]),  # reserved symbol in a two-bit vector
        _raw(5, [(1 << 13) | 5], bytes([1, 2])),  # deltas missing
        _raw(40, [(2 << 13) | 40]),  # large deltas missing
        _raw(200, []),  # chunks missing
        struct.pack("!BBH", 0x80 | 15, 205, 2) + b"\x00" * 8,  # fixed fields missing
    ],
)
def test_malformed_feedback_is_an_rtcp_error(data: bytes) -> None:
    with pytest.raises(RtcpError):
        rtcp.parse_compound(data)


def test_compound_with_receiver_report() -> None:
    fb = _fb([1, None, 2])
    data = rtcp.ReceiverReport(5).pack() + fb.pack()
    packets = rtcp.parse_compound(data)
    assert packets[0] == rtcp.ReceiverReport(5)
    assert packets[1] == fb


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_garbage_after_twcc_header_never_crashes(tail: bytes) -> None:
    data = struct.pack("!BBH", 0x80 | 15, 205, (len(tail) + 3) // 4) + tail
    data += b"\x00" * (-len(data) % 4)
    with contextlib.suppress(RtcpError):
        rtcp.parse_compound(data)


# -- recorder and history ----------------------------------------------------------------


def _loop(recorder: TwccRecorder, history: SentHistory, now: float) -> list[rtcp.TransportFeedback]:
    packets = recorder.build_feedback(now, 1, 2)
    fbs = [_parse_one(p) for p in packets]
    return fbs


def test_results_carry_send_time_size_and_arrival_differences() -> None:
    rec, hist = TwccRecorder(), SentHistory()
    arrivals = {}
    for i in range(20):
        send = 100.0 + i * 0.004
        hist.on_sent(65530 + i, 1000 + i, send)  # wraps past 65535
        arrival = 5000.0 + 0.03 + i * 0.0051 + (0.02 if i == 7 else 0.0)
        rec.on_packet((65530 + i) & 0xFFFF, arrival)
        arrivals[i] = arrival
    assert rec.feedback_due(5000.2)
    results = hist.on_feedbacks(_loop(rec, hist, 5000.2), 100.3)
    assert [r.size for r in results] == [1000 + i for i in range(20)]
    assert [r.send_time for r in results] == [100.0 + i * 0.004 for i in range(20)]
    assert all(r.received for r in results)
    seqs = [r.transport_seq for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + 20))
    first = results[0].arrival_time
    assert first is not None
    for i, r in enumerate(results):
        assert r.arrival_time is not None
        assert abs((r.arrival_time - first) - (arrivals[i] - arrivals[0])) <= 0.00025


def test_gaps_are_declared_lost_once_after_the_reorder_wait() -> None:
    rec, hist = TwccRecorder(), SentHistory(loss_wait=0.15)
    for seq in range(10):
        hist.on_sent(seq, 500, seq * 0.01)
        if seq not in (3, 4, 8):
            rec.on_packet(seq, 1 + seq * 0.01)
    results = hist.on_feedbacks(_loop(rec, hist, 1.2), 1.2)
    assert len(results) == 7 and all(r.received for r in results)  # missing: not yet lost
    assert hist.in_flight == 3
    assert hist.expire(1.34) == []
    lost = hist.expire(1.35)
    assert [r.transport_seq - results[0].transport_seq for r in lost] == [3, 4, 8]
    assert all(not r.received and r.size == 500 for r in lost)
    assert hist.in_flight == 0
    assert hist.expire(2.0) == []
    assert not rec.feedback_due(1.3)  # nothing new
    # reporting the same range again (a duplicate feedback) yields nothing new
    rec._next_report = min(rec._arrivals)
    rec._pending = 1
    assert hist.on_feedbacks(_loop(rec, hist, 1.5), 1.5) == []


def test_reordered_packet_is_never_counted_lost() -> None:
    rec, hist = TwccRecorder(), SentHistory()
    for seq in range(6):
        hist.on_sent(seq, 500, seq * 0.01)
    for seq in (0, 1, 3, 4):
        rec.on_packet(seq, 1 + seq * 0.01)
    first = hist.on_feedbacks(_loop(rec, hist, 1.05), 1.05)
    assert [r.transport_seq - first[0].transport_seq for r in first] == [0, 1, 3, 4]
    rec.on_packet(2, 1.06)  # late
    rec.on_packet(5, 1.07)
    assert rec.feedback_due(1.11)
    fbs = _loop(rec, hist, 1.11)
    assert fbs[0].base_seq == 2  # moved back to cover the late one
    second = hist.on_feedbacks(fbs, 1.11)
    assert [(r.transport_seq - first[0].transport_seq, r.received) for r in second] == [
        (2, True), (5, True)
    ]
    assert hist.expire(10.0) == []


def test_packet_declared_lost_that_turns_up_later_is_still_reported() -> None:
    rec, hist = TwccRecorder(), SentHistory(loss_wait=0.1)
    for seq in range(3):
        hist.on_sent(seq, 500, 0.0)
    rec.on_packet(0, 1.0)
    rec.on_packet(2, 1.0)
    hist.on_feedbacks(_loop(rec, hist, 1.0), 1.0)
    assert [r.received for r in hist.expire(1.1)] == [False]
    rec.on_packet(1, 1.2)
    assert [r.received for r in hist.on_feedbacks(_loop(rec, hist, 1.25), 1.25)] == [True]


def test_feedback_timing() -> None:
    rec = TwccRecorder(interval=0.05, max_pending=10)
    assert not rec.feedback_due(0.0)
    assert rec.next_feedback_time() is None
    rec.on_packet(1, 0.0)
    assert rec.feedback_due(0.0)  # the first report goes at once
    rec.build_feedback(0.0, 1, 2)
    rec.on_packet(2, 0.01)
    assert not rec.feedback_due(0.049)
    assert rec.next_feedback_time() == pytest.approx(0.05)
    assert rec.feedback_due(0.05)
    rec.build_feedback(0.05, 1, 2)
    for seq in range(3, 13):
        rec.on_packet(seq, 0.06)
    assert rec.feedback_due(0.06)  # ten pending: sooner than the interval


def test_big_arrival_gap_splits_feedback_with_fresh_reference() -> None:
    rec, hist = TwccRecorder(history=100.0), SentHistory()
    hist.on_sent(0, 100, 0.0)
    hist.on_sent(1, 100, 0.0)
    rec.on_packet(0, 10.0)
    rec.on_packet(1, 20.0)  # 10 s later: more than a 16-bit delta holds
    fbs = _loop(rec, hist, 20.0)
    assert len(fbs) == 2
    results = hist.on_feedbacks(fbs, 20.0)
    assert results[0].arrival_time is not None and results[1].arrival_time is not None
    assert results[1].arrival_time - results[0].arrival_time == pytest.approx(10.0, abs=0.001)


def test_many_packets_split_into_bounded_feedbacks() -> None:
    rec, hist = TwccRecorder(max_pending=10_000), SentHistory()
    for seq in range(1000):
        hist.on_sent(seq, 100, seq * 0.001)
        rec.on_packet(seq, 1 + seq * 0.001)
    packets = rec.build_feedback(2.0, 1, 2)
    assert len(packets) == 3
    assert all(len(p) < 1200 for p in packets)
    results = hist.on_feedbacks([_parse_one(p) for p in packets], 2.0)
    assert len(results) == 1000 and all(r.received for r in results)
    assert FEEDBACK_MAX_STATUS < 1000


def test_recorder_memory_is_bounded() -> None:
    rec = TwccRecorder(max_packets=256, history=0.5)
    for seq in range(5000):
        rec.on_packet(seq & 0xFFFF, seq * 0.0001)
    assert len(rec._arrivals) <= 256
    packets = rec.build_feedback(1.0, 1, 2)
    statuses = sum(len(_parse_one(p).deltas) for p in packets)
    assert statuses <= 256
    assert rec.skipped == 5000 - 256
    # after reporting, old entries age out
    for seq in range(5000, 5010):
        rec.on_packet(seq & 0xFFFF, 5.0)
    assert len(rec._arrivals) <= 11


def test_sequence_jump_does_not_build_a_huge_report() -> None:
    rec = TwccRecorder(max_packets=512)
    rec.on_packet(0, 0.0)
    rec.build_feedback(0.0, 1, 2)
    rec.on_packet(30000, 0.01)
    packets = rec.build_feedback(0.1, 1, 2)
    assert sum(len(_parse_one(p).deltas) for p in packets) <= 512


def test_duplicates_and_ancient_late_packets_are_counted() -> None:
    rec = TwccRecorder(history=0.5)
    rec.on_packet(100, 0.0)
    rec.on_packet(100, 0.001)
    assert rec.duplicates == 1
    rec.build_feedback(0.01, 1, 2)
    for seq in range(101, 120):
        rec.on_packet(seq, 1.0 + seq * 0.001)
    rec.build_feedback(1.2, 1, 2)
    rec.on_packet(99, 1.3)  # before anything we still hold
    assert rec.too_late == 1


def test_sent_history_is_bounded_and_counts_unknown() -> None:
    hist = SentHistory(max_packets=100)
    assert hist.on_feedback(_fb([1, 2]), 0.0) == []
    for seq in range(1000):
        hist.on_sent(seq, 100, seq * 0.001)
    assert len(hist._sent) == 100
    results = hist.on_feedback(_fb([1] * 10, base=0), 1.0)  # long forgotten
    assert results == []
    assert hist.unknown == 12
    assert hist.in_flight == 100


# -- transport sequence number in RTP ----------------------------------------------------


def test_stamp_patches_an_existing_extension_in_place() -> None:
    from confero.protocol.profile import EXT_CAPTURE_TIME, EXT_TRANSPORT_SEQ
    from confero.protocol.rtp import RtpPacket

    packet = RtpPacket(96, 7, 1234, 0xABCD, b"payload", csrcs=[5],
                       extensions={EXT_CAPTURE_TIME: bytes(8), EXT_TRANSPORT_SEQ: b"\x00\x00"})
    data = packet.serialize()
    stamped = stamp_transport_seq(data, 0x1_2345)  # wraps to 16 bits
    assert len(stamped) == len(data)
    assert read_transport_seq(stamped) == 0x2345
    parsed = RtpPacket.parse(stamped)
    assert parsed.extensions[EXT_TRANSPORT_SEQ] == b"\x23\x45"
    assert parsed.extensions[EXT_CAPTURE_TIME] == bytes(8)
    assert parsed.payload == b"payload" and parsed.csrcs == [5]


def test_stamp_adds_the_extension_when_missing() -> None:
    from confero.protocol.rtp import RtpPacket

    plain = RtpPacket(111, 1, 2, 3, b"opus").serialize()
    assert read_transport_seq(plain) is None
    stamped = stamp_transport_seq(plain, 42)
    assert read_transport_seq(stamped) == 42
    assert RtpPacket.parse(stamped).payload == b"opus"


def test_stamp_rejects_what_is_not_rtp() -> None:
    from confero.protocol.rtp import RtpError

    with pytest.raises(RtpError):
        stamp_transport_seq(b"\x00" * 20, 1)
    with pytest.raises(RtpError):
        read_transport_seq(b"\x90" + bytes(11) + b"\xbe\xde\x00\x09")  # extension overruns
