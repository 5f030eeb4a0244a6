"""The signaling server's logic, sans-I/O: frames and the time in, frames to send out.

The aiohttp shell (``server.app``) owns sockets and the clock; this class owns every
decision: parsing, rate limiting, the hello handshake, the registry calls, persistence,
fan-out of events and of the lobby list. Tests drive it directly with a fake clock.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from confero import __version__
from confero.protocol import signaling as sig
from confero.protocol.signaling import ErrorCode, ProtocolError
from confero.server.p2p_mode import Action as ModeAction
from confero.server.p2p_mode import ModeChange, ModeMachine, Setting, Start, Stop
from confero.server.passwords import hash_password
from confero.server.ratelimit import TokenBucket
from confero.server.registry import (
    MeetingRegistry,
    MeetingState,
    Notice,
    Participant,
    RegistryError,
)
from confero.server.store import Store

log = logging.getLogger(__name__)

#: WebSocket close code when a newer connection presents the same resume token.
CLOSE_REPLACED = 4001


@dataclass(frozen=True, slots=True)
class Send:
    """Send the same encoded frame to each connection."""

    conn_ids: tuple[int, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    conn_id: int
    code: int
    reason: str


Action = Send | Close


class MediaPlane(Protocol):
    """What the signaling core needs of the media router (``server.media_router``)."""

    def reserve(self, participant_id: str) -> tuple[int, int]:
        """Server-unique (audio, video) SSRCs for this participant's connection."""

    def admit(self, participant_id: str, meeting_id: str, *, e2ee: bool = False
              ) -> sig.MediaGrant:
        """Open the media path for a participant who just entered a meeting (``e2ee``:
        the meeting's media is end-to-end encrypted, so audio is forwarded, not mixed)."""

    def release(self, participant_id: str) -> None:
        """The participant left its meeting: stop routing its media, free its SSRCs."""

    def forget(self, participant_id: str) -> None:
        """The connection is gone: free its SSRCs too."""

    def set_media(self, participant_id: str, camera: bool, microphone: bool) -> None: ...


@dataclass(slots=True)
class Connection:
    id: int
    bucket: TokenBucket
    password_bucket: TokenBucket
    opened_at: float
    participant: Participant | None = None


@dataclass(slots=True)
class CoreSettings:
    rate: float = 20.0  # sustained messages per second per connection
    burst: float = 40.0
    history_limit: int = 500
    heartbeat_interval: float = 2.0
    #: A connection that has not said hello by then is closed.
    hello_timeout: float = 10.0
    #: Lobby updates are coalesced: at most one broadcast per this many seconds.
    lobby_interval: float = 0.2
    #: Password checks cost ~15 ms of CPU each: per connection, and server-wide.
    password_rate: float = 1.0
    password_burst: float = 3.0
    password_rate_server: float = 20.0


@dataclass
class CoreCounters:
    """Plain counters; the shell exports them to Prometheus."""

    received: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    chat_messages: int = 0
    connections_opened: int = 0


_MEDIA_RESULT_FIELDS = frozenset(sig.MeetingMediaResult.__struct_fields__) - {"meeting_id", "mode"}


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _clean_name(name: str) -> str:
    """Display names are shown everywhere: no control characters, no blank names."""
    name = name.strip()
    if not name or any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            "a display name needs visible characters and no control characters - at `$.name`",
        )
    return name


