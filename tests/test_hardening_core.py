"""Hardening of the sans-I/O core (issue 7): where the decision lives in the core, the
attack is replayed against it with a fake clock and a real SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confero.protocol.signaling import PROTOCOL_VERSION
from confero.server.core import CoreSettings, SignalingCore
from confero.server.names import clean_name, skeleton
from confero.server.ratelimit import GuessLimiter
from confero.server.registry import MeetingRegistry
from confero.server.store import Store
from tests.test_core import Harness, error_code


class AddressHarness(Harness):
    """The core's harness, with a source address per connection."""

    def __init__(self, store: Store | None = None, max_participants: int = 50,
                 **settings: Any) -> None:
        super().__init__(store, **settings)
        self.core = SignalingCore(
            MeetingRegistry(empty_grace=5.0, max_participants=max_participants), self.store,
            CoreSettings(**settings),
        )

    def connect_from(self, address: str, name: str, token: str | None = None) -> int:
        conn = self.core.open_connection(self.now, address)
        self.inbox[conn] = []
        fields: dict[str, Any] = {"version": PROTOCOL_VERSION, "name": name}
        if token:
            fields["resume_token"] = token
        reply = self.request(conn, "hello", **fields)
        assert reply["type"] == "ok", reply
        return conn


def full_disk(store: Store) -> None:
    """Every write fails from here (as on a full disk: SQLite refuses, reads still work)."""
    store._db.execute("PRAGMA query_only=ON")


def free_disk(store: Store) -> None:
    store._db.execute("PRAGMA query_only=OFF")


# ---------------------------------------------------------------- item 3: password guessing


def test_guesses_back_off_per_meeting_across_addresses_but_members_get_back_in() -> None:
    h = AddressHarness()
    alice = h.connect_from("10.0.0.1", "alice")
    mid = h.request(alice, "create_meeting", title="t", password="right")["result"]["meeting"]["id"]
    token = "m" * 40
    bob = h.connect_from("10.0.0.2", "bob", token)
    assert h.request(bob, "join_meeting", meeting_id=mid, password="right")["type"] == "ok"
    h.disconnect(bob)
    # A botnet: each address guesses a few times, under its own limit.
    refused = 0
    for n in range(60):
        h.now += 0.5
        guesser = h.connect_from(f"10.1.{n}.1", f"g{n}")
        reply = h.request(guesser, "join_meeting", meeting_id=mid, password=f"guess{n}")
        refused += reply["type"] == "error" and reply["code"] == "rate_limited"
        h.disconnect(guesser)
    assert refused >= 30  # the meeting's budget ran out after 20 and backs off
    # A newcomer with the right password waits too (documented trade-off) ...
    carol = h.connect_from("10.0.0.3", "carol")
    assert error_code(h.request(carol, "join_meeting", meeting_id=mid,
                                password="right")) == "rate_limited"
    # ... but a member coming back with its resume token is never refused.
    bob = h.connect_from("10.0.0.2", "bob", token)
    assert h.request(bob, "join_meeting", meeting_id=mid, password="right")["type"] == "ok"
    # The backoff ends: the newcomer gets in once the meeting's wait is over.
    h.now += 61
    assert h.request(carol, "join_meeting", meeting_id=mid, password="right")["type"] == "ok"


def test_guess_limiter_backs_off_exponentially_and_forgets() -> None:
    limiter = GuessLimiter(free=2, base=1.0, cap=8.0, forget=100.0, max_keys=3)
    assert limiter.wait("a", 0.0) == 0.0
    limiter.failed("a", 0.0)
    assert limiter.wait("a", 0.0) == 0.0
    limiter.failed("a", 0.0)
    assert limiter.wait("a", 0.0) == 1.0
    limiter.failed("a", 1.0)
    assert limiter.wait("a", 1.0) == 2.0
    for _ in range(10):
        limiter.failed("a", 3.0)
    assert limiter.wait("a", 3.0) == 8.0  # capped
    assert limiter.wait("a", 200.0) == 0.0  # forgotten
    for key in "bcde":
        limiter.failed(key, 0.0)
    assert len(limiter._state) == 3  # bounded


# ---------------------------------------------------------------- item 8: store failures


