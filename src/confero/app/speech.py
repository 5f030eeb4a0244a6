"""Notice a muted person who is talking, so the app can tell them ("You are muted").

Pure: levels and ``now`` in, a decision out. A loud frame opens a window (about 700 ms,
as Jitsi does); when the window closes, it counts as speech if most of its frames were
loud. One cough or a door opens a window that is then mostly quiet, so it does not fire.
It fires at most once per mute: a second hint for the same mute would only nag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MutedSpeechDetector:
    window: float = 0.7  # seconds a loud frame looks ahead
    loud_dbov: int = 45  # RFC 6464 level: 0 loudest, 127 silence; <= this counts as voice
    speech_share: float = 0.6  # share of loud frames that makes the window speech

    def __post_init__(self) -> None:
        self._is_muted = False
        self._fired = False
        self._opened_at: float | None = None
        self._frames = 0
        self._loud = 0

    @property
    def is_muted(self) -> bool:
        return self._is_muted

    def mute(self) -> None:
        """A new mute starts: the hint may be given again."""
        self._is_muted = True
        self._fired = False
        self._opened_at = None

    def unmute(self) -> None:
        self._is_muted = False
        self._opened_at = None

    def feed(self, level_dbov: int, now: float) -> bool:
        """One frame's level while muted; True exactly when the hint should show."""
        if not self._is_muted or self._fired:
            return False
        loud = level_dbov <= self.loud_dbov
        if self._opened_at is None:
            if not loud:
                return False
            self._opened_at, self._frames, self._loud = now, 0, 0
        if now - self._opened_at > self.window:
            speech = self._frames > 0 and self._loud / self._frames >= self.speech_share
            self._opened_at = None
            if speech:
                self._fired = True
                return True
            if loud:  # this frame may open the next window
                self._opened_at, self._frames, self._loud = now, 0, 0
            else:
                return False
        self._frames += 1
        self._loud += int(loud)
        return False