class SignalingCore:
    def __init__(
        self,
        registry: MeetingRegistry,
        store: Store,
        settings: CoreSettings | None = None,
        new_participant_id: Callable[[], str] = lambda: secrets.token_urlsafe(6),
        media: MediaPlane | None = None,
    ) -> None:
        self.registry = registry
        self.media = media
        self.store = store
        self.settings = settings or CoreSettings()
        self.counters = CoreCounters()
        self._connections: dict[int, Connection] = {}
        self._conn_by_participant: dict[str, int] = {}
        self._conn_by_token: dict[bytes, int] = {}
        self._next_conn_id = 1
        self._new_participant_id = new_participant_id
        self._password_bucket = TokenBucket(
            self.settings.password_rate_server, self.settings.password_rate_server, 0.0
        )
        self._lobby_sent_at = float("-inf")
        self._lobby_pending = False
        # peer-to-peer (issue 10): who can, and each meeting's mode state machine
        self._p2p_capable: set[str] = set()
        self._modes: dict[str, ModeMachine] = {}
        self._mode_settings: dict[str, Setting] = {}

    # ------------------------------------------------------------------ restore

    def restore(self, now: float) -> int:
        """Reload open meetings after a restart; they wait ``empty_grace`` for their people."""
        count = 0
        self.registry.restore_ended(self.store.recently_ended(10_000))
        for meeting in self.store.open_meetings():
            self.registry.restore(meeting, now)
            count += 1
        return count

    # ------------------------------------------------------------------ connections

    def open_connection(self, now: float) -> int:
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        settings = self.settings
        self._connections[conn_id] = Connection(
            conn_id,
            TokenBucket(settings.rate, settings.burst, now),
            TokenBucket(settings.password_rate, settings.password_burst, now),
            now,
        )
        self.counters.connections_opened += 1
        return conn_id

    def close_connection(self, conn_id: int, now: float) -> list[Action]:
        """The socket is gone (closed, timed out, or failed): leave as ``disconnected``."""
        lobby_before = self.registry.lobby_version
        actions = self._drop(conn_id, "disconnected", now)
        return actions + self._lobby_update(lobby_before, now)

    def connection_count(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------------ input

    def handle(self, conn_id: int, data: bytes | str, now: float) -> list[Action]:
        conn = self._connections.get(conn_id)
        if conn is None:
            return []
        allowed = conn.bucket.allow(now)  # every frame counts, valid or not
        try:
            request = sig.decode_request(data)
        except ProtocolError as exc:
            if not allowed:
                exc = ProtocolError(ErrorCode.RATE_LIMITED, self._rate_message(), exc.request_id)
            return [self._error(conn_id, exc.to_error())]
        self.counters.received[str(type(request).__struct_config__.tag)] += 1
        lobby_before = self.registry.lobby_version
        actions: list[Action] = []
        try:
            if not allowed:
                raise ProtocolError(ErrorCode.RATE_LIMITED, self._rate_message())
            result = self._dispatch(conn, request, now, actions)
            reply = sig.encode(sig.Ok(id=request.id, result=result))
        except (ProtocolError, RegistryError) as exc:
            reply = self._encode_error(request.id, exc.code, exc.message)
        except Exception:  # a bug must cost one request, never the connection or the server
            log.exception("internal error handling %r on connection %d", request, conn_id)
            reply = self._encode_error(request.id, ErrorCode.INTERNAL, "internal server error")
        actions.insert(0, Send((conn_id,), reply))
        return actions + self._lobby_update(lobby_before, now)

    def tick(self, now: float) -> list[Action]:
        """Call a few times a second: ends expired meetings, closes silent newcomers,
        and sends a coalesced lobby update."""
        lobby_before = self.registry.lobby_version
        actions = self._deliver(self._side_effects(self.registry.tick(now), now))
        for meeting_id in list(self._modes):
            actions += self._sync_mode(meeting_id, now, tick=True)
        for conn in list(self._connections.values()):
            if conn.participant is None and now - conn.opened_at > self.settings.hello_timeout:
                self._connections.pop(conn.id)
                actions.append(Close(conn.id, 1008, "no hello in time"))
        return actions + self._lobby_update(lobby_before, now)

    def _rate_message(self) -> str:
        return (
            f"too many messages: at most {self.settings.rate:g} per second "
            f"(bursts of {self.settings.burst:g}); this one was dropped"
        )

    def _check_password_budget(self, conn: Connection, meeting_id: str, password: str | None,
                               now: float) -> None:
        meeting = self.registry.meeting(meeting_id)
        if meeting is None or meeting.password_hash is None or not password:
            return  # no expensive check will run
        if not conn.password_bucket.allow(now) or not self._password_bucket.allow(now):
            raise ProtocolError(
                ErrorCode.RATE_LIMITED, "too many password attempts; wait a moment and retry"
            )

    # ------------------------------------------------------------------ requests

    def _dispatch(
        self, conn: Connection, request: sig.Request, now: float, out: list[Action]
    ) -> object:
        if isinstance(request, sig.Hello):
            return self._hello(conn, request, now, out)
        participant = conn.participant
        if participant is None:
            raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send 'hello' before anything else")
        match request:
            case sig.Ping():
                return sig.Empty()
            case sig.ListMeetings():
                return sig.MeetingsResult(self.registry.open_meetings())
            case sig.CreateMeeting(title=title, password=password, mode=mode, e2ee=e2ee):
                title = title.strip()
                if not title:
                    raise ProtocolError(
                        ErrorCode.INVALID_FIELD, "a meeting title cannot be blank - at `$.title`"
                    )
                pw_hash = hash_password(password) if password else None
                self._reserve_ssrcs(participant)
                meeting, notices = self.registry.create(participant, title, pw_hash, now,
                                                        e2ee=e2ee)
                self.store.add_meeting(meeting)
                self._mode_settings[meeting.id] = mode
                out += self._deliver(notices)
                result = self._join_result(meeting.id, participant)
                out += self._sync_mode(meeting.id, now)
                return result
            case sig.JoinMeeting(meeting_id=meeting_id, password=password):
                self._check_password_budget(conn, meeting_id, password, now)
                self._reserve_ssrcs(participant)
                meeting, notices = self.registry.join(participant, meeting_id, password, now)
                out += self._deliver(notices)
                result = self._join_result(meeting.id, participant)
                out += self._sync_mode(meeting.id, now)
                return result
            case sig.LeaveMeeting():
                left = self.registry.meeting_of(participant.id)
                out += self._deliver(
                    self._side_effects(self.registry.leave(participant.id, "left", now), now)
                )
                if left is not None:
                    out += self._sync_mode(left.id, now)
                return sig.Empty()
            case sig.CancelMeeting(meeting_id=meeting_id):
                notices = self.registry.cancel(participant, meeting_id, now)
                out += self._deliver(self._side_effects(notices, now))
                out += self._sync_mode(meeting_id, now)
                return sig.Empty()
            case sig.P2pSignal():
                out += self._relay_p2p(participant, request)
                return sig.Empty()
            case sig.P2pState(session=session, state=state):
                machine = self._mode_of(participant)
                if machine is not None:
                    meeting_id = self._meeting_id_of(participant)
                    out += self._mode_actions(
                        meeting_id, machine.report(participant.id, session, state, now))
                return sig.Empty()
            case sig.MeetingMedia():
                return self._meeting_media(participant)
            case sig.SetMedia(camera=camera, microphone=microphone):
                notices = self.registry.set_media(participant, camera, microphone)
                if self.media is not None:
                    self.media.set_media(participant.id, camera, microphone)
                out += self._deliver(notices)
                return sig.Empty()
            case sig.RelayE2eeBlob(to=to, blob=blob):
                out += self._relay_e2ee_blob(participant, to, blob)
                return sig.Empty()
            case sig.SendChat(text=text):
                if not text.strip():
                    raise ProtocolError(
                        ErrorCode.INVALID_FIELD, "a chat message cannot be blank - at `$.text`"
                    )
                message, notices = self.registry.chat(participant.id, participant.name, text, now)
                self.store.add_chat(message)
                self.counters.chat_messages += 1
                out += self._deliver(notices)
                return sig.ChatResult(seq=message.seq, ts=message.ts)
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "unhandled message type")

    def _relay_e2ee_blob(self, sender: Participant, to: str, blob: str) -> list[Action]:
        """Pass an opaque key-exchange blob to one other member of the sender's E2EE
        meeting. The server cannot read it; it only makes sure it stays in the meeting."""
        meeting = self.registry.meeting_of(sender.id)
        if meeting is None:
            raise ProtocolError(ErrorCode.NOT_IN_MEETING, "join a meeting before relaying keys")
        if not meeting.e2ee:
            raise ProtocolError(
                ErrorCode.NOT_E2EE, "this meeting is not end-to-end encrypted"
            )
        conn_id = self._conn_by_participant.get(to)
        if to == sender.id or to not in meeting.participants or conn_id is None:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"no other participant {to[:64]!r} in your meeting"
            )
        self.counters.received["e2ee_blob_relayed"] += 1
        event = sig.E2eeBlobReceived(meeting_id=meeting.id, from_=sender.id, blob=blob)
        return [Send((conn_id,), sig.encode(event))]

    def _hello(self, conn: Connection, hello: sig.Hello, now: float, out: list[Action]) -> object:
        if conn.participant is not None:
            raise ProtocolError(
                ErrorCode.ALREADY_GREETED, "'hello' was already sent on this connection"
            )
        if hello.version != sig.PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"this server speaks protocol version {sig.PROTOCOL_VERSION}, "
                f"the client version {hello.version}; update the client",
            )
        name = _clean_name(hello.name)
        token = hello.resume_token or secrets.token_urlsafe(32)
        token_hash = _token_hash(token)
        previous = self._conn_by_token.get(token_hash)
        if previous is not None:
            # The same client came back on a new socket before the old one timed out.
            out += self._drop(previous, "replaced", now)
            out.append(Close(previous, CLOSE_REPLACED, "replaced by a newer connection"))
        conn.participant = Participant(
            id=self._new_participant_id(), name=name, token_hash=token_hash, joined_at=now
        )
        if hello.p2p:
            self._p2p_capable.add(conn.participant.id)
        self._conn_by_participant[conn.participant.id] = conn.id
        self._conn_by_token[token_hash] = conn.id
        return sig.HelloResult(
            participant_id=conn.participant.id,
            resume_token=token,
            protocol_version=sig.PROTOCOL_VERSION,
            server=f"confero/{__version__}",
            heartbeat_interval=self.settings.heartbeat_interval,
        )

    def _reserve_ssrcs(self, participant: Participant) -> None:
        if self.media is not None and not participant.audio_ssrc:
            participant.audio_ssrc, participant.video_ssrc = self.media.reserve(participant.id)

    def _join_result(self, meeting_id: str, participant: Participant) -> sig.JoinResult:
        meeting = self.registry.meeting(meeting_id)
        assert meeting is not None
        history, complete = self.store.history(meeting_id, self.settings.history_limit)
        grant = (self.media.admit(participant.id, meeting_id, e2ee=meeting.e2ee)
                 if self.media is not None else None)
        machine = self._modes.get(meeting_id)
        return sig.JoinResult(
            meeting=meeting.info(),
            participants=[p.info() for p in meeting.participants.values()],
            history=history,
            history_complete=complete,
            is_creator=meeting.is_creator(participant.token_hash),
            media=grant,
            mode_setting=self._mode_settings.get(meeting_id, "auto"),
            mode=machine.mode if machine is not None else "server",
        )

    # ------------------------------------------------------------------ helpers

    def _drop(self, conn_id: int, reason: sig.LeaveReason, now: float) -> list[Action]:
        conn = self._connections.pop(conn_id, None)
        if conn is None or conn.participant is None:
            return []
        participant = conn.participant
        del self._conn_by_participant[participant.id]
        if self._conn_by_token.get(participant.token_hash) == conn_id:
            del self._conn_by_token[participant.token_hash]
        self._p2p_capable.discard(participant.id)
        actions: list[Action] = []
        left = self.registry.meeting_of(participant.id)
        if left is not None:
            notices = self.registry.leave(participant.id, reason, now)
            actions = self._deliver(self._side_effects(notices, now))
            actions += self._sync_mode(left.id, now)
        if self.media is not None:
            self.media.forget(participant.id)
        return actions

    def _side_effects(self, notices: list[Notice], now: float) -> list[Notice]:
        """Persist ended meetings and close the media path of whoever left."""
        for notice in notices:
            event = notice.event
            if isinstance(event, sig.MeetingEnded):
                self.store.end_meeting(event.meeting_id, event.reason, now)
                for pid in notice.recipients:
                    self._release_media(pid)
            elif isinstance(event, sig.ParticipantLeft):
                self._release_media(event.participant_id)
        return notices

    def _release_media(self, participant_id: str) -> None:
        """Close the participant's media path; its next meeting gets fresh SSRCs."""
        if self.media is None:
            return
        self.media.release(participant_id)
        conn = self._connections.get(self._conn_by_participant.get(participant_id, -1))
        if conn is not None and conn.participant is not None:
            conn.participant.audio_ssrc = conn.participant.video_ssrc = 0

    def _deliver(self, notices: list[Notice]) -> list[Action]:
        actions: list[Action] = []
        for notice in notices:
            conn_ids = tuple(
                self._conn_by_participant[pid]
                for pid in notice.recipients
                if pid in self._conn_by_participant
            )
            if conn_ids:
                actions.append(Send(conn_ids, sig.encode(notice.event)))
        return actions

    def _lobby_update(self, version_before: int, now: float) -> list[Action]:
        if self.registry.lobby_version != version_before:
            self._lobby_pending = True
        if not self._lobby_pending or now - self._lobby_sent_at < self.settings.lobby_interval:
            return []  # nothing new, or sent very recently: a later call or tick sends it
        self._lobby_pending = False
        self._lobby_sent_at = now
        greeted = tuple(c.id for c in self._connections.values() if c.participant is not None)
        if not greeted:
            return []
        event = sig.MeetingsChanged(meetings=self.registry.open_meetings())
        return [Send(greeted, sig.encode(event))]

    # ------------------------------------------------------------------ peer-to-peer mode

    def meeting_modes(self) -> dict[str, str]:
        """Meeting id -> the media path it uses now (meetings never tried: absent)."""
        return {mid: machine.mode for mid, machine in self._modes.items()}

    def _meeting_id_of(self, participant: Participant) -> str:
        meeting = self.registry.meeting_of(participant.id)
        return meeting.id if meeting is not None else ""

    def _mode_of(self, participant: Participant) -> ModeMachine | None:
        meeting = self.registry.meeting_of(participant.id)
        return self._modes.get(meeting.id) if meeting is not None else None

    def _sync_mode(self, meeting_id: str, now: float, *, tick: bool = False) -> list[Action]:
        """Tell the meeting's mode machine who is in now (and the time); act on it."""
        meeting = self.registry.meeting(meeting_id)
        machine = self._modes.get(meeting_id)
        if meeting is None or meeting.state != MeetingState.OPEN:
            self._mode_settings.pop(meeting_id, None)
            if machine is None:
                return []
            del self._modes[meeting_id]
            return self._mode_actions(meeting_id, machine.close(now))
        if machine is None:
            machine = self._modes[meeting_id] = ModeMachine(
                self._mode_settings.get(meeting_id, "auto"))
        members = list(meeting.participants)
        actions = machine.members(members, self._p2p_capable, now)
        if tick:
            actions += machine.tick(now)
        return self._mode_actions(meeting_id, actions)

    def _mode_actions(self, meeting_id: str, actions: list[ModeAction]) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Start):
                for pid, peer, controlling in (
                    (action.controlling, action.controlled, True),
                    (action.controlled, action.controlling, False),
                ):
                    out += self._send_to(pid, sig.P2pStart(
                        meeting_id=meeting_id, session=action.session, peer_id=peer,
                        controlling=controlling))
            elif isinstance(action, Stop):
                for pid in action.peers:
                    out += self._send_to(pid, sig.P2pStop(session=action.session,
                                                          reason=action.reason))
            elif isinstance(action, ModeChange):
                meeting = self.registry.meeting(meeting_id)
                members = list(meeting.participants) if meeting is not None else []
                event = sig.ModeChanged(meeting_id=meeting_id, mode=action.mode,
                                        reason=action.reason, session=action.session)
                rekey = getattr(self.media, "rekey", None)
                if action.mode == "server" and rekey is not None:
                    for pid in [p for p in members if p in action.peers]:
                        members.remove(pid)
                        grant = rekey(pid)
                        out += self._send_to(pid, sig.ModeChanged(
                            meeting_id=meeting_id, mode=action.mode, reason=action.reason,
                            session=action.session, media=grant))
                out += self._deliver([Notice(tuple(members), event)])
        return out

    def _send_to(self, participant_id: str, event: sig.ServerMessage) -> list[Action]:
        conn_id = self._conn_by_participant.get(participant_id)
        return [] if conn_id is None else [Send((conn_id,), sig.encode(event))]

    def _relay_p2p(self, participant: Participant, signal: sig.P2pSignal) -> list[Action]:
        """Pass ICE credentials, candidates and the key to the other peer of the session
        under way; anything for another session (or from a stranger) is refused."""
        machine = self._mode_of(participant)
        peers = machine.peers() if machine is not None else None
        if machine is None or peers is None or signal.session != machine.session or (
            participant.id not in peers
        ):
            raise ProtocolError(ErrorCode.INVALID_FIELD,
                                "no such peer-to-peer session under way - at `$.session`")
        other = peers[1] if peers[0] == participant.id else peers[0]
        return self._send_to(other, sig.P2pSignalEvent(
            session=signal.session, from_id=participant.id, ufrag=signal.ufrag,
            pwd=signal.pwd, key=signal.key, candidates=list(signal.candidates),
            end_of_candidates=signal.end_of_candidates))

    def _meeting_media(self, participant: Participant) -> sig.MeetingMediaResult:
        meeting = self.registry.meeting_of(participant.id)
        if meeting is None:
            raise ProtocolError(ErrorCode.NOT_IN_MEETING, "not in a meeting")
        machine = self._modes.get(meeting.id)
        mode = machine.mode if machine is not None else "server"
        stats_of = getattr(self.media, "meeting_media", None)
        counts: dict[str, int] = stats_of().get(meeting.id, {}) if stats_of else {}
        return sig.MeetingMediaResult(
            meeting_id=meeting.id, mode=mode,
            **{k: v for k, v in counts.items() if k in _MEDIA_RESULT_FIELDS},
        )

    def _error(self, conn_id: int, error: sig.Error) -> Send:
        self.counters.errors[error.code] += 1
        return Send((conn_id,), sig.encode(error))

    def _encode_error(self, request_id: int, code: ErrorCode, message: str) -> bytes:
        self.counters.errors[code] += 1
        return sig.encode(sig.Error(id=request_id, code=code, message=message))