def test_a_failed_create_leaves_no_meeting_and_the_creator_can_try_again(tmp_path: Path
                                                                           ) -> None:
    store = Store(tmp_path / "db.sqlite3")
    h = AddressHarness(store)
    alice = h.connect_from("10.0.0.1", "alice")
    bob = h.connect_from("10.0.0.2", "bob")
    full_disk(store)
    reply = h.request(alice, "create_meeting", title="doomed")
    assert error_code(reply) == "store_failed" and "disk" in reply["message"]
    assert h.request(bob, "list_meetings")["result"]["meetings"] == []  # not listed
    assert h.core.store_problem() is not None  # /healthz says so
    free_disk(store)
    created = h.request(alice, "create_meeting", title="second try")  # not already_in_meeting
    assert created["type"] == "ok", created
    mid = created["result"]["meeting"]["id"]
    assert h.request(alice, "chat", text="hello")["result"]["seq"] == 1
    assert h.core.store_problem() is None  # healthy again after a good write
    full_disk(store)
    for _ in range(3):
        assert error_code(h.request(alice, "chat", text="x" * 3000)) == "store_failed"
    free_disk(store)
    assert h.request(alice, "chat", text="after")["result"]["seq"] == 2  # no gap, no failure
    history, _ = store.history(mid, 10)
    assert [m.text for m in history] == ["hello", "after"]


