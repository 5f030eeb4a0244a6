"""Issue 7 item 1 replayed: stalled readers asking for ~1 MB join results; server RSS.

A meeting gets 300 chat lines of ~3.8 kB; then, for 12 s, a new raw WebSocket each second
asks for the meeting 20 times (join + leave) and never reads. Prints the server's RSS
before, at its peak, and 5 s after. Run from the repository root:

    .venv/bin/python bench/slow_reader_bench.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confero.client import Client
from tests.conftest import start_server
from tests.test_server import StalledClient


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0

async def main() -> None:
    srv = start_server(Path(tempfile.mkdtemp()), "--rate-limit", "1000", "--rate-burst",
                       "1000")
    pid = srv.proc.pid
    try:
        async with Client(srv.url, "alice") as alice:
            mid = (await alice.create_meeting("h")).meeting.id
            for n in range(300):
                await alice.send_chat(f"{n} " + "\u00e9" * 1900)
            before = rss(pid)
            peak = before
            sloths = []
            for round_ in range(12):  # a new stalled reader each second, 20 joins each
                sloth = StalledClient(srv.url)
                sloths.append(sloth)
                sloth.send(0x1, json.dumps({"type": "hello", "id": 1, "version": 1,
                                            "name": f"s{round_}"}).encode())
                for n in range(20):
                    sloth.send(0x1, json.dumps({"type": "join_meeting", "id": 2 + 2 * n,
                                                "meeting_id": mid}).encode())
                    sloth.send(0x1, json.dumps({"type": "leave_meeting",
                                                "id": 3 + 2 * n}).encode())
                await asyncio.sleep(1)  # the attack's pace
                peak = max(peak, rss(pid))
            await asyncio.sleep(5)
            print(json.dumps({"rss_before_mib": before, "rss_peak_mib": peak,
                              "rss_after_mib": rss(pid)}))
            for sloth in sloths:
                sloth.sock.close()
    finally:
        srv.stop()
if __name__ == "__main__":
    asyncio.run(main())
