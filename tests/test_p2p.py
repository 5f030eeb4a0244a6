"""Peer-to-peer media end to end: a real server and bots in network namespaces behind NAT.

aioice never offers 127.0.0.1 as a candidate, and the point is NAT traversal anyway: each
bot sits behind its own masquerading router (tests/netlab.py ``nat_topology``), the
server in the public namespace. The server's own per-meeting counters are the proof that
it forwards nothing in P2P. Needs root (CI runs as root); the ``netlab`` fixture FAILS
where namespaces cannot be built.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bots import BotProcess, tone_levels
from tests.conftest import read_json_line
from tests.netlab import Lab, NatTopology, nat_topology
from tests.netlab_fixtures import netlab

__all__ = ["netlab"]

COMMON = ("--video", "synthetic", "--fps", "30", "--width", "160", "--height", "120",
          "--stats-interval", "0.5")


def home_router_firewall(nat: NatTopology) -> None:
    """What home routers do besides NAT: drop unsolicited packets addressed to the router
    itself. Without it the peer's first hole-punching packet lands on the router, is
    answered with an ICMP error, and its conntrack entry makes the router pick another
    source port for our own packets to that peer (a symmetric NAT by accident)."""
    for site in nat.sites:
        site.router.nft(
            "table ip p2p_fw {\n"
            "  chain input { type filter hook input priority filter; policy accept;\n"
            f'    iifname "{site.wan.b.dev}" ct state new drop\n'
            "  }\n}\n"
        )


def cut_direct_path(nat: NatTopology) -> None:
    """Drop everything between the two sites at site 0's router; the server (and a TURN
    server next to it) stays reachable from both."""
    other = nat.sites[1].wan.b.ip
    nat.sites[0].router.nft(
        "table ip p2p_cut {\n"
        "  chain forward { type filter hook forward priority filter; policy accept;\n"
        f"    ip daddr {other} drop\n    ip saddr {other} drop\n"
        "  }\n}\n"
    )


def start_public_server(nat: NatTopology, tmp_path: Path, *extra: str
                        ) -> tuple[subprocess.Popen[str], str]:
    """The real server in the public namespace; (its process, its port)."""
    server = nat.public.popen(
        [sys.executable, "-m", "confero.cli", "server", "--host", "0.0.0.0", "--port", "0",
         "--media-port", "0", "--data-dir", str(tmp_path / "data"), "--empty-grace", "3",
         *extra],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return server, str(read_json_line(server, 30)["url"]).rsplit(":", 1)[1].split("/")[0]


def site_bot(nat: NatTopology, port: str, site: int, name: str, *args: str) -> BotProcess:
    """A bot in the client namespace of ``site``, reaching the server through its NAT."""
    return BotProcess(f"ws://{nat.sites[site].wan.a.ip}:{port}/ws", name, *args, *COMMON,
                      prefix=nat.sites[site].client.argv([]))


def _frames(event: dict[str, Any], name: str) -> int:
    return int(event["video"].get(name, {}).get("frames_decoded", 0))


def _direct_only(event: dict[str, Any]) -> bool:
    paths = event.get("paths") or {}
    return paths.get("mode") == "p2p" and paths.get("to_server") is False


@pytest.mark.timeout(300)
def test_two_go_p2p_behind_nat_a_third_brings_the_server_back(
    netlab: Lab, tmp_path: Path
) -> None:
    nat = nat_topology(netlab, 3)
    home_router_firewall(nat)
    server, port = start_public_server(nat, tmp_path)

    started: list[BotProcess] = []
    try:
        alice = site_bot(nat, port, 0, "alice", "--create", "p2p", "--audio", "sine:440",
                         "--record", str(tmp_path / "alice"))
        started.append(alice)
        meeting = str(alice.expect("joined", timeout=40)["meeting_id"])
        bob = site_bot(nat, port, 1, "bob", "--join", meeting, "--audio", "sine:660",
                       "--record", str(tmp_path / "bob"))
        started.append(bob)
        bob.expect("joined", timeout=40)

        # 1. P2P through the NATs (server-reflexive candidates), decided by the server
        for bot in (alice, bob):
            mode = bot.expect("mode", timeout=40)
            assert (mode["mode"], mode["reason"]) == ("p2p", "ice_connected")
            bot.expect("stats", _direct_only, timeout=20)  # the server path is idle now

        # 2. the proof: over 5 s the server receives and forwards no media for the meeting
        # while both decode each other's video (after half a second for the server's mixer
        # to finish concealing the last frames it got before the switch)
        settled = alice.expect("stats", timeout=10)
        alice.expect("stats", lambda e: e["t"] >= settled["t"] + 0.5, timeout=10)
        alice.send("media")
        before = alice.expect("media", timeout=20)
        a0 = alice.expect("stats", timeout=10)
        b0 = bob.expect("stats", timeout=10)
        a1 = alice.expect("stats", lambda e: e["t"] >= before["t"] + 5.0, timeout=30)
        b1 = bob.expect("stats", lambda e: e["t"] >= before["t"] + 5.0, timeout=30)
        alice.send("media")
        after = alice.expect("media", timeout=20)
        assert after["t"] - before["t"] >= 5.0
        assert before["mode"] == after["mode"] == "p2p"
        assert after["forwarded_bytes"] == before["forwarded_bytes"], (before, after)
        assert after["received_bytes"] == before["received_bytes"], (before, after)
        assert after["mixed_bytes"] == before["mixed_bytes"], (before, after)
        assert _frames(a1, "bob") - _frames(a0, "bob") >= 50, (a0, a1)
        assert _frames(b1, "alice") - _frames(b0, "alice") >= 50, (b0, b1)
        assert a1["paths"]["peer"]["received_packets"] > 200
        assert a1["paths"]["peer"]["dropped_auth"] == 0

        # 3. a third person: back through the server, and all three see each other
        carol = site_bot(nat, port, 2, "carol", "--join", meeting, "--audio", "none",
                         "--record", str(tmp_path / "carol"))
        started.append(carol)
        for bot in (alice, bob):
            mode = bot.expect("mode", timeout=40)
            assert (mode["mode"], mode["reason"]) == ("server", "participant_joined")
        for name in ("alice", "bob"):
            carol.expect("stats", lambda e, n=name: _frames(e, n) >= 15, timeout=40)
        alice.expect("stats", lambda e: e["video"].get("carol") is not None
                     and _frames(e, "carol") >= 15, timeout=40)
        alice.send("media")
        through = alice.expect("media", timeout=20)
        assert through["mode"] == "server"
        assert through["forwarded_bytes"] > after["forwarded_bytes"]

        # 4. the third leaves: the two go peer-to-peer again
        carol.send("leave")
        carol.finish(timeout=40)
        for bot in (alice, bob):
            mode = bot.expect("mode", timeout=40)
            assert (mode["mode"], mode["reason"]) == ("p2p", "ice_connected")
            bot.expect("stats", _direct_only, timeout=20)
        bob.send("leave")
        bob.finish(timeout=40)
        alice.send("leave")
        alice.finish(timeout=40)

        # both heard each other (mix, then the direct stream, then the mix, then direct)
        heard_by_bob = tone_levels(tmp_path / "bob" / "audio.wav", [440, 660])
        heard_by_alice = tone_levels(tmp_path / "alice" / "audio.wav", [440, 660])
        assert heard_by_bob[440] > -6 and heard_by_bob[660] < -30, heard_by_bob
        assert heard_by_alice[660] > -6 and heard_by_alice[440] < -30, heard_by_alice
        heard_by_carol = tone_levels(tmp_path / "carol" / "audio.wav", [440, 660])
        assert heard_by_carol[440] > -12 and heard_by_carol[660] > -12, heard_by_carol
    finally:
        for bot in started:
            bot.cleanup()
        server.terminate()
        server.wait(10)


@pytest.mark.timeout(300)
def test_blocked_direct_path_falls_back_to_the_server_by_itself(
    netlab: Lab, tmp_path: Path
) -> None:
    """Consent freshness: the peers' direct UDP is cut mid-call; the meeting goes back
    through the server within seconds without anyone acting, and retries fail cleanly
    (it stays on the server, with the reason)."""
    nat = nat_topology(netlab, 2)
    home_router_firewall(nat)
    server, port = start_public_server(nat, tmp_path)
    started: list[BotProcess] = []
    try:
        alice = site_bot(nat, port, 0, "alice", "--create", "cut", "--audio", "sine:440")
        started.append(alice)
        meeting = str(alice.expect("joined", timeout=40)["meeting_id"])
        bob = site_bot(nat, port, 1, "bob", "--join", meeting, "--audio", "sine:660",
                       "--record", str(tmp_path / "bob"))
        started.append(bob)
        for bot in (alice, bob):
            assert bot.expect("mode", timeout=40)["mode"] == "p2p"
        cut_direct_path(nat)
        reasons = set()
        for bot in (alice, bob):
            mode = bot.expect("mode", timeout=30)
            assert mode["mode"] == "server"
            reasons.add(mode["reason"])
        assert reasons & {"consent_lost", "ice_failed"}, reasons
        # media flows through the server again
        bob.expect("stats", lambda e: e["paths"]["to_server"] is True, timeout=10)
        start = bob.expect("stats", timeout=10)
        bob.expect("stats", lambda e: _frames(e, "alice") >= _frames(start, "alice") + 30,
                   timeout=30)
        # the server retries after a back-off; ICE cannot connect, so it stays put
        stop = alice.expect("p2p_stop", lambda e: e["session"] >= 2, timeout=60)
        assert stop["reason"] in ("ice_failed", "ice_timeout")
        alice.send("media")
        assert alice.expect("media", timeout=20)["mode"] == "server"
        bob.send("leave")
        bob.finish(timeout=40)
        heard = tone_levels(tmp_path / "bob" / "audio.wav", [440, 660])
        assert heard[440] > -6 and heard[660] < -30, heard
    finally:
        for bot in started:
            bot.cleanup()
        server.terminate()
        server.wait(10)



def start_coturn(nat: NatTopology, tmp_path: Path, secret: str) -> subprocess.Popen[Any]:
    """coturn as packaged, in the public namespace, which has no route to the sites'
    private networks: a relay send to one of the peers' host candidates fails there with
    "network unreachable" and coturn then drops the whole allocation -- what the client's
    pair filter (``client/p2p.py`` ``_IceConnection``) avoids. No ``denied-peer-ip`` on
    purpose, so the test proves the client, not the TURN configuration."""
    ip = nat.sites[0].wan.a.ip
    log = (tmp_path / "coturn.log").open("w")
    return nat.public.popen(
        ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--use-auth-secret",
         f"--static-auth-secret={secret}", "--realm=confero.test", f"--listening-ip={ip}",
         f"--relay-ip={ip}", "--min-port=50000", "--max-port=50200",
         f"--pidfile={tmp_path / 'turnserver.pid'}", "--log-file=stdout", "--simple-log"],
        stdout=log, stderr=subprocess.STDOUT,
    )


@pytest.mark.timeout(300)
def test_direct_path_blocked_p2p_goes_through_a_turn_relay(
    netlab: Lab, tmp_path: Path
) -> None:
    """Neither hole punching nor host candidates can work (the sites cannot reach each
    other at all); the server hands out coturn credentials and the two still go
    peer-to-peer, through relay candidates, with the server forwarding nothing."""
    nat = nat_topology(netlab, 2)
    home_router_firewall(nat)
    cut_direct_path(nat)
    secret = os.urandom(12).hex()
    coturn = start_coturn(nat, tmp_path, secret)
    server, port = start_public_server(
        nat, tmp_path, "--turn-url", f"turn:{nat.sites[0].wan.a.ip}:3478",
        "--turn-secret", secret)
    started: list[BotProcess] = []
    try:
        alice = site_bot(nat, port, 0, "alice", "--create", "relay", "--audio", "sine:440")
        started.append(alice)
        meeting = str(alice.expect("joined", timeout=40)["meeting_id"])
        bob = site_bot(nat, port, 1, "bob", "--join", meeting, "--audio", "sine:660",
                       "--record", str(tmp_path / "bob"))
        started.append(bob)
        modes = {}
        for bot in (alice, bob):
            mode = bot.expect("mode", timeout=40)
            assert (mode["mode"], mode["reason"]) == ("p2p", "ice_connected"), mode
            assert "relay" in mode["path"], mode
            modes[bot.name] = mode
            # the server handed out TURN credentials for this session (events arrive in
            # either order around the join reply: look back through what was seen)
            start = next(e for e in bot.history if e["event"] == "p2p_start")
            assert start["turn"] is True, start
        joined = next(e for e in bob.history if e["event"] == "joined")
        print(f"join -> P2P via relay: {modes['bob']['t'] - joined['t']:.3f} s "
              f"(paths: alice {modes['alice']['path']}, bob {modes['bob']['path']})")
        for bot in (alice, bob):
            bot.expect("stats", _direct_only, timeout=20)

        # over 3 s the server receives and forwards nothing for the meeting while bob
        # decodes alice's video, which can only have come through the relay
        settled = alice.expect("stats", timeout=10)
        alice.expect("stats", lambda e: e["t"] >= settled["t"] + 0.5, timeout=10)
        alice.send("media")
        before = alice.expect("media", timeout=20)
        b0 = bob.expect("stats", timeout=10)
        b1 = bob.expect("stats", lambda e: e["t"] >= before["t"] + 3.0, timeout=30)
        alice.send("media")
        after = alice.expect("media", timeout=20)
        assert after["t"] - before["t"] >= 3.0
        assert before["mode"] == after["mode"] == "p2p"
        for counter in ("received_bytes", "forwarded_bytes", "mixed_bytes"):
            assert after[counter] == before[counter], (counter, before, after)
        assert _frames(b1, "alice") - _frames(b0, "alice") >= 30, (b0, b1)
        assert b1["paths"]["peer"]["dropped_auth"] == 0

        bob.send("leave")
        bob.finish(timeout=40)
        alice.send("leave")
        alice.finish(timeout=40)
        heard = tone_levels(tmp_path / "bob" / "audio.wav", [440, 660])
        assert heard[440] > -6 and heard[660] < -30, heard
    finally:
        for bot in started:
            bot.cleanup()
        server.terminate()
        server.wait(10)
        coturn.terminate()
        coturn.wait(10)
