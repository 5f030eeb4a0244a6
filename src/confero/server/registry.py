"""The meeting registry: every meeting's life cycle, with no I/O.

Each operation takes the current time and either raises :class:`RegistryError` (a stable
error code and a sentence for the user) or returns the :class:`Notice` list that the shell
must deliver. Nothing here knows about sockets, the database or the wall clock, so the
whole life cycle is unit-tested with a fake clock.

Life cycle of a meeting::

    create --> OPEN --(cancel by creator)-------------------> ENDED (cancelled)
                 |---(last participant *leaves*)------------> ENDED (empty)
                 '---(last participant *disconnects*)--> OPEN, empty; after ``empty_grace``
                     seconds with nobody back --------------> ENDED (empty)

The grace period exists because a dropped connection is not a decision to leave: the
client reconnects and rejoins, and a one-person meeting should survive a network blip or a
server restart. An explicit ``leave`` ends an emptied meeting at once.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confero.protocol.signaling import (
    ChatEvent,
    ChatMessage,
    EndReason,
    ErrorCode,
    HandChanged,
    LeaveReason,
    MediaChanged,
    MeetingEnded,
    MeetingInfo,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    ServerEvent,
)
from confero.server.names import skeleton
from confero.server.passwords import verify_password

_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def new_meeting_id() -> str:
    """Ten characters without look-alikes (no 0/o, 1/l/i): easy to read out and paste."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


class RegistryError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Notice:
    """An event for a set of participants (by participant id)."""

    recipients: tuple[str, ...]
    event: ServerEvent


@dataclass(slots=True)
class Participant:
    id: str
    name: str
    token_hash: bytes
    joined_at: float
    audio_ssrc: int = 0
    video_ssrc: int = 0
    camera: bool = False
    microphone: bool = False
    screen_ssrc: int = 0
    screen: bool = False
    low_ssrc: int = 0

    def info(self) -> ParticipantInfo:
        return ParticipantInfo(
            id=self.id,
            name=self.name,
            joined_at=self.joined_at,
            audio_ssrc=self.audio_ssrc,
            video_ssrc=self.video_ssrc,
            camera=self.camera,
            microphone=self.microphone,
            screen_ssrc=self.screen_ssrc,
            screen=self.screen,
            low_ssrc=self.low_ssrc,
        )

    def enter(self, now: float) -> None:
        """Every meeting starts with camera and microphone off until announced."""
        self.joined_at = now
        self.camera = self.microphone = self.screen = False


@dataclass(slots=True)
class Meeting:
    id: str
    title: str
    creator_name: str
    creator_token_hash: bytes
    password_hash: str | None
    created_at: float
    participants: dict[str, Participant] = field(default_factory=dict)
    #: Highest chat sequence number handed out so far.
    last_seq: int = 0
    #: When the meeting became empty through a disconnect (None while someone is in it).
    empty_since: float | None = None
    #: End-to-end encrypted media: the server relays key blobs and forwards, never mixes.
    e2ee: bool = False
    #: Resume-token hashes that got in (the creator's, and every password-checked join):
    #: their rejoin skips the password, so nobody's guessing can lock a member out.
    admitted: dict[bytes, None] = field(default_factory=dict)

    def admit(self, token_hash: bytes) -> None:
        self.admitted[token_hash] = None
        while len(self.admitted) > MAX_ADMITTED:
            del self.admitted[next(iter(self.admitted))]

    def info(self) -> MeetingInfo:
        return MeetingInfo(
            id=self.id,
            title=self.title,
            creator=self.creator_name,
            participant_count=len(self.participants),
            has_password=self.password_hash is not None,
            created_at=self.created_at,
            e2ee=self.e2ee,
        )

    def is_creator(self, token_hash: bytes) -> bool:
        return hmac.compare_digest(self.creator_token_hash, token_hash)


#: Remembered admitted tokens per meeting (oldest forgotten first).
MAX_ADMITTED = 1000

_END_MESSAGES: dict[EndReason, str] = {
    "cancelled": "the meeting was ended for everyone by its creator",
    "empty": "the meeting ended because everyone left",
}


