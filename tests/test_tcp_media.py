"""Media over a WebSocket when a client's UDP cannot reach the server (issue 10).

The real server process and real bots. The blocked client's UDP is aimed at a dead port
(``--media-udp-port``: nothing listens there, so nothing ever comes back, as on a network
that drops UDP): it must notice, carry its media over ``/media`` on the signaling port,
and see and hear the others as they see and hear it, while they stay on UDP.
tests/test_netlab.py has the same with a network namespace that really drops UDP.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from confero.media.video import identity_code
from confero.server.media_ws import STREAM_HOST, MediaStreams
from confero.server.p2p_mode import ModeChange, ModeMachine, Start, Stop
from tests.bots import BotProcess, start_bot, tone_levels, video_identities
from tests.conftest import ServerProcess, free_port
from tests.test_media import wait_until_receiving
from tests.test_tls import self_signed


def metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.http + "metrics", timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


TONES = {"udp1": 440.0, "udp2": 660.0, "blocked": 880.0}


def test_a_client_without_udp_falls_back_to_tcp_and_everyone_sees_and_hears(
    server: ServerProcess, bots: list[BotProcess], tmp_path: Path
) -> None:
    dead_port = str(free_port())  # nothing listens: UDP sent there is never answered

    def launch(name: str, *args: str) -> BotProcess:
        return start_bot(bots, server.url, name, *args, "--audio", f"sine:{TONES[name]:g}",
                         "--record", str(tmp_path / name), "--check-stamps")

    first = launch("udp1", "--create", "tcp fallback", "--mode", "server")
    meeting = first.expect("joined")["meeting_id"]
    assert first.expect("transport")["transport"] == "udp"
    blocked = launch("blocked", "--join", meeting, "--media-udp-port", dead_port)
    second = launch("udp2", "--join", meeting)

    switched = blocked.expect("transport")
    assert switched["transport"] == "tcp", switched
    assert switched["reason"] == "udp_timeout", switched
    assert second.expect("transport")["transport"] == "udp"  # the others keep UDP

    for bot in bots:
        others = [n for n in TONES if n != bot.name]
        # 10 s of audio in this media session (a rejoin starts a new one): long enough
        # after the switch that the blocked one's tone fills most of every recording
        # (the FFT takes the median over half-second windows)
        wait_until_receiving(bot, others, frames=30, audio_packets=500, timeout=90)
    last = blocked.expect("stats")
    assert last["transport"]["transport"] == "tcp"
    assert last["transport"]["stream"]["received_packets"] > 150  # media came this way
    assert metric(server, "confero_media_stream_received_packets_total") > 150
    # a loaded machine can drop a signaling connection (the tests' 0.5 s heartbeat): a
    # rejoin opens a new media session, so count at least one media WebSocket
    assert metric(server, "confero_media_stream_opened_total") >= 1

    for bot in bots:
        bot.send("leave")
    done = {bot.name: bot.finish() for bot in bots}
    for name, summary in done.items():
        others = sorted(n for n in TONES if n != name)
        assert sorted(summary["video"]) == others, (name, summary["video"])
        for other in others:
            seen = summary["video"][other]
            assert seen["frames"] >= 30
            assert seen["stamps"] == {"match": seen["frames"]}
        for path in sorted((tmp_path / name).glob("video-*.webm")):
            # one sender per file, another member (a file is named by the SSRC when the
            # sender's name was not yet known, e.g. right after a rejoin)
            _, identities = video_identities(path)
            assert len(identities) <= 1, path
            assert identities <= {identity_code(other) for other in others}, path
        levels = tone_levels(tmp_path / name / "audio.wav", list(TONES.values()))
        for other in others:
            assert levels[TONES[other]] > -15, (name, "should hear", other, levels)
        assert levels[TONES[name]] < -40, (name, "hears itself", levels)
    assert done["blocked"]["transport"]["transport"] == "tcp"
    for bot in (first, second):  # the others never needed the WebSocket
        assert done[bot.name]["transport"]["transport"] == "udp"
        assert {e["transport"] for e in bot.history if e["event"] == "transport"} == {"udp"}


def test_a_tcp_client_keeps_a_two_person_meeting_on_the_server(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    """Two people would go peer-to-peer; one of them has no UDP: the server keeps (or
    brings back) the meeting on its own path, media flows through it, the reason is told."""
    host = start_bot(bots, server.url, "host", "--create", "auto meeting",
                     "--audio", "sine:440")
    meeting = host.expect("joined")["meeting_id"]
    guest = start_bot(bots, server.url, "guest", "--join", meeting, "--audio", "sine:660",
                      "--media-udp-port", str(free_port()))
    assert guest.expect("transport")["transport"] == "tcp"
    # whatever the ICE attempt did meanwhile, the session ends because of the TCP client
    stop = guest.expect("p2p_stop")
    assert stop["reason"] == "not_capable", stop
    # and from then on both receive through the server
    for bot, other in ((host, "guest"), (guest, "host")):
        before = wait_until_receiving(bot, [other], frames=1)
        wait_until_receiving(bot, [other], frames=before["video"][other]["frames_decoded"] + 30,
                             audio_packets=before["audio"]["packets"] + 100)
    final = host.expect("stats")
    assert final["mode"] == "server"
    for bot in bots:
        bot.send("leave")
        bot.finish()


# ---------------------------------------------------------------------- the parts alone


def test_a_peer_that_can_no_longer_do_p2p_ends_the_session_with_a_reason() -> None:
    """The server's mode machine: the same two people, but one's media moved to TCP."""
    machine = ModeMachine("auto")
    start = machine.members(["a", "b"], {"a", "b"}, 0.0)
    assert [type(action) for action in start] == [Start]
    session = machine.session
    assert machine.report("a", session, "connected", 0.5) == []
    assert machine.report("b", session, "connected", 0.6)[0] == ModeChange(
        "p2p", "ice_connected", session)
    out = machine.members(["a", "b"], {"a"}, 1.0)
    assert ModeChange("server", "not_capable", session) in out
    assert Stop(session, ("a", "b"), "not_capable") in out
    assert machine.mode == "server"
    assert machine.tick(100.0) == []  # and no new attempt while b cannot


async def test_media_streams_carry_datagrams_both_ways_and_drop_when_full() -> None:
    received: list[tuple[bytes, tuple[str, int]]] = []
    two_arrived = asyncio.Event()

    def receive(data: bytes, address: tuple[str, int]) -> None:
        received.append((data, address))
        if len(received) >= 2:
            two_arrived.set()

    in_use: set[tuple[str, int]] = set()
    streams = MediaStreams(receive, lambda: in_use, send_queue=4, idle_timeout=0.0)
    app = web.Application()
    app.router.add_get("/media", streams.handle)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        async with http.ws_connect(server.make_url("/media")) as ws:
            await ws.send_bytes(b"\x80" * 20)
            await ws.send_str("not media")
            await ws.send_bytes(b"\x81" * 30)
            await asyncio.wait_for(two_arrived.wait(), 5)
            (first, address), (second, same) = received
            assert (first, second) == (b"\x80" * 20, b"\x81" * 30)
            assert address == same and address[0] == STREAM_HOST
            assert streams.counters["dropped_not_binary"] == 1
            # sends never block: beyond the queue they are dropped and counted
            for n in range(10):
                streams.send(bytes([n]) * 12, address)
            assert streams.counters["send_queue_full"] == 6
            got = [await ws.receive_bytes(timeout=5) for _ in range(4)]
            assert got == [bytes([n]) * 12 for n in range(4)]
            streams.send(b"x" * 12, ("tcp", 999_999))  # nobody there
            assert streams.counters["dropped_no_stream"] == 1
            # in use: kept; no participant uses it any more: closed
            in_use.add(address)
            await streams.sweep(time.monotonic())
            assert not ws.closed and streams.open_streams == 1
            in_use.clear()
            await streams.sweep(time.monotonic() + 1)
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert streams.counters["closed_idle"] == 1
        await streams.close()


def test_over_tls_the_media_websocket_uses_the_servers_certificate(
    tmp_path: Path, server_factory: Callable[..., ServerProcess], bots: list[BotProcess]
) -> None:
    cert, key = self_signed(tmp_path)
    server = server_factory("--tls-cert", str(cert), "--tls-key", str(key))
    host = start_bot(bots, server.url, "host", "--create", "tls", "--mode", "server",
                     "--cafile", str(cert), "--audio", "sine:440")
    meeting = host.expect("joined")["meeting_id"]
    guest = start_bot(bots, server.url, "guest", "--join", meeting, "--cafile", str(cert),
                      "--audio", "sine:660", "--media-transport", "tcp")
    assert (guest.expect("transport")["transport"], guest.history[-1]["reason"]) == (
        "tcp", "forced")
    try:
        for bot, other in ((host, "guest"), (guest, "host")):
            wait_until_receiving(bot, [other], frames=20, audio_packets=50)
    except AssertionError as exc:  # say what the guest went through, too
        raise AssertionError(f"{exc}\nguest saw {[e['event'] for e in guest.history]}; "
                             f"stderr: {''.join(guest.stderr)[-2000:]}") from None
    for bot in bots:
        bot.send("leave")
        bot.finish()
