"""Chat fan-out through a real server process: delivery latency, throughput, server CPU.

Starts ``confero server`` on a free port, fills ``--meetings`` meetings with ``--size``
clients each (all clients live in this process, so one clock times send and receipt), has
every client send ``--messages`` chat lines at ``--rate`` lines/s, and prints one JSON
object: latency percentiles from a sender's ``send`` to each receiver's event, messages
delivered per second, and server CPU per delivered message (from /proc).

    .venv/bin/python bench/chat_bench.py --meetings 10 --size 5 --messages 40 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confero.client import ChatEvent, Client, ClientEvent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(data_dir: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "confero.cli", "server", "--port", "0", "--media-port", "0",
         "--data-dir", data_dir],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, str(ready["url"])


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as data_dir:
        proc, url = start_server(data_dir)
        try:
            return await measure(args, proc.pid, url)
        finally:
            proc.terminate()
            proc.wait(10)


async def measure(args: argparse.Namespace, pid: int, url: str) -> dict[str, object]:
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    expected = args.meetings * args.size * args.size * args.messages
    done = asyncio.Event()

    def on_event(event: ClientEvent) -> None:
        if isinstance(event, ChatEvent):
            latencies.append(time.perf_counter() - sent_at[event.message.text])
            if len(latencies) == expected:
                done.set()

    groups: list[list[Client]] = []
    for m in range(args.meetings):
        members = [Client(url, f"m{m}u{u}") for u in range(args.size)]
        for client in members:
            await client.connect()
            client.add_listener(on_event)
        mid = (await members[0].create_meeting(f"bench {m}")).meeting.id
        for client in members[1:]:
            await client.join(mid)
        groups.append(members)

    async def talk(client: Client) -> None:
        for i in range(args.messages):
            text = f"{client.name}#{i}"
            sent_at[text] = time.perf_counter()
            await client.send_chat(text)
            await asyncio.sleep(1 / args.rate)

    cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(talk(c) for members in groups for c in members))
    await asyncio.wait_for(done.wait(), 60)
    wall = time.perf_counter() - wall_before
    cpu = cpu_seconds(pid) - cpu_before
    for members in groups:
        for client in members:
            await client.close()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "bench": "chat_fanout",
        "meetings": args.meetings,
        "clients_per_meeting": args.size,
        "messages_per_client": args.messages,
        "send_rate_per_client_hz": args.rate,
        "deliveries": len(latencies),
        "latency_ms": {
            "p50": round(statistics.median(ms), 2),
            "p95": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "p99": round(ms[int(0.99 * (len(ms) - 1))], 2),
            "max": round(ms[-1], 2),
        },
        "deliveries_per_s": round(len(latencies) / wall, 1),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_delivery": round(cpu / len(latencies) * 1e6, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meetings", type=int, default=10)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--rate", type=float, default=10.0)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
