"""RTP, RTCP, VP8 payloads, NACK bookkeeping and frame assembly: sans-I/O unit tests."""

from __future__ import annotations

import contextlib
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confero.protocol import rtcp
from confero.protocol.nack import NackGenerator, RetransmitBuffer
from confero.protocol.rtp import (
    RtpError,
    RtpPacket,
    SequenceUnwrapper,
    is_rtcp,
    peek_ssrc,
)
from confero.protocol.video_jitter import FrameAssembler
from confero.protocol.vp8 import MAX_PAYLOAD, Vp8Error, packetize, parse_descriptor

# ---------------------------------------------------------------------------- RTP


@given(
    pt=st.integers(0, 127), seq=st.integers(0, 0xFFFF), ts=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1), marker=st.booleans(), payload=st.binary(max_size=200),
    csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=3),
    extensions=st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16),
                               max_size=4),
)
def test_rtp_round_trip(pt: int, seq: int, ts: int, ssrc: int, marker: bool, payload: bytes,
                        csrcs: list[int], extensions: dict[int, bytes]) -> None:
    packet = RtpPacket(pt, seq, ts, ssrc, payload, marker, csrcs, extensions)
    data = packet.serialize()
    assert not is_rtcp(data) or pt in range(64, 96)  # 192-223 with the marker bit set
    assert peek_ssrc(data) == ssrc or is_rtcp(data)
    assert RtpPacket.parse(data) == packet


