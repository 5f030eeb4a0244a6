"""The per-meeting mode state machine (sans-I/O, fake clock) and its signaling in the core."""

from __future__ import annotations

from typing import Any

from confero.protocol.signaling import PROTOCOL_VERSION
from confero.server.p2p_mode import ModeChange, ModeMachine, Start, Stop
from tests.test_core import Harness


def _connected(m: ModeMachine, session: int, now: float) -> list[Any]:
    return m.report("a", session, "connected", now) + m.report("b", session, "connected", now)


def test_two_capable_members_start_ice_and_switch_when_both_connect() -> None:
    m = ModeMachine()
    assert m.members(["a"], {"a"}, 0.0) == []
    assert m.members(["a", "b"], {"a", "b"}, 1.0) == [Start(1, "a", "b")]
    assert m.mode == "server"
    assert m.report("a", 1, "connected", 1.2) == []  # one side is not enough
    assert m.mode == "server"
    assert m.report("b", 1, "connected", 1.3) == [ModeChange("p2p", "ice_connected", 1)]
    assert m.mode == "p2p"


def test_third_person_brings_the_meeting_back_and_leaving_restarts_p2p() -> None:
    m = ModeMachine()
    m.members(["a", "b"], {"a", "b", "c"}, 0.0)
    _connected(m, 1, 0.5)
    out = m.members(["a", "b", "c"], {"a", "b", "c"}, 10.0)
    assert out == [ModeChange("server", "participant_joined", 1),
                   Stop(1, ("a", "b"), "participant_joined")]
    assert m.mode == "server" and m.session == 0
    assert m.tick(11.0) == []  # three people: stays on the server
    out = m.members(["a", "b"], {"a", "b", "c"}, 20.0)
    assert out == [Start(2, "a", "b")]  # a fresh session (fresh keys), at once
    assert _connected(m, 2, 20.3) == [ModeChange("p2p", "ice_connected", 2)]


def test_server_setting_and_incapable_members_never_start() -> None:
    m = ModeMachine("server")
    assert m.members(["a", "b"], {"a", "b"}, 0.0) == []
    m = ModeMachine()
    assert m.members(["a", "b"], {"a"}, 0.0) == []
    assert m.tick(100.0) == []


def test_failure_falls_back_and_retries_later_with_back_off() -> None:
    m = ModeMachine(retry_after=5.0)
    m.members(["a", "b"], {"a", "b"}, 0.0)
    _connected(m, 1, 0.2)
    out = m.report("b", 1, "consent_lost", 3.0)
    assert out == [ModeChange("server", "consent_lost", 1), Stop(1, ("a", "b"), "consent_lost")]
    assert m.tick(7.9) == []  # waits retry_after
    assert m.tick(8.1) == [Start(2, "a", "b")]
    out = m.report("a", 2, "failed", 9.0)
    assert out == [Stop(2, ("a", "b"), "ice_failed")]  # never was p2p: no mode change
    assert m.tick(18.9) == []  # the delay doubled
    assert m.tick(19.1) == [Start(3, "a", "b")]


def test_connect_timeout_and_stale_reports() -> None:
    m = ModeMachine(connect_timeout=10.0, retry_after=5.0)
    m.members(["a", "b"], {"a", "b"}, 0.0)
    m.report("a", 1, "connected", 1.0)
    assert m.tick(9.0) == []
    assert m.tick(10.5) == [Stop(1, ("a", "b"), "ice_timeout")]
    assert m.report("b", 1, "connected", 11.0) == []  # the old session is gone
    assert m.report("z", 1, "failed", 11.0) == []
    assert m.tick(15.6) == [Start(2, "a", "b")]
    assert m.report("b", 1, "failed", 16.0) == []  # stale session: ignored
    assert m.session == 2


def test_a_peer_asking_for_the_server_is_not_retried_until_people_change() -> None:
    m = ModeMachine(retry_after=1.0)
    m.members(["a", "b"], {"a", "b"}, 0.0)
    _connected(m, 1, 0.1)
    out = m.report("a", 1, "want_server", 2.0)
    assert out == [ModeChange("server", "requested", 1), Stop(1, ("a", "b"), "requested")]
    assert m.tick(1000.0) == []
    m.members(["a"], {"a", "b"}, 1001.0)
    assert m.members(["a", "b"], {"a", "b"}, 1002.0) == [Start(2, "a", "b")]


def test_leaving_during_p2p_goes_back_to_server_with_reason() -> None:
    m = ModeMachine()
    m.members(["a", "b"], {"a", "b"}, 0.0)
    _connected(m, 1, 0.1)
    out = m.members(["a"], {"a", "b"}, 5.0)
    assert out[0] == ModeChange("server", "participant_left", 1)
    assert [c[1:] for c in m.history] == [("p2p", "ice_connected"),
                                          ("server", "participant_left")]


# ---------------------------------------------------------------------------- in the core


