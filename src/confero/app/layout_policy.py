"""Which layout the stage shows and who is large in it.

Pure: participants, who talks, pins and ``now`` in, an arrangement out. Auto gives the
other person the stage when there are two of you and a grid from three on; Speaker puts the
active speaker on the stage and holds them there at least ``HOLD`` seconds, so a cough
elsewhere does not swap the picture. A pin or an explicit choice always wins.

A shared screen (issue 12) takes the stage by itself: the layout turns to Speaker with the
screen large, and when the last screen stops, the layout from before the first one
returns -- unless the person chose a layout meanwhile, which then stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MODES = ("auto", "grid", "speaker")
HOLD = 2.0
PAGE_SIZE = 25


@dataclass(frozen=True)
class Arrangement:
    kind: str  # "grid" or "speaker"
    stage: str | None  # the large one in speaker view
    shown: list[str]  # in order: the grid page, or the strip (stage excluded)
    page: int
    pages: int


@dataclass
class LayoutPolicy:
    mode: str = "auto"
    pinned: str | None = None
    page: int = 0
    hold: float = HOLD
    _stage: str | None = field(default=None, init=False)
    _stage_since: float = field(default=-math.inf, init=False)
    #: shared screens on show, oldest first; the newest is presented
    _screens: list[str] = field(default_factory=list, init=False)
    #: the layout to return to when sharing stops (None: the person chose meanwhile)
    _mode_before_share: str | None = field(default=None, init=False)

    def set_mode(self, mode: str) -> None:
        """An explicit choice: it wins over a shared screen, and stays after it."""
        if mode not in MODES:
            raise ValueError(f"unknown layout {mode!r}")
        self.mode = mode
        self._mode_before_share = None

    @property
    def presenting(self) -> str | None:
        """The shared screen the speaker view puts large (the newest), if any."""
        return self._screens[-1] if self._screens else None

    def screen_started(self, key: str) -> None:
        """A shared screen appeared: it takes the stage, in the speaker view."""
        if key in self._screens:
            return
        if not self._screens:
            self._mode_before_share = self.mode
        self._screens.append(key)
        self.mode = "speaker"

    def screen_stopped(self, key: str) -> None:
        """A shared screen ended: the next one takes the stage, or the previous layout
        returns after the last."""
        if key not in self._screens:
            return
        self._screens.remove(key)
        if not self._screens:
            if self._mode_before_share is not None:
                self.mode = self._mode_before_share
            self._mode_before_share = None

    def next_mode(self) -> str:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        return self.mode

    @property
    def stage(self) -> str | None:
        """Who the speaker view puts large: the pin, else a shared screen, else the held
        active speaker."""
        if self.pinned is not None:
            return self.pinned
        return self.presenting if self.presenting is not None else self._stage

    def pin(self, participant: str | None) -> None:
        self.pinned = None if participant == self.pinned else participant

    def heard(self, talking: set[str], participants: list[str], now: float) -> None:
        """Who talks now: the stage moves to a talker once the current one has had its hold."""
        if self._stage not in participants:
            self._stage = None
        candidates = [p for p in participants if p in talking]
        if not candidates or self._stage in candidates:
            return
        if self._stage is None or now - self._stage_since >= self.hold:
            self._stage, self._stage_since = candidates[0], now

    def arrange(self, participants: list[str], now: float,
                strip_size: int = PAGE_SIZE) -> Arrangement:
        """The grid pages by ``PAGE_SIZE``; the speaker view's strip by what fits in it."""
        kind = self.mode
        if kind == "auto":
            kind = "speaker" if len(participants) == 1 or self.pinned in participants else "grid"
        if kind == "grid" and self.pinned not in participants:
            pages = max(1, math.ceil(len(participants) / PAGE_SIZE))
            self.page = min(max(0, self.page), pages - 1)
            start = self.page * PAGE_SIZE
            return Arrangement("grid", None, participants[start:start + PAGE_SIZE],
                               self.page, pages)
        if self.pinned in participants:
            stage: str | None = self.pinned
        elif self.presenting in participants:
            stage = self.presenting
        else:
            if self._stage not in participants:
                self._stage = participants[0] if participants else None
                self._stage_since = now
            stage = self._stage
        others = [p for p in participants if p != stage]
        size = max(1, strip_size)
        pages = max(1, math.ceil(len(others) / size))
        self.page = min(max(0, self.page), pages - 1)
        start = self.page * size
        return Arrangement("speaker", stage, others[start:start + size], self.page, pages)
