"""Which media path a meeting uses, decided by the server, sans-I/O.

One :class:`ModeMachine` per meeting. In ``auto`` a meeting with exactly two P2P-capable
members tries a peer-to-peer session: both are told to start ICE (``Start``), and once
both report ICE connected the meeting is in ``p2p`` (``ModeChange``). It goes back to
``server`` when a third person joins, when one leaves, when ICE fails or does not connect
in time, when a peer loses consent (RFC 7675), or when a peer asks. After a failure the
next attempt waits (``retry_after``, doubling up to ``retry_max``) so a pair that cannot
reach each other does not flap; after a peer asked for the server it is not retried until
the membership changes. Reports of an older session are ignored.

Inputs: :meth:`members` (who is in, and who can do P2P), :meth:`report`, :meth:`tick`;
all take ``now``. Outputs: a list of actions from each call. See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["server", "p2p"]
Setting = Literal["auto", "server"]


@dataclass(frozen=True)
class Start:
    """Tell ``controlling`` and ``controlled`` to start ICE for ``session``."""

    session: int
    controlling: str
    controlled: str


@dataclass(frozen=True)
class Stop:
    """Tell both peers of ``session`` to drop it."""

    session: int
    peers: tuple[str, str]
    reason: str


@dataclass(frozen=True)
class ModeChange:
    mode: Mode
    reason: str
    session: int
    #: the peers of the session: back on the server, their server-path keys are renewed
    peers: tuple[str, ...] = field(default=(), compare=False)


Action = Start | Stop | ModeChange


@dataclass
class _Attempt:
    session: int
    peers: tuple[str, str]
    started_at: float
    connected: set[str] = field(default_factory=set)


class ModeMachine:
    def __init__(
        self,
        setting: Setting = "auto",
        *,
        connect_timeout: float = 10.0,
        retry_after: float = 5.0,
        retry_max: float = 120.0,
        first_session: int = 1,
    ) -> None:
        self.setting: Setting = setting
        self.mode: Mode = "server"
        self.connect_timeout = connect_timeout
        self._retry_base = retry_after
        self._retry_max = retry_max
        self._retry_delay = retry_after
        self._next_session = first_session
        self._attempt: _Attempt | None = None
        self._members: tuple[str, ...] = ()
        self._capable: frozenset[str] = frozenset()
        self._not_before = float("-inf")
        self._declined = False  # a peer asked for the server: wait for a membership change
        #: (time, mode, reason) of every change, bounded: for the status page and tests
        self.history: list[tuple[float, Mode, str]] = []

    @property
    def session(self) -> int:
        """The P2P session under way (connecting or connected), 0 if none."""
        return self._attempt.session if self._attempt is not None else 0

    def peers(self) -> tuple[str, str] | None:
        return self._attempt.peers if self._attempt is not None else None

    # ------------------------------------------------------------------ inputs

    def members(self, members: list[str], capable: set[str], now: float) -> list[Action]:
        """The meeting's members (in join order) changed, or may have."""
        new = tuple(members)
        if new == self._members and frozenset(capable) & set(new) == self._capable:
            return self._maybe_start(now)
        changed_people = set(new) != set(self._members)
        joined = len(new) > len(self._members)
        self._members = new
        self._capable = frozenset(capable) & set(new)
        out: list[Action] = []
        attempt = self._attempt
        if attempt is not None and (
            set(attempt.peers) != set(new) or not set(attempt.peers) <= self._capable
        ):
            out += self._end("participant_joined" if joined else "participant_left"
                             if changed_people else "not_capable", now)
        if changed_people:
            self._declined = False
            self._retry_delay = self._retry_base
            self._not_before = float("-inf")
        return out + self._maybe_start(now)

    def report(self, participant_id: str, session: int, state: str, now: float
               ) -> list[Action]:
        """A peer's ``p2p_state``; stale sessions and strangers are ignored."""
        attempt = self._attempt
        if attempt is None or session != attempt.session or participant_id not in attempt.peers:
            return []
        if state == "connected":
            attempt.connected.add(participant_id)
            if len(attempt.connected) == 2 and self.mode != "p2p":
                self.mode = "p2p"
                self._retry_delay = self._retry_base
                return [self._record(
                    ModeChange("p2p", "ice_connected", attempt.session, attempt.peers), now)]
            return []
        if state == "want_server":
            self._declined = True
            return self._end("requested", now)
        reason = "consent_lost" if state == "consent_lost" else "ice_failed"
        self._back_off(now)
        return self._end(reason, now)

    def tick(self, now: float) -> list[Action]:
        attempt = self._attempt
        if (attempt is not None and self.mode != "p2p"
                and now - attempt.started_at > self.connect_timeout):
            self._back_off(now)
            return self._end("ice_timeout", now)
        return self._maybe_start(now)

    def close(self, now: float) -> list[Action]:
        """The meeting ended: drop any session (its peers are gone or going)."""
        return self._end("meeting_ended", now)

    # ------------------------------------------------------------------ decisions

    def _eligible(self) -> bool:
        return (
            self.setting == "auto"
            and len(self._members) == 2
            and set(self._members) <= self._capable
            and not self._declined
        )

    def _maybe_start(self, now: float) -> list[Action]:
        if self._attempt is not None or not self._eligible() or now < self._not_before:
            return []
        session = self._next_session
        self._next_session += 1
        a, b = self._members  # the one who was there first controls (nominates)
        self._attempt = _Attempt(session, (a, b), now)
        return [Start(session, a, b)]

    def _end(self, reason: str, now: float) -> list[Action]:
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return []
        out: list[Action] = []
        if self.mode == "p2p":
            self.mode = "server"
            out.append(self._record(
                ModeChange("server", reason, attempt.session, attempt.peers), now))
        out.append(Stop(attempt.session, attempt.peers, reason))
        return out

    def _back_off(self, now: float) -> None:
        self._not_before = now + self._retry_delay
        self._retry_delay = min(self._retry_max, self._retry_delay * 2)

    def _record(self, change: ModeChange, now: float) -> ModeChange:
        self.history.append((now, change.mode, change.reason))
        del self.history[:-32]
        return change
