"""The video playout schedule on a fake clock: smooth jitter, add the least delay."""

from __future__ import annotations

import itertools
import random
import statistics

from confero.protocol.video_playout import VideoPlayout

FRAME = 1 / 30
TICKS = 3000  # 90 kHz per frame at 30 fps


def run(playout: VideoPlayout, jitter: float, frames: int = 300, seed: int = 3,
        start_ts: int = 1234) -> tuple[list[float], list[float]]:
    """Frames captured every 33 ms, decoded up to ``jitter`` late (in arrival order):
    (decoded-at times, release times)."""
    rng = random.Random(seed)
    ready = sorted((i * FRAME + 0.05 + rng.uniform(0, jitter), i) for i in range(frames))
    decoded, released = [], []
    for at, index in ready:
        decoded.append(at)
        released.append(playout.schedule((start_ts + index * TICKS) & 0xFFFFFFFF, at))
    return decoded, released


def spread(times: list[float]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(times[100:])]
    return statistics.pstdev(gaps)


def test_a_clean_link_adds_almost_nothing() -> None:
    playout = VideoPlayout()
    decoded, released = run(playout, jitter=0.001)
    assert playout.delay < 0.002
    assert max(r - d for d, r in zip(decoded, released, strict=True)) < 0.002


def test_jitter_is_smoothed_back_to_the_capture_spacing() -> None:
    playout = VideoPlayout()
    decoded, released = run(playout, jitter=0.04)
    assert spread(released) < spread(decoded) / 4  # even gaps again
    assert 0.02 < playout.delay <= 0.045  # what the jitter needs, no more
    assert playout.late < 0.1 * len(decoded)
    assert released == sorted(released)  # never out of order
    assert all(r >= d for d, r in zip(decoded, released, strict=True))  # never before decoding


def test_the_added_delay_is_capped() -> None:
    playout = VideoPlayout(max_delay=0.15)
    decoded, released = run(playout, jitter=0.6)
    assert playout.delay <= 0.15 + 1e-9
    late_added = [r - d for d, r in zip(decoded, released, strict=True)]
    assert max(late_added) <= 0.15 + 1e-6


def test_timestamps_wrap_and_a_restarted_sender_starts_afresh() -> None:
    playout = VideoPlayout()
    run(playout, jitter=0.02, frames=100, start_ts=0xFFFFFFFF - 50 * TICKS)  # wraps
    assert playout.delay < 0.03
    # the sender restarts: new random timestamps, so the transit jumps by hours
    restart_at = 100.0
    release = playout.schedule(7, restart_at)
    assert release == restart_at and playout.delay == 0.0
    assert playout.schedule(7 + TICKS, restart_at + FRAME) == restart_at + FRAME
