"""SignalingCore driven frame by frame with a fake clock and an in-memory SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from confero.protocol.signaling import MAX_MESSAGE_BYTES, PROTOCOL_VERSION
from confero.server.core import CLOSE_REPLACED, Close, CoreSettings, Send, SignalingCore
from confero.server.registry import MeetingRegistry
from confero.server.store import Store


class Harness:
    """Feeds frames into a core and sorts what comes out by connection."""

    def __init__(self, store: Store | None = None, **settings: Any) -> None:
        self.now = 1000.0
        self.store = store or Store(":memory:")
        self.core = SignalingCore(
            MeetingRegistry(empty_grace=5.0), self.store, CoreSettings(**settings)
        )
        self.inbox: dict[int, list[dict[str, Any]]] = {}
        self.closed: dict[int, Close] = {}
        self._ids = 1000  # above the ids that raw test frames use

    def connect(self, name: str | None = None, token: str | None = None) -> int:
        conn = self.core.open_connection(self.now)
        self.inbox[conn] = []
        if name is not None:
            fields = {"version": PROTOCOL_VERSION, "name": name}
            if token:
                fields["resume_token"] = token
            reply = self.request(conn, "hello", **fields)
            assert reply["type"] == "ok", reply
        return conn

    def send_raw(self, conn: int, data: bytes | str) -> None:
        self._collect(self.core.handle(conn, data, self.now))

    def request(self, conn: int, kind: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        self.send_raw(conn, json.dumps({"type": kind, "id": self._ids, **fields}))
        return self.reply(conn, self._ids)

    def reply(self, conn: int, request_id: int) -> dict[str, Any]:
        for message in self.inbox[conn]:
            if message.get("id") == request_id and message["type"] in ("ok", "error"):
                return message
        raise AssertionError(f"no reply to {request_id} on {conn}: {self.inbox[conn]}")

    def disconnect(self, conn: int) -> None:
        self._collect(self.core.close_connection(conn, self.now))

    def tick(self) -> None:
        self._collect(self.core.tick(self.now))

    def events(self, conn: int, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.inbox[conn] if m["type"] == kind]

    def _collect(self, actions: list[Send | Close]) -> None:
        for action in actions:
            if isinstance(action, Send):
                for conn in action.conn_ids:
                    self.inbox[conn].append(json.loads(action.data))
            else:
                self.closed[action.conn_id] = action


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error", reply
    assert reply["message"]
    return str(reply["code"])


def test_hello_first_then_everything_works() -> None:
    h = Harness()
    conn = h.connect()
    assert error_code(h.request(conn, "list_meetings")) == "hello_required"
    ok = h.request(conn, "hello", version=PROTOCOL_VERSION, name="  alice ")
    assert ok["type"] == "ok" and ok["result"]["participant_id"]
    assert len(ok["result"]["resume_token"]) >= 32
    assert error_code(h.request(conn, "hello", version=1, name="x")) == "already_greeted"
    assert h.request(conn, "list_meetings")["result"] == {"meetings": []}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "bad_message"),
        (b'{"id": 1}', "bad_message"),
        (b'{"type": 7, "id": 1}', "bad_message"),
        (b'{"type": "dance", "id": 1}', "unknown_type"),
        (b'{"type": "chat", "id": 1}', "invalid_field"),
        (b'{"type": "chat", "id": 1, "text": 5}', "invalid_field"),
        (b'{"type": "chat", "id": "x", "text": "hi"}', "invalid_field"),
        (b'{"type": "hello", "id": 1, "version": 1, "name": "a", "admin": true}',
         "invalid_field"),
        (b'{"type": "hello", "id": 1, "version": 1, "name": "a\\u0007b"}', "invalid_field"),
        (b'{"type": "hello", "id": 1, "version": 1, "name": "   "}', "invalid_field"),
        (b'{"type": "hello", "id": 1, "version": 99, "name": "a"}', "version_mismatch"),
        (b'\xff\xfe', "bad_json"),
        (b'{"type": "chat", "id": 1, "text": "' + b"x" * MAX_MESSAGE_BYTES + b'"}', "too_large"),
    ],
)
def test_bad_frames_get_a_clear_error_and_the_connection_lives(frame: bytes, code: str) -> None:
    h = Harness()
    conn = h.connect()
    h.send_raw(conn, frame)
    [reply] = h.inbox[conn]
    assert error_code(reply) == code
    assert conn not in h.closed
    assert h.request(conn, "hello", version=PROTOCOL_VERSION, name="ok")["type"] == "ok"


def test_error_replies_carry_the_request_id_when_it_is_readable() -> None:
    h = Harness()
    conn = h.connect("alice")
    h.send_raw(conn, json.dumps({"type": "join_meeting", "id": 77, "meeting_id": "NOPE!"}))
    assert h.inbox[conn][-1]["id"] == 77
    assert error_code(h.inbox[conn][-1]) == "invalid_field"
    assert "meeting_id" in h.inbox[conn][-1]["message"]


def test_wrong_state_requests() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    assert error_code(h.request(alice, "chat", text="hi")) == "not_in_meeting"
    assert error_code(h.request(alice, "leave_meeting")) == "not_in_meeting"
    assert error_code(h.request(alice, "join_meeting", meeting_id="zzz")) == "not_found"
    mid = h.request(alice, "create_meeting", title="t")["result"]["meeting"]["id"]
    assert error_code(h.request(bob, "cancel_meeting", meeting_id=mid)) == "not_creator"
    h.request(bob, "join_meeting", meeting_id=mid)
    assert error_code(h.request(bob, "cancel_meeting", meeting_id=mid)) == "not_creator"
    assert error_code(h.request(bob, "create_meeting", title="x")) == "already_in_meeting"
    assert error_code(h.request(alice, "create_meeting", title="   ")) == "invalid_field"
    assert error_code(h.request(alice, "chat", text=" \n ")) == "invalid_field"
    h.request(alice, "cancel_meeting", meeting_id=mid)
    assert error_code(h.request(bob, "join_meeting", meeting_id=mid)) == "meeting_ended"


def test_duplicate_display_name_is_refused_in_the_same_meeting() -> None:
    h = Harness()
    a1, a2 = h.connect("Alice"), h.connect("alice")
    mid = h.request(a1, "create_meeting", title="t")["result"]["meeting"]["id"]
    reply = h.request(a2, "join_meeting", meeting_id=mid)
    assert error_code(reply) == "name_taken"
    assert "Alice" in reply["message"]


def test_chat_is_stamped_and_delivered_to_all_in_one_order() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    mid = h.request(alice, "create_meeting", title="t")["result"]["meeting"]["id"]
    h.request(bob, "join_meeting", meeting_id=mid)
    h.now = 1234.5
    ok = h.request(alice, "chat", text="first")
    assert ok["result"] == {"seq": 1, "ts": 1234.5}
    h.request(bob, "chat", text="second")
    for conn in (alice, bob):
        chats = [e["message"] for e in h.events(conn, "chat")]
        assert [(c["seq"], c["sender"], c["text"]) for c in chats] == [
            (1, "alice", "first"), (2, "bob", "second")
        ]
        assert chats[0]["ts"] == 1234.5


def test_late_joiner_receives_history_and_others_see_the_join() -> None:
    h = Harness()
    alice = h.connect("alice")
    mid = h.request(alice, "create_meeting", title="t")["result"]["meeting"]["id"]
    for i in range(3):
        h.request(alice, "chat", text=f"m{i}")
    bob = h.connect("bob")
    result = h.request(bob, "join_meeting", meeting_id=mid)["result"]
    assert [m["text"] for m in result["history"]] == ["m0", "m1", "m2"]
    assert result["history_complete"] is True
    assert result["is_creator"] is False
    assert [p["name"] for p in result["participants"]] == ["alice", "bob"]
    [joined] = h.events(alice, "participant_joined")
    assert joined["participant"]["name"] == "bob"
    assert h.events(bob, "participant_joined") == []


def test_history_is_bounded_and_says_so() -> None:
    h = Harness(history_limit=5)
    alice = h.connect("alice")
    mid = h.request(alice, "create_meeting", title="t")["result"]["meeting"]["id"]
    for i in range(8):
        h.request(alice, "chat", text=f"m{i}")
    bob = h.connect("bob")
    result = h.request(bob, "join_meeting", meeting_id=mid)["result"]
    assert [m["seq"] for m in result["history"]] == [4, 5, 6, 7, 8]
    assert result["history_complete"] is False


def test_every_greeted_connection_sees_the_lobby_change() -> None:
    h = Harness()
    alice, lurker, stranger = h.connect("alice"), h.connect("lurker"), h.connect()
    h.request(alice, "create_meeting", title="Daily", password="pw")
    [change] = h.events(lurker, "meetings_changed")
    [meeting] = change["meetings"]
    assert (meeting["title"], meeting["participant_count"], meeting["has_password"]) == (
        "Daily", 1, True
    )
    assert "password" not in json.dumps(change).replace("has_password", "")
    assert h.events(stranger, "meetings_changed") == []  # not greeted yet


def test_rate_limit_drops_the_excess_and_recovers_with_time() -> None:
    h = Harness(rate=5.0, burst=10.0)
    conn = h.connect("alice")  # the hello spent one token
    replies = [h.request(conn, "ping") for _ in range(15)]
    codes = [r["type"] if r["type"] == "ok" else r["code"] for r in replies]
    assert codes.count("ok") == 9
    assert codes[9:] == ["rate_limited"] * 6
    h.now += 1.0  # five tokens come back
    assert [h.request(conn, "ping")["type"] for _ in range(6)] == ["ok"] * 5 + ["error"]
    assert h.core.counters.errors["rate_limited"] == 7


def test_disconnect_tells_the_others_and_the_meeting_waits_for_a_return() -> None:
    h = Harness()
    alice, bob = h.connect("alice"), h.connect("bob")
    mid = h.request(alice, "create_meeting", title="t")["result"]["meeting"]["id"]
    h.request(bob, "join_meeting", meeting_id=mid)
    h.disconnect(bob)
    [left] = h.events(alice, "participant_left")
    assert (left["name"], left["reason"]) == ("bob", "disconnected")
    h.disconnect(alice)
    h.tick()
    assert h.core.registry.open_meetings()[0].participant_count == 0
    h.now += 5.0
    h.tick()
    assert h.core.registry.open_meetings() == []


def test_same_resume_token_replaces_the_old_connection_and_keeps_creator_rights() -> None:
    h = Harness()
    token = "T" * 40
    old = h.connect("alice", token=token)
    bob = h.connect("bob")
    mid = h.request(old, "create_meeting", title="t")["result"]["meeting"]["id"]
    h.request(bob, "join_meeting", meeting_id=mid)
    new = h.connect("alice", token=token)
    assert h.closed[old].code == CLOSE_REPLACED
    [left] = h.events(bob, "participant_left")
    assert left["reason"] == "replaced"
    result = h.request(new, "join_meeting", meeting_id=mid)["result"]
    assert result["is_creator"] is True
    assert h.request(new, "cancel_meeting", meeting_id=mid)["type"] == "ok"
    [ended] = h.events(bob, "meeting_ended")
    assert ended["reason"] == "cancelled"
    # the old connection is gone from the core: its late frames are ignored
    before = len(h.inbox[old])
    h.send_raw(old, b'{"type":"ping","id":1}')
    assert len(h.inbox[old]) == before


def test_internal_errors_cost_one_request_not_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness()
    alice = h.connect("alice")

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(h.core.registry, "open_meetings", broken)
    assert error_code(h.request(alice, "list_meetings")) == "internal"
    monkeypatch.undo()
    assert h.request(alice, "list_meetings")["type"] == "ok"


def test_meetings_and_chat_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    first = Harness(Store(db))
    token = "A" * 43
    alice = first.connect("alice", token=token)
    mid = first.request(alice, "create_meeting", title="kept", password="pw")["result"][
        "meeting"]["id"]
    first.request(alice, "chat", text="before the restart")
    gone = first.request(first.connect("bob"), "create_meeting", title="gone")["result"][
        "meeting"]["id"]
    first.store.close()

    second = Harness(Store(db))
    assert second.core.restore(second.now) == 2
    assert {m.id for m in second.core.registry.open_meetings()} == {mid, gone}
    alice = second.connect("alice", token=token)
    result = second.request(alice, "join_meeting", meeting_id=mid, password="pw")["result"]
    assert [m["text"] for m in result["history"]] == ["before the restart"]
    assert result["is_creator"] is True
    assert second.request(alice, "chat", text="after")["result"]["seq"] == 2
    second.now += 5.0
    second.tick()  # nobody came back to "gone"
    assert [m.id for m in second.core.registry.open_meetings()] == [mid]
    second.request(alice, "cancel_meeting", meeting_id=mid)
    second.store.close()

    third = Harness(Store(db))
    third.core.restore(third.now)
    assert third.core.registry.open_meetings() == []
    bob = third.connect("bob")
    assert error_code(third.request(bob, "join_meeting", meeting_id=mid)) == "meeting_ended"
    assert error_code(third.request(bob, "join_meeting", meeting_id=gone)) == "meeting_ended"


def test_malformed_frames_count_against_the_rate_limit() -> None:
    h = Harness(rate=5.0, burst=10.0)
    conn = h.connect("alice")
    for _ in range(20):
        h.send_raw(conn, b'{"type": "nonsense", "id": 1}')
    codes = [m["code"] for m in h.inbox[conn] if m["type"] == "error"]
    assert codes.count("unknown_type") == 9 and codes.count("rate_limited") == 11


def test_password_guessing_is_slowed_down_per_connection() -> None:
    h = Harness()
    alice, guesser = h.connect("alice"), h.connect("guesser")
    mid = h.request(alice, "create_meeting", title="t", password="right")["result"]["meeting"][
        "id"]
    codes = [error_code(h.request(guesser, "join_meeting", meeting_id=mid, password=f"g{i}"))
             for i in range(5)]
    assert codes == ["wrong_password"] * 3 + ["rate_limited"] * 2
    h.now += 1.0
    reply = h.request(guesser, "join_meeting", meeting_id=mid, password="right")
    assert reply["type"] == "ok"


def test_a_connection_that_never_says_hello_is_closed() -> None:
    h = Harness(hello_timeout=10.0)
    silent, greeted = h.connect(), h.connect("alice")
    h.now += 9.0
    h.tick()
    assert h.closed == {}
    h.now += 2.0
    h.tick()
    assert set(h.closed) == {silent} and h.closed[silent].code == 1008
    assert h.core.connection_count() == 1
    assert h.request(greeted, "ping")["type"] == "ok"


def test_lobby_updates_are_coalesced_and_the_last_state_always_arrives() -> None:
    h = Harness(lobby_interval=0.2)
    watcher, busy = h.connect("watcher"), h.connect("busy")
    for i in range(10):
        h.request(busy, "create_meeting", title=f"m{i}")
        h.request(busy, "leave_meeting")
    assert len(h.events(watcher, "meetings_changed")) == 1  # the first, at once
    h.request(busy, "create_meeting", title="final")
    h.now += 0.2
    h.tick()
    [first] = h.events(watcher, "meetings_changed")
    [delta] = h.events(watcher, "meetings_delta")  # then only what changed
    assert [m["title"] for m in delta["changed"]] == ["final"]
    assert first["meetings"][0]["id"] in delta["removed"]
