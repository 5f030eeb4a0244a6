"""The signaling server's logic, sans-I/O: frames and the time in, frames to send out.

The aiohttp shell (``server.app``) owns sockets and the clock; this class owns every
decision: parsing, rate limiting, the hello handshake, the registry calls, persistence,
fan-out of events and of the lobby list. Tests drive it directly with a fake clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from confero import __version__
from confero.protocol import signaling as sig
from confero.protocol.signaling import EndReason, ErrorCode, ProtocolError
from confero.protocol.token_bucket import TokenBucket
from confero.server.names import InvalidName, clean_name
from confero.server.p2p_mode import Action as ModeAction
from confero.server.p2p_mode import ModeChange, ModeMachine, Setting, Start, Stop
from confero.server.passwords import hash_password
from confero.server.ratelimit import GuessLimiter
from confero.server.registry import (
    MAX_ADMITTED,
    Meeting,
    MeetingRegistry,
    Notice,
    Participant,
    RegistryError,
)
from confero.server.store import StoreError

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

    def reserve(self, participant_id: str) -> tuple[int, int, int, int]:
        """Server-unique (audio, video, screen, video's low copy) SSRCs for this
        participant's connection."""

    def admit(self, participant_id: str, meeting_id: str, *, e2ee: bool = False
              ) -> sig.MediaGrant:
        """Open the media path for a participant who just entered a meeting (``e2ee``:
        the meeting's media is end-to-end encrypted, so audio is forwarded, not mixed)."""

    def release(self, participant_id: str) -> None:
        """The participant left its meeting (or its connection is gone): stop routing its
        media, free its keys and SSRCs."""

    def set_receive_video(self, participant_id: str, wanted: bool) -> None:
        """Whether this participant wants the others' video forwarded to it at all."""


class MeetingStore(Protocol):
    """What the signaling core needs of its store (``server.store.Store`` is SQLite);
    a networked store for several server nodes would implement the same."""

    failure: str | None

    def recently_ended(self, limit: int) -> list[tuple[str, EndReason]]: ...
    def open_meetings(self) -> Iterator[Meeting]: ...
    def admitted(self, meeting_id: str, limit: int) -> list[bytes]: ...
    def check_file(self) -> str | None: ...
    def end_meeting(self, meeting_id: str, reason: EndReason, now: float) -> None: ...
    def purge_ended(self, ended_before: float) -> int: ...
    def flush(self) -> None: ...
    def add_admitted(self, meeting_id: str, token_hash: bytes) -> None: ...
    def add_meeting(self, meeting: Meeting) -> None: ...
    def add_chat(self, message: sig.ChatMessage) -> None: ...
    def history(self, meeting_id: str, limit: int) -> tuple[list[sig.ChatMessage], bool]: ...


@dataclass(slots=True)
class Connection:
    id: int
    bucket: TokenBucket
    password_bucket: TokenBucket
    opened_at: float
    participant: Participant | None = None
    #: The peer's IP address (empty when unknown): password guesses and chat are budgeted
    #: per address, since opening another socket is free.
    address: str = ""
    #: It has a lobby list that lobby deltas apply to (from ``list_meetings`` or a full
    #: ``meetings_changed``); False after hello and while in a meeting.
    lobby_synced: bool = False


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
    #: TURN relay for P2P (coturn ``use-auth-secret``): credentials per P2P session
    turn_url: str = ""
    turn_secret: str = ""
    turn_ttl: float = 600.0
    #: Wrong passwords: free ones, then exponential backoff (base, cap seconds); per source
    #: address and per meeting. Members coming back (known resume token) are never counted.
    guesses_free_per_address: int = 5
    guesses_cap_per_address: float = 300.0
    guesses_free_per_meeting: int = 20
    guesses_cap_per_meeting: float = 60.0
    #: History in a join result is also cut to this many bytes of text (newest kept).
    history_bytes: int = 1024 * 1024
    #: Chat lines a meeting may hold, and that one sender (resume token) may send in one.
    max_chat_per_meeting: int = 10_000
    max_chat_per_sender: int = 2_000
    #: Chat (and the record) of an ended meeting is deleted after this many seconds.
    chat_retention: float = 30 * 86400.0
    #: How often the store is checked (file still there), flushed to disk (the window a
    #: power cut can lose) and old chat purged.
    housekeeping_interval: float = 5.0


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
    """Display names are shown everywhere: normalised, visible, no control characters."""
    try:
        return clean_name(name)
    except InvalidName as exc:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{exc} - at `$.name`") from None


_STORE_MESSAGE = (
    "the server cannot save this right now (its disk is full or its database failed); "
    "nothing was changed - try again later"
)


class SignalingCore:
    def __init__(
        self,
        registry: MeetingRegistry,
        store: MeetingStore,
        settings: CoreSettings | None = None,
        new_participant_id: Callable[[], str] = lambda: secrets.token_urlsafe(6),
        media: MediaPlane | None = None,
    ) -> None:
        """Every ``now`` is monotonic seconds (rate limits, timeouts, the mode machine);
        the wall clock is ``now + registry.wall_offset``, for what people see and what
        the store keeps (the same rule as the media plane's)."""
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
        #: The lobby as of the last lobby event, and meetings ended since: the next delta.
        self._lobby_snapshot: dict[str, sig.MeetingInfo] = {}
        self._lobby_removed: set[str] = set()
        settings = self.settings
        self._guesses_by_address = GuessLimiter(
            settings.guesses_free_per_address, 1.0, settings.guesses_cap_per_address)
        self._guesses_by_meeting = GuessLimiter(
            settings.guesses_free_per_meeting, 1.0, settings.guesses_cap_per_meeting)
        #: meeting id -> chat lines sent per sender (resume token) for ``max_chat_per_sender``.
        self._chat_by_sender: dict[str, Counter[str]] = {}
        #: Meeting ends that could not be stored yet: retried by ``tick``.
        self._unsaved_ends: list[tuple[str, sig.EndReason, float]] = []
        self._housekeeping_at = float("-inf")

    # ------------------------------------------------------------------ restore

    def restore(self, now: float) -> int:
        """Reload open meetings after a restart; they wait ``empty_grace`` for their people."""
        count = 0
        self.registry.restore_ended(self.store.recently_ended(10_000))
        for meeting in self.store.open_meetings():
            self.registry.restore(meeting, now)
            for token_hash in self.store.admitted(meeting.id, MAX_ADMITTED):
                meeting.admit(token_hash)
            count += 1
        return count

    # ------------------------------------------------------------------ connections

    def open_connection(self, now: float, address: str = "") -> int:
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        settings = self.settings
        self._connections[conn_id] = Connection(
            conn_id,
            TokenBucket(settings.rate, settings.burst, now),
            TokenBucket(settings.password_rate, settings.password_burst, now),
            now,
            address=address,
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
        if now - self._housekeeping_at >= self.settings.housekeeping_interval:
            self._housekeeping_at = now
            self._housekeeping(now)
        return actions + self._lobby_update(lobby_before, now)

    def _housekeeping(self, now: float) -> None:
        """Retry unsaved meeting ends, notice a vanished database, purge old chat."""
        problem = self.store.check_file()
        if problem is not None:
            log.error("%s", problem)
            return
        try:
            while self._unsaved_ends:
                self.store.end_meeting(*self._unsaved_ends[0])
                self._unsaved_ends.pop(0)
            purged = self.store.purge_ended(
                now + self.registry.wall_offset - self.settings.chat_retention)
            self.store.flush()
        except StoreError as exc:
            log.error("store: %s", exc)
            return
        if purged:
            log.info("deleted %d ended meeting(s) and their chat (retention %gs)",
                     purged, self.settings.chat_retention)

    def store_problem(self) -> str | None:
        """Why the store is failing, or None: for /healthz."""
        return self.store.check_file() or self.store.failure

    def _rate_message(self) -> str:
        return (
            f"too many messages: at most {self.settings.rate:g} per second "
            f"(bursts of {self.settings.burst:g}); this one was dropped"
        )

    def _check_password_budget(self, conn: Connection, participant: Participant,
                               meeting_id: str, password: str | None, now: float) -> bool:
        """Refuse a guess over budget; True when a password check will run."""
        meeting = self.registry.meeting(meeting_id)
        if meeting is None or meeting.password_hash is None or not password:
            return False  # no expensive check will run
        if self.registry.is_admitted(meeting_id, participant.token_hash):
            return False  # a member coming back: no check, no budget
        wait = max(self._guesses_by_address.wait(conn.address, now),
                   self._guesses_by_meeting.wait(meeting_id, now))
        if wait > 0:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"too many wrong passwords for this meeting or from your address; "
                f"try again in {wait:.0f} s",
            )
        if not conn.password_bucket.allow(now) or not self._password_bucket.allow(now):
            raise ProtocolError(
                ErrorCode.RATE_LIMITED, "too many password attempts; wait a moment and retry"
            )
        return True

    def _join(self, conn: Connection, participant: Participant, meeting_id: str,
              password: str | None, now: float) -> tuple[object, list[Notice]]:
        checked = self._check_password_budget(conn, participant, meeting_id, password, now)
        self._reserve_ssrcs(participant)
        try:
            meeting, notices = self.registry.join(participant, meeting_id, password, now)
        except RegistryError as exc:
            if checked and exc.code == ErrorCode.WRONG_PASSWORD:
                self._guesses_by_address.failed(conn.address, now)
                self._guesses_by_meeting.failed(meeting_id, now)
            raise
        if checked:
            self._guesses_by_address.succeeded(conn.address)
            try:
                self.store.add_admitted(meeting.id, participant.token_hash)
            except StoreError as exc:  # only costs a password check after a restart
                log.error("cannot store an admission: %s", exc)
        return self._join_result(meeting.id, participant), notices

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
                conn.lobby_synced = True  # deltas from here on apply to this list
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
                try:
                    self.store.add_meeting(meeting)
                except StoreError as exc:
                    log.error("cannot store a new meeting: %s", exc)
                    self.registry.discard(meeting.id)  # write first, or leave no trace
                    raise ProtocolError(ErrorCode.STORE_FAILED, _STORE_MESSAGE) from None
                self._mode_settings[meeting.id] = mode
                out += self._deliver(notices)
                result = self._join_result(meeting.id, participant)
                out += self._sync_mode(meeting.id, now)
                return result
            case sig.JoinMeeting(meeting_id=meeting_id, password=password):
                joined, notices = self._join(conn, participant, meeting_id, password, now)
                out += self._deliver(notices)
                if isinstance(joined, sig.JoinResult):
                    out += self._sync_mode(joined.meeting.id, now)
                return joined
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
                        meeting_id, machine.report(participant.id, session, state, now), now)
                return sig.Empty()
            case sig.MeetingMedia():
                return self._meeting_media(participant)
            case sig.SetMedia(camera=camera, microphone=microphone, screen=screen,
                              receive_video=receive_video):
                notices = self.registry.set_media(participant, camera, microphone, screen)
                if self.media is not None:
                    self.media.set_receive_video(participant.id, receive_video)
                out += self._deliver(notices)
                return sig.Empty()
            case sig.RelayE2eeBlob(to=to, blob=blob):
                out += self._relay_e2ee_blob(participant, to, blob)
                return sig.Empty()
            case sig.RaiseHand(raised=raised):
                out += self._deliver(self.registry.raise_hand(participant, raised))
                return sig.Empty()
            case sig.SendChat(text=text):
                if not text.strip():
                    raise ProtocolError(
                        ErrorCode.INVALID_FIELD, "a chat message cannot be blank - at `$.text`"
                    )
                sent = self._check_chat_quota(conn, participant)
                message, notices = self.registry.chat(participant.id, participant.name, text, now)
                try:
                    self.store.add_chat(message)
                except StoreError as exc:
                    log.error("cannot store a chat message: %s", exc)
                    self.registry.retract_chat(message)
                    raise ProtocolError(ErrorCode.STORE_FAILED, _STORE_MESSAGE) from None
                sent[participant.token_hash.hex()] += 1
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
    def _check_chat_quota(self, conn: Connection, participant: Participant) -> Counter[str]:
        meeting = self.registry.meeting_of(participant.id)
        if meeting is None:
            return Counter()  # the registry refuses it with not_in_meeting
        settings = self.settings
        if meeting.last_seq >= settings.max_chat_per_meeting:
            raise ProtocolError(
                ErrorCode.CHAT_QUOTA,
                f"this meeting's chat is full ({settings.max_chat_per_meeting} messages)",
            )
        sent = self._chat_by_sender.setdefault(meeting.id, Counter())
        if sent[participant.token_hash.hex()] >= settings.max_chat_per_sender:
            raise ProtocolError(
                ErrorCode.CHAT_QUOTA,
                f"you sent the most chat messages one sender may send in a meeting "
                f"({settings.max_chat_per_sender})",
            )
        return sent

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
            id=self._new_participant_id(), name=name, token_hash=token_hash,
            joined_at=now + self.registry.wall_offset,
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
            (participant.audio_ssrc, participant.video_ssrc, participant.screen_ssrc,
             participant.low_ssrc) = self.media.reserve(participant.id)

    def _join_result(self, meeting_id: str, participant: Participant) -> sig.JoinResult:
        meeting = self.registry.meeting(meeting_id)
        assert meeting is not None
        history, complete = self.store.history(meeting_id, self.settings.history_limit)
        budget = self.settings.history_bytes
        for keep in range(len(history), 0, -1):  # newest first until the byte budget is spent
            budget -= len(history[keep - 1].text.encode()) + 200  # + the record's fields
            if budget < 0:
                history, complete = history[keep:], False
                break
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
            self.media.release(participant.id)
        return actions

    def _side_effects(self, notices: list[Notice], now: float) -> list[Notice]:
        """Persist ended meetings and close the media path of whoever left."""
        for notice in notices:
            event = notice.event
            if isinstance(event, sig.MeetingEnded):
                self._lobby_removed.add(event.meeting_id)
                self._chat_by_sender.pop(event.meeting_id, None)
                try:
                    self.store.end_meeting(event.meeting_id, event.reason,
                                           now + self.registry.wall_offset)
                except StoreError as exc:  # memory is right; the store catches up later
                    log.error("cannot store the end of meeting %s (will retry): %s",
                              event.meeting_id, exc)
                    self._unsaved_ends.append((event.meeting_id, event.reason,
                                                now + self.registry.wall_offset))
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
            conn.participant.screen_ssrc = conn.participant.low_ssrc = 0
            conn.participant.screen = False

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
        current = {m.id: m for m in self.registry.open_meetings()}
        changed = [m for mid, m in current.items() if self._lobby_snapshot.get(mid) != m]
        # Ended since the last event, too: a list_meetings reply may have shown them.
        removed = sorted((self._lobby_removed | self._lobby_snapshot.keys()) - current.keys())
        self._lobby_snapshot, self._lobby_removed = current, set()
        # Only those who look at the lobby: people in a meeting do not see the list. Those
        # with a list get what changed; the others the whole list once.
        synced: list[int] = []
        unsynced: list[int] = []
        for c in self._connections.values():
            if c.participant is None:
                continue
            if self.registry.meeting_of(c.participant.id) is not None:
                c.lobby_synced = False
            else:
                (synced if c.lobby_synced else unsynced).append(c.id)
                c.lobby_synced = True
        actions: list[Action] = []
        if synced and (changed or removed):
            delta = sig.MeetingsDelta(changed=changed, removed=removed)
            actions.append(Send(tuple(synced), sig.encode(delta)))
        if unsynced:
            full = sig.MeetingsChanged(meetings=list(current.values()))
            actions.append(Send(tuple(unsynced), sig.encode(full)))
        return actions

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
        if meeting is None:  # ended (the registry keeps open meetings only)
            self._mode_settings.pop(meeting_id, None)
            if machine is None:
                return []
            del self._modes[meeting_id]
            return self._mode_actions(meeting_id, machine.close(now))
        if machine is None:
            machine = self._modes[meeting_id] = ModeMachine(
                self._mode_settings.get(meeting_id, "auto"))
        members = list(meeting.participants)
        capable = self._p2p_capable
        on_stream = getattr(self.media, "on_stream", None)
        if on_stream is not None:  # media over TCP (UDP blocked): no peer-to-peer
            capable = capable - {p for p in members if on_stream(p)}
        actions = machine.members(members, capable, now)
        if tick:
            actions += machine.tick(now)
        return self._mode_actions(meeting_id, actions, now)

    def _turn_credentials(self, participant_id: str, now: float) -> tuple[str, str]:
        """coturn's REST credentials (``use-auth-secret``): the username is the expiry
        (Unix seconds) and who, the password HMAC-SHA1(secret, username) in base64."""
        expires = now + self.registry.wall_offset + self.settings.turn_ttl
        username = f"{int(expires)}:{participant_id}"
        digest = hmac.new(self.settings.turn_secret.encode(), username.encode(),
                          hashlib.sha1).digest()
        return username, base64.b64encode(digest).decode()

    def _mode_actions(self, meeting_id: str, actions: list[ModeAction],
                      now: float = 0.0) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Start):
                for pid, peer, controlling in (
                    (action.controlling, action.controlled, True),
                    (action.controlled, action.controlling, False),
                ):
                    turn: dict[str, str] = {}
                    if self.settings.turn_url and self.settings.turn_secret:
                        username, password = self._turn_credentials(pid, now)
                        turn = {"turn_url": self.settings.turn_url, "turn_username": username,
                                "turn_password": password}
                    out += self._send_to(pid, sig.P2pStart(
                        meeting_id=meeting_id, session=action.session, peer_id=peer,
                        controlling=controlling, **turn))
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
