"""VP8 temporal-layer descriptors, the per-subscriber forwarder, and the layer rate meter."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from confero.protocol.layers import LayerForwarder, LayerRateMeter
from confero.protocol.rtp import RtpPacket
from confero.protocol.vp8 import (
    keyframe_dimensions,
    packetize,
    parse_descriptor,
    rewrite_descriptor,
)

PATTERN = (0, 2, 1, 2)
KEYFRAME = b"\x50\x01\x00\x9d\x01\x2a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little")


# -- descriptor -----------------------------------------------------------------------------


def test_plain_packetize_is_unchanged() -> None:
    payloads = packetize(b"\x01" * 2500, 0x1234)
    assert [len(p) for p in payloads] == [1200, 1200, 112]
    assert payloads[0][:4] == bytes([0x90, 0x80, 0x80 | 0x12, 0x34])
    assert payloads[1][:4] == bytes([0x80, 0x80, 0x80 | 0x12, 0x34])
    d = parse_descriptor(payloads[0])
    assert (d.picture_id, d.header_size, d.tid, d.tl0picidx, d.layer_sync) == (
        0x1234, 4, None, None, False)


def test_temporal_fields_round_trip() -> None:
    payloads = packetize(b"\x01" * 2500, 0x7FFF, temporal=(2, True, 255), key_index=17)
    assert all(len(p) <= 1200 for p in payloads)
    assert b"".join(p[6:] for p in payloads) == b"\x01" * 2500
    for i, payload in enumerate(payloads):
        d = parse_descriptor(payload)
        assert (d.picture_id, d.tid, d.layer_sync, d.tl0picidx, d.key_index) == (
            0x7FFF, 2, True, 255, 17)
        assert d.header_size == 6 and d.start_of_partition == (i == 0)
    d = parse_descriptor(packetize(b"\x01", 5, temporal=(1, False, 3))[0])
    assert (d.tid, d.layer_sync, d.tl0picidx, d.key_index, d.header_size) == (1, False, 3, None, 6)


def test_truncated_temporal_descriptor_is_an_error() -> None:
    from confero.protocol.vp8 import Vp8Error

    payload = packetize(b"\x01", 5, temporal=(1, False, 3))[0]
    for cut in range(1, 6):
        with pytest.raises(Vp8Error):
            parse_descriptor(payload[:cut])


def test_rewrite_descriptor_changes_only_the_ids() -> None:
    payload = packetize(b"\x01\x02\x03", 100, temporal=(1, True, 9))[0]
    d = parse_descriptor(payload)
    out = rewrite_descriptor(payload, d, picture_id=0x7ABC, tl0picidx=10)
    e = parse_descriptor(out)
    assert (e.picture_id, e.tl0picidx, e.tid, e.layer_sync) == (0x7ABC, 10, 1, True)
    assert out[e.header_size :] == b"\x01\x02\x03" and len(out) == len(payload)


def test_keyframe_dimensions() -> None:
    first, *_ = packetize(KEYFRAME + b"\x00" * 2000, 1, temporal=(0, False, 0))
    assert keyframe_dimensions(first) == (640, 480)
    scaled = KEYFRAME[:6] + (0xC000 | 1920).to_bytes(2, "little") + KEYFRAME[8:]
    assert keyframe_dimensions(packetize(scaled, 1)[0]) == (1920, 480)
    assert keyframe_dimensions(packetize(KEYFRAME + b"\x00" * 2000, 1)[1]) is None  # not first
    assert keyframe_dimensions(packetize(b"\x01" + KEYFRAME[1:], 1)[0]) is None  # interframe
    assert keyframe_dimensions(packetize(KEYFRAME[:3] + b"xyz" + KEYFRAME[6:], 1)[0]) is None
    assert keyframe_dimensions(packetize(KEYFRAME[:8], 1)[0]) is None  # truncated
    assert keyframe_dimensions(b"") is None


# -- a synthetic publisher ------------------------------------------------------------------


@dataclass
class Publisher:
    seq: int = 65_520
    pid: int = 32_740
    tl0: int = 250
    ts: int = 0
    index: int = 0

    def frame(self, packets: int = 2, keyframe: bool = False) -> list[RtpPacket]:
        tid = 0 if keyframe else PATTERN[self.index % 4]
        if keyframe:
            self.index = 0
        if tid == 0:
            self.tl0 = (self.tl0 + 1) & 0xFF
        sync = tid != 0 and self.index % 4 in (1, 2)
        head = KEYFRAME if keyframe else b"\x01"
        data = head + bytes([tid]) * ((packets - 1) * 1194 + 100 - len(head))
        out = []
        payloads = packetize(data, self.pid, temporal=(tid, sync, self.tl0))
        for i, payload in enumerate(payloads):
            out.append(RtpPacket(96, self.seq, self.ts, 1234, payload,
                                 marker=i == len(payloads) - 1))
            self.seq = (self.seq + 1) & 0xFFFF
        self.pid = (self.pid + 1) & 0x7FFF
        self.ts += 3000
        self.index += 1
        assert len(out) == packets
        return out

    def frames(self, count: int, packets: int | None = None) -> list[list[RtpPacket]]:
        """``count`` frames of ``packets`` packets each (default: 1, 2, 3, 1, ...)."""
        return [self.frame(packets or 1 + i % 3) for i in range(count)]


def run(forwarder: LayerForwarder, packets: list[RtpPacket]) -> list[RtpPacket]:
    out = []
    for packet in packets:
        sent = forwarder.forward(packet)
        if sent is not None:
            out.append(sent)
    return out


def assert_continuous(out: list[RtpPacket]) -> None:
    seqs = [p.sequence_number for p in out]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs
    pids = []
    for p in out:
        pid = parse_descriptor(p.payload).picture_id
        if not pids or pids[-1] != pid:
            pids.append(pid)
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pids)), pids


def pid_list(out: list[RtpPacket]) -> list[int | None]:
    return [parse_descriptor(p.payload).picture_id for p in out]


def tids(out: list[RtpPacket]) -> list[int | None]:
    result = []
    for p in out:
        d = parse_descriptor(p.payload)
        if d.starts_frame:
            result.append(d.tid)
    return result


# -- forwarder ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0, 1, 2])
def test_continuous_sequence_and_picture_ids_across_wraparound(target: int) -> None:
    pub = Publisher()
    frames = [pub.frame(keyframe=True), *pub.frames(120)]
    forwarder = LayerForwarder(target)
    out = run(forwarder, [p for f in frames for p in f])
    assert_continuous(out)
    assert out[0].sequence_number == 65_520
    seqs = [p.sequence_number for p in out]
    assert 0 in seqs and 65_535 in seqs  # wrapped
    assert 0 in pid_list(out) and 0x7FFF in pid_list(out)
    assert all(t is not None and t <= target for t in tids(out))
    assert len(tids(out)) == 1 + 120 * {0: 1, 1: 2, 2: 4}[target] // 4
    # TL0PICIDX passes through untouched and stays consistent
    tl0s = [parse_descriptor(p.payload).tl0picidx for p in out if tids([p]) == [0]]
    assert all((b - a) & 0xFF == 1 for a, b in itertools.pairwise(tl0s))
    # a frame's payload bytes are untouched apart from the PictureID
    first_pub = {parse_descriptor(p.payload).picture_id: p for f in frames for p in f[:1]}
    assert len(first_pub) == 121
    if target == 2:
        assert [p.payload for p in out] == [p.payload for f in frames for p in f]


def test_no_partial_frames_when_the_target_changes_mid_frame() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(2)
    out: list[RtpPacket] = []
    frames = [pub.frame(keyframe=True), *pub.frames(40, packets=3)]
    for n, frame in enumerate(frames):
        for i, packet in enumerate(frame):
            if i == 1:  # between the packets of a frame
                forwarder.set_target([0, 2, 1][n % 3])
            sent = forwarder.forward(packet)
            if sent is not None:
                out.append(sent)
    assert_continuous(out)
    published = {f[0].timestamp: len(f) for f in frames}
    by_frame: dict[int, list[RtpPacket]] = {}
    for p in out:
        by_frame.setdefault(p.timestamp, []).append(p)
    assert 0 < len(by_frame) < len(frames)
    for timestamp, packets in by_frame.items():  # whole frames only, in order
        assert len(packets) == published[timestamp]
        assert parse_descriptor(packets[0].payload).starts_frame
        assert packets[-1].marker and not any(p.marker for p in packets[:-1])
    assert forwarder.stats.switches_down > 0 and forwarder.stats.switches_up > 0


def test_switch_down_at_once_and_up_only_at_a_switch_point() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(2)
    run(forwarder, pub.frame(keyframe=True) + [p for f in pub.frames(3) for p in f])
    assert pub.index % 4 == 0  # next frame: TL0
    forwarder.set_target(0)
    out = run(forwarder, [p for f in pub.frames(4) for p in f])  # TL0 TL2 TL1 TL2
    assert tids(out) == [0] and forwarder.current_tid == 0
    # target up while the next frame is TL0: switches there
    forwarder.set_target(2)
    out = run(forwarder, [p for f in pub.frames(4) for p in f])
    assert tids(out) == [0, 2, 1, 2] and forwarder.current_tid == 2
    forwarder.set_target(0)
    run(forwarder, [p for f in pub.frames(2) for p in f])  # TL0 TL2 -> only TL0
    forwarder.set_target(2)
    out = run(forwarder, [p for f in pub.frames(1) for p in f])  # TL1 sync, one step up
    assert tids(out) == [1] and forwarder.current_tid == 1
    out = run(forwarder, [p for f in pub.frames(1) for p in f])  # TL2 not sync: held
    assert tids(out) == [] and forwarder.current_tid == 1
    out = run(forwarder, [p for f in pub.frames(4) for p in f])  # next TL0 switches up
    assert tids(out) == [0, 2, 1, 2]


def test_up_switch_steps_at_sync_frames_without_base_switching() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(0, upswitch_at_base=False)
    run(forwarder, pub.frame(keyframe=True) + [p for f in pub.frames(3) for p in f])
    forwarder.set_target(2)
    out = run(forwarder, [p for f in pub.frames(4) for p in f])  # TL0 TL2s TL1s TL2
    assert tids(out) == [0, 1]  # TL2 sync skipped: TL1 comes first
    assert forwarder.current_tid == 1
    out = run(forwarder, [p for f in pub.frames(4) for p in f])  # TL2 sync: second step
    assert tids(out) == [0, 2, 1, 2] and forwarder.current_tid == 2
    forwarder.set_target(0)
    forwarder.set_target(2)  # no frame in between: stays where it was
    assert forwarder.current_tid == 2


def test_nack_maps_back_to_the_publisher_sequence() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(1)
    original = [p for f in [pub.frame(keyframe=True), *pub.frames(40)] for p in f]
    pairs = []
    for packet in original:
        sent = forwarder.forward(packet)
        if sent is not None:
            pairs.append((sent.sequence_number, packet.sequence_number))
    assert any(a != b for a, b in pairs)  # drops shifted the numbering
    for sub, pub_seq in pairs:
        assert forwarder.publisher_sequence(sub) == pub_seq
    last_sub = pairs[-1][0]
    assert forwarder.publisher_sequence((last_sub + 1) & 0xFFFF) is None  # not sent yet
    assert forwarder.publisher_sequence((last_sub - 3000) & 0xFFFF) is None  # never sent


def test_resend_renumbers_a_history_packet_as_first_sent() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(0)
    history = {}
    sent = {}
    for packet in [p for f in [pub.frame(keyframe=True), *pub.frames(20)] for p in f]:
        history[packet.sequence_number] = packet
        out = forwarder.forward(packet)
        if out is not None:
            sent[out.sequence_number] = out
    for sub_seq, first in sent.items():
        publisher_seq = forwarder.publisher_sequence(sub_seq)
        assert publisher_seq is not None
        again = forwarder.resend(history[publisher_seq])
        assert again is not None
        assert (again.sequence_number, again.payload) == (first.sequence_number, first.payload)
    dropped = [p for p in history.values() if parse_descriptor(p.payload).tid == 2]
    assert dropped and all(forwarder.resend(p) is None for p in dropped)
    assert forwarder.stats.resent == len(sent)


def test_unlayered_streams_pass_through() -> None:
    forwarder = LayerForwarder(0)
    seq = 100
    for pid in range(10):
        for k, payload in enumerate(packetize(b"\x01" * 2000, pid)):
            packet = RtpPacket(96, seq, pid * 3000, 1, payload, marker=k == 1)
            out = forwarder.forward(packet)
            assert out is not None and out.sequence_number == seq and out.payload == payload
            seq += 1


def test_nack_history_is_bounded() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(2, history=64)
    out = run(forwarder, [p for f in [pub.frame(keyframe=True), *pub.frames(100)] for p in f])
    assert forwarder.publisher_sequence(out[-1].sequence_number) is not None
    assert forwarder.publisher_sequence(out[-64].sequence_number) is not None
    assert forwarder.publisher_sequence(out[-65].sequence_number) is None


def test_loss_in_a_forwarded_frame_keeps_its_place_and_the_retransmission_fills_it() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(0)
    frames = [pub.frame(keyframe=True), *pub.frames(8, packets=3)]
    packets = [p for f in frames for p in f]
    tl0_frame = frames[4]  # TL0, 2+ packets
    assert parse_descriptor(tl0_frame[0].payload).tid == 0 and len(tl0_frame) >= 2
    lost = tl0_frame[1]
    out = run(forwarder, [p for p in packets if p is not lost])
    seqs = [p.sequence_number for p in out]
    late = forwarder.forward(lost)
    assert late is not None
    assert late.sequence_number not in seqs
    assert_continuous(sorted([*out, late], key=lambda p: (p.sequence_number - 65_520) & 0xFFFF))
    assert forwarder.publisher_sequence(late.sequence_number) == lost.sequence_number


def test_loss_inside_a_dropped_frame_leaves_no_hole() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(0)
    frames = [pub.frame(keyframe=True), *pub.frames(12, packets=3)]
    dropped = [f for f in frames if parse_descriptor(f[0].payload).tid == 2 and len(f) >= 3]
    lost = {id(f[1]) for f in dropped}  # the middle of several TL2 frames
    lost |= {id(f[-1]) for f in dropped[:1]}  # and a dropped frame's tail
    out = run(forwarder, [p for f in frames for p in f if id(p) not in lost])
    assert_continuous(out)
    assert forwarder.stats.late_holes == 0


def test_a_late_packet_of_a_dropped_frame_is_counted() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(0)
    frames = [pub.frame(keyframe=True), *pub.frames(4, packets=1)]  # TL2 TL1 TL2 TL0
    single = frames[1]  # a whole TL2 frame lost, then retransmitted late
    assert len(single) == 1
    out = run(forwarder, [p for f in frames for p in f if p is not single[0]])
    assert forwarder.forward(single[0]) is None
    assert forwarder.stats.late_holes == 1
    assert len(out) == len(frames[0]) + len(frames[4])


def test_a_publisher_restart_continues_the_numbering() -> None:
    pub = Publisher()
    forwarder = LayerForwarder(2)
    out = run(forwarder, [p for f in [pub.frame(keyframe=True), *pub.frames(3)] for p in f])
    pub.seq = (pub.seq + 30_000) & 0xFFFF
    pub.pid = (pub.pid + 10_000) & 0x7FFF
    out += run(forwarder, [p for f in [pub.frame(keyframe=True), *pub.frames(3)] for p in f])
    assert_continuous(out)


def test_garbage_is_counted_not_raised() -> None:
    forwarder = LayerForwarder(2)
    assert forwarder.forward(RtpPacket(96, 1, 0, 1, b"")) is None
    assert forwarder.forward(RtpPacket(96, 2, 0, 1, b"\x80")) is None
    assert forwarder.stats.invalid == 2


# -- rate meter -----------------------------------------------------------------------------


def test_rate_meter_and_layer_choice() -> None:
    meter = LayerRateMeter(window=1.0)
    now = 0.0
    for i in range(300):  # 10 s at 30 fps: TL0 2000 B, TL1 1000 B, TL2 500 B per frame
        now = i / 30
        tid = PATTERN[i % 4]
        meter.on_packet({0: 2000, 1: 1000, 2: 500}[tid], tid, now)
    rates = meter.rates(now)
    assert rates[0] == pytest.approx(2000 * 8 * 7.5, rel=0.15)
    assert rates[1] == pytest.approx(1000 * 8 * 7.5, rel=0.15)
    assert rates[2] == pytest.approx(500 * 8 * 15, rel=0.15)
    total = meter.cumulative(now)
    assert total[0] < total[1] < total[2]
    assert meter.choose_layer(total[2] + 1) == 2
    assert meter.choose_layer(total[1] + 1) == 1
    assert meter.choose_layer(total[0] - 1) == 0
    assert meter.choose_layer(total[2] + 1, current=1) == 1  # needs headroom to go up
    assert meter.choose_layer(total[2] * 1.2, current=1) == 2
    assert meter.rates(now + 5) == [0.0, 0.0, 0.0]  # the window empties


# -- end to end with the real encoder --------------------------------------------------------


def encoded_packets(frames: int, seed: int = 3) -> list[RtpPacket]:
    """A real 3-layer VP8 stream from media/vpx.py, packetized with the T/L fields."""
    from confero.media.vpx import VpxVp8Encoder

    encoder = VpxVp8Encoder(320, 240, 30, 800_000, temporal_layers=3)
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (240, 320), dtype=np.uint8)
    u = np.full((120, 160), 90, dtype=np.uint8)
    packets, seq, pid, tl0 = [], 100, 7, 0
    for i in range(frames):
        y = np.roll(texture, 4 * i, axis=1)
        for frame in encoder.encode((y, u, u), i * 3000):
            if frame.temporal_id == 0:
                tl0 = (tl0 + 1) & 0xFF
            payloads = packetize(frame.data, pid, max_payload=600,
                                 temporal=(frame.temporal_id, frame.layer_sync, tl0))
            for k, payload in enumerate(payloads):
                packets.append(RtpPacket(96, seq, i * 3000, 1, payload,
                                         marker=k == len(payloads) - 1))
                seq += 1
            pid += 1
    return packets


def decode_stream(stream: list[RtpPacket]) -> dict[int, np.ndarray]:
    from confero.media.video import Vp8Decoder, luma_plane

    decoder, frames, data = Vp8Decoder(), {}, b""
    for packet in stream:
        d = parse_descriptor(packet.payload)
        data += packet.payload[d.header_size :]
        if packet.marker:
            picture = decoder.decode(data)
            assert picture is not None
            frames[packet.timestamp] = luma_plane(picture).copy()
            data = b""
    assert decoder.errors == 0
    return frames


@pytest.mark.parametrize("target", [0, 1])
def test_forwarded_layers_decode_like_the_full_stream(target: int) -> None:
    packets = encoded_packets(40)
    decode = decode_stream
    full = decode(packets)
    forwarder = LayerForwarder(target)
    out = run(forwarder, packets)
    assert_continuous(out)
    reduced = decode(out)
    assert 0 < len(reduced) < len(full)
    for ts, picture in reduced.items():
        assert np.array_equal(picture, full[ts])


def test_a_shared_descriptor_gives_the_same_result() -> None:
    pub = Publisher()
    packets = [p for f in [pub.frame(keyframe=True), *pub.frames(30)] for p in f]
    own, shared = LayerForwarder(1), LayerForwarder(1)
    for packet in packets:
        a = own.forward(packet)
        b = shared.forward(packet, parse_descriptor(packet.payload))
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert (a.sequence_number, a.payload) == (b.sequence_number, b.payload)


@pytest.mark.parametrize("seed", range(20))
def test_loss_reordering_and_switching_keep_the_invariants(seed: int) -> None:
    """Random loss (all repaired later), reordering and target changes: every forwarded
    frame arrives whole, subscriber numbers are unique, and the only holes are the counted
    late packets of dropped frames."""
    rng = np.random.default_rng(seed)
    pub = Publisher()
    frames = [pub.frame(keyframe=True), *pub.frames(300)]
    stream = [p for f in frames for p in f]
    arrivals: list[RtpPacket] = []
    lost: list[RtpPacket] = []
    for packet in stream:
        if rng.random() < 0.08:
            lost.append(packet)
        elif arrivals and rng.random() < 0.05:  # overtakes up to 4 packets
            arrivals.insert(len(arrivals) - int(rng.integers(1, min(4, len(arrivals)) + 1)),
                            packet)
        else:
            arrivals.append(packet)
        if lost and rng.random() < 0.3:
            arrivals.append(lost.pop(0))  # the retransmission, a little later
    arrivals += lost
    forwarder = LayerForwarder(2)
    out: list[tuple[RtpPacket, RtpPacket]] = []
    for packet in arrivals:
        if rng.random() < 0.02:
            forwarder.set_target(int(rng.integers(0, 3)))
        sent = forwarder.forward(packet)
        if sent is not None:
            out.append((packet, sent))
    sub_seqs = [s.sequence_number for _, s in out]
    assert len(set(sub_seqs)) == len(sub_seqs)
    per_frame: dict[int, int] = {}
    for original, _ in out:
        per_frame[original.timestamp] = per_frame.get(original.timestamp, 0) + 1
    sizes = {f[0].timestamp: len(f) for f in frames}
    assert all(per_frame[ts] == sizes[ts] for ts in per_frame), "partial frame forwarded"
    assert len(per_frame) < len(frames)
    first = min(sub_seqs, key=lambda s: (s - 65_520) & 0xFFFF)
    span = max((s - first) & 0xFFFF for s in sub_seqs) + 1
    assert span - len(sub_seqs) == forwarder.stats.late_holes
    for original, sent in out:  # the NACK map points back at the right packet
        if forwarder.publisher_sequence(sent.sequence_number) is not None:
            assert forwarder.publisher_sequence(sent.sequence_number) == original.sequence_number


@pytest.mark.parametrize("upswitch_at_base", [True, False])
def test_switching_layers_keeps_every_forwarded_frame_exact(upswitch_at_base: bool) -> None:
    """Targets changing every few frames: whatever is forwarded decodes exactly as in the
    full stream, so no switch ever let through a frame whose references were missing."""
    packets = encoded_packets(120, seed=5)
    full = decode_stream(packets)
    rng = np.random.default_rng(11)
    forwarder = LayerForwarder(2, upswitch_at_base=upswitch_at_base)
    out = []
    for packet in packets:
        if packet.marker and rng.random() < 0.3:
            forwarder.set_target(int(rng.integers(0, 3)))
        sent = forwarder.forward(packet)
        if sent is not None:
            out.append(sent)
    assert_continuous(out)
    reduced = decode_stream(out)
    assert forwarder.stats.switches_up >= 5 and forwarder.stats.switches_down >= 5
    assert 0 < len(reduced) < len(full)
    for ts, picture in reduced.items():
        assert np.array_equal(picture, full[ts]), ts


def test_a_paused_stream_sends_nothing_and_resumes_at_a_keyframe_without_a_hole() -> None:
    """A subscriber whose link cannot carry a stream's base layer gets none of it; when
    the link allows again, forwarding resumes at the next keyframe (nothing before one
    would decode) and the numbering continues as if the stream had been quiet."""
    pub = Publisher()
    forwarder = LayerForwarder(2)
    before = run(forwarder, [p for f in [pub.frame(keyframe=True), *pub.frames(8)] for p in f])
    forwarder.pause()
    assert run(forwarder, [p for f in pub.frames(12) for p in f]) == []  # paused
    forwarder.resume()
    waiting = run(forwarder, [p for f in pub.frames(5) for p in f])
    assert waiting == []  # resumed, but no keyframe yet
    after = run(forwarder, [p for f in [pub.frame(keyframe=True), *pub.frames(8)] for p in f])
    assert parse_descriptor(after[0].payload).starts_frame
    assert after[0].payload[parse_descriptor(after[0].payload).header_size] & 0x01 == 0
    assert_continuous(before + after)
    assert forwarder.stats.pauses == 1
