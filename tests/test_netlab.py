"""The bad-network rig (tests/netlab.py) end to end: namespaces, loss, delay, a real meeting.

These need root and iproute2/nftables/iptables plus the netfilterqueue package; CI has
them (.ci/run), and the ``netlab`` fixture fails, not skips, where they are missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.bots import BotProcess, tone_levels
from tests.conftest import read_json_line
from tests.netlab import Impairment, Lab, nat_topology, star


def test_loss_and_delay_act_on_the_link(netlab: Lab) -> None:
    topology = star(netlab, ["client"])
    client, down = topology.clients["client"], topology.downlink("client")
    server_ip = down.ip
    down.impair(Impairment(delay_ms=60, udp_only=False))
    out = client.run(["ping", "-c", "3", "-i", "0.2", "-W", "5", server_ip]).stdout
    rtts = [float(v) for v in re.findall(r"time=([\d.]+) ms", out)]
    assert len(rtts) == 3, out
    assert min(rtts) >= 55, out  # the replies waited in the delayer (a lower bound only)
    assert down.counters()["queue"] >= 3

    down.impair(Impairment(loss_pct=100, udp_only=False))
    lost = client.run(["ping", "-c", "2", "-i", "0.2", "-W", "1", server_ip], check=False)
    assert lost.returncode != 0 and " 0 received" in lost.stdout, lost.stdout
    assert down.counters()["drop"] >= 2

    down.clear()
    assert client.run(["ping", "-c", "1", "-W", "5", server_ip], check=False).returncode == 0


def test_a_bot_behind_a_lossy_link_still_gets_video_and_audio(
    netlab: Lab, tmp_path: Path
) -> None:
    topology = star(netlab, ["alice", "victim"])
    lossy = Impairment(loss_pct=10)
    topology.downlink("victim").impair(lossy)
    topology.uplink("victim").impair(lossy)
    server = topology.server.popen(
        [sys.executable, "-m", "confero.cli", "server", "--host", "0.0.0.0", "--port", "0",
         "--media-port", "0", "--data-dir", str(tmp_path / "data"), "--empty-grace", "3"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    port = str(read_json_line(server, 30)["url"]).rsplit(":", 1)[1].split("/")[0]
    started: list[BotProcess] = []
    try:
        common = ["--video", "synthetic", "--fps", "15", "--stats-interval", "0.5",
                  "--check-stamps"]
        alice = BotProcess(f"ws://{topology.links['alice'].a.ip}:{port}/ws", "alice",
                           "--create", "lossy", "--audio", "sine:437", *common,
                           prefix=topology.clients["alice"].argv([]))
        started.append(alice)
        meeting = str(alice.expect("joined", timeout=30)["meeting_id"])
        victim = BotProcess(f"ws://{topology.links['victim'].a.ip}:{port}/ws", "victim",
                            "--join", meeting, "--audio", "sine:691",
                            "--record", str(tmp_path / "rec"), *common,
                            prefix=topology.clients["victim"].argv([]))
        started.append(victim)
        victim.expect("joined", timeout=30)
        victim.expect("video_started", lambda e: e["name"] == "alice", timeout=30)
        victim.expect("stats", lambda e: e["video"].get("alice", {}).get(
            "frames_decoded", 0) >= 30, timeout=40)
        victim.send("leave")
        done = victim.finish()
        seen = done["video"]["alice"]
        assert seen["stamps"].get("match", 0) >= 30 and not seen["stamps"].get("mismatch")
        # the link really lost packets both ways while the meeting went on
        assert topology.downlink("victim").counters()["drop"] > 0
        assert topology.uplink("victim").counters()["drop"] > 0
        levels = tone_levels(tmp_path / "rec" / "audio.wav", [437, 691])
        assert levels[437] > -6, levels  # alice's tone is what the victim hears
        assert levels[691] < -30, levels  # and not its own
    finally:
        for bot in started:
            bot.cleanup()


def test_nat_topology_hides_clients_behind_their_routers(netlab: Lab) -> None:
    """What a peer-to-peer test builds on: a client's datagrams reach the public namespace
    from its router's public address, and the other site's router is reachable."""
    nat = nat_topology(netlab, 2)
    echo = nat.public.popen(
        [sys.executable, "-c",
         "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         "s.bind(('0.0.0.0', 40000)); print('ready', flush=True); "
         "data, peer = s.recvfrom(100); print(peer[0], flush=True)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    site = nat.sites[0]
    site.client.run([sys.executable, "-c",
                     "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                     f".sendto(b'hi', ('{site.wan.a.ip}', 40000))"])
    assert echo.stdout.readline().strip() == site.wan.b.ip  # masqueraded, not 192.168.x
    assert echo.wait(10) == 0
    other = nat.sites[1].wan.b.ip
    assert site.client.run(["ping", "-c", "1", "-W", "5", other], check=False).returncode == 0
