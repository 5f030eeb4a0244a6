"""Signaling messages of confero's WebSocket protocol (see docs/protocol.md).

Every message is one JSON object in one text frame, with a ``type``. Requests from the
client carry an integer ``id``; the server answers each with ``ok`` (same id, a ``result``)
or ``error`` (same id, a stable ``code`` and a readable ``message``). Events pushed by the
server have no id.

Decoding is done in two steps on purpose: a permissive envelope first (to learn ``type``
and ``id`` even from a message that is otherwise wrong, so the error reply can name the
request), then the strict schema of that type. Every string has a length bound, so the
schema itself rejects oversized fields.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

_T = TypeVar("_T")

PROTOCOL_VERSION: Final = 1

#: Largest frame the server reads as a message; larger ones get ``too_large``.
MAX_MESSAGE_BYTES: Final = 16 * 1024

MAX_NAME_CHARS: Final = 64
MAX_TITLE_CHARS: Final = 200
MAX_CHAT_CHARS: Final = 4000
MAX_PASSWORD_CHARS: Final = 128

RequestId = Annotated[int, Meta(ge=0, le=2**53)]
DisplayName = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Title = Annotated[str, Meta(min_length=1, max_length=MAX_TITLE_CHARS)]
ChatText = Annotated[str, Meta(min_length=1, max_length=MAX_CHAT_CHARS)]
Password = Annotated[str, Meta(max_length=MAX_PASSWORD_CHARS)]
MeetingId = Annotated[str, Meta(pattern=r"^[a-z0-9]{1,32}$")]
#: A resume token is a secret the client keeps across reconnects: the server knows it
#: only by its hash, and uses it to recognise the creator of a meeting.
ResumeToken = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{32,64}$")]
#: E2EE key-exchange blobs: base64 of at most MAX_E2EE_BLOB_BYTES (the server never reads them).
MAX_E2EE_BLOB_BYTES: Final = 256
ParticipantId = Annotated[str, Meta(min_length=1, max_length=64)]
E2eeBlobText = Annotated[
    str, Meta(min_length=4, max_length=(MAX_E2EE_BLOB_BYTES + 2) // 3 * 4,
              pattern=r"^[A-Za-z0-9+/]+={0,2}$")
]
MeetingMode = Literal["auto", "server"]
#: The media path a meeting uses now.
MediaMode = Literal["server", "p2p"]
IceCredential = Annotated[str, Meta(min_length=4, max_length=256, pattern=r"^[A-Za-z0-9+/=_-]+$")]
#: One ICE candidate in SDP attribute form (RFC 8839 ``candidate`` value, without "a=").
IceCandidate = Annotated[str, Meta(min_length=10, max_length=256)]
SrtpKey = Annotated[str, Meta(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9+/=]+$")]
MAX_CANDIDATES: Final = 16
P2pReport = Literal["connected", "failed", "consent_lost", "want_server"]


class ErrorCode(enum.StrEnum):
    """Stable error codes. Clients branch on these, never on the message text."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    VERSION_MISMATCH = "version_mismatch"
    HELLO_REQUIRED = "hello_required"
    ALREADY_GREETED = "already_greeted"
    NOT_FOUND = "not_found"
    MEETING_ENDED = "meeting_ended"
    WRONG_PASSWORD = "wrong_password"
    NOT_CREATOR = "not_creator"
    NOT_IN_MEETING = "not_in_meeting"
    ALREADY_IN_MEETING = "already_in_meeting"
    NAME_TAKEN = "name_taken"
    NOT_E2EE = "not_e2ee"
    INTERNAL = "internal"
    MEETING_FULL = "meeting_full"
    CHAT_QUOTA = "chat_quota"
    STORE_FAILED = "store_failed"


# --------------------------------------------------------------------------- requests


