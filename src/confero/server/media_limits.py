"""Budgets of the media plane, sans-I/O: how much repair traffic one participant may cause.

A receiver's NACKs make the server send retransmissions, and NACKs the server cannot
answer make it ask the publisher; both multiply what arrives (issue 7, items 4 and 5). The
classes here bound that work: :class:`RateMeter` measures a stream's recent bitrate,
:class:`TokenBucket` spends a byte budget derived from it, and :class:`UpstreamNacks`
coalesces what is asked of one publisher into at most one NACK per interval.
"""

from __future__ import annotations


class RateMeter:
    """Bytes per second of one stream over the last ``window`` seconds."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._start: float | None = None
        self._bytes = 0
        self._last_rate = 0.0

    def add(self, size: int, now: float) -> None:
        if self._start is None:
            self._start = now
        elif now - self._start >= self.window:
            self._last_rate = self._bytes / (now - self._start)
            self._start, self._bytes = now, 0
        self._bytes += size

    def rate(self, now: float) -> float:
        """The larger of the last complete window and the one in progress (so a stream
        that just started or sped up is not starved), forgetting a stream that went quiet."""
        if self._start is None:
            return 0.0
        elapsed = now - self._start
        current = self._bytes / max(elapsed, self.window)
        if elapsed >= 2 * self.window:
            return current  # the last complete window is too old to speak for the stream
        return max(self._last_rate, current)


class UpstreamNacks:
    """What to ask one publisher to retransmit: coalesced, deduplicated, bounded.

    Receivers' requests for the same loss are merged; at most one NACK leaves per
    ``interval``, naming at most ``max_seqs`` sequence numbers; a number already asked
    for is not asked again within ``retry``. Everything beyond is refused (the caller
    counts it).
    """

    def __init__(
        self,
        *,
        interval: float = 0.05,
        max_seqs: int = 32,
        retry: float = 0.2,
        memory: int = 256,
    ) -> None:
        self.interval = interval
        self.max_seqs = max_seqs
        self.retry = retry
        self.memory = memory
        self._pending: dict[int, None] = {}  # an ordered set
        self._asked: dict[int, float] = {}  # seq -> when, oldest first
        self._last_sent = float("-inf")

    def add(self, seq: int, now: float) -> bool:
        """Queue ``seq``; False if it is refused (asked recently, or the list is full)."""
        if seq in self._pending:
            return True  # another receiver's request for the same loss: merged
        asked = self._asked.get(seq)
        if asked is not None and now - asked < self.retry:
            return False
        if len(self._pending) >= self.max_seqs:
            return False
        self._pending[seq] = None
        return True

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def due(self, now: float) -> list[int]:
        """The sequence numbers to NACK now (empty: nothing, or not yet)."""
        if not self._pending or now - self._last_sent < self.interval:
            return []
        seqs = list(self._pending)
        self._pending.clear()
        self._last_sent = now
        for seq in seqs:
            self._asked.pop(seq, None)
            self._asked[seq] = now
        while len(self._asked) > self.memory:
            del self._asked[next(iter(self._asked))]
        return seqs
