"""Media over a WebSocket (UDP blocked, issue 10): how fast the fallback, what TCP costs.

    .venv/bin/python bench/tcp_fallback_bench.py [--runs 3] [--seconds 10]

1. Fallback: per run a server and two bots on loopback, ``--mode server``; the second
   bot's UDP goes to a dead port (nothing ever answers, as on a network dropping UDP).
   Reported: the session's own open-to-WebSocket-carrying time (``after_ms`` of its
   ``transport`` event) and join-to-first-video (its ``joined`` to its ``video_started``).
2. Cost: the same two-bot meeting with both bots on UDP, then both forced onto the
   WebSocket (``--media-transport tcp``), 320x240 at 30 fps plus Opus, ``--seconds`` of
   steady media each: capture-to-decoded video delay (median and p95 of each receiver's
   per-second medians) and the CPU seconds the server and the bots used in that window.
3. Transport alone: round trips of 1200-byte datagrams (200 a second) to an echo process
   on loopback, over UDP and over a WebSocket with aiohttp (what the client and server
   use), and the echo process' CPU per 1000 datagrams: the transport's own share of 2.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bots import BotProcess  # noqa: E402
from tests.conftest import ServerProcess, free_port, start_server  # noqa: E402

Event = dict[str, Any]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def receiving(event: Event, other: str, frames: int) -> bool:
    video = event["video"].get(other)
    return bool(video) and int(video["frames_decoded"]) >= frames


def fallback_run(server: ServerProcess) -> dict[str, Any]:
    bots: list[BotProcess] = []
    try:
        alice = BotProcess(server.url, "alice", "--create", "bench", "--mode", "server",
                           "--audio", "sine:440", "--stats-interval", "0.5")
        bots.append(alice)
        meeting = alice.expect("joined", timeout=30)["meeting_id"]
        bob = BotProcess(server.url, "bob", "--join", meeting, "--audio", "sine:660",
                         "--media-udp-port", str(free_port()), "--stats-interval", "0.5")
        bots.append(bob)
        joined = bob.expect("joined", timeout=30)
        transport = bob.expect("transport", timeout=30)
        first_video = bob.expect("video_started", timeout=30)
        for bot in bots:
            bot.send("leave")
            bot.finish()
        return {"transport": transport["transport"], "after_ms": transport["after_ms"],
                "join_to_first_video_ms": round((first_video["t"] - joined["t"]) * 1000)}
    finally:
        for bot in bots:
            bot.cleanup()


def cost_run(server: ServerProcess, transport: str, seconds: float) -> dict[str, Any]:
    bots: list[BotProcess] = []
    common = ["--audio", "sine:440", "--stats-interval", "1", "--media-transport", transport]
    try:
        alice = BotProcess(server.url, "alice", "--create", "bench", "--mode", "server",
                           *common)
        bots.append(alice)
        meeting = alice.expect("joined", timeout=30)["meeting_id"]
        bob = BotProcess(server.url, "bob", "--join", meeting, *common)
        bots.append(bob)
        for bot, other in ((alice, "bob"), (bob, "alice")):
            bot.expect("stats", lambda e, o=other: receiving(e, o, 60), timeout=60)
        pids = {"server": server.proc.pid, "alice": alice.proc.pid, "bob": bob.proc.pid}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        delays: dict[str, list[float]] = {"alice": [], "bob": []}
        transports: dict[str, str] = {}
        while time.monotonic() - started < seconds:
            for bot, other in ((alice, "bob"), (bob, "alice")):
                event = bot.expect("stats", timeout=10)
                delay = event["video"].get(other, {}).get("delay_ms")
                if delay is not None:
                    delays[bot.name].append(float(delay))
                transports[bot.name] = event["transport"]["transport"]
        elapsed = time.monotonic() - started
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for bot in bots:
            bot.send("leave")
            bot.finish()
        all_delays = delays["alice"] + delays["bob"]
        return {
            "transports": transports,
            "seconds": round(elapsed, 1),
            "video_delay_ms": {
                "median": round(statistics.median(all_delays), 1),
                "p95": round(sorted(all_delays)[int(0.95 * (len(all_delays) - 1))], 1),
                "samples": len(all_delays)},
            "cpu_percent": {name: round((after[name] - before[name]) / elapsed * 100, 1)
                            for name in pids},
        }
    finally:
        for bot in bots:
            bot.cleanup()


ECHO = """
import asyncio, socket, sys
from aiohttp import web, WSMsgType

