"""One token bucket for every budget: signaling rate limits, password guesses, and the
byte budgets of retransmissions on the server and in the clients.

Sans-I/O (the caller gives ``now``). A clock that steps back grants nothing. ``rate`` and
``burst`` are plain attributes: a budget that follows a stream's bitrate sets them before
each use (the refill since the last use is then counted at the new rate).
"""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` units per second on average and bursts of up to ``burst``; starts
    with ``tokens`` (default: full)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float,
                 tokens: float | None = None) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must not be negative")
        self.rate = rate
        self.burst = burst
        self._tokens = burst if tokens is None else min(burst, tokens)
        self._last = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` if it is there; otherwise spend nothing and say no."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
