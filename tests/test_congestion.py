"""CongestionSender: the wiring of pacer, transport sequence numbers, history, estimator."""

from __future__ import annotations

from confero.protocol import rtcp
from confero.protocol.congestion import WIRE_OVERHEAD, CongestionSender
from confero.protocol.pacer import PacketKind
from confero.protocol.rtp import RtpPacket
from confero.protocol.twcc import TwccRecorder, read_transport_seq


def _packet(seq: int, size: int = 1000) -> bytes:
    return RtpPacket(96, seq, 0, 1, bytes(size)).serialize()


def test_numbers_follow_the_order_packets_leave_in() -> None:
    sender = CongestionSender(start_bps=10_000_000, max_bps=10_000_000)
    sender.enqueue(_packet(1), PacketKind.VIDEO, 0.0)
    sender.enqueue(_packet(2, 100), PacketKind.AUDIO, 0.0)
    out = sender.poll(0.0) + sender.poll(0.01)
    assert [RtpPacket.parse(p).sequence_number for p in out] == [2, 1]  # audio first
    assert [read_transport_seq(p) for p in out] == [0, 1]  # numbered as they left
    assert sender.history.in_flight == 2
    entry = sender.history._sent[0x10000]
    assert entry.size == len(out[0]) + WIRE_OVERHEAD


def test_feedback_moves_the_target_and_the_pacer() -> None:
    sender = CongestionSender(start_bps=300_000)
    recorder = TwccRecorder()
    t = 0.0
    for i in range(400):  # 4 s at ~400 kbit/s, delivered 20 ms later
        t = i * 0.01
        sender.enqueue(_packet(i, 450), PacketKind.VIDEO, t)
        for p in sender.poll(t):
            seq = read_transport_seq(p)
            assert seq is not None
            recorder.on_packet(seq, t + 0.02)
        if recorder.feedback_due(t + 0.02):
            for fb in recorder.build_feedback(t + 0.02, 1, 2):
                (packet,) = rtcp.parse_compound(fb)
                assert isinstance(packet, rtcp.TransportFeedback)
                sender.on_feedback(packet, t + 0.04)
    assert sender.target_bps > 300_000
    assert sender.pacer.pacing_bps == sender.target_bps * 2.5


def test_timer_and_timeout() -> None:
    sender = CongestionSender(start_bps=1_000_000)
    assert sender.next_wakeup() == 0.0
    sender.enqueue(_packet(1), PacketKind.VIDEO, 0.0)
    sender.poll(0.0)
    assert 0.0 < sender.next_wakeup() <= 0.1
    # feedback never comes: after a timeout the target backs off
    recorder = TwccRecorder()
    recorder.on_packet(0, 0.01)
    (fb,) = recorder.build_feedback(0.01, 1, 2)
    (packet,) = rtcp.parse_compound(fb)
    assert isinstance(packet, rtcp.TransportFeedback)
    sender.on_feedback(packet, 0.02)
    sender.enqueue(_packet(2), PacketKind.VIDEO, 0.03)
    for i in range(1, 30):
        sender.handle_timer(0.02 + i * 0.1)
    assert sender.target_bps < 1_000_000
