"""Make-before-break switching between the server path and the peer path, sans-I/O.

The server decides the mode (``mode_changed``); this decides *when each path stops
carrying our media* so that nothing is lost on the way:

- to P2P: send on both paths at once; stop sending to the server only when the peer's
  media (or, for a peer that sends none, its RTCP) has been arriving on the direct path
  for ``linger`` seconds since the switch, or after ``give_up`` seconds.
- to the server: resume on the server path at once; stop the peer path when media has
  been coming back from the server (the peer's forwarded video or the mix) for
  ``linger`` seconds, or after ``give_up``.

Receivers take both paths all along and drop duplicates (:class:`MediaEndpoint` does);
the audio crossfade follows :attr:`prefer_direct`. Feed it the endpoint's arrival times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Mode = Literal["server", "p2p"]


class _Paths(Protocol):
    send_to_server: bool
    send_to_peer: bool
    server_rtp_at: float | None
    peer_rtp_at: float | None
    peer_heard_at: float | None


@dataclass
class SwitchRecord:
    """One switch: when it started and when the old path stopped carrying our media."""

    to: Mode
    started: float
    completed: float | None = None
    by_timeout: bool = False
    #: when the new path first carried media to us (after the switch started)
    new_path_since: float | None = None


class PathSwitch:
    def __init__(self, *, give_up: float = 2.0, linger: float = 0.3) -> None:
        self.mode: Mode = "server"
        self.give_up = give_up
        #: how long both paths carry our media once the new one has proved itself
        self.linger = linger
        self._pending: SwitchRecord | None = None
        self.history: list[SwitchRecord] = []

    @property
    def prefer_direct(self) -> bool:
        """Play the peer's own audio stream rather than the server's mix."""
        return self.mode == "p2p"

    @property
    def switching(self) -> bool:
        return self._pending is not None

    def to_p2p(self, paths: _Paths, now: float) -> None:
        self.mode = "p2p"
        paths.send_to_peer = True
        paths.send_to_server = True  # until the peer is heard directly
        self._start("p2p", now)

    def to_server(self, paths: _Paths, now: float) -> None:
        self.mode = "server"
        paths.send_to_server = True  # at once: the server path comes first
        self._start("server", now)

    def _start(self, to: Mode, now: float) -> None:
        self._pending = SwitchRecord(to, now)
        self.history.append(self._pending)
        del self.history[:-16]

    def poll(self, paths: _Paths, now: float) -> None:
        """After any input: finish a switch once the new path has proved itself."""
        pending = self._pending
        if pending is None:
            return
        timed_out = now - pending.started >= self.give_up
        if pending.to == "p2p":
            heard = paths.peer_rtp_at if paths.peer_rtp_at is not None else paths.peer_heard_at
            if self._proved(pending, heard, now) or timed_out:
                paths.send_to_server = False
                self._done(pending, now, timed_out and not (heard and heard >= pending.started))
        else:
            back = paths.server_rtp_at
            if self._proved(pending, back, now) or timed_out:
                paths.send_to_peer = False
                self._done(pending, now, timed_out and not (back and back >= pending.started))

    def _proved(self, pending: SwitchRecord, heard_at: float | None, now: float) -> bool:
        """The new path has carried media to us for ``linger`` seconds. Not from its first
        packet: the other side plays the new path only once it runs steadily (about 100
        ms of it, plus its jitter buffer), and stopping the old path before that left it
        two concealed frames at every switch to the server (p2p_bench)."""
        if heard_at is None or heard_at < pending.started:
            return False
        if pending.new_path_since is None:
            pending.new_path_since = heard_at
        return now - pending.new_path_since >= self.linger

    def _done(self, pending: SwitchRecord, now: float, by_timeout: bool) -> None:
        pending.completed = now
        pending.by_timeout = by_timeout
        self._pending = None
