"""A token bucket, driven by the caller's clock."""

from __future__ import annotations

from collections import OrderedDict


class GuessLimiter:
    """Wrong guesses per key (a source address, a meeting), with exponential backoff.

    A key may fail ``free`` times in a row freely; from then on each failure closes it for
    ``base``, then twice as long, and so on up to ``cap`` seconds. A success clears the
    key, and so do ``forget`` seconds without a failure. Keys are bounded (least recently
    failed first out), so a flood of addresses cannot grow memory.
    """

    def __init__(self, free: int, base: float, cap: float, *, forget: float = 3600.0,
                 max_keys: int = 100_000) -> None:
        self.free, self.base, self.cap, self.forget = free, base, cap, forget
        self.max_keys = max_keys
        # key -> (failures, time of the last failure, closed until)
        self._state: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may guess again; 0 if it may now."""
        state = self._state.get(key)
        if state is None:
            return 0.0
        _, last, until = state
        if now - last >= self.forget:
            del self._state[key]
            return 0.0
        return max(0.0, until - now)

    def failed(self, key: str, now: float) -> None:
        failures, _, _ = self._state.pop(key, (0, now, now))
        failures += 1
        over = failures - self.free
        until = now + min(self.cap, self.base * 2.0 ** min(over, 40)) if over >= 0 else now
        self._state[key] = (failures, now, until)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._state.pop(key, None)
