"""Which of a sender's camera streams a receiver shows (simulcast, issue 9).

A publisher sends its camera and a low-resolution copy of it on a second SSRC; the server
forwards each subscriber one of them and switches at keyframes. Around a switch both may
deliver for a moment (and a server that does not choose forwards both all the time). One
tile must not alternate between them frame by frame, so per sender one stream is shown:
the one whose latest keyframe is the newest. A frame of the other stream takes over only
if it is a keyframe (that keyframe is then the newest), or if the shown stream has gone
quiet (the server switched, and the switching keyframe is behind us). Sans-I/O: ``now``
is monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The shown stream is given up for the other one after this long without a frame.
STALE_AFTER: Final = 0.5
#: Bound on the senders followed (a receiver forgets a sender's streams when it leaves).
MAX_GROUPS: Final = 256


@dataclass
class _Shown:
    ssrc: int
    last_frame_at: float


class CameraPick:
    def __init__(self, stale_after: float = STALE_AFTER) -> None:
        self.stale_after = stale_after
        self._shown: dict[int, _Shown] = {}  # group (the camera's SSRC) -> shown stream
        #: frames not shown because the sender's other stream is the one shown
        self.superseded = 0
        self.switches = 0

    def offer(self, group: int, ssrc: int, keyframe: bool, now: float) -> bool:
        """A decoded frame of ``ssrc``, one of the streams of ``group``: show it?"""
        shown = self._shown.get(group)
        if shown is None:
            if len(self._shown) >= MAX_GROUPS:
                self._shown.clear()
            self._shown[group] = _Shown(ssrc, now)
            return True
        if ssrc != shown.ssrc:
            if not keyframe and now - shown.last_frame_at < self.stale_after:
                self.superseded += 1
                return False
            shown.ssrc = ssrc
            self.switches += 1
        shown.last_frame_at = now
        return True

    def shown(self, group: int) -> int | None:
        """The SSRC shown for ``group`` (None before its first frame)."""
        state = self._shown.get(group)
        return state.ssrc if state is not None else None

    def forget(self, ssrc: int) -> None:
        """A stream ended or paused: its group starts afresh with whichever comes next."""
        for group, state in list(self._shown.items()):
            if group == ssrc or state.ssrc == ssrc:
                del self._shown[group]