class Request(Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    """Base of every client request; ``id`` is echoed in the reply."""

    id: RequestId


class Hello(Request, tag="hello", frozen=True):
    version: int
    name: DisplayName
    resume_token: ResumeToken | None = None
    #: This client can do peer-to-peer media (ICE, see ``p2p_start``).
    p2p: bool = False


class ListMeetings(Request, tag="list_meetings", frozen=True):
    pass


class CreateMeeting(Request, tag="create_meeting", frozen=True):
    title: Title
    password: Password | None = None
    #: End-to-end encrypted media (SFrame); fixed for the meeting's life.
    e2ee: bool = False
    #: ``auto``: two P2P-capable people talk directly, the server only manages; ``server``:
    #: media always goes through the server.
    mode: MeetingMode = "auto"


class JoinMeeting(Request, tag="join_meeting", frozen=True):
    meeting_id: MeetingId
    password: Password | None = None


class RelayE2eeBlob(Request, tag="e2ee_blob", frozen=True):
    """Relay an opaque key-exchange blob to one participant of our (E2EE) meeting."""

    to: ParticipantId
    blob: E2eeBlobText


class LeaveMeeting(Request, tag="leave_meeting", frozen=True):
    pass


class CancelMeeting(Request, tag="cancel_meeting", frozen=True):
    meeting_id: MeetingId


class SendChat(Request, tag="chat", frozen=True):
    text: ChatText


class Ping(Request, tag="ping", frozen=True):
    pass


class SetMedia(Request, tag="set_media", frozen=True):
    """Announce whether this participant's camera and microphone are on, and whether it
    shares its screen (a second video stream on the granted ``screen_ssrc``)."""

    camera: bool
    microphone: bool
    screen: bool = False
    #: False: forward this participant no video at all (a low-bandwidth mode; nobody
    #: else is told). Omitted by older clients, which keep receiving video.
    receive_video: bool = True


class P2pSignal(Request, tag="p2p_signal", frozen=True):
    """ICE credentials, trickled candidates and this peer's fresh SRTP key for the P2P
    session ``session``; the server relays it to the other peer (event ``p2p_signal``)."""

    session: Annotated[int, Meta(ge=1, le=2**53)]
    ufrag: IceCredential | None = None
    pwd: IceCredential | None = None
    #: base64 SRTP master key+salt this peer protects its P2P media with
    key: SrtpKey | None = None
    candidates: Annotated[list[IceCandidate], Meta(max_length=MAX_CANDIDATES)] = []
    end_of_candidates: bool = False


class P2pState(Request, tag="p2p_state", frozen=True):
    """How the P2P session is going on this side: ICE ``connected``, ``failed``,
    ``consent_lost`` (RFC 7675), or ``want_server`` (this side asks to go back)."""

    session: Annotated[int, Meta(ge=1, le=2**53)]
    state: P2pReport


class MeetingMedia(Request, tag="meeting_media", frozen=True):
    """The server's media counters for the meeting we are in (the proof of P2P)."""


class RaiseHand(Request, tag="raise_hand", frozen=True):
    """Raise or lower this participant's hand (the others see a badge)."""

    raised: bool


ClientRequest = (
    Hello | ListMeetings | CreateMeeting | JoinMeeting | LeaveMeeting | CancelMeeting | SendChat
    | Ping | SetMedia | RaiseHand | P2pSignal | P2pState | MeetingMedia
)

REQUEST_TYPES: Final[dict[str, type[Request]]] = {
    str(cls.__struct_config__.tag): cls
    for cls in (
        Hello, ListMeetings, CreateMeeting, JoinMeeting, LeaveMeeting, CancelMeeting, SendChat,
        Ping, SetMedia, RaiseHand, P2pSignal, P2pState, MeetingMedia,
    )
}
REQUEST_TYPES["e2ee_blob"] = RelayE2eeBlob


# --------------------------------------------------------------------------- shared records


class MeetingInfo(Struct, frozen=True):
    """What the lobby shows of a meeting."""

    id: str
    title: str
    creator: str
    participant_count: int
    has_password: bool
    created_at: float
    #: End-to-end encrypted: the lobby shows a lock; joining needs the E2EE passphrase.
    e2ee: bool = False


class ParticipantInfo(Struct, frozen=True):
    id: str
    name: str
    joined_at: float
    #: SSRCs of this participant's RTP streams: how receivers tell whose media is whose.
    audio_ssrc: int = 0
    video_ssrc: int = 0
    camera: bool = False
    microphone: bool = False
    #: The screen-share stream (issue 12): its SSRC, and whether it is being shared now.
    screen_ssrc: int = 0
    screen: bool = False
    #: The camera's low-resolution copy (simulcast, issue 9): the server forwards each
    #: subscriber either the camera or this stream, whichever its downlink carries; a
    #: receiver shows both in the same tile. 0: the participant sends no copy.
    low_ssrc: int = 0


class ChatMessage(Struct, frozen=True):
    """A chat line as stored and delivered: ``seq`` orders a meeting's chat (1, 2, ...)."""

    meeting_id: str
    seq: int
    sender: str
    sender_id: str
    text: str
    ts: float


# --------------------------------------------------------------------------- results


class HelloResult(Struct, frozen=True):
    participant_id: str
    resume_token: str
    protocol_version: int
    server: str
    heartbeat_interval: float


class MeetingsResult(Struct, frozen=True):
    meetings: list[MeetingInfo]


class MediaGrant(Struct, frozen=True):
    """How to reach the server's media port, and this participant's SRTP keys and SSRCs."""

    port: int
    srtp_profile: str
    key_up: str  # base64: protects client -> server
    key_down: str  # base64: protects server -> client
    audio_ssrc: int
    video_ssrc: int
    #: SSRC of the mixed audio the server sends this participant.
    mix_ssrc: int
    #: Where to send media; empty means the host of the signaling URL.
    host: str = ""
    #: SSRC of this participant's second video stream, its shared screen (issue 12).
    screen_ssrc: int = 0
    #: SSRC for a low-resolution copy of the camera (simulcast, issue 9); 0: none wanted.
    low_ssrc: int = 0


class JoinResult(Struct, frozen=True):
    meeting: MeetingInfo
    participants: list[ParticipantInfo]
    history: list[ChatMessage]
    history_complete: bool
    is_creator: bool
    media: MediaGrant | None = None
    #: the meeting's mode setting and the media path it uses now
    mode_setting: MeetingMode = "auto"
    mode: MediaMode = "server"


class MeetingMediaResult(Struct, frozen=True):
    """Media the server received from and forwarded to this meeting (RTP, bytes before
    SRTP), mixed audio it sent, and the meeting's current mode."""

    meeting_id: str
    mode: MediaMode
    received_packets: int = 0
    received_bytes: int = 0
    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    mixed_packets: int = 0
    mixed_bytes: int = 0


class ChatResult(Struct, frozen=True):
    seq: int
    ts: float


class Empty(Struct, frozen=True):
    pass


# --------------------------------------------------------------------------- server messages


class ServerMessage(Struct, tag_field="type", frozen=True):
    pass


class Ok(ServerMessage, tag="ok", frozen=True):
    id: int
    result: Any


class Error(ServerMessage, tag="error", frozen=True):
    id: int | None
    #: One of :class:`ErrorCode`; typed ``str`` so that an older client still parses a code
    #: that a newer server introduces.
    code: str
    message: str


class ParticipantJoined(ServerMessage, tag="participant_joined", frozen=True):
    meeting_id: str
    participant: ParticipantInfo


LeaveReason = Literal["left", "disconnected", "replaced"]


class ParticipantLeft(ServerMessage, tag="participant_left", frozen=True):
    meeting_id: str
    participant_id: str
    name: str
    reason: LeaveReason


EndReason = Literal["cancelled", "empty"]


class MeetingEnded(ServerMessage, tag="meeting_ended", frozen=True):
    meeting_id: str
    reason: EndReason
    message: str


class MeetingsChanged(ServerMessage, tag="meetings_changed", frozen=True):
    meetings: list[MeetingInfo]


class MeetingsDelta(ServerMessage, tag="meetings_delta", frozen=True):
    """What changed in the lobby since the previous lobby event: ``changed`` are whole
    records to insert or replace (new ones go last), ``removed`` ids to drop."""

    changed: list[MeetingInfo]
    removed: list[str]


class ChatEvent(ServerMessage, tag="chat", frozen=True):
    message: ChatMessage


class E2eeBlobReceived(ServerMessage, tag="e2ee_blob", frozen=True):
    """A key-exchange blob another participant of the meeting sent us (opaque, base64)."""

    meeting_id: str
    from_: str = msgspec.field(name="from")
    blob: str = ""


class MediaChanged(ServerMessage, tag="media_changed", frozen=True):
    meeting_id: str
    participant_id: str
    camera: bool
    microphone: bool
    screen: bool = False


class P2pStart(ServerMessage, tag="p2p_start", frozen=True):
    """Start ICE with ``peer_id`` for P2P session ``session`` (``controlling``: this side
    nominates, RFC 8445). Send credentials, candidates and a fresh key with ``p2p_signal``."""

    meeting_id: str
    session: int
    peer_id: str
    controlling: bool
    #: a TURN relay this peer may use (``turn:host:port``) and its short-lived credentials
    turn_url: str = ""
    turn_username: str = ""
    turn_password: str = ""


class P2pSignalEvent(ServerMessage, tag="p2p_signal", frozen=True):
    """The other peer's ``p2p_signal``, relayed."""

    session: int
    from_id: str
    ufrag: str | None = None
    pwd: str | None = None
    key: str | None = None
    candidates: list[str] = []
    end_of_candidates: bool = False


class P2pStop(ServerMessage, tag="p2p_stop", frozen=True):
    """Abandon P2P session ``session`` (close its ICE); media stays on the server."""

    session: int
    reason: str


class ModeChanged(ServerMessage, tag="mode_changed", frozen=True):
    """The meeting's media path changed: ``p2p`` (peers send to each other, the server
    forwards nothing) or ``server``; ``reason`` says why."""

    meeting_id: str
    mode: MediaMode
    reason: str
    session: int = 0
    #: back on the server after P2P: fresh SRTP keys for the server path (same port and
    #: SSRCs). An SRTP receiver that missed more than 32768 packets of a stream (about six
    #: minutes of P2P video) would refuse it under the old keys.
    media: MediaGrant | None = None
class HandChanged(ServerMessage, tag="hand_changed", frozen=True):
    meeting_id: str
    participant_id: str
    raised: bool


ServerEvent = (
    ParticipantJoined | ParticipantLeft | MeetingEnded | MeetingsChanged | ChatEvent
    | MediaChanged | MeetingsDelta | HandChanged | E2eeBlobReceived | P2pStart
    | P2pSignalEvent | P2pStop | ModeChanged
)
AnyServerMessage = Ok | Error | ServerEvent


# --------------------------------------------------------------------------- codec


class ProtocolError(Exception):
    """A message that cannot be accepted; carries the reply to send."""

    def __init__(self, code: ErrorCode, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def to_error(self) -> Error:
        return Error(id=self.request_id, code=self.code, message=self.message)


class _Envelope(Struct):
    type: Any = None
    id: Any = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_request_decoders = {tag: msgspec.json.Decoder(cls) for tag, cls in REQUEST_TYPES.items()}
_encoder = msgspec.json.Encoder()


def decode_request(data: bytes | str) -> Request:
    """Parse one client frame or raise :class:`ProtocolError` saying exactly what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            ErrorCode.TOO_LARGE,
            f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes",
        )
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"invalid JSON: {exc}") from None
    except RecursionError:  # msgspec's own depth limit: a few hundred levels, never valid here
        raise ProtocolError(ErrorCode.BAD_JSON, "invalid JSON: nested too deeply") from None
    request_id = envelope.id if _is_request_id(envelope.id) else None
    if not isinstance(envelope.type, str):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "a message needs a string field 'type'", request_id
        )
    decoder = _request_decoders.get(envelope.type)
    if decoder is None:
        known = ", ".join(sorted(_request_decoders))
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {envelope.type[:40]!r}; known types: {known}",
            request_id,
        )
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_FIELD, str(exc), request_id) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_JSON, "invalid JSON: nested too deeply",
                            request_id) from None


def _is_request_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**53


def encode(message: Struct) -> bytes:
    return _encoder.encode(message)


_server_decoder = msgspec.json.Decoder(AnyServerMessage)


def decode_server_message(data: bytes | str) -> AnyServerMessage:
    """Client side: parse a server frame (raises ``msgspec.DecodeError`` on garbage)."""
    message: AnyServerMessage = _server_decoder.decode(data)
    return message


def convert_result(result: Any, kind: type[_T]) -> _T:
    """Turn the loosely typed ``result`` of an ``ok`` into its schema."""
    return msgspec.convert(result, kind)