def _hello(h: Harness, name: str, p2p: bool = True) -> int:
    conn = h.connect()
    reply = h.request(conn, "hello", version=PROTOCOL_VERSION, name=name, p2p=p2p)
    assert reply["type"] == "ok"
    return conn


def test_core_relays_ice_and_announces_mode_changes() -> None:
    h = Harness()
    a, b, c = _hello(h, "alice"), _hello(h, "bob"), _hello(h, "carol")
    created = h.request(a, "create_meeting", title="t")["result"]
    assert created["mode_setting"] == "auto" and created["mode"] == "server"
    meeting_id = created["meeting"]["id"]
    h.request(b, "join_meeting", meeting_id=meeting_id)
    (start_a,), (start_b,) = h.events(a, "p2p_start"), h.events(b, "p2p_start")
    assert start_a["controlling"] and not start_b["controlling"]
    session = start_a["session"]
    assert start_b["session"] == session
    # trickled candidates and the fresh key reach the other peer only
    reply = h.request(a, "p2p_signal", session=session, ufrag="abcd", pwd="secretsecret",
                      key="A" * 40, candidates=["1 1 UDP 2130706431 10.0.0.1 5000 typ host"])
    assert reply["type"] == "ok"
    (relayed,) = h.events(b, "p2p_signal")
    assert relayed["from_id"] == start_b["peer_id"] and relayed["key"] == "A" * 40
    assert relayed["candidates"] == ["1 1 UDP 2130706431 10.0.0.1 5000 typ host"]
    assert h.events(c, "p2p_signal") == []
    # a wrong session is refused with a clear error
    assert h.request(a, "p2p_signal", session=session + 7, ufrag="abcd")["type"] == "error"
    h.request(a, "p2p_state", session=session, state="connected")
    assert h.events(a, "mode_changed") == []
    h.request(b, "p2p_state", session=session, state="connected")
    for conn in (a, b):
        (changed,) = h.events(conn, "mode_changed")
        assert changed["mode"] == "p2p" and changed["reason"] == "ice_connected"
    assert h.core.meeting_modes() == {meeting_id: "p2p"}
    media = h.request(a, "meeting_media")["result"]
    assert media["mode"] == "p2p" and media["forwarded_bytes"] == 0
    # a third person: back to the server, everyone told why
    h.request(c, "join_meeting", meeting_id=meeting_id)
    for conn in (a, b, c):
        assert h.events(conn, "mode_changed")[-1]["mode"] == "server"
        assert h.events(conn, "mode_changed")[-1]["reason"] == "participant_joined"
    assert h.events(a, "p2p_stop")[-1]["session"] == session
    # the third leaves: a new P2P session starts
    h.disconnect(c)
    assert h.events(a, "p2p_start")[-1]["session"] > session


def test_core_server_mode_meeting_and_old_clients_stay_on_the_server() -> None:
    h = Harness()
    a, b = _hello(h, "alice"), _hello(h, "bob")
    meeting_id = h.request(a, "create_meeting", title="t", mode="server")["result"]["meeting"]["id"]
    joined = h.request(b, "join_meeting", meeting_id=meeting_id)["result"]
    assert joined["mode_setting"] == "server"
    assert h.events(a, "p2p_start") == [] and h.events(b, "p2p_start") == []
    c, d = _hello(h, "carol"), _hello(h, "dave", p2p=False)
    other = h.request(c, "create_meeting", title="u")["result"]["meeting"]["id"]
    h.request(d, "join_meeting", meeting_id=other)
    h.tick()
    assert h.events(c, "p2p_start") == []
    assert error_code_of(h.request(c, "create_meeting", title="v", mode="mesh")) == (
        "invalid_field")


def error_code_of(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error"
    return str(reply["code"])


def test_core_hands_out_coturn_rest_credentials_per_session() -> None:
    import base64
    import hashlib
    import hmac

    from confero.client.p2p import parse_turn_url

    h = Harness(turn_url="turn:203.0.113.1:3478", turn_secret="s3cret", turn_ttl=600.0)
    a, b = _hello(h, "alice"), _hello(h, "bob")
    meeting_id = h.request(a, "create_meeting", title="t")["result"]["meeting"]["id"]
    h.request(b, "join_meeting", meeting_id=meeting_id)
    (start,) = h.events(a, "p2p_start")
    assert start["turn_url"] == "turn:203.0.113.1:3478"
    expiry, _, who = start["turn_username"].partition(":")
    assert int(expiry) == int(h.now + 600) and who  # coturn checks the expiry itself
    expected = base64.b64encode(hmac.new(b"s3cret", start["turn_username"].encode(),
                                         hashlib.sha1).digest()).decode()
    assert start["turn_password"] == expected
    assert h.events(b, "p2p_start")[0]["turn_username"] != start["turn_username"]
    assert parse_turn_url("turn:203.0.113.1:3478") == ("203.0.113.1", 3478)
    assert parse_turn_url("turn:relay.example") == ("relay.example", 3478)
    assert parse_turn_url("turns:x:5349") is None and parse_turn_url("turn:x:y") is None
