"""A sans-I/O pacer: spreads packets at a multiple of the target rate, by priority.

A 20-packet keyframe sent in one burst fills a small bottleneck queue at once, so the
tail is dropped or delayed and the delay-based estimator sees "overuse" that the average
rate does not cause. The pacer releases packets against a byte budget refilled at
``pacing_factor`` x the target rate (fast enough that a normal frame still leaves well
within a frame interval), with a small burst allowance so it need not be polled every
millisecond. Audio goes first (small, latency-critical), then retransmissions (a receiver
is waiting for them), then video.

Use: ``enqueue`` what the encoders produce, ``poll(now)`` for what may leave now, and arm a
timer for ``next_send_time()``. Assign transport-wide sequence numbers to what ``poll``
returns, in order, not before.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

_EPSILON = 1e-6  # bytes: float error must not delay a packet past next_send_time()


class PacketKind(IntEnum):
    """Lower value leaves first."""

    AUDIO = 0
    RETRANSMISSION = 1
    VIDEO = 2


class Pacer:
    """Priority queues drained against a refilling byte budget.

    Bounded: when the queued video would take longer than ``max_queue_delay`` to drain at
    the pacing rate, the oldest video packets are dropped (counted in ``dropped_video``):
    stale video helps nobody and the encoder is about to follow the lower target anyway.
    Retransmissions older than ``max_queue_delay`` are dropped too. Audio is never dropped
    for delay; only the hard ``max_packets`` memory cap can refuse a packet, which needs
    minutes of audio to be queued.
    """

    def __init__(
        self,
        *,
        target_bps: float = 300_000,
        pacing_factor: float = 2.5,
        burst: float = 0.005,
        max_queue_delay: float = 0.5,
        max_packets: int = 4096,
    ) -> None:
        self.pacing_factor = pacing_factor
        self.burst = burst
        self.max_queue_delay = max_queue_delay
        self.max_packets = max_packets
        self._queues: tuple[deque[tuple[float, bytes]], ...] = tuple(deque() for _ in PacketKind)
        self._queued_bytes = [0] * len(PacketKind)
        self._budget = 0.0  # bytes; may go below zero by one packet
        self._last: float | None = None
        self.pacing_bps = 0.0
        self.set_rate(target_bps)
        self.dropped_video = 0
        self.dropped_retransmissions = 0
        self.refused = 0
        self.sent_packets = 0
        self.sent_bytes = 0

    def set_rate(self, target_bps: float) -> None:
        """The estimator's target; the pacer drains at ``pacing_factor`` times it."""
        self.pacing_bps = max(float(target_bps), 1000.0) * self.pacing_factor

    @property
    def queued_packets(self) -> int:
        return sum(len(q) for q in self._queues)

    @property
    def queued_bytes(self) -> int:
        return sum(self._queued_bytes)

    def queue_delay(self) -> float:
        """Seconds to drain what is queued at the current pacing rate."""
        return self.queued_bytes * 8 / self.pacing_bps

    def enqueue(self, data: bytes, kind: PacketKind, now: float) -> None:
        if self.queued_packets >= self.max_packets and not self._drop_one_for_room():
            self.refused += 1
            return
        self._queues[kind].append((now, data))
        self._queued_bytes[kind] += len(data)
        self._enforce_delay(now)

    def _drop_one_for_room(self) -> bool:
        for kind in (PacketKind.VIDEO, PacketKind.RETRANSMISSION):
            if self._queues[kind]:
                self._drop_oldest(kind)
                return True
        return False

    def _drop_oldest(self, kind: PacketKind) -> None:
        _, data = self._queues[kind].popleft()
        self._queued_bytes[kind] -= len(data)
        if kind is PacketKind.VIDEO:
            self.dropped_video += 1
        else:
            self.dropped_retransmissions += 1

    def _enforce_delay(self, now: float) -> None:
        limit_bytes = self.max_queue_delay * self.pacing_bps / 8
        video = self._queues[PacketKind.VIDEO]
        while video and self.queued_bytes > limit_bytes:
            self._drop_oldest(PacketKind.VIDEO)
        rtx = self._queues[PacketKind.RETRANSMISSION]
        while rtx and rtx[0][0] < now - self.max_queue_delay:
            self._drop_oldest(PacketKind.RETRANSMISSION)

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            cap = self.burst * self.pacing_bps / 8
            self._budget = min(self._budget + (now - self._last) * self.pacing_bps / 8, cap)
        if self._last is None or now > self._last:
            self._last = now

    def poll(self, now: float) -> list[bytes]:
        """Packets that may leave now, highest priority first."""
        self._refill(now)
        self._enforce_delay(now)
        out: list[bytes] = []
        while self._budget > -_EPSILON:
            data = self._pop_next()
            if data is None:
                break
            self._budget -= len(data)
            out.append(data)
        self.sent_packets += len(out)
        self.sent_bytes += sum(len(d) for d in out)
        return out

    def _pop_next(self) -> bytes | None:
        for kind, queue in zip(PacketKind, self._queues, strict=True):
            if queue:
                _, data = queue.popleft()
                self._queued_bytes[kind] -= len(data)
                return data
        return None

    def next_send_time(self) -> float | None:
        """When :meth:`poll` will release the next packet (None: queue empty)."""
        if not self.queued_packets:
            return None
        if self._last is None or self._budget > -_EPSILON:
            return self._last if self._last is not None else 0.0
        return self._last + -self._budget * 8 / self.pacing_bps
