"""The pacer on a fake clock: rate, priorities, timer, burst allowance, bounds."""

from __future__ import annotations

import pytest

from confero.protocol.pacer import Pacer, PacketKind


def _drain(
    pacer: Pacer, start: float, end: float, step: float = 0.001
) -> list[tuple[float, bytes]]:
    out: list[tuple[float, bytes]] = []
    for i in range(round((end - start) / step) + 1):
        t = start + i * step
        out += [(t, p) for p in pacer.poll(t)]
    return out


def test_paces_at_factor_times_target() -> None:
    pacer = Pacer(target_bps=400_000, max_queue_delay=2.0)  # 1 Mbit/s pacing = 125 bytes per ms
    assert pacer.pacing_bps == 1_000_000
    for _ in range(100):
        pacer.enqueue(bytes(1000), PacketKind.VIDEO, 0.0)
    sent = _drain(pacer, 0.0, 0.4)
    by_200ms = sum(len(p) for t, p in sent if t <= 0.2)
    assert 24_000 <= by_200ms <= 26_000  # 200 ms x 125 bytes/ms, +- one packet
    assert pacer.queued_packets == 100 - len(sent)


def test_whole_queue_leaves_at_the_pacing_rate() -> None:
    pacer = Pacer(target_bps=400_000, max_queue_delay=2.0)
    for _ in range(100):
        pacer.enqueue(bytes(1000), PacketKind.VIDEO, 0.0)
    sent = _drain(pacer, 0.0, 1.0)
    assert len(sent) == 100
    assert sent[-1][0] == pytest.approx(0.792, abs=0.002)  # 99 packets' worth of budget


def test_priorities_audio_then_retransmission_then_video() -> None:
    pacer = Pacer(target_bps=400_000)
    pacer.enqueue(b"v1", PacketKind.VIDEO, 0.0)
    pacer.enqueue(b"r1", PacketKind.RETRANSMISSION, 0.0)
    pacer.enqueue(b"a1", PacketKind.AUDIO, 0.0)
    pacer.enqueue(b"v2", PacketKind.VIDEO, 0.0)
    pacer.enqueue(b"a2", PacketKind.AUDIO, 0.0)
    assert pacer.poll(0.0) == [b"a1"]  # budget starts at zero: one packet
    assert pacer.poll(0.01) == [b"a2", b"r1", b"v1", b"v2"]


def test_audio_overtakes_a_video_backlog() -> None:
    pacer = Pacer(target_bps=100_000)
    for _ in range(50):
        pacer.enqueue(bytes(1200), PacketKind.VIDEO, 0.0)
    pacer.poll(0.0)
    pacer.enqueue(b"audio", PacketKind.AUDIO, 0.001)
    due = pacer.next_send_time()
    assert due is not None
    assert pacer.poll(due)[0] == b"audio"


def test_next_send_time_is_when_the_budget_allows_the_next_packet() -> None:
    pacer = Pacer(target_bps=400_000)
    assert pacer.next_send_time() is None
    for _ in range(3):
        pacer.enqueue(bytes(1250), PacketKind.VIDEO, 0.0)
    assert pacer.poll(0.0) == [bytes(1250)]  # budget now -1250 bytes = 10 ms at 1 Mbit/s
    due = pacer.next_send_time()
    assert due == pytest.approx(0.010)
    assert pacer.poll(0.0099) == []
    assert len(pacer.poll(due)) == 1
    pacer.poll(1.0)
    assert pacer.next_send_time() is None


def test_idle_time_grants_only_a_small_burst() -> None:
    pacer = Pacer(target_bps=400_000, burst=0.005)  # 5 ms at 1 Mbit/s = 625 bytes
    pacer.poll(0.0)
    for _ in range(20):
        pacer.enqueue(bytes(200), PacketKind.VIDEO, 10.0)
    # after 10 s idle, 625 bytes of budget: 4 packets (the last one borrows), not 20
    assert len(pacer.poll(10.0)) == 4


def test_set_rate_changes_the_pace() -> None:
    pacer = Pacer(target_bps=400_000, max_queue_delay=2.0)
    for _ in range(200):
        pacer.enqueue(bytes(1000), PacketKind.VIDEO, 0.0)
    slow = sum(len(p) for _, p in _drain(pacer, 0.0, 0.1))
    pacer.set_rate(1_600_000)
    fast = sum(len(p) for _, p in _drain(pacer, 0.101, 0.2))
    assert fast == pytest.approx(4 * slow, rel=0.1)


def test_video_beyond_the_queue_delay_is_dropped_oldest_first() -> None:
    pacer = Pacer(target_bps=80_000, max_queue_delay=0.5)  # pacing 200 kbit/s: 12.5 KB
    for i in range(40):
        pacer.enqueue(i.to_bytes(2, "big") + bytes(998), PacketKind.VIDEO, 0.0)
    assert pacer.queued_bytes <= 12_500
    assert pacer.queue_delay() <= 0.5
    assert pacer.dropped_video == 40 - 12
    first = pacer.poll(0.0)[0]
    assert int.from_bytes(first[:2], "big") == 40 - 12  # the newest survived


def test_audio_is_never_dropped_for_delay() -> None:
    pacer = Pacer(target_bps=10_000, max_queue_delay=0.1)
    for _ in range(300):
        pacer.enqueue(bytes(100), PacketKind.AUDIO, 0.0)
    pacer.enqueue(bytes(1000), PacketKind.VIDEO, 0.0)
    assert pacer.queued_packets == 300  # the video went, not the audio
    assert pacer.dropped_video == 1
    assert pacer.refused == 0


def test_stale_retransmissions_are_dropped() -> None:
    pacer = Pacer(target_bps=10_000_000, max_queue_delay=0.5)
    pacer.enqueue(b"old", PacketKind.RETRANSMISSION, 0.0)
    pacer.enqueue(b"new", PacketKind.RETRANSMISSION, 0.4)
    assert pacer.poll(0.6) == [b"new"]
    assert pacer.dropped_retransmissions == 1


def test_hard_cap_makes_room_by_dropping_video_and_refuses_only_when_all_audio() -> None:
    pacer = Pacer(target_bps=10_000_000, max_packets=10)
    for _ in range(10):
        pacer.enqueue(b"v", PacketKind.VIDEO, 0.0)
    pacer.enqueue(b"a", PacketKind.AUDIO, 0.0)
    assert pacer.queued_packets == 10 and pacer.dropped_video == 1
    full = Pacer(target_bps=10_000_000, max_packets=3)
    for _ in range(4):
        full.enqueue(b"a", PacketKind.AUDIO, 0.0)
    assert full.queued_packets == 3 and full.refused == 1


def test_counters() -> None:
    pacer = Pacer(target_bps=10_000_000)
    pacer.enqueue(bytes(10), PacketKind.VIDEO, 0.0)
    pacer.enqueue(bytes(20), PacketKind.AUDIO, 0.0)
    pacer.poll(0.0)
    pacer.poll(0.01)
    assert pacer.sent_packets == 2 and pacer.sent_bytes == 30