@given(st.binary(max_size=1600))
def test_rtp_parse_rejects_garbage_with_rtp_error_only(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        RtpPacket.parse(data)


@pytest.mark.parametrize("data", [b"", b"\x80" * 11, b"\x40" + b"\x00" * 20,
                                  b"\x8f" + b"\x00" * 20, b"\xa0" + b"\x00" * 11 + b"\xff"])
def test_rtp_parse_rejects_malformed(data: bytes) -> None:
    with pytest.raises(RtpError):
        RtpPacket.parse(data)


def test_sequence_arithmetic_wraps() -> None:
    unwrap = SequenceUnwrapper()
    values = [unwrap.unwrap(s) for s in (65533, 65534, 65535, 0, 1, 65535, 2)]
    assert [v - values[0] for v in values] == [0, 1, 2, 3, 4, 2, 5]


# ---------------------------------------------------------------------------- RTCP


def test_rtcp_compound_round_trip() -> None:
    block = rtcp.ReportBlock(ssrc=7, fraction_lost=25, cumulative_lost=-3, highest_seq=70000,
                             jitter=90, last_sr=5, delay_since_last_sr=6)
    packets: list[rtcp.RtcpPacket] = [
        rtcp.SenderReport(1, 2**40 + 5, 1234, 10, 2000, [block]),
        rtcp.ReceiverReport(2, [block, block]),
        rtcp.Nack(3, 4, [100, 101, 103, 116, 117, 500]),
        rtcp.Pli(5, 6),
        rtcp.Bye([8, 9]),
    ]
    data = b"".join(p.pack() for p in packets)
    assert is_rtcp(data) and peek_ssrc(data) == 1
    parsed = rtcp.parse_compound(data)
    assert parsed[:2] == packets[:2] and parsed[3:] == packets[3:]
    nack = parsed[2]
    assert isinstance(nack, rtcp.Nack) and sorted(nack.lost) == [100, 101, 103, 116, 117, 500]
    # pairs: 100 (+101, 103, 116 in its bitmask), 117, 500
    assert len(packets[2].pack()) == 4 + 8 + 4 * 3


def test_nack_packs_runs_into_pid_blp_pairs_across_wrap() -> None:
    lost = [65534, 65535, 0, 1, 14]
    nack = rtcp.parse_compound(rtcp.Nack(1, 2, lost).pack())[0]
    assert isinstance(nack, rtcp.Nack) and nack.lost == lost
    assert len(rtcp.Nack(1, 2, lost).pack()) == 16  # one (PID, BLP) pair covers all five


@given(st.binary(max_size=300))
def test_rtcp_parse_rejects_garbage_with_rtcp_error_only(data: bytes) -> None:
    with contextlib.suppress(rtcp.RtcpError):
        rtcp.parse_compound(data)


# ---------------------------------------------------------------------------- VP8


def test_vp8_packetize_respects_the_size_limit_and_marks_the_start() -> None:
    frame = bytes(range(256)) * 20  # 5120 bytes
    payloads = packetize(frame, picture_id=0x1234)
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    descriptors = [parse_descriptor(p) for p in payloads]
    assert [d.starts_frame for d in descriptors] == [True] + [False] * (len(payloads) - 1)
    assert {d.picture_id for d in descriptors} == {0x1234}
    assert b"".join(p[d.header_size:] for p, d in zip(payloads, descriptors,
                                                        strict=True)) == frame
    with pytest.raises(Vp8Error):
        packetize(b"", 1)
    for bad in (b"", b"\x80", b"\x80\x80", b"\x80\x80\x80", b"\x90\x80\x81\x02"):
        with pytest.raises(Vp8Error):
            parse_descriptor(bad)


# ---------------------------------------------------------------------------- NACK


def test_nack_generator_asks_for_gaps_retries_and_gives_up() -> None:
    gen = NackGenerator(retry_interval=0.05, max_tries=2, max_age=1.0, min_reorder_delay=0.0)
    for seq in (65533, 65534, 1, 2):  # 65535 and 0 lost across the wrap
        gen.on_packet(seq, now=0.0)
    assert sorted(gen.due(0.0)) == [0, 65535]
    assert gen.due(0.01) == []  # not before the retry interval
    gen.on_packet(0, now=0.02)  # recovered
    assert gen.due(0.06) == [65535]
    assert gen.due(0.2) == []  # max tries reached
    assert gen.missing_count == 0 and gen.recovered == 1


def test_nack_asks_quickly_then_once_per_round_trip_until_max_age() -> None:
    """Three quick asks (their answers overlap on a long round trip, so one lost answer
    costs nothing), then one a little over each round trip while the hole stays open: a
    repair lost three times, or fetched from the publisher first, is still asked for."""
    gen = NackGenerator(retry_interval=0.04, min_reorder_delay=0.0, max_age=0.5)
    gen.rtt = 0.1
    gen.on_packet(1, 0.0)
    gen.on_packet(3, 0.0)  # 2 lost
    asked = []
    for step in range(80):
        now = step / 100
        if gen.due(now):
            asked.append(now)
    assert asked[:3] == [0.0, 0.04, 0.08]
    later = [round(b - a, 2) for a, b in itertools.pairwise(asked[2:])]
    assert later and all(0.13 <= gap <= 0.14 for gap in later), asked  # 1.2 x rtt + 10 ms
    assert asked[-1] < 0.5  # and no more once the hole is older than max_age
    # without a known round trip: the quick interval all along, up to max_tries
    gen = NackGenerator(retry_interval=0.04, min_reorder_delay=0.0, max_age=1.0, max_tries=5)
    gen.on_packet(1, 0.0)
    gen.on_packet(3, 0.0)
    assert sum(bool(gen.due(step / 100)) for step in range(100)) == 5


def test_nack_generator_waits_out_the_reordering_it_has_seen() -> None:
    gen = NackGenerator(min_reorder_delay=0.005)
    gen.on_packet(1, 0.0)
    gen.on_packet(3, 0.0)
    assert gen.due(0.004) == []  # a gap younger than the reordering wait is not a loss
    gen.on_packet(2, 0.003)  # filled by itself after 3 ms: reordering, learnt
    gen.on_packet(5, 0.010)
    assert gen.due(0.017) == [4]  # a ~6 ms wait: asked
    gen.on_packet(4, 0.022)  # the original, 12 ms late
    gen.on_duplicate(4)  # ... and then the retransmission: the ask was needless
    assert gen.needless == 1
    assert gen.reorder_delay > 0.012
    gen.on_packet(7, 0.030)
    assert gen.due(0.040) == []  # now it waits longer than that reordering
    assert gen.due(0.030 + gen.reorder_delay) == [6]


def test_nack_generator_ignores_huge_jumps() -> None:
    gen = NackGenerator(max_gap=100)
    gen.on_packet(10, 0.0)
    gen.on_packet(5000, 0.0)
    assert gen.due(0.0) == []


def test_retransmit_buffer_is_bounded() -> None:
    buffer = RetransmitBuffer(capacity=4)
    for seq in range(10):
        buffer.store(seq, bytes([seq]))
    assert buffer.get(9) == b"\x09" and buffer.get(6) == b"\x06"
    assert buffer.get(5) is None and buffer.get(1) is None


# ---------------------------------------------------------------------------- frame assembly

KEY, DELTA = b"\x00" + b"k" * 2999, b"\x01" + b"d" * 1499  # P bit 0 = keyframe


def video_packets(frames: list[bytes], first_seq: int = 65000) -> list[list[RtpPacket]]:
    seq = first_seq
    out = []
    for index, frame in enumerate(frames):
        payloads = packetize(frame, picture_id=index)
        group = []
        for i, payload in enumerate(payloads):
            group.append(RtpPacket(96, seq & 0xFFFF, 3000 * index, 42, payload,
                                   marker=i == len(payloads) - 1))
            seq += 1
        out.append(group)
    return out


def test_frames_are_released_as_soon_as_complete_even_out_of_order() -> None:
    frames = video_packets([KEY, DELTA, DELTA, DELTA])  # wraps the sequence space
    assembler = FrameAssembler()
    released = []
    packets = [p for group in frames for p in group]
    random.Random(1).shuffle(packets)
    for now, packet in enumerate(packets):
        for frame in assembler.push(packet, float(now)):
            released.append(frame)
    assert [f.picture_id for f in released] == [0, 1, 2, 3]
    assert released[0].data == KEY and released[0].keyframe
    assert released[1].data == DELTA and not released[1].keyframe


def test_last_packet_releases_the_frame_without_waiting_for_the_next() -> None:
    [key] = video_packets([KEY])
    assembler = FrameAssembler()
    for packet in key[:-1]:
        assert assembler.push(packet, 0.0) == []
    [frame] = assembler.push(key[-1], 0.0)
    assert frame.data == KEY


def test_a_fresh_receiver_waits_for_a_keyframe_and_asks_for_one() -> None:
    frames = video_packets([KEY, DELTA, DELTA, KEY, DELTA])
    assembler = FrameAssembler(pli_interval=0.3)
    assert assembler.keyframe_request_due(0.0)
    assert not assembler.keyframe_request_due(0.1)  # throttled
    released = []
    for group in frames[1:]:  # joined after the first keyframe
        for packet in group:
            released += assembler.push(packet, 0.2)
    assert [f.picture_id for f in released] == [3, 4]
    assert not assembler.keyframe_request_due(1.0)


def test_an_unrecoverable_loss_skips_to_the_next_keyframe() -> None:
    frames = video_packets([KEY, DELTA, DELTA, KEY])
    assembler = FrameAssembler(max_wait=0.2)
    released = []
    for packet in frames[0]:
        released += assembler.push(packet, 0.0)
    for packet in frames[1][1:]:  # first packet of frame 1 lost for good
        released += assembler.push(packet, 0.01)
    for packet in frames[2]:
        released += assembler.push(packet, 0.02)
    assert [f.picture_id for f in released] == [0]  # frame 2 waits behind frame 1
    released += assembler.poll(0.3)
    assert assembler.waiting_for_keyframe and assembler.keyframe_request_due(0.3)
    for packet in frames[3]:
        released += assembler.push(packet, 0.4)
    assert [f.picture_id for f in released] == [0, 3]
    assert assembler.frames_dropped >= 1


def test_a_stream_that_stopped_is_not_asked_for_keyframes_forever() -> None:
    """The server paused the stream for us mid-frame (or switched us to the publisher's
    low copy): a PLI cannot bring it back, so after 2 s of silence none is sent, and no
    timer stays due for one (a past deadline would spin the caller's loop)."""
    frames = video_packets([KEY, DELTA, DELTA])
    assembler = FrameAssembler(max_wait=0.2, pli_interval=0.3, silent_after=2.0)
    for packet in frames[0] + frames[1][:1]:  # the stream stops inside frame 1
        assembler.push(packet, 0.0)
    assembler.poll(0.3)
    asked = [t / 10 for t in range(3, 100) if assembler.keyframe_request_due(t / 10)]
    assert asked and max(asked) <= 2.0  # asked while it might come back, then quiet
    deadline = assembler.next_deadline()
    assert deadline is None or deadline > 10.0
    for packet in frames[2]:  # it comes back (from a keyframe, as the server resumes)
        assembler.push(packet, 12.0)
    assert assembler.keyframe_request_due(12.5)  # a delta frame: ask again at once


def test_a_retransmission_in_time_fills_the_hole() -> None:
    frames = video_packets([KEY, DELTA])
    assembler = FrameAssembler(max_wait=0.2)
    for packet in frames[0][:1] + frames[0][2:] + frames[1]:
        assert assembler.push(packet, 0.0) == []
    released = assembler.push(frames[0][1], 0.05)
    assert [f.picture_id for f in released] == [0, 1]
    assert assembler.push(frames[0][1], 0.06) == []  # a duplicate is ignored
    assert assembler.packets_late == 1


def test_overflow_clears_the_buffer_and_asks_for_a_keyframe() -> None:
    assembler = FrameAssembler(max_packets=10)
    frames = video_packets([KEY] * 8)
    for group in frames:
        for packet in group[1:]:  # never a frame start: nothing completes
            assembler.push(packet, 0.0)
    assert assembler.waiting_for_keyframe and assembler.frames_dropped > 0


def test_a_slowly_paced_keyframe_is_waited_for_without_asking_again() -> None:
    """On a slow link the sender's pacer spreads a big keyframe over seconds: while its
    packets keep arriving in order nothing is given up and no second PLI goes out (each
    would bring another big keyframe: a storm)."""
    big = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + bytes(30_000)
    [before] = video_packets([KEY])
    [key] = video_packets([big], first_seq=(65000 + len(before)) & 0xFFFF)
    assembler = FrameAssembler(max_wait=0.25, pli_interval=0.3)
    released = [f for p in before for f in assembler.push(p, 0.0)]
    assembler.request_keyframe()  # the decoder failed: a keyframe is needed
    assert assembler.keyframe_request_due(0.0)
    now = 0.1
    for packet in key:  # one packet every 80 ms: about 2 s for the keyframe
        released += assembler.push(packet, now)
        released += assembler.poll(now + 0.079)
        assert not assembler.keyframe_request_due(now + 0.079), now
        assert assembler.next_deadline() is None or assembler.next_deadline() > now
        now += 0.08
    assert len(key) > 20 and [f.keyframe for f in released] == [True, True]
    assert assembler.keyframe_requests == 1


def test_a_frame_whose_tail_never_comes_is_given_up() -> None:
    [key, delta] = video_packets([KEY, bytes([0x11, 0x02, 0x00]) + bytes(3000)])
    assembler = FrameAssembler(max_wait=0.2)
    for packet in key + delta[:-1]:  # the delta frame's last packet is lost, nothing after
        assembler.push(packet, 0.0)
    assembler.poll(0.1)
    assert not assembler.waiting_for_keyframe
    assembler.poll(0.25)
    assert assembler.waiting_for_keyframe  # no packet for max_wait: given up