class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport): self.transport = transport
    def datagram_received(self, data, addr): self.transport.sendto(data, addr)

async def ws(request):
    sock = web.WebSocketResponse(compress=False, max_msg_size=1500)
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock

async def main():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    app = web.Application()
    app.router.add_get("/media", ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(transport.get_extra_info("sockname")[1], runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def _round_trips(kind: str, port: int, count: int, rate: float) -> list[float]:
    import aiohttp

    payload = bytes(1200)
    rtts: list[float] = []
    loop = asyncio.get_running_loop()
    if kind == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        try:
            for _ in range(count):
                sent = time.perf_counter()
                await loop.sock_sendall(sock, payload)
                await loop.sock_recv(sock, 2048)
                rtts.append((time.perf_counter() - sent) * 1000)
                await asyncio.sleep(1 / rate)
        finally:
            sock.close()
        return rtts
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"ws://127.0.0.1:{port}/media", compress=0) as ws:
        for _ in range(count):
            sent = time.perf_counter()
            await ws.send_bytes(payload)
            await ws.receive_bytes(timeout=5)
            rtts.append((time.perf_counter() - sent) * 1000)
            await asyncio.sleep(1 / rate)
    return rtts


def transport_only(count: int = 1000, rate: float = 200.0) -> dict[str, Any]:
    echo = subprocess.Popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        udp_port, ws_port = (int(p) for p in echo.stdout.readline().split())
        out: dict[str, Any] = {}
        for kind, port in (("udp", udp_port), ("websocket", ws_port)):
            before = cpu_seconds(echo.pid)
            rtts = sorted(asyncio.run(_round_trips(kind, port, count, rate)))
            used = cpu_seconds(echo.pid) - before
            out[kind] = {"rtt_p50_ms": round(rtts[len(rtts) // 2], 3),
                         "rtt_p95_ms": round(rtts[int(0.95 * (len(rtts) - 1))], 3),
                         "echo_cpu_ms_per_1000": round(used * 1000 / count * 1000, 1)}
        return out
    finally:
        echo.kill()
        echo.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only-transport", action="store_true",
                        help="only part 3 (no server, no bots)")
    args = parser.parse_args()
    if args.only_transport:
        print(json.dumps({"transport_only": transport_only()}, indent=1))
        return
    result: dict[str, Any] = {"machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_1min": round(os.getloadavg()[0], 1)}}
    with tempfile.TemporaryDirectory() as data:
        fallbacks = []
        for run in range(args.runs):
            server = start_server(Path(data) / f"f{run}")
            try:
                fallbacks.append(fallback_run(server))
            finally:
                server.stop()
        result["fallback"] = {
            "runs": fallbacks,
            "after_ms_median": statistics.median(r["after_ms"] for r in fallbacks),
            "join_to_first_video_ms_median": statistics.median(
                r["join_to_first_video_ms"] for r in fallbacks),
        }
        cost: dict[str, list[dict[str, Any]]] = {"udp": [], "tcp": []}
        for run in range(args.runs):
            for transport in ("udp", "tcp"):  # interleaved: load drifts hit both alike
                server = start_server(Path(data) / f"c{run}{transport}")
                try:
                    cost[transport].append(cost_run(server, transport, args.seconds))
                finally:
                    server.stop()
        result["cost"] = cost
        result["summary"] = {
            transport: {
                "video_delay_median_ms": statistics.median(
                    r["video_delay_ms"]["median"] for r in runs),
                "video_delay_p95_ms": statistics.median(r["video_delay_ms"]["p95"] for r in runs),
                "server_cpu_percent": statistics.median(r["cpu_percent"]["server"] for r in runs),
                "bot_cpu_percent": round(statistics.median(
                    (r["cpu_percent"]["alice"] + r["cpu_percent"]["bob"]) / 2 for r in runs), 1),
            }
            for transport, runs in cost.items()
        }
    result["transport_only"] = transport_only()
    result["machine"]["load_1min_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
