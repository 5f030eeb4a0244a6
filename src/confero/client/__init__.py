"""The public Python API of confero: see :class:`Client`."""

from confero.client.api import (
    Client,
    ClientEvent,
    ConfigError,
    ConnectionFailed,
    ConnectionLost,
    ConnectionState,
    Rejoined,
    RejoinFailed,
    RequestError,
    StateChanged,
)
from confero.protocol.signaling import (
    ChatEvent,
    ChatMessage,
    ErrorCode,
    JoinResult,
    MeetingEnded,
    MeetingInfo,
    MeetingsChanged,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
)

__all__ = [
    "ChatEvent",
    "ChatMessage",
    "Client",
    "ClientEvent",
    "ConfigError",
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionState",
    "ErrorCode",
    "JoinResult",
    "MeetingEnded",
    "MeetingInfo",
    "MeetingsChanged",
    "ParticipantInfo",
    "ParticipantJoined",
    "ParticipantLeft",
    "RejoinFailed",
    "Rejoined",
    "RequestError",
    "StateChanged",
]
