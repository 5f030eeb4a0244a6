"""The meeting life cycle, sans-I/O, with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from confero.protocol import signaling as sig
from confero.protocol.signaling import ErrorCode
from confero.server.passwords import hash_password
from confero.server.registry import MeetingRegistry, Participant, RegistryError


def person(name: str, token: bytes | None = None) -> Participant:
    return Participant(id=f"p-{name}", name=name, token_hash=token or name.encode(), joined_at=0)


@pytest.fixture
def registry() -> MeetingRegistry:
    counter = itertools.count(1)
    return MeetingRegistry(empty_grace=10.0, new_id=lambda: f"m{next(counter)}")


def events(notices: list, kind: type) -> list:  # type: ignore[type-arg]
    return [n for n in notices if isinstance(n.event, kind)]


def test_create_puts_creator_in_the_open_meeting(registry: MeetingRegistry) -> None:
    alice = person("alice")
    meeting, notices = registry.create(alice, "Standup", None, now=100.0)
    assert notices == []
    assert registry.meeting_of("p-alice") is meeting
    [info] = registry.open_meetings()
    assert (info.id, info.title, info.creator, info.participant_count) == (
        meeting.id, "Standup", "alice", 1
    )
    assert info.created_at == 100.0 and not info.has_password


def test_join_notifies_those_already_there_and_not_the_joiner(registry: MeetingRegistry) -> None:
    meeting, _ = registry.create(person("alice"), "t", None, 0)
    _, notices = registry.join(person("bob"), meeting.id, None, 1)
    [notice] = notices
    assert notice.recipients == ("p-alice",)
    assert isinstance(notice.event, sig.ParticipantJoined)
    assert notice.event.participant.name == "bob"
    _, notices = registry.join(person("carol"), meeting.id, None, 2)
    assert set(notices[0].recipients) == {"p-alice", "p-bob"}
    assert registry.open_meetings()[0].participant_count == 3


def test_leave_tells_the_others_and_last_leave_ends_the_meeting(
    registry: MeetingRegistry,
) -> None:
    meeting, _ = registry.create(person("alice"), "t", None, 0)
    registry.join(person("bob"), meeting.id, None, 1)
    notices = registry.leave("p-alice", "left", 2)
    [left] = notices
    assert left.recipients == ("p-bob",)
    assert isinstance(left.event, sig.ParticipantLeft) and left.event.reason == "left"
    assert registry.open_meetings()[0].participant_count == 1
    notices = registry.leave("p-bob", "left", 3)
    [ended] = events(notices, sig.MeetingEnded)
    assert ended.event.reason == "empty"
    assert registry.open_meetings() == []
    with pytest.raises(RegistryError) as err:
        registry.join(person("dave"), meeting.id, None, 4)
    assert err.value.code == ErrorCode.MEETING_ENDED


def test_cancel_removes_everyone_tells_them_why_and_blocks_joining(
    registry: MeetingRegistry,
) -> None:
    alice, bob, carol = person("alice"), person("bob"), person("carol")
    meeting, _ = registry.create(alice, "t", None, 0)
    registry.join(bob, meeting.id, None, 1)
    registry.join(carol, meeting.id, None, 1)
    [notice] = registry.cancel(alice, meeting.id, 2)
    assert set(notice.recipients) == {"p-alice", "p-bob", "p-carol"}
    assert isinstance(notice.event, sig.MeetingEnded)
    assert notice.event.reason == "cancelled" and "creator" in notice.event.message
    assert registry.meeting_of("p-bob") is None and registry.participant_count() == 0
    with pytest.raises(RegistryError) as err:
        registry.join(person("dave"), meeting.id, None, 3)
    assert err.value.code == ErrorCode.MEETING_ENDED and "cancelled" in err.value.message
    # the people removed are free to do something else
    registry.create(bob, "next", None, 4)


def test_only_the_creator_may_cancel(registry: MeetingRegistry) -> None:
    meeting, _ = registry.create(person("alice"), "t", None, 0)
    bob = person("bob")
    registry.join(bob, meeting.id, None, 1)
    with pytest.raises(RegistryError) as err:
        registry.cancel(bob, meeting.id, 2)
    assert err.value.code == ErrorCode.NOT_CREATOR
    assert registry.open_meetings()[0].participant_count == 2
    # the creator is recognised by token, even from outside the meeting / a new participant id
    returning_alice = Participant(id="p-new", name="alice", token_hash=b"alice", joined_at=0)
    registry.leave("p-alice", "left", 3)
    registry.cancel(returning_alice, meeting.id, 4)
    assert registry.open_meetings() == []


def test_wrong_state_operations_are_refused_with_codes(registry: MeetingRegistry) -> None:
    alice = person("alice")
    with pytest.raises(RegistryError) as err:
        registry.join(alice, "nope", None, 0)
    assert err.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(RegistryError) as err:
        registry.leave("p-alice", "left", 0)
    assert err.value.code == ErrorCode.NOT_IN_MEETING
    with pytest.raises(RegistryError) as err:
        registry.chat("p-alice", "alice", "hi", 0)
    assert err.value.code == ErrorCode.NOT_IN_MEETING
    with pytest.raises(RegistryError) as err:
        registry.cancel(alice, "nope", 0)
    assert err.value.code == ErrorCode.NOT_FOUND
    meeting, _ = registry.create(alice, "t", None, 0)
    with pytest.raises(RegistryError) as err:
        registry.create(alice, "again", None, 0)
    assert err.value.code == ErrorCode.ALREADY_IN_MEETING
    with pytest.raises(RegistryError) as err:
        registry.join(alice, meeting.id, None, 0)
    assert err.value.code == ErrorCode.ALREADY_IN_MEETING


def test_display_names_are_unique_within_a_meeting_ignoring_case(
    registry: MeetingRegistry,
) -> None:
    meeting, _ = registry.create(person("Alice"), "t", None, 0)
    impostor = Participant(id="p-x", name="alice", token_hash=b"x", joined_at=0)
    with pytest.raises(RegistryError) as err:
        registry.join(impostor, meeting.id, None, 1)
    assert err.value.code == ErrorCode.NAME_TAKEN
    # the same name is fine in another meeting
    registry.create(impostor, "other", None, 1)


def test_password_protected_meeting(registry: MeetingRegistry) -> None:
    meeting, _ = registry.create(person("alice"), "t", hash_password("s3cret"), 0)
    assert registry.open_meetings()[0].has_password
    for attempt in (None, "", "wrong"):
        with pytest.raises(RegistryError) as err:
            registry.join(person("bob"), meeting.id, attempt, 1)
        assert err.value.code == ErrorCode.WRONG_PASSWORD
    registry.join(person("bob"), meeting.id, "s3cret", 1)


def test_disconnect_of_the_last_participant_leaves_a_grace_period(
    registry: MeetingRegistry,
) -> None:
    meeting, _ = registry.create(person("alice"), "t", None, 0)
    notices = registry.leave("p-alice", "disconnected", 100)
    assert events(notices, sig.MeetingEnded) == []
    assert registry.tick(109.9) == []
    # someone comes back within the grace: the meeting lives on
    registry.join(person("alice"), meeting.id, None, 105)
    assert registry.tick(200) == []
    registry.leave("p-alice", "disconnected", 300)
    [ended] = registry.tick(310)
    assert isinstance(ended.event, sig.MeetingEnded) and ended.event.reason == "empty"
    assert ended.recipients == ()
    assert registry.open_meetings() == []


def test_chat_sequence_is_per_meeting_and_reaches_only_that_meeting(
    registry: MeetingRegistry,
) -> None:
    m1, _ = registry.create(person("alice"), "one", None, 0)
    registry.create(person("bob"), "two", None, 0)
    registry.join(person("carol"), m1.id, None, 0)
    first, [n1] = registry.chat("p-alice", "alice", "hi", 1)
    second, [n2] = registry.chat("p-carol", "carol", "hey", 2)
    other, [n3] = registry.chat("p-bob", "bob", "alone", 3)
    assert (first.seq, second.seq, other.seq) == (1, 2, 1)
    assert set(n1.recipients) == set(n2.recipients) == {"p-alice", "p-carol"}
    assert n3.recipients == ("p-bob",)
    assert (second.sender, second.sender_id, second.ts, second.meeting_id) == (
        "carol", "p-carol", 2, m1.id
    )


def test_lobby_version_moves_on_every_visible_change(registry: MeetingRegistry) -> None:
    seen = [registry.lobby_version]

    def changed() -> bool:
        seen.append(registry.lobby_version)
        return seen[-1] != seen[-2]

    meeting, _ = registry.create(person("alice"), "t", None, 0)
    assert changed()
    registry.chat("p-alice", "alice", "x", 0)
    assert not changed()
    registry.join(person("bob"), meeting.id, None, 0)
    assert changed()
    registry.leave("p-bob", "left", 0)
    assert changed()
    registry.cancel(person("alice"), meeting.id, 0)
    assert changed()


def test_ended_meetings_are_remembered_within_a_bound() -> None:
    counter = itertools.count(1)
    registry = MeetingRegistry(remember_ended=3, new_id=lambda: f"m{next(counter)}")
    for i in range(5):
        p = person(f"u{i}")
        registry.create(p, "t", None, 0)
        registry.leave(p.id, "left", 0)
    assert registry.ended_reason("m1") is None  # forgotten: now plain "not found"
    assert registry.ended_reason("m5") == "empty"


def test_durations_run_on_the_monotonic_clock_and_stamps_on_the_wall_clock() -> None:
    """``now`` is monotonic (a wall-clock jump must not end a meeting early or late);
    what people see and what is stored is stamped with ``now + wall_offset``."""
    wall = 1_795_000_000.0
    registry = MeetingRegistry(empty_grace=10.0, wall_offset=wall)
    alice = person("alice")
    registry.create(alice, "t", None, now=5.0)
    assert registry.open_meetings()[0].created_at == wall + 5.0
    message, _ = registry.chat("p-alice", "alice", "hi", now=7.0)
    assert message.ts == wall + 7.0
    registry.leave("p-alice", "disconnected", now=8.0)
    assert registry.tick(17.9) == []  # 9.9 s of monotonic time: still in its grace
    [ended] = registry.tick(18.0)
    assert isinstance(ended.event, sig.MeetingEnded)
