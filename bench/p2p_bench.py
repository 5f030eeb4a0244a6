"""Peer-to-peer benchmark: join-to-P2P time and what each mode switch costs.

    sudo .venv/bin/python bench/p2p_bench.py [--runs 3] [--fps 30 --width 320 --height 240]

Builds the NAT topology of ``tests/netlab.py`` (each bot behind its own masquerading
router with a home-router input filter, the server in the public namespace), then per run:
alice creates, bob joins -> P2P (server-reflexive candidates); 6 s of P2P during which the
server's per-meeting counters must not move; bob asks for the server (3 s around the
switch, then 4 s steady); carol joins and leaves; P2P again (3 s around the switch).
Prints one JSON object: per run the join-to-P2P times (to the server's
``mode_changed`` and to "the server path is idle"), the server's received/forwarded bytes
over the P2P window, video frame rates, freezes (> 100 ms between decoded frames) and
concealed audio frames in each phase, the duration of every switch, and bob's recording's
20 ms frames without alice's tone between the first and last audible ones. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bots import BotProcess  # noqa: E402
from tests.conftest import read_json_line  # noqa: E402
from tests.netlab import Lab, nat_topology  # noqa: E402
from tests.test_p2p import home_router_firewall  # noqa: E402

Event = dict[str, Any]


def _direct_only(event: Event) -> bool:
    paths = event.get("paths") or {}
    return paths.get("mode") == "p2p" and paths.get("to_server") is False


def _fresh(bot: BotProcess) -> Event:
    """The first stats event printed from now on (earlier ones may still be queued)."""
    now = time.time()
    return bot.expect("stats", lambda e: e["t"] >= now, timeout=20)


def _phase(start: Event, end: Event, peer: str) -> dict[str, Any]:
    """What changed between two stats events of one bot, for the stream of ``peer``."""
    v0, v1 = start["video"].get(peer, {}), end["video"].get(peer, {})
    g0, g1 = start["gaps"].get(peer, {}), end["gaps"].get(peer, {})
    p0, p1 = start["paths"]["playout"], end["paths"]["playout"]
    seconds = end["t"] - start["t"]
    frames = v1.get("frames_decoded", 0) - v0.get("frames_decoded", 0)
    return {
        "seconds": round(seconds, 2),
        "fps": round(frames / seconds, 1) if seconds > 0 else None,
        "freezes_over_100ms": g1.get("over_100ms", 0) - g0.get("over_100ms", 0),
        # either path's buffer running out, heard or not (the path being left runs dry
        # under its fade-out) ...
        "audio_concealed": (p1["mix_concealed"] + p1["direct_concealed"]
                            - p0["mix_concealed"] - p0["direct_concealed"]),
        # ... and what reached the listener's ear concealed
        "audio_concealed_heard": p1["heard_concealed"] - p0["heard_concealed"],
        "audio_silent_frames": p1["silent"] - p0["silent"],
    }


def tone_dropouts(wav_path: Path, frequency: float) -> dict[str, int]:
    """20 ms frames without the tone between its first and last audible frame."""
    with wave.open(str(wav_path)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    size = rate // 50
    frames = samples[: len(samples) // size * size].reshape(-1, size).astype(np.float64)
    t = np.arange(size) / rate
    probe = np.exp(-2j * np.pi * frequency * t)
    level = np.abs(frames @ probe) / size  # the tone's amplitude in each frame
    audible = np.nonzero(level > 0.25 * np.median(level[level > np.max(level) * 0.1]))[0]
    if len(audible) == 0:
        return {"frames": 0, "dropouts": 0}
    span = level[audible[0] : audible[-1] + 1]
    reference = float(np.median(span))
    low = np.nonzero(span < 0.25 * reference)[0]
    runs: list[list[float]] = []  # [second into the recording, frames]
    for index in low:
        if runs and index == runs[-1][2]:
            runs[-1][1] += 1
            runs[-1][2] += 1
        else:
            runs.append([round((audible[0] + index) * 0.02, 2), 1, index + 1])
    return {"frames": len(span), "dropouts": len(low),
            "longest": max((r[1] for r in runs), default=0),
            "runs": [r[:2] for r in runs][:30]}


def one_run(run: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    common = ["--video", "synthetic", "--fps", str(args.fps), "--width", str(args.width),
              "--height", str(args.height), "--stats-interval", "0.25"]
    with Lab() as lab:
        nat = nat_topology(lab, 3)
        home_router_firewall(nat)
        server = nat.public.popen(
            [sys.executable, "-m", "confero.cli", "server", "--host", "0.0.0.0", "--port",
             "0", "--media-port", "0", "--data-dir", str(work / f"data{run}")],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        port = str(read_json_line(server, 30)["url"]).rsplit(":", 1)[1].split("/")[0]

        def bot(site: int, name: str, *extra: str) -> BotProcess:
            return BotProcess(f"ws://{nat.sites[site].wan.a.ip}:{port}/ws", name, *extra,
                              *common, prefix=nat.sites[site].client.argv([]))

        bots: list[BotProcess] = []
        try:
            alice = bot(0, "alice", "--create", "bench", "--audio", "sine:440")
            bots.append(alice)
            meeting = str(alice.expect("joined", timeout=60)["meeting_id"])
            bob = bot(1, "bob", "--join", meeting, "--audio", "sine:660",
                      "--record", str(work / f"bob{run}"))
            bots.append(bob)
            joined = bob.expect("joined", timeout=60)
            recording_from = time.time()
            to_p2p = bob.expect("mode", lambda e: e["mode"] == "p2p", timeout=60)
            switch_times = [to_p2p["t"]]
            idle = bob.expect("stats", _direct_only, timeout=30)
            alice.expect("stats", _direct_only, timeout=30)
            first_switch = idle["paths"]["switches"][-1]
            alice.expect("stats", lambda e: e["t"] >= idle["t"] + 0.5, timeout=10)
            alice.send("media")
            before = alice.expect("media", timeout=20)
            p2p_start = _fresh(bob)
            p2p_end = bob.expect("stats", lambda e: e["t"] >= p2p_start["t"] + args.window,
                                 timeout=60)
            alice.send("media")
            after = alice.expect("media", timeout=20)

            # p2p -> server without extra load: bob asks for the server
            pre_switch = _fresh(bob)
            bob.send("server")
            switch_times.append(
                bob.expect("mode", lambda e: e["mode"] == "server", timeout=60)["t"])
            bob.expect("stats", lambda e: e["paths"]["to_peer"] is False, timeout=30)
            after_switch = bob.expect("stats", lambda e: e["t"] >= pre_switch["t"] + 3,
                                      timeout=60)
            server_end = bob.expect("stats", lambda e: e["t"] >= after_switch["t"] + 4,
                                    timeout=60)
            # a third person comes and goes; the two go peer-to-peer again
            carol = bot(2, "carol", "--join", meeting, "--audio", "none")
            bots.append(carol)
            carol.expect("stats", lambda e: e["video"].get("alice", {}).get(
                "frames_decoded", 0) > 0, timeout=60)
            pre_p2p = _fresh(bob)
            carol.send("leave")
            carol.finish(timeout=60)
            switch_times.append(
                bob.expect("mode", lambda e: e["mode"] == "p2p", timeout=60)["t"])
            again = bob.expect("stats", _direct_only, timeout=30)
            final = bob.expect("stats", lambda e: e["t"] >= pre_p2p["t"] + 3, timeout=60)
            # a third person joins the P2P meeting: how soon they see and hear both, and
            # what the two see meanwhile (the meeting goes back through the server)
            pre_third = _fresh(bob)
            dave = bot(2, "dave", "--join", meeting, "--audio", "none")
            bots.append(dave)
            dave_joined = dave.expect("joined", timeout=60)
            sees = {}
            while len(sees) < 2:
                started = dave.expect("video_started", timeout=30)
                sees[started["name"]] = started["after_join_ms"]
            hears = dave.expect("stats", lambda e: e.get("audio", {}).get(
                "frames_decoded", 0) > 0, timeout=30)
            third_done = bob.expect("stats", lambda e: e["t"] >= pre_third["t"] + 4,
                                    timeout=60)
            dave.send("leave")
            dave.finish(timeout=60)
            bob.send("leave")
            bob.finish(timeout=60)
            alice.send("leave")
            alice.finish(timeout=60)
            switches = final["paths"]["switches"]
            return {
                "join_to_p2p_ms": round((to_p2p["t"] - joined["t"]) * 1000),
                "join_to_server_idle_ms": round((idle["t"] - joined["t"]) * 1000),
                "first_switch_ms": first_switch["ms"],
                "switches": switches,
                "p2p_window": {
                    "seconds": round(after["t"] - before["t"], 2),
                    "server_received_bytes": after["received_bytes"] - before["received_bytes"],
                    "server_forwarded_bytes": (after["forwarded_bytes"]
                                               - before["forwarded_bytes"]),
                    "server_mixed_bytes": after["mixed_bytes"] - before["mixed_bytes"],
                    **_phase(p2p_start, p2p_end, "alice"),
                },
                "p2p_to_server_switch": _phase(pre_switch, after_switch, "alice"),
                "server_steady": _phase(after_switch, server_end, "alice"),
                "server_to_p2p_switch": _phase(pre_p2p, final, "alice"),
                "back_to_p2p_after_leave_ms": round((again["t"] - pre_p2p["t"]) * 1000),
                "third_joins_p2p": {
                    "sees_ms": sees,
                    # stats come every 0.25 s: this is an upper bound
                    "hears_within_ms": round((hears["t"] - dave_joined["t"]) * 1000),
                    "bob_sees_alice": _phase(pre_third, third_done, "alice"),
                },
                "bob_hears_alice": tone_dropouts(work / f"bob{run}" / "audio.wav", 440),
                "switch_times_s": [round(t - recording_from, 2) for t in switch_times],
            }
        finally:
            for b in bots:
                b.cleanup()
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--window", type=float, default=6.0, help="seconds of P2P measured")
    parser.add_argument("--keep", type=Path, help="keep recordings and data here")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        runs = [one_run(i, args, args.keep) for i in range(args.runs)]
    else:
        with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
            runs = [one_run(i, args, Path(tmp)) for i in range(args.runs)]
    joins = [r["join_to_p2p_ms"] for r in runs]
    print(json.dumps({
        "bench": "p2p",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "video": f"{args.width}x{args.height}@{args.fps}",
        "join_to_p2p_ms_median": statistics.median(joins),
        "runs": runs,
    }, indent=1))


if __name__ == "__main__":
    main()
