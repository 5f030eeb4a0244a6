"""Which of a sender's camera streams a receiver shows (simulcast, issue 9).

A publisher sends its camera and a low-resolution copy of it on a second SSRC; the server
forwards each subscriber one of them, and switches make-before-break: the old form flows
until the new form's keyframe has left. Frames of the old form may still come out of this
receiver's pipeline (its own playout schedule) just after that keyframe; and a server
without simulcast selection forwards both all the time. One tile must not alternate
between them, so per sender one stream is shown, and the other takes over only when

- its frame is a keyframe newer than the shown stream's latest (the server switched this
  subscriber to it; the old form's stragglers are not shown). The two streams' RTP
  timestamps come from one capture clock with one offset, so "newer" compares capture
  instants: the keyframes both streams start with (one capture) do not switch;
- the shown stream has gone quiet: nothing for three of its own frame intervals (at least
  :data:`STALE_MIN`), e.g. its switching keyframe was lost;
- it is the larger picture and has delivered steadily for :data:`STEADY_FOR` since the
  last switch (a server forwarding both: show the better one; its decoder has seen every
  frame, so a delta frame shows correctly).

Every frame of both streams is decoded (their decoders stay current); only the shown
one's go to the tile and the statistics. Sans-I/O: ``now`` is monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

#: The shown stream counts as quiet after at least this long without a frame.
STALE_MIN: Final = 0.2
#: ... and after at most this long, however slow its frame rate.
STALE_MAX: Final = 1.0
#: A larger picture delivering this long beside the shown one replaces it.
STEADY_FOR: Final = 1.0
#: Bound on the senders followed (a receiver forgets a sender's streams when it leaves).
MAX_GROUPS: Final = 256


@dataclass
class _Stream:
    area: int
    last_frame_at: float
    steady_since: float
    interval: float = 1 / 30  # smoothed time between its frames
    keyframe_ts: int | None = None  # RTP timestamp of its latest keyframe

    def quiet_after(self) -> float:
        """How long without a frame means this stream has stopped (for now)."""
        return max(STALE_MIN, min(STALE_MAX, 3 * self.interval))


@dataclass
class _Group:
    shown: int
    shown_since: float
    streams: dict[int, _Stream] = field(default_factory=dict)


class CameraPick:
    def __init__(self) -> None:
        self._groups: dict[int, _Group] = {}  # group (the camera's SSRC) -> its state
        #: frames not shown because the sender's other stream is the one shown
        self.superseded = 0
        self.switches = 0

    def offer(self, group: int, ssrc: int, *, keyframe: bool, timestamp: int, area: int,
              now: float) -> bool:
        """A decoded frame (``area`` = width x height, ``timestamp`` its RTP timestamp) of
        ``ssrc``, one of the streams of ``group``: show it?"""
        state = self._groups.get(group)
        if state is None:
            if len(self._groups) >= MAX_GROUPS:
                self._groups.clear()
            state = self._groups[group] = _Group(ssrc, now)
        stream = self._note(state, ssrc, area, now)
        newest_keyframe = False
        if keyframe:
            shown_keyframe = state.streams[state.shown].keyframe_ts
            newest_keyframe = shown_keyframe is None or 0 < (
                timestamp - shown_keyframe) & 0xFFFFFFFF < 0x80000000
            stream.keyframe_ts = timestamp
        if ssrc == state.shown:
            return True
        shown = state.streams[state.shown]
        steady_since = max(stream.steady_since, state.shown_since)
        if (newest_keyframe or now - shown.last_frame_at > shown.quiet_after()
                or (area > shown.area and now - steady_since >= STEADY_FOR)):
            state.shown, state.shown_since = ssrc, now
            self.switches += 1
            return True
        self.superseded += 1
        return False

    @staticmethod
    def _note(state: _Group, ssrc: int, area: int, now: float) -> _Stream:
        stream = state.streams.get(ssrc)
        if stream is None:
            if len(state.streams) >= 4:  # a camera and its copy; anything more is stale
                state.streams = {k: v for k, v in state.streams.items() if k == state.shown}
            stream = state.streams[ssrc] = _Stream(area, now, now)
            return stream
        gap = now - stream.last_frame_at
        if gap > stream.quiet_after():
            stream.steady_since = now  # it had stopped: steady again from now
        else:
            stream.interval += (gap - stream.interval) / 8
        stream.area, stream.last_frame_at = area, now
        return stream

    def shown(self, group: int) -> int | None:
        """The SSRC shown for ``group`` (None before its first frame)."""
        state = self._groups.get(group)
        return state.shown if state is not None else None

    def forget(self, ssrc: int) -> None:
        """A stream ended or paused: its group starts afresh with whichever comes next
        (its own state goes; the shown one's, if it was this one, too)."""
        for group, state in list(self._groups.items()):
            if group == ssrc or state.shown == ssrc:
                del self._groups[group]
            else:
                state.streams.pop(ssrc, None)
