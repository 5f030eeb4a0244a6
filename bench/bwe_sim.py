"""Congestion control in pure simulation: the estimator, pacer and transport feedback on a
simulated bottleneck (tests/netsim.py), no sockets, simulated time.

    .venv/bin/python bench/bwe_sim.py                 # 2 Mbit/s -> 300 kbit/s -> 2 Mbit/s
    .venv/bin/python bench/bwe_sim.py --scenario 1m   # fixed 1 Mbit/s
    .venv/bin/python bench/bwe_sim.py --scenario loss # 5 % random loss, 10 Mbit/s
    .venv/bin/python bench/bwe_sim.py --scenario jitter  # 50 +/- 10 ms delay

Prints one JSON object: a time series every ``--every`` simulated seconds (capacity,
target, sent rate, bottleneck queue delay) and a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netsim import CallSim, Link


def _first(sim: CallSim, after: float, predicate: Any) -> float | None:
    for s in sim.samples:
        if s.t >= after and predicate(s):
            return round(s.t - after, 2)
    return None


def run(scenario: str) -> tuple[CallSim, dict[str, Any]]:
    summary: dict[str, Any] = {}
    if scenario == "step":
        sim = CallSim(Link(2_000_000, queue_bytes=60_000, delay=0.02))
        sim.run(15.0)
        sim.set_capacity(300_000)
        sim.run(25.0)
        sim.set_capacity(2_000_000)
        sim.run(40.0)
        summary["down_adapted_s"] = _first(sim, 15.0, lambda s: s.target_bps <= 330_000)
        summary["down_queue_below_150ms_s"] = _first(sim, 15.5, lambda s: s.queue_delay < 0.15)
        summary["up_80pct_s"] = _first(sim, 25.0, lambda s: s.target_bps >= 1_600_000)
        summary["max_queue_ms_steady_2mbit"] = round(
            1000 * max(d for t, d in sim.link.sojourns if 10 <= t < 15), 1)
    elif scenario == "1m":
        sim = CallSim(Link(1_000_000, queue_bytes=60_000, delay=0.02))
        sim.run(30.0)
        targets = sim.targets(10.0, 30.0)
        summary["target_range_after_10s"] = [min(targets), max(targets)]
        summary["max_queue_ms_after_10s"] = round(1000 * max(sim.sojourns(10.0, 30.0)), 1)
    elif scenario == "loss":
        sim = CallSim(Link(10_000_000, queue_bytes=200_000, delay=0.02, loss=0.05))
        sim.run(30.0)
        summary["min_target"] = min(sim.targets(1.0, 30.0))
    elif scenario == "jitter":
        sim = CallSim(Link(10_000_000, queue_bytes=200_000, delay=0.05, jitter=0.01))
        sim.run(30.0)
        summary["min_target"] = min(sim.targets(0.0, 30.0))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    summary.update(
        final_target_bps=sim.bwe.target_bps,
        overuse_decreases=sim.bwe.rate.decreases,
        standing_queue_drains=sim.bwe.drains,
        delay_rebaselines=sim.bwe.rebaselines,
        packets_lost_seen=sim.bwe.packets_lost,
        link_tail_drops=sim.link.tail_drops,
        link_random_losses=sim.link.random_losses,
        pacer_dropped_video=sim.pacer.dropped_video,
    )
    return sim, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="step", choices=["step", "1m", "loss", "jitter"])
    parser.add_argument("--every", type=float, default=0.25, help="series step, seconds")
    args = parser.parse_args()
    sim, summary = run(args.scenario)
    series: list[dict[str, float]] = []
    next_t = 0.0
    for s in sim.samples:
        if s.t + 1e-9 >= next_t:
            series.append({
                "t": round(s.t, 3),
                "capacity_bps": s.capacity_bps,
                "target_bps": s.target_bps,
                "sent_bps": round(s.sent_bps),
                "queue_delay_ms": round(s.queue_delay * 1000, 1),
            })
            next_t += args.every
    print(json.dumps({"scenario": args.scenario, "summary": summary, "series": series}))


if __name__ == "__main__":
    main()
