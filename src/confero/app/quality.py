"""How good one remote stream looks, as a tile's connection indicator shows it.

Pure: cumulative counters and ``now`` in, a score (0..100) and a level out. The score comes
from the loss of the last interval on fixed steps (<= 2 % full, <= 4 % 70, <= 6 % 50,
<= 8 % 30, <= 12 % 10, else 0), capped by a long delay or a low frame rate. It falls at
once but rises at most 2 points a second, so a flapping link does not look fine between
two bad seconds. A good indicator hides after 5 s: people only need it when it is bad.
"""

from __future__ import annotations

from dataclasses import dataclass

_LOSS_STEPS = ((0.02, 100), (0.04, 70), (0.06, 50), (0.08, 30), (0.12, 10))
RISE_PER_SECOND = 2.0
HIDE_AFTER = 5.0
STALE_AFTER = 3.0  # no statistics for this long: unknown (grey)


def loss_score(loss: float) -> int:
    for limit, score in _LOSS_STEPS:
        if loss <= limit:
            return score
    return 0


def level_for(score: float | None) -> str:
    """good (green) / fair (yellow) / poor (red) / unknown (grey)."""
    if score is None:
        return "unknown"
    if score >= 70:
        return "good"
    if score >= 30:
        return "fair"
    return "poor"


@dataclass
class ConnectionQuality:
    score: float | None = None
    loss: float = 0.0
    fps: float = 0.0
    delay_ms: float | None = None

    def __post_init__(self) -> None:
        self._last: tuple[int, int] | None = None  # (packets, lost) at the previous update
        self._updated = 0.0
        self._good_since: float | None = None

    def update(self, *, packets: int, lost: int, fps: float, delay_ms: float | None,
               now: float) -> None:
        """One statistics sample (about once a second) of the stream's cumulative counters."""
        previous, self._last = self._last, (packets, lost)
        elapsed = now - self._updated if self.score is not None else 0.0
        self._updated = now
        self.fps, self.delay_ms = fps, delay_ms
        if previous is None:
            return
        received = max(0, packets - previous[0])
        missing = max(0, lost - previous[1])
        self.loss = missing / (received + missing) if received + missing else 0.0
        target = float(loss_score(self.loss))
        if delay_ms is not None and delay_ms > 500:
            target = min(target, 30.0)
        elif delay_ms is not None and delay_ms > 250:
            target = min(target, 70.0)
        if 0 < fps < 10:
            target = min(target, 50.0)
        if self.score is None or target <= self.score:
            self.score = target
        else:
            self.score = min(target, self.score + RISE_PER_SECOND * max(0.0, elapsed))
        if level_for(self.score) == "good":
            self._good_since = self._good_since if self._good_since is not None else now
        else:
            self._good_since = None

    def level(self, now: float) -> str:
        if self.score is None or now - self._updated > STALE_AFTER:
            return "unknown"
        return level_for(self.score)

    def visible(self, now: float) -> bool:
        """Shown while not good, and for the first seconds of being good."""
        if self.level(now) != "good":
            return True
        return self._good_since is None or now - self._good_since < HIDE_AFTER

    def details(self) -> str:
        delay = f"{self.delay_ms:.0f} ms" if self.delay_ms is not None else "-"
        score = f"{self.score:.0f}" if self.score is not None else "-"
        return (f"Connection {score}/100: loss {self.loss * 100:.1f} %, "
                f"{self.fps:.0f} fps, delay {delay}")
