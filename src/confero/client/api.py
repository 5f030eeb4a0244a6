"""The asyncio client of confero's signaling protocol: the API programs use.

One :class:`Client` is one participant. Requests are coroutines that return the typed
result or raise :class:`RequestError` with the server's stable code. Server events (and
the client's own connection-state changes) arrive through :meth:`Client.events` and any
listeners added with :meth:`Client.add_listener`.

When the connection drops, the client reconnects with exponential backoff, presents its
resume token (so the server recognises the creator and replaces a half-dead old socket),
rejoins its meeting and replays the chat messages it missed, each exactly once. If that is
impossible it says why: a :class:`RejoinFailed` event, or the state ``FAILED`` with a reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import msgspec

from confero.protocol import signaling as sig

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Hook = Callable[[Any], None]

#: Close code the server uses when a newer connection took over the same resume token.
CLOSE_REPLACED = 4001
MAX_INCOMING_FRAME = 8 * 1024 * 1024  # a join result carries up to 500 chat messages


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class StateChanged:
    """Local event: the connection state changed; ``reason`` says why when it went wrong."""

    state: ConnectionState
    reason: str = ""


@dataclass(frozen=True)
class Rejoined:
    """Local event: after a reconnect the client is back in its meeting.

    The chat missed meanwhile follows as ``ChatEvent``s; ``missed_chat_complete`` is False
    when more was missed than the server's history holds (the oldest of it is lost).
    """

    meeting: sig.MeetingInfo
    participants: list[sig.ParticipantInfo]
    missed_chat_complete: bool = True


@dataclass(frozen=True)
class RejoinFailed:
    """Local event: after a reconnect the meeting could not be rejoined."""

    meeting_id: str
    code: str
    message: str


ClientEvent = sig.ServerEvent | StateChanged | Rejoined | RejoinFailed


class ConfigError(Exception):
    """Bad arguments given to the client (a URL it cannot use, a missing CA file)."""


class ConnectionFailed(Exception):
    """The server could not be reached or refused us; the message says why."""


class ConnectionLost(Exception):
    """The connection dropped while a request was waiting for its answer."""


class RequestError(Exception):
    """The server answered a request with ``error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def make_ssl_context(cafile: str | None) -> ssl.SSLContext:
    """Verify the server against the system's CAs, or only against ``cafile`` if given."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (FileNotFoundError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use CA file {cafile!r}: {exc}") from exc


class Client:
    def __init__(
        self,
        url: str,
        name: str,
        *,
        cafile: str | None = None,
        resume_token: str | None = None,
        reconnect: bool = True,
        reconnect_timeout: float = 60.0,
        request_timeout: float = 10.0,
        heartbeat: float = 5.0,
        event_queue_size: int = 10_000,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"server URL must start with ws:// or wss://, got {url!r}")
        self.url = url
        self.name = name
        self.resume_token = resume_token
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.request_timeout = request_timeout
        self._heartbeat = heartbeat
        self._ssl: ssl.SSLContext | bool = False
        if url.startswith("wss://"):
            self._ssl = make_ssl_context(cafile)
        self.state = ConnectionState.DISCONNECTED
        self.participant_id: str | None = None
        self.meeting: sig.MeetingInfo | None = None
        self.participants: dict[str, sig.ParticipantInfo] = {}
        self.is_creator = False
        #: Media port, SRTP keys and SSRCs of the current meeting (None outside one).
        self.media_grant: sig.MediaGrant | None = None
        #: Events dropped because nobody consumed the queue (it is bounded).
        self.events_dropped = 0
        #: Offer peer-to-peer media in hello (the call layer must then handle p2p_* events).
        self.p2p = False
        self._meeting_password: str | None = None
        self._last_seq = 0
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        # request id -> (future, hook run on the result inside the reader, before any later
        # frame is handled, so state follows the server's order exactly)
        self._pending: dict[int, tuple[asyncio.Future[Any], _Hook | None]] = {}
        self._next_id = 1
        self._events: asyncio.Queue[ClientEvent] = asyncio.Queue(event_queue_size)
        self._listeners: list[Callable[[ClientEvent], object]] = []
        self._closing = False
        #: The lobby as the server last described it: ``meetings_delta`` events apply to it.
        self._lobby: dict[str, sig.MeetingInfo] | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext | bool:
        """What the signaling connection verifies the server with (False: plain ws://);
        the media WebSocket (UDP blocked) uses the same."""
        return self._ssl

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> sig.HelloResult:
        """Connect and greet; raises :class:`ConnectionFailed` with the reason."""
        self._closing = False
        self._set_state(ConnectionState.CONNECTING)
        try:
            result = await self._open()
        except ConnectionFailed as exc:
            self._set_state(ConnectionState.FAILED, str(exc))
            await self._close_session()
            raise
        self._set_state(ConnectionState.CONNECTED)
        return result

    async def close(self) -> None:
        """Leave politely: the server sees the socket close (others are told at once)."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        for task in (self._reconnector, self._reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._reconnector = None
        self._fail_pending(ConnectionLost("client closed"))
        await self._close_session()
        self._set_state(ConnectionState.CLOSED)

    # ------------------------------------------------------------------ requests

    async def list_meetings(self) -> list[sig.MeetingInfo]:
        result = await self._request(sig.ListMeetings, sig.MeetingsResult,
                                     hook=lambda r: self._set_lobby(r.meetings))
        return result.meetings

    async def create_meeting(self, title: str, password: str | None = None,
                             mode: sig.MeetingMode = "auto", *,
                             e2ee: bool = False) -> sig.JoinResult:
        return await self._request(
            sig.CreateMeeting,
            sig.JoinResult,
            hook=lambda result: self._entered(result, password),
            title=title,
            password=password,
            e2ee=e2ee,
            mode=mode,
        )

    async def join(self, meeting_id: str, password: str | None = None) -> sig.JoinResult:
        return await self._request(
            sig.JoinMeeting,
            sig.JoinResult,
            hook=lambda result: self._entered(result, password),
            meeting_id=meeting_id,
            password=password,
        )

    async def leave(self) -> None:
        await self._request(sig.LeaveMeeting, sig.Empty, hook=lambda _: self._left())

    async def cancel(self, meeting_id: str | None = None) -> None:
        """End a meeting for everyone (creator only); by default the current one."""
        target = meeting_id or (self.meeting.id if self.meeting else None)
        if target is None:
            raise RequestError(sig.ErrorCode.NOT_IN_MEETING, "no meeting given and not in one")
        await self._request(sig.CancelMeeting, sig.Empty, meeting_id=target)

    async def send_chat(self, text: str) -> sig.ChatResult:
        return await self._request(sig.SendChat, sig.ChatResult, text=text)

    async def set_media(self, *, camera: bool, microphone: bool, screen: bool = False,
                        receive_video: bool = True) -> None:
        """Announce camera/microphone/screen-share state to the meeting (the media itself
        flows apart), and whether the server should forward us video at all."""
        await self._request(sig.SetMedia, sig.Empty, camera=camera, microphone=microphone,
                            screen=screen, receive_video=receive_video)

    async def relay_e2ee_blob(self, to: str, blob: bytes) -> None:
        """Have the server pass an opaque E2EE key-exchange blob to one participant."""
        await self._request(sig.RelayE2eeBlob, sig.Empty, to=to,
                            blob=base64.b64encode(blob).decode("ascii"))
    async def raise_hand(self, raised: bool) -> None:
        """Raise or lower our hand in the current meeting."""
        await self._request(sig.RaiseHand, sig.Empty, raised=raised)

    async def ping(self) -> None:
        await self._request(sig.Ping, sig.Empty)

    # peer-to-peer (issue 10); a client says it can with ``client.p2p = True`` before
    # connecting

    async def p2p_signal(self, session: int, **fields: Any) -> None:
        await self._request(sig.P2pSignal, sig.Empty, session=session, **fields)

    async def p2p_state(self, session: int, state: sig.P2pReport) -> None:
        await self._request(sig.P2pState, sig.Empty, session=session, state=state)

    async def meeting_media(self) -> sig.MeetingMediaResult:
        """The server's media counters for our meeting (zero forwarded in P2P)."""
        return await self._request(sig.MeetingMedia, sig.MeetingMediaResult)

    # ------------------------------------------------------------------ events

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event in arrival order; ends after :meth:`close` or a final failure."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, StateChanged) and event.state in (
                ConnectionState.CLOSED,
                ConnectionState.FAILED,
            ):
                return

    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        return await asyncio.wait_for(self._events.get(), timeout)

    async def wait_for(
        self, predicate: Callable[[ClientEvent], bool], timeout: float = 10.0
    ) -> ClientEvent:
        """The next event matching ``predicate`` (others are consumed and dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self._events.get()
                if predicate(event):
                    return event

    def add_listener(self, callback: Callable[[ClientEvent], object]) -> None:
        """Call ``callback(event)`` for each event, in the client's task, before queueing."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ internals

    async def _open(self) -> sig.HelloResult:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(
                self.url,
                ssl=self._ssl,
                heartbeat=self._heartbeat,
                max_msg_size=MAX_INCOMING_FRAME,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ConnectionFailed(
                f"the server's TLS certificate is not trusted ({exc.certificate_error}); "
                "pass the server's certificate with --cafile"
            ) from exc
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 429:
                raise ConnectionFailed(
                    "the server refused the connection: too many connections from this "
                    "address"
                ) from exc
            raise ConnectionFailed(
                f"{self.url} is not a confero WebSocket endpoint (HTTP {exc.status})"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {exc}") from exc
        self._lobby = None  # a new connection starts without a list on the server's side
        self._reader = asyncio.create_task(self._read_loop(self._ws))
        # p2p only when offered: a server without P2P refuses unknown hello fields
        offer: dict[str, Any] = {"p2p": True} if self.p2p else {}
        try:
            hello = await self._request(
                sig.Hello,
                sig.HelloResult,
                internal=True,
                version=sig.PROTOCOL_VERSION,
                name=self.name,
                resume_token=self.resume_token,
                **offer,
            )
        except RequestError as exc:
            await self._discard_socket()
            raise ConnectionFailed(f"the server refused us: {exc.message}") from exc
        except (ConnectionLost, TimeoutError) as exc:
            await self._discard_socket()
            raise ConnectionFailed(f"no answer from {self.url} to hello") from exc
        self.participant_id = hello.participant_id
        self.resume_token = hello.resume_token
        return hello

    async def _discard_socket(self) -> None:
        """Forget a socket that failed its hello: its reader must not act on its close."""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if ws is not None:
            await ws.close()

    async def _request(
        self,
        kind: type[sig.Request],
        result_type: type[_T],
        hook: Callable[[_T], None] | None = None,
        *,
        internal: bool = False,
        **fields: Any,
    ) -> _T:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionLost("not connected")
        if not internal and self.state != ConnectionState.CONNECTED:
            # While reconnecting, only the client's own hello and rejoin may go out, so a
            # user's request cannot overtake the rejoin and leave the two sides disagreeing.
            raise ConnectionLost(f"not connected ({self.state.value})")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_result(raw: Any) -> None:
            result = sig.convert_result(raw, result_type)
            if hook is not None:
                hook(result)
            future.set_result(result)

        self._pending[request_id] = (future, on_result)
        try:
            await ws.send_frame(sig.encode(kind(id=request_id, **fields)), aiohttp.WSMsgType.TEXT)
            reply: _T = await asyncio.wait_for(future, self.request_timeout)
        except ConnectionResetError as exc:
            raise ConnectionLost(str(exc)) from exc
        finally:
            self._pending.pop(request_id, None)
        return reply

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            try:
                message = sig.decode_server_message(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                log.warning("ignoring a malformed server message: %s", exc)
                continue
            self._dispatch(message)
        # The socket is closed: by us, by the server, or by a failed heartbeat.
        if self._closing or ws is not self._ws:
            return  # closed on purpose, or an old socket already replaced
        self._fail_pending(ConnectionLost("connection closed"))
        if ws.close_code == CLOSE_REPLACED:
            self._set_state(ConnectionState.FAILED, "replaced by a newer connection")
            return
        if not self.reconnect:
            self._set_state(ConnectionState.FAILED, f"connection closed (code {ws.close_code})")
            return
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.create_task(self._reconnect())
        # else: a reconnect in progress lost its new socket; its loop notices and retries

    def _dispatch(self, message: sig.AnyServerMessage) -> None:
        if isinstance(message, (sig.Ok, sig.Error)):
            pending = self._pending.pop(message.id, None) if message.id is not None else None
            if pending is None:
                if isinstance(message, sig.Error):
                    log.warning("server error: %s %s", message.code, message.message)
                return
            future, on_result = pending
            if future.done():
                return  # the caller gave up waiting
            if isinstance(message, sig.Error):
                future.set_exception(RequestError(message.code, message.message))
            elif on_result is not None:
                try:
                    on_result(message.result)
                except (msgspec.ValidationError, TypeError) as exc:
                    future.set_exception(exc)
            return
        if isinstance(message, sig.MeetingsDelta):
            # Listeners always get the whole list: the delta is applied to ours first.
            if self._lobby is None:
                log.warning("ignoring a lobby delta without a lobby list to apply it to")
                return
            for mid in message.removed:
                self._lobby.pop(mid, None)
            for meeting in message.changed:
                self._lobby[meeting.id] = meeting
            self._emit(sig.MeetingsChanged(meetings=list(self._lobby.values())))
            return
        if isinstance(message, sig.MeetingsChanged):
            self._set_lobby(message.meetings)
        self._track(message)
        if isinstance(message, sig.ChatEvent):
            if message.message.seq <= self._last_seq:
                return  # already delivered before a reconnect
            self._last_seq = message.message.seq
        self._emit(message)

    def _track(self, event: sig.ServerEvent) -> None:
        """Keep ``meeting`` and ``participants`` in step with the server."""
        if self.meeting is None or getattr(event, "meeting_id", None) != self.meeting.id:
            return
        if isinstance(event, sig.ParticipantJoined):
            self.participants[event.participant.id] = event.participant
        elif isinstance(event, sig.ParticipantLeft):
            self.participants.pop(event.participant_id, None)
        elif isinstance(event, sig.MediaChanged):
            known = self.participants.get(event.participant_id)
            if known is not None:
                self.participants[event.participant_id] = msgspec.structs.replace(
                    known, camera=event.camera, microphone=event.microphone,
                    screen=event.screen,
                )
        elif isinstance(event, sig.MeetingEnded):
            self._left()

    async def _reconnect(self) -> None:
        self._set_state(ConnectionState.RECONNECTING, "connection lost")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = 0.2
        last_error = "connection lost"
        while not self._closing:
            if loop.time() >= deadline:
                self._set_state(
                    ConnectionState.FAILED,
                    f"could not reconnect within {self.reconnect_timeout:g}s: {last_error}",
                )
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await self._open()
                await self._rejoin()
            except ConnectionFailed as exc:
                last_error = str(exc)
                if "refused us" in last_error:  # e.g. protocol version: retrying cannot help
                    self._set_state(ConnectionState.FAILED, last_error)
                    return
                continue
            except (ConnectionLost, TimeoutError) as exc:
                last_error = f"connection lost again while rejoining: {exc}"
                continue
            if self.state != ConnectionState.CONNECTED:
                self._set_state(ConnectionState.CONNECTED, "reconnected")
            return

    async def _rejoin(self) -> None:
        meeting = self.meeting
        if meeting is None:
            return
        password = self._meeting_password

        def back_in(result: sig.JoinResult) -> None:
            missed = [m for m in result.history if m.seq > self._last_seq]
            complete = result.history_complete or (
                bool(result.history) and result.history[0].seq <= self._last_seq + 1
            )
            self._entered(result, password)
            self._set_state(ConnectionState.CONNECTED, "reconnected")  # usable from here on
            self._emit(Rejoined(result.meeting, result.participants, complete))
            for chat in missed:
                self._emit(sig.ChatEvent(message=chat))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = 0.5
        while True:
            try:
                await self._request(
                    sig.JoinMeeting, sig.JoinResult, hook=back_in, internal=True,
                    meeting_id=meeting.id, password=password,
                )
                return
            except RequestError as exc:
                # rate_limited is someone's guessing (or our own haste), not a verdict on
                # us: wait and ask again, on this same socket, until the deadline.
                if exc.code == sig.ErrorCode.RATE_LIMITED and loop.time() + delay < deadline:
                    log.info("rejoin rate limited; retrying in %gs: %s", delay, exc.message)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                self._left()  # the server said no: the meeting is over for us
                self._emit(RejoinFailed(meeting.id, exc.code, exc.message))
                return
            # ConnectionLost / TimeoutError propagate: the reconnect loop tries again

    def _set_lobby(self, meetings: list[sig.MeetingInfo]) -> None:
        self._lobby = {m.id: m for m in meetings}

    def _entered(self, result: sig.JoinResult, password: str | None) -> None:
        self.meeting = result.meeting
        self.participants = {p.id: p for p in result.participants}
        self.is_creator = result.is_creator
        self.media_grant = result.media
        self._meeting_password = password
        self._last_seq = result.history[-1].seq if result.history else 0

    def _left(self) -> None:
        self.meeting = None
        self.participants = {}
        self.is_creator = False
        self.media_grant = None
        self._meeting_password = None
        self._last_seq = 0

    def _set_state(self, state: ConnectionState, reason: str = "") -> None:
        if state == self.state and not reason:
            return
        self.state = state
        self._emit(StateChanged(state, reason))

    def _emit(self, event: ClientEvent) -> None:
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("event listener failed")
        if self._events.full():
            self._events.get_nowait()  # the oldest goes: a stalled consumer cannot grow memory
            self.events_dropped += 1
        self._events.put_nowait(event)

    def _fail_pending(self, exc: Exception) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
