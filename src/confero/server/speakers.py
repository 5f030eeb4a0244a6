"""Which talkers' audio an end-to-end encrypted meeting forwards, sans-I/O.

The server cannot decode SFrame-protected Opus, so it cannot mix: it forwards the packets of
the loudest few speakers to each listener, who decode and mix them locally. It ranks them by
the RFC 6464 audio level each packet carries in the clear. A selected speaker is held for a
while after going quiet, and only replaced by a clearly louder one, so the choice does not
flap between talkers of similar loudness (each switch costs the listener a talkspurt start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: At or below this level (-dBov) a packet counts as silence (the mixer skips it too).
SILENT_LEVEL: Final = 70
#: Weight of the newest packet in a speaker's smoothed loudness: it rises fast (about
#: 100 ms at 20 ms a packet) and falls slowly (about a second), like a level meter.
ATTACK: Final = 0.2
RELEASE: Final = 0.02
#: A newcomer displaces a held speaker only when louder by this many dB.
MARGIN: Final = 10.0
#: A speaker heard this recently is talking (not pausing between words).
TALKING: Final = 0.06


@dataclass(slots=True)
class _Talker:
    loudness: float = 0.0  # smoothed 127 - level: higher is louder
    loud_at: float = float("-inf")  # last non-silent packet
    selected_at: float = float("-inf")


class SpeakerSelector:
    """``offer`` each audio packet's (sender, level): True means forward it."""

    def __init__(self, slots: int = 3, hold: float = 1.0, max_talkers: int = 256) -> None:
        self.slots = slots
        self.hold = hold
        self.max_talkers = max_talkers
        self._talkers: dict[str, _Talker] = {}
        self.selected: set[str] = set()
        self.switches = 0

    def offer(self, sender: str, level: int | None, now: float) -> bool:
        talker = self._talkers.get(sender)
        if talker is None:
            if len(self._talkers) >= self.max_talkers:
                return False
            talker = self._talkers[sender] = _Talker()
        level = 127 if level is None else min(127, max(0, level))
        target = 127 - level
        weight = ATTACK if target > talker.loudness else RELEASE
        talker.loudness += weight * (target - talker.loudness)
        loud = level < SILENT_LEVEL
        if loud:
            talker.loud_at = now
        if sender in self.selected:
            return True
        if not loud:
            return False
        if len(self.selected) < self.slots:
            self._select(sender, talker, now)
            return True
        victim = self._weakest_replaceable(talker, now)
        if victim is None:
            return False
        self.selected.discard(victim)
        self._select(sender, talker, now)
        return True

    def remove(self, sender: str) -> None:
        self._talkers.pop(sender, None)
        self.selected.discard(sender)

    def _select(self, sender: str, talker: _Talker, now: float) -> None:
        self.selected.add(sender)
        talker.selected_at = now
        self.switches += 1

    def _weakest_replaceable(self, newcomer: _Talker, now: float) -> str | None:
        """A selected speaker quiet for ``hold``; else one selected for ``hold`` that is
        talking (not in a pause) and clearly quieter than the newcomer."""
        quiet = [s for s in self.selected if now - self._talkers[s].loud_at >= self.hold]
        if quiet:
            return min(quiet, key=lambda s: self._talkers[s].loud_at)
        held = [
            s for s in self.selected
            if now - self._talkers[s].selected_at >= self.hold
            and now - self._talkers[s].loud_at < TALKING
            and self._talkers[s].loudness + MARGIN < newcomer.loudness
        ]
        if held:
            return min(held, key=lambda s: self._talkers[s].loudness)
        return None
