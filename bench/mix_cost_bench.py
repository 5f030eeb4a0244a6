"""What one meeting's audio mixing costs the server's event loop, by number of speakers.

The mixer runs on the event loop every 20 ms (issue 7, item 11): a meeting whose mix takes
a large share of 20 ms delays every other meeting's mix and all signaling. This drives the
real :class:`~confero.server.mixer.MeetingMixer` with N people all talking (the worst
case: N decodes and N + 1 encodes per tick) and prints, per N, the CPU time of one tick
and the share of the 20 ms budget it takes.

    .venv/bin/python bench/mix_cost_bench.py --speakers 2,4,8,16,24,50 --ticks 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from confero.media.audio import OpusEncoder, SineSource
from confero.server.mixer import MeetingMixer

TICK = 0.020
FRAME_TICKS = 960  # 20 ms at 48 kHz


def measure(speakers: int, ticks: int) -> dict[str, float]:
    mixer = MeetingMixer()
    sources = []
    for n in range(speakers):
        mixer.add(f"p{n}")
        sources.append((f"p{n}", SineSource(200.0 + 40 * n), OpusEncoder()))
    # Pre-encode so only the mixer's own work is timed.
    frames = [[(pid, enc.encode(src.next_frame())) for pid, src, enc in sources]
              for _ in range(ticks)]
    costs: list[float] = []
    for tick, batch in enumerate(frames):
        now = tick * TICK
        started = time.perf_counter()
        for pid, payload in batch:
            mixer.push(pid, tick * FRAME_TICKS, payload, 30, now)
        mixer.mix()
        costs.append(time.perf_counter() - started)
    costs = costs[10:]  # the jitter buffers fill first
    median = statistics.median(costs)
    return {
        "speakers": speakers,
        "tick_ms_median": round(median * 1000, 3),
        "tick_ms_p95": round(sorted(costs)[int(len(costs) * 0.95)] * 1000, 3),
        "loop_share_median": round(median / TICK, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", default="2,4,8,16,24")
    parser.add_argument("--ticks", type=int, default=200)
    args = parser.parse_args()
    results = [measure(int(n), args.ticks) for n in args.speakers.split(",")]
    print(json.dumps({"machine": platform.machine(), "cpus": __import__("os").cpu_count(),
                      "results": results}))


if __name__ == "__main__":
    main()
