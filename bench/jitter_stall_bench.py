"""Audio jitter buffers under CPU contention, simulated: how many frames are concealed or
thrown away when the processes are not scheduled for a while (a busy machine).

    .venv/bin/python bench/jitter_stall_bench.py [--src OTHER_CHECKOUT/src]

Scheduling stalls (exponential lengths, exponential gaps) hit the sender (its pacer then
sends the frames it owes in a burst) and the receiver (packets wait, then arrive in a
burst; the playout clock also waits, as a bot's emulated sound device on the event loop
does). 3000 frames (60 s) per run, four seeds per scenario; the same buffer settings as
the client's playout and the server mixer's inputs. Simulated time: the figures do not
depend on the machine. ``--src`` runs the same against another checkout (e.g. an older
commit, for the comparison in docs/performance.md). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SCENARIOS = ((0.15, 0.015), (0.5, 0.04), (1.0, 0.08))  # (mean gap, mean stall) seconds


def stalls(rng: random.Random, total: float, every: float, mean: float
           ) -> list[tuple[float, float]]:
    out, t = [], 0.0
    while t < total:
        t += rng.expovariate(1 / every)
        length = rng.expovariate(1 / mean)
        out.append((t, t + length))
        t += length
    return out


def after_stalls(intervals: list[tuple[float, float]], t: float) -> float:
    for start, end in intervals:
        if start <= t < end:
            return end
        if start > t:
            break
    return t


def run(make: object, seed: int, every: float, mean: float, frames: int = 3000
        ) -> dict[str, float]:
    rng = random.Random(seed)
    total = frames * 0.02 + 2
    sender, receiver = stalls(rng, total, every, mean), stalls(rng, total, every, mean)
    events = []
    for k in range(frames):
        sent = after_stalls(sender, k * 0.02)
        arrived = sent + 0.001 + rng.uniform(0, 0.002)
        events.append((after_stalls(receiver, arrived), 0, k))
        events.append((after_stalls(receiver, k * 0.02 + 0.010), 1, k))
    buffer = make()  # type: ignore[operator]
    lost_marker = sys.modules["confero.protocol.audio_jitter"].LOST
    concealed = depth = 0
    for _, kind, k in sorted(events):
        if kind == 0:
            buffer.push(k * 960, b"x", _)
        else:
            concealed += buffer.pop() is lost_marker
            depth += buffer.depth
    return {"concealed": concealed, "shed": buffer.dropped_for_latency,
            "mean_depth_frames": depth / frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    args = parser.parse_args()
    sys.path.insert(0, args.src)
    from confero.protocol.audio_jitter import AudioJitterBuffer

    configs = {
        "client": lambda: AudioJitterBuffer(target=2, min_target=1, max_target=10,
                                            hold_on_underrun=True),
        "mixer_input": lambda: AudioJitterBuffer(target=1, min_target=1, max_target=8,
                                                 capacity=25, hold_on_underrun=True),
    }
    result: dict[str, object] = {"src": args.src, "frames_per_run": 3000, "seeds": 4}
    for name, make in configs.items():
        rows = []
        for every, mean in SCENARIOS:
            runs = [run(make, seed, every, mean) for seed in range(4)]
            glitches = sum(r["concealed"] + r["shed"] for r in runs) / 4
            rows.append({
                "stall_every_s": every, "stall_mean_ms": mean * 1000,
                "concealed": sum(r["concealed"] for r in runs) / 4,
                "shed": sum(r["shed"] for r in runs) / 4,
                "glitch_percent": round(100 * glitches / 3000, 2),
                "mean_depth_ms": round(20 * sum(r["mean_depth_frames"] for r in runs) / 4, 1),
            })
        result[name] = rows
    print(json.dumps(result))


if __name__ == "__main__":
    main()