class MeetingRegistry:
    """All open meetings and who is in which; see the module docstring for the life cycle."""

    def __init__(
        self,
        *,
        empty_grace: float = 30.0,
        remember_ended: int = 10_000,
        new_id: Callable[[], str] = new_meeting_id,
        max_participants: int = 50,
        wall_offset: float = 0.0,
    ) -> None:
        """``now`` in every method is monotonic seconds; ``now + wall_offset`` is the
        Unix time stamped on what people see and what is stored (creation, chat, joins)."""
        self.empty_grace = empty_grace
        self.wall_offset = wall_offset
        self.max_participants = max_participants
        self._meetings: dict[str, Meeting] = {}
        self._where: dict[str, str] = {}  # participant id -> meeting id
        # Ended meetings are kept (bounded) only to say "ended" rather than "not found".
        self._ended: OrderedDict[str, EndReason] = OrderedDict()
        self._remember_ended = remember_ended
        self._new_id = new_id
        #: Bumped on every change the lobby can see (list, counts); the shell compares it.
        self.lobby_version = 0

    # ------------------------------------------------------------------ queries

    def open_meetings(self) -> list[MeetingInfo]:
        return [m.info() for m in self._meetings.values()]

    def meeting(self, meeting_id: str) -> Meeting | None:
        return self._meetings.get(meeting_id)

    def meeting_of(self, participant_id: str) -> Meeting | None:
        meeting_id = self._where.get(participant_id)
        return None if meeting_id is None else self._meetings[meeting_id]

    def participant_count(self) -> int:
        return len(self._where)

    def ended_reason(self, meeting_id: str) -> EndReason | None:
        return self._ended.get(meeting_id)

    # ------------------------------------------------------------------ restore

    def restore(self, meeting: Meeting, now: float) -> None:
        """Take back an open meeting from the store after a restart: empty, in its grace."""
        meeting.participants.clear()
        meeting.empty_since = now
        meeting.admit(meeting.creator_token_hash)
        self._meetings[meeting.id] = meeting
        self.lobby_version += 1

    def restore_ended(self, items: Iterable[tuple[str, EndReason]]) -> None:
        for meeting_id, reason in items:
            self._remember_end(meeting_id, reason)

    # ------------------------------------------------------------------ operations

    def create(
        self,
        participant: Participant,
        title: str,
        password_hash: str | None,
        now: float,
        *,
        e2ee: bool = False,
    ) -> tuple[Meeting, list[Notice]]:
        self._require_not_in_meeting(participant.id)
        meeting_id = self._new_id()
        while meeting_id in self._meetings or meeting_id in self._ended:
            meeting_id = self._new_id()
        meeting = Meeting(
            id=meeting_id,
            title=title,
            creator_name=participant.name,
            creator_token_hash=participant.token_hash,
            password_hash=password_hash,
            created_at=now + self.wall_offset,
            e2ee=e2ee,
        )
        meeting.admit(participant.token_hash)
        self._meetings[meeting_id] = meeting
        participant.enter(now + self.wall_offset)
        meeting.participants[participant.id] = participant
        self._where[participant.id] = meeting_id
        self.lobby_version += 1
        return meeting, []

    def discard(self, meeting_id: str) -> None:
        """Undo a ``create`` whose meeting could not be stored: no trace is left."""
        meeting = self._meetings.pop(meeting_id, None)
        if meeting is None:
            return
        for pid in meeting.participants:
            self._where.pop(pid, None)
        meeting.participants.clear()
        self.lobby_version += 1

    def is_admitted(self, meeting_id: str, token_hash: bytes) -> bool:
        meeting = self._meetings.get(meeting_id)
        return meeting is not None and token_hash in meeting.admitted

    def join(
        self, participant: Participant, meeting_id: str, password: str | None, now: float
    ) -> tuple[Meeting, list[Notice]]:
        self._require_not_in_meeting(participant.id)
        meeting = self._require_open(meeting_id)
        if len(meeting.participants) >= self.max_participants:
            raise RegistryError(
                ErrorCode.MEETING_FULL,
                f"this meeting is full (at most {self.max_participants} participants)",
            )
        if meeting.password_hash is not None and participant.token_hash not in meeting.admitted:
            if not password:
                raise RegistryError(
                    ErrorCode.WRONG_PASSWORD, "this meeting needs a password to join"
                )
            if not verify_password(password, meeting.password_hash):
                raise RegistryError(ErrorCode.WRONG_PASSWORD, "wrong password for this meeting")
        wanted = skeleton(participant.name)
        for other in meeting.participants.values():
            if skeleton(other.name) == wanted:
                raise RegistryError(
                    ErrorCode.NAME_TAKEN,
                    f"someone called {other.name!r} is already in this meeting (or a name "
                    "that looks the same); choose another display name",
                )
        meeting.admit(participant.token_hash)
        participant.enter(now + self.wall_offset)
        notice = Notice(
            tuple(meeting.participants),
            ParticipantJoined(meeting_id=meeting.id, participant=participant.info()),
        )
        meeting.participants[participant.id] = participant
        meeting.empty_since = None
        self._where[participant.id] = meeting.id
        self.lobby_version += 1
        return meeting, [notice]

    def leave(self, participant_id: str, reason: LeaveReason, now: float) -> list[Notice]:
        """Remove a participant from its meeting; ``reason`` decides what an empty room does."""
        meeting = self.meeting_of(participant_id)
        if meeting is None:
            raise RegistryError(ErrorCode.NOT_IN_MEETING, "you are not in a meeting")
        participant = meeting.participants.pop(participant_id)
        del self._where[participant_id]
        self.lobby_version += 1
        notices = [
            Notice(
                tuple(meeting.participants),
                ParticipantLeft(
                    meeting_id=meeting.id,
                    participant_id=participant.id,
                    name=participant.name,
                    reason=reason,
                ),
            )
        ]
        if not meeting.participants:
            if reason == "left":
                notices += self._end(meeting, "empty", ())
            else:
                meeting.empty_since = now
        return notices

    def cancel(self, participant: Participant, meeting_id: str, now: float) -> list[Notice]:
        meeting = self._require_open(meeting_id)
        if not meeting.is_creator(participant.token_hash):
            raise RegistryError(
                ErrorCode.NOT_CREATOR, "only the creator of a meeting can end it for everyone"
            )
        removed = tuple(meeting.participants)
        for pid in removed:
            del self._where[pid]
        meeting.participants.clear()
        self.lobby_version += 1
        return self._end(meeting, "cancelled", removed)

    def chat(
        self, participant_id: str, sender_name: str, text: str, now: float
    ) -> tuple[ChatMessage, list[Notice]]:
        meeting = self.meeting_of(participant_id)
        if meeting is None:
            raise RegistryError(
                ErrorCode.NOT_IN_MEETING, "join a meeting before sending chat messages"
            )
        meeting.last_seq += 1
        message = ChatMessage(
            meeting_id=meeting.id,
            seq=meeting.last_seq,
            sender=sender_name,
            sender_id=participant_id,
            text=text,
            ts=now + self.wall_offset,
        )
        return message, [Notice(tuple(meeting.participants), ChatEvent(message=message))]

    def retract_chat(self, message: ChatMessage) -> None:
        """Undo a ``chat`` whose message could not be stored, so seq numbers stay dense."""
        meeting = self._meetings.get(message.meeting_id)
        if meeting is not None and meeting.last_seq == message.seq:
            meeting.last_seq -= 1

    def set_media(self, participant: Participant, camera: bool, microphone: bool,
                  screen: bool = False) -> list[Notice]:
        meeting = self.meeting_of(participant.id)
        if meeting is None:
            raise RegistryError(
                ErrorCode.NOT_IN_MEETING, "join a meeting before turning camera or microphone on"
            )
        screen = screen and participant.screen_ssrc != 0  # no stream granted, no share
        if (participant.camera, participant.microphone, participant.screen) == (
                camera, microphone, screen):
            return []
        participant.camera, participant.microphone = camera, microphone
        participant.screen = screen
        others = tuple(pid for pid in meeting.participants if pid != participant.id)
        event = MediaChanged(
            meeting_id=meeting.id, participant_id=participant.id, camera=camera,
            microphone=microphone, screen=screen,
        )
        return [Notice(others, event)]

    def raise_hand(self, participant: Participant, raised: bool) -> list[Notice]:
        """Tell the others; not stored (someone joining later does not see older hands)."""
        meeting = self.meeting_of(participant.id)
        if meeting is None:
            raise RegistryError(ErrorCode.NOT_IN_MEETING, "join a meeting before raising a hand")
        others = tuple(pid for pid in meeting.participants if pid != participant.id)
        event = HandChanged(meeting_id=meeting.id, participant_id=participant.id, raised=raised)
        return [Notice(others, event)]

    def tick(self, now: float) -> list[Notice]:
        """End the meetings whose grace ran out with nobody back."""
        notices: list[Notice] = []
        expired = [
            m
            for m in self._meetings.values()
            if m.empty_since is not None
            and not m.participants
            and now - m.empty_since >= self.empty_grace
        ]
        for meeting in expired:
            self.lobby_version += 1
            notices += self._end(meeting, "empty", ())
        return notices

    # ------------------------------------------------------------------ internals

    def _end(
        self, meeting: Meeting, reason: EndReason, recipients: tuple[str, ...]
    ) -> list[Notice]:
        del self._meetings[meeting.id]
        self._remember_end(meeting.id, reason)
        event = MeetingEnded(meeting_id=meeting.id, reason=reason, message=_END_MESSAGES[reason])
        return [Notice(recipients, event)]

    def _remember_end(self, meeting_id: str, reason: EndReason) -> None:
        self._ended[meeting_id] = reason
        self._ended.move_to_end(meeting_id)
        while len(self._ended) > self._remember_ended:
            self._ended.popitem(last=False)

    def _require_not_in_meeting(self, participant_id: str) -> None:
        if participant_id in self._where:
            raise RegistryError(
                ErrorCode.ALREADY_IN_MEETING,
                "you are already in a meeting; leave it first",
            )

    def _require_open(self, meeting_id: str) -> Meeting:
        meeting = self._meetings.get(meeting_id)
        if meeting is not None:
            return meeting
        reason = self._ended.get(meeting_id)
        if reason == "cancelled":
            raise RegistryError(
                ErrorCode.MEETING_ENDED, f"meeting {meeting_id} was cancelled by its creator"
            )
        if reason is not None:
            raise RegistryError(ErrorCode.MEETING_ENDED, f"meeting {meeting_id} has ended")
        raise RegistryError(ErrorCode.NOT_FOUND, f"no meeting with id {meeting_id!r}")