def test_a_meeting_end_that_cannot_be_stored_is_retried(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    h = AddressHarness(store)
    alice = h.connect_from("10.0.0.1", "alice")
    mid = h.request(alice, "create_meeting", title="t")["result"]["meeting"]["id"]
    full_disk(store)
    assert h.request(alice, "leave_meeting")["type"] == "ok"  # memory ends it anyway
    free_disk(store)
    assert [m.id for m in store.open_meetings()] == [mid]
    h.now += 10
    h.tick()  # housekeeping retries the write
    assert list(store.open_meetings()) == []


# ---------------------------------------------------------------- item 9: chat retention


def test_chat_of_ended_meetings_is_purged_after_the_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    h = AddressHarness(store, chat_retention=3600.0)
    alice = h.connect_from("10.0.0.1", "alice")
    old = h.request(alice, "create_meeting", title="old")["result"]["meeting"]["id"]
    h.request(alice, "chat", text="old news")
    h.request(alice, "leave_meeting")
    h.now += 1800
    recent = h.request(alice, "create_meeting", title="recent")["result"]["meeting"]["id"]
    h.request(alice, "chat", text="recent news")
    h.request(alice, "leave_meeting")
    h.now += 1801
    h.tick()
    assert store.history(old, 10)[0] == []
    assert [m.text for m in store.history(recent, 10)[0]] == ["recent news"]
    assert store._db.execute("SELECT COUNT(*) FROM meetings").fetchone()[0] == 1


def test_join_history_is_cut_to_its_byte_budget() -> None:
    h = AddressHarness(history_bytes=50_000, max_chat_per_sender=10_000)
    alice = h.connect_from("10.0.0.1", "alice")
    mid = h.request(alice, "create_meeting", title="t")["result"]["meeting"]["id"]
    for n in range(100):
        h.request(alice, "chat", text=f"{n:03d}" + "\U0001f600" * 990)  # ~4 kB each
        h.now += 1
    bob = h.connect_from("10.0.0.2", "bob")
    result = h.request(bob, "join_meeting", meeting_id=mid)["result"]
    assert not result["history_complete"]
    assert 0 < len(result["history"]) <= 13 and result["history"][-1]["text"].startswith("099")


# ---------------------------------------------------------------- item 13: names


def test_names_are_normalised_and_look_alikes_share_a_skeleton() -> None:
    assert clean_name("\uff41\uff4c\uff49\uff43\uff45") == "alice"  # fullwidth
    assert clean_name("al\u00a0ice") == "al ice"  # NBSP becomes a space
    for invisible in ("\u3164", "\u2800", "\u115f\u1160", "\u00a0", "\u200b", " \u034f "):
        try:
            clean_name(invisible)
        except ValueError:
            continue
        raise AssertionError(f"{invisible!r} was accepted")
    same = ["alice", "\u0430lice", "ALICE", "\u0391LICE", "al ice", "\uff41lice",
            "\u0430\u04cf\u0456\u0441\u0435"]
    assert {skeleton(name) for name in same} == {"alice"}
    assert skeleton("alicia") != skeleton("alice")


# ---------------------------------------------------------------- item 10: lobby watchers


def test_lobby_updates_go_only_to_connections_outside_meetings() -> None:
    h = AddressHarness()
    watcher = h.connect_from("10.0.0.1", "watcher")
    member = h.connect_from("10.0.0.2", "member")
    h.request(member, "create_meeting", title="busy")
    h.now += 1
    h.tick()
    h.inbox[watcher].clear()
    h.inbox[member].clear()
    churner = h.connect_from("10.0.0.3", "churner")
    for n in range(5):
        h.request(churner, "create_meeting", title=f"churn {n}")
        h.request(churner, "leave_meeting")
        h.now += 1
        h.tick()
    deltas = h.events(watcher, "meetings_delta")  # it had the list: only what changed
    assert len(deltas) >= 4 and all(len(d["changed"]) <= 1 for d in deltas)
    assert h.events(member, "meetings_changed") == h.events(member, "meetings_delta") == []


def truth_is_not_trivial(h: AddressHarness, conn: int) -> bool:
    return len(h.events(conn, "meetings_delta")) >= 5


def test_lobby_deltas_rebuild_the_list_a_client_holds() -> None:
    """Whatever a watcher's base (a list_meetings reply or a full event), applying the
    deltas gives the server's list, even for meetings that came and went in between."""
    h = AddressHarness()
    lister = h.connect_from("10.0.0.1", "lister")
    pushed = h.connect_from("10.0.0.2", "pushed")
    makers = [h.connect_from(f"10.0.1.{n}", f"maker{n}") for n in range(6)]
    h.request(makers[0], "create_meeting", title="early")
    h.now += 1
    h.tick()
    lobbies: dict[int, dict[str, Any]] = {pushed: {}}
    h.request(makers[2], "create_meeting", title="Y")  # a lobby event goes out now ...
    h.now += 0.05  # ... and before the next one X comes, is listed, and goes
    h.request(makers[1], "create_meeting", title="X")
    lobbies[lister] = {m["id"]: m for m in h.request(lister, "list_meetings")["result"][
        "meetings"]}
    start = {pushed: 0, lister: len(h.inbox[lister])}  # the lister's base is its reply
    assert "X" in [m["title"] for m in lobbies[lister].values()]
    h.request(makers[1], "leave_meeting")
    inside = {makers[0], makers[2]}
    for step in range(18):  # meetings come and go, some between two lobby events
        maker = makers[step * 5 % 6]
        if maker in inside:
            assert h.request(maker, "leave_meeting")["type"] == "ok"
            inside.remove(maker)
        else:
            assert h.request(maker, "create_meeting", title=f"s{step}")["type"] == "ok"
            inside.add(maker)
        h.now += 0.07
        h.tick()
    assert truth_is_not_trivial(h, lister)
    h.now += 1
    h.tick()
    truth = {m["id"]: m for m in h.request(lister, "list_meetings")["result"]["meetings"]}
    for conn, lobby in lobbies.items():
        for event in h.inbox[conn][start[conn]:]:
            if event["type"] == "meetings_changed":
                lobby.clear()
                lobby.update({m["id"]: m for m in event["meetings"]})
            elif event["type"] == "meetings_delta":
                for mid in event["removed"]:
                    lobby.pop(mid, None)
                lobby.update({m["id"]: m for m in event["changed"]})
        assert lobby == truth, conn


def test_a_full_store_file_is_reported_by_store_problem_after_deletion(tmp_path: Path
                                                                         ) -> None:
    store = Store(tmp_path / "db.sqlite3")
    h = AddressHarness(store)
    assert h.core.store_problem() is None
    (tmp_path / "db.sqlite3").unlink()
    problem = h.core.store_problem()
    assert problem is not None and "deleted" in problem


def test_limits_per_address_count_an_ipv6_host_by_its_64() -> None:
    from confero.server.guard import address_key

    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7" == address_key("192.0.2.7")


def test_members_keep_their_way_in_across_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    h = AddressHarness(store)
    alice = h.connect_from("10.0.0.1", "alice")
    mid = h.request(alice, "create_meeting", title="t", password="right")["result"]["meeting"]["id"]
    token = "b" * 40
    bob = h.connect_from("10.0.0.2", "bob", token)
    assert h.request(bob, "join_meeting", meeting_id=mid, password="right")["type"] == "ok"
    restarted = AddressHarness(store)  # a new process on the same database
    restarted.now = h.now + 1
    assert restarted.core.restore(restarted.now) == 1
    for n in range(40):  # a botnet spends the meeting's budget
        guesser = restarted.connect_from(f"10.1.{n}.1", f"g{n}")
        restarted.request(guesser, "join_meeting", meeting_id=mid, password=f"guess{n}")
    carol = restarted.connect_from("10.0.0.3", "carol")
    assert error_code(restarted.request(carol, "join_meeting", meeting_id=mid,
                                        password="right")) == "rate_limited"
    bob = restarted.connect_from("10.0.0.2", "bob", token)
    reply = restarted.request(bob, "join_meeting", meeting_id=mid, password="right")
    assert reply["type"] == "ok", reply
