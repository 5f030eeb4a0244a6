"""A 3-person meeting with one person (the victim) behind an impaired link (issue 9).

The real server runs in its own network namespace; each of three ``confero bot``
processes sits in its own namespace behind a veth to it. Two links stay clean; the
victim's is impaired by ``tests/netlab.py`` (nftables loss, an NFQUEUE delayer, tbf caps;
``tc netem`` does not exist in this kernel). Every bot sends the synthetic camera and a
sine tone that is not a multiple of 50 Hz, records what it receives and checks the stamps.
After a warm-up, a window of ``--duration`` seconds is measured, for the victim and for
the unimpaired participants:

- video frames decoded (% of the frames each sender took from its camera in the window),
- frozen time (gaps > 200 ms between decoded frames of one sender, summed, window edges
  included; a sender never seen is frozen the whole window),
- capture-to-decoded delay p95: of the receiver's one-second medians in the window (and,
  in the JSON, the p95 over every frame since joining, start-up included),
- NACKs and PLIs sent, retransmissions and keyframes sent, sent bitrate,
- audio glitches: the expected tones of the OTHER speakers are fitted by least squares to
  each 20 ms window of the recorded mix (in the file's time, so a tone that runs on keeps
  constant coefficients); a window is a glitch when its residual jumps or the tones'
  coefficients jump from the previous window (a skipped, repeated or concealed frame
  breaks the phase), a dropout when an expected tone's amplitude falls below half.

Root only (it creates and removes its own namespaces). Prints a markdown table (stderr)
and JSON (stdout with ``--json``)::

    sudo .venv/bin/python bench/netbench.py --duration 30 --runs 3
    sudo .venv/bin/python bench/netbench.py --scenarios clean,loss5 --duration 15
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bots import BotProcess  # noqa: E402
from tests.netlab import Impairment, Lab, star  # noqa: E402

SAMPLE_RATE = 48_000
WINDOW = SAMPLE_RATE // 50  # 20 ms
TONES = {"alice": 437.0, "bob": 563.0, "victim": 691.0}
UNIMPAIRED = ("alice", "bob")


@dataclass(frozen=True)
class Scenario:
    label: str
    down: Impairment | None = None  # the victim's downlink (server side egress)
    up: Impairment | None = None  # the victim's uplink (its own egress)
    # (fraction of the window, new downlink): for a link that changes mid-call
    steps: tuple[tuple[float, Impairment], ...] = ()


def both(label: str, impairment: Impairment) -> Scenario:
    """Both directions of the victim's link impaired alike."""
    return Scenario(label, down=impairment, up=impairment)


SCENARIOS: dict[str, Scenario] = {
    "clean": Scenario("clean"),
    "loss2": both("2 % loss", Impairment(loss_pct=2)),
    "loss5": both("5 % loss", Impairment(loss_pct=5)),
    "loss10": both("10 % loss", Impairment(loss_pct=10)),
    "jitter": both("50 +/- 10 ms delay jitter", Impairment(delay_ms=50, jitter_ms=10)),
    "loss5-jitter": both("5 % loss + jitter",
                         Impairment(loss_pct=5, delay_ms=50, jitter_ms=10)),
    "down2m": Scenario("downlink capped at 2 Mbit/s", down=Impairment(rate_kbit=2000)),
    "down1m": Scenario("downlink capped at 1 Mbit/s", down=Impairment(rate_kbit=1000)),
    "down500k": Scenario("downlink capped at 500 kbit/s", down=Impairment(rate_kbit=500)),
    "down250k": Scenario("downlink capped at 250 kbit/s", down=Impairment(rate_kbit=250)),
    "up500k": Scenario("uplink capped at 500 kbit/s", up=Impairment(rate_kbit=500)),
    "step": Scenario("downlink 2 Mbit/s -> 300 kbit/s -> 2 Mbit/s",
                     down=Impairment(rate_kbit=2000),
                     steps=((1 / 3, Impairment(rate_kbit=300)),
                            (2 / 3, Impairment(rate_kbit=2000)))),
}


@dataclass
class Options:
    duration: float
    warmup: float
    width: int
    height: int
    fps: int
    mtu: int = 0


# ---------------------------------------------------------------------- running


@dataclass
class RunResult:
    scenario: str
    t0: float
    t1: float
    events: dict[str, list[dict[str, Any]]]
    wavs: dict[str, Path]
    capacity: list[tuple[float, float | None]] = field(default_factory=list)
    server_events: dict[str, float] = field(default_factory=dict)  # in the window
    #: (time, the server's lowest downlink estimate in bit/s): the victim's, sampled
    #: twice a second in scenarios whose link changes
    estimates: list[tuple[float, float]] = field(default_factory=list)


SCRAPE = ("import re, sys, urllib.request\n"
          "text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()\n"
          "for m in re.finditer(r'^confero_media_events_total\\{event=\"(\\w+)\"\\} (\\S+)',"
          " text, re.M):\n"
          "    print(m.group(1), m.group(2))\n")


ESTIMATE = ("import re, sys, urllib.request\n"
            "text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()\n"
            "m = re.search(r'^confero_meeting_downlink_estimate_bps\\{[^}]*stat=\"min\"\\}"
            " (\\S+)', text, re.M)\n"
            "print(m.group(1) if m else '')\n")


def lowest_estimate(ns: Any, port: int) -> float | None:
    """The server's lowest estimate of its participants' downlinks (the victim's, the
    slowest link), from /metrics."""
    out = ns.run([sys.executable, "-I", "-c", ESTIMATE, f"http://127.0.0.1:{port}/metrics"],
                 check=False).stdout.strip()
    try:
        return float(out)
    except ValueError:
        return None


def media_events(ns: Any, port: int) -> dict[str, float]:
    """The server's media event counters (retransmissions from its cache, NACKs and PLIs
    forwarded or throttled...), read from /metrics inside its namespace."""
    out = ns.run([sys.executable, "-I", "-c", SCRAPE, f"http://127.0.0.1:{port}/metrics"],
                 check=False).stdout
    return {name: float(value) for name, value in
            (line.split() for line in out.splitlines() if len(line.split()) == 2)}


def start_server(ns: Any, data_dir: Path, log: Any) -> tuple[subprocess.Popen[str], int]:
    proc = ns.popen(
        [sys.executable, "-m", "confero.cli", "server", "--host", "0.0.0.0", "--port", "0",
         "--media-port", "0", "--data-dir", str(data_dir), "--empty-grace", "5"],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            ready = json.loads(line)
            if ready.get("event") == "listening":
                threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
                return proc, int(str(ready["url"]).rsplit(":", 1)[1].split("/")[0])
    raise RuntimeError("the server did not start")


def run_once(name: str, scenario: Scenario, options: Options, workdir: Path) -> RunResult:
    with Lab() as lab, contextlib.ExitStack() as stack:
        topology = star(lab, ["alice", "bob", "victim"])
        if options.mtu:
            for link in topology.links.values():
                link.set_mtu(options.mtu)
        topology.downlink("victim").impair(scenario.down)
        topology.uplink("victim").impair(scenario.up)
        server_log = stack.enter_context((workdir / "server.log").open("w"))
        _server, port = start_server(topology.server, workdir / "data", server_log)
        bots: dict[str, BotProcess] = {}
        meeting_id = ""
        try:
            for role in ("alice", "bob", "victim"):
                url = f"ws://{topology.links[role].a.ip}:{port}/ws"
                target = (["--create", "netbench"] if role == "alice"
                          else ["--join", meeting_id])
                bots[role] = BotProcess(
                    url, role, *target, "--video", "synthetic",
                    "--audio", f"sine:{TONES[role]:g}", "--record", str(workdir / role),
                    "--check-stamps", "--stats-interval", "0.5",
                    "--width", str(options.width), "--height", str(options.height),
                    "--fps", str(options.fps),
                    prefix=topology.clients[role].argv([]),
                )
                joined = bots[role].expect("joined", timeout=60)
                if role == "alice":
                    meeting_id = str(joined["meeting_id"])
            t0 = time.time() + options.warmup
            t1 = t0 + options.duration
            capacity = [(t0, scenario.down.rate_kbit if scenario.down else None)]
            _sleep_until(t0)
            before = media_events(topology.server, port)
            estimates: list[tuple[float, float]] = []
            steps = list(scenario.steps)
            while steps or (scenario.steps and time.time() < t1):
                if steps and time.time() >= t0 + steps[0][0] * options.duration:
                    impairment = steps.pop(0)[1]
                    topology.downlink("victim").impair(impairment)
                    capacity.append((time.time(), impairment.rate_kbit))
                    continue
                estimate = lowest_estimate(topology.server, port)
                if estimate is not None:
                    estimates.append((time.time(), estimate))
                _sleep_until(time.time() + 0.5)
            _sleep_until(t1)
            after = media_events(topology.server, port)
            for bot in bots.values():
                bot.send("leave")
            for bot in bots.values():
                wait_done(bot, 60)
            events = {role: bot.history for role, bot in bots.items()}
            for role, bot in bots.items():  # for a look afterwards (--keep)
                (workdir / role / "events.jsonl").write_text(
                    "".join(json.dumps(e) + "\n" for e in bot.history))
                (workdir / role / "stderr.txt").write_text("".join(bot.stderr))
        finally:
            for bot in bots.values():
                bot.cleanup()
    return RunResult(name, t0, t1, events, {r: workdir / r / "audio.wav" for r in bots},
                     capacity, {k: v - before.get(k, 0) for k, v in after.items()},
                     estimates)


def wait_done(bot: BotProcess, timeout: float) -> None:
    """Collect the bot's events up to ``done`` (errors included: they are results here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = bot.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        bot.history.append(event)
        if event["event"] == "done":
            bot.proc.wait(20)
            return
    raise RuntimeError(f"{bot.name} did not finish: {''.join(bot.stderr)[-2000:]}")


def _sleep_until(deadline: float) -> None:
    """The bench's own pacing (not a test synchronising on events)."""
    remaining = deadline - time.time()
    if remaining > 0:
        time.sleep(remaining)


# ---------------------------------------------------------------------- video metrics


def _at(series: list[tuple[float, float]], t: float) -> float:
    """A cumulative counter's value at ``t``, interpolated between samples. A counter that
    went down was reset (a rejoin restarts the media session): it counts on from there."""
    if not series:
        return 0.0
    times = [s[0] for s in series]
    values = [series[0][1]]
    for (_, before), (_, now) in itertools.pairwise(series):
        values.append(values[-1] + (now - before if now >= before else now))
    return float(np.interp(t, times, values))


def _window_diff(series: list[tuple[float, float]], t0: float, t1: float) -> float:
    return _at(series, t1) - _at(series, t0)


def _stats(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "stats"]


def _done(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["event"] == "done")


def _seen_video(events: list[dict[str, Any]], sender: str) -> dict[str, Any] | None:
    video = _done(events)["video"]
    if sender in video:
        return dict(video[sender])
    # a stream decoded before its sender was announced keeps an ssrc-… name
    unnamed = [k for k in video if k.startswith("ssrc-")]
    return dict(video[unnamed[0]]) if len(unnamed) == 1 else None


def frozen_seconds(seen: dict[str, Any] | None, t0: float, t1: float) -> float:
    if seen is None or seen.get("first_frame_t") is None:
        return t1 - t0
    intervals = [(end - gap, end) for end, gap in seen["freezes"]]
    first, last = float(seen["first_frame_t"]), float(seen["last_frame_t"])
    if first > t0:
        intervals.append((t0, first))
    if last < t1:
        intervals.append((last, t1))
    total = 0.0
    for start, end in intervals:
        overlap = min(end, t1) - max(start, t0)
        if overlap > 0.2 or (end - start > 0.2 and overlap > 0):
            total += overlap
    return total


def video_metrics(run: RunResult, receiver: str, sender: str) -> dict[str, Any]:
    t0, t1 = run.t0, run.t1
    sent = [(e["t"], float(e.get("frames_sent", 0))) for e in _stats(run.events[sender])]
    decoded: list[tuple[float, float]] = []
    delay: dict[str, Any] | None = None
    delays: list[float] = []  # the receiver's 1 s medians, sampled in the window
    nacks: list[tuple[float, float]] = []
    plis: list[tuple[float, float]] = []
    for e in _stats(run.events[receiver]):
        stream = e["video"].get(sender)
        if stream is None:
            continue
        decoded.append((e["t"], float(stream["frames_decoded"])))
        nacks.append((e["t"], float(stream["nacks_sent"])))
        plis.append((e["t"], float(stream["plis_sent"])))
        if e["t"] <= t1 + 0.5 and stream.get("delay_percentiles_ms"):
            delay = stream["delay_percentiles_ms"]
        if t0 <= e["t"] <= t1 and stream.get("delay_ms") is not None:
            delays.append(float(stream["delay_ms"]))
    frames_sent = _window_diff(sent, t0, t1)
    frames_decoded = _window_diff(decoded, t0, t1) if decoded else 0.0
    seen = _seen_video(run.events[receiver], sender)
    return {
        "frames_sent": round(frames_sent),
        "frames_decoded": round(frames_decoded),
        "decoded_pct": round(min(100.0, 100 * frames_decoded / frames_sent), 1)
        if frames_sent else None,
        "frozen_s": round(frozen_seconds(seen, t0, t1), 2),
        "delay_p95_ms": round(float(np.percentile(delays, 95)), 1) if delays else None,
        "delay_p95_since_join_ms": delay["p95"] if delay else None,
        "nacks_sent": round(_window_diff(nacks, t0, t1)) if nacks else 0,
        "plis_sent": round(_window_diff(plis, t0, t1)) if plis else 0,
        "stamps": seen["stamps"] if seen else {},
    }


def sender_metrics(run: RunResult, role: str) -> dict[str, Any]:
    stats = _stats(run.events[role])

    def series(key: str) -> list[tuple[float, float]]:
        return [(e["t"], float(e["sent"].get(key, 0))) for e in stats]

    span = run.t1 - run.t0
    return {
        "sent_kbps": round(_window_diff(series("sent_bytes"), run.t0, run.t1) * 8 / span / 1000),
        "retransmitted": round(_window_diff(series("retransmitted"), run.t0, run.t1)),
        "nacks_received": round(_window_diff(series("nacks_received"), run.t0, run.t1)),
        "plis_received": round(_window_diff(series("plis_received"), run.t0, run.t1)),
        "keyframes_sent": round(_window_diff(series("keyframes_sent"), run.t0, run.t1)),
    }


# ---------------------------------------------------------------------- audio metrics


def audio_glitches(wav_path: Path, tones: list[float], start_s: float, seconds: float,
                   expected_windows: int | None = None) -> dict[str, Any]:
    """Glitch and dropout windows of 20 ms in ``seconds`` of the recording from
    ``start_s`` (see the module docstring for the method). ``expected_windows`` beyond
    those analysed (a playout that fell behind real time wrote fewer frames) count as
    glitches and dropouts."""
    with wave.open(str(wav_path)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert rate == SAMPLE_RATE, rate
    first = max(0, int(start_s * 50))
    count = int(seconds * 50)
    expected = max(count, expected_windows or 0)
    windows = max(0, min(count, len(samples) // WINDOW - first))
    missing = expected - windows
    if windows < 10:
        return {"windows": expected, "glitches": expected, "dropouts": expected,
                "missing": missing}
    x = samples[first * WINDOW : (first + windows) * WINDOW].astype(np.float64)
    x = x.reshape(windows, WINDOW)
    n = (np.arange(windows)[:, None] + first) * WINDOW + np.arange(WINDOW)[None, :]
    coefs = np.zeros((windows, 2 * len(tones)))
    residual = np.zeros(windows)
    for i in range(windows):
        phase = [2 * np.pi * f * n[i] / rate for f in tones]
        basis = np.stack([fn(p) for p in phase for fn in (np.cos, np.sin)], axis=1)
        solution, *_ = np.linalg.lstsq(basis, x[i], rcond=None)
        coefs[i] = solution
        residual[i] = np.sqrt(np.mean((x[i] - basis @ solution) ** 2))
    amplitude = np.hypot(coefs[:, 0::2], coefs[:, 1::2])  # (windows, tones)
    reference = np.median(amplitude, axis=0)
    reference = np.where(reference > 0, reference, 1.0)
    level = float(np.sqrt(np.sum(reference**2) / 2))  # RMS of the expected mix
    residual_jump = residual > max(4 * float(np.median(residual)), 0.05 * level)
    step = np.zeros((windows, len(tones)))
    complex_coefs = coefs[:, 0::2] + 1j * coefs[:, 1::2]
    step[1:] = np.abs(np.diff(complex_coefs, axis=0)) / reference
    phase_jump = (step > 0.25).any(axis=1)
    dropout = (amplitude < 0.5 * reference).any(axis=1)
    glitch = residual_jump | phase_jump
    return {
        "windows": expected,
        "glitches": int(glitch.sum()) + missing,
        "dropouts": int(dropout.sum()) + missing,
        "missing": missing,
        "tone_amplitude": [round(float(a)) for a in reference],
    }


def audio_metrics(run: RunResult, receiver: str) -> dict[str, Any]:
    """The window located in the recording by proportion: the file spans joining to
    leaving, but a starved playout writes fewer frames than wall time (``realtime`` < 1)."""
    events = run.events[receiver]
    joined = float(next(e for e in events if e["event"] == "joined")["t"])
    left = float(_done(events)["t"])
    with wave.open(str(run.wavs[receiver])) as wav:
        recorded = wav.getnframes() / wav.getframerate()
    ratio = min(1.0, recorded / (left - joined)) if left > joined else 1.0
    tones = [TONES[r] for r in TONES if r != receiver]
    result = audio_glitches(run.wavs[receiver], tones, (run.t0 - joined) * ratio,
                            (run.t1 - run.t0) * ratio, round((run.t1 - run.t0) * 50))
    result["realtime"] = round(ratio, 3)
    return result


def concealed(run: RunResult, receiver: str) -> int:
    stats = _stats(run.events[receiver])
    series = [(e["t"], float(e["audio_buffer"]["concealed"])) for e in stats]
    return round(_window_diff(series, run.t0, run.t1))


def analyse(run: RunResult) -> dict[str, Any]:
    roles = list(TONES)
    result: dict[str, Any] = {"window_s": round(run.t1 - run.t0, 2), "receivers": {},
                              "server_events": run.server_events}
    for receiver in roles:
        result["receivers"][receiver] = {
            "video": {s: video_metrics(run, receiver, s) for s in roles if s != receiver},
            "audio": audio_metrics(run, receiver),
            "concealed": concealed(run, receiver),
            "sending": sender_metrics(run, receiver),
        }
    if run.capacity and len(run.capacity) > 1:
        result["timeline"] = timeline(run)
    return result


def timeline(run: RunResult) -> dict[str, Any]:
    """What the victim received over time, and what each sender sent: for plotting the
    step-down scenario."""
    points = []
    previous: dict[str, tuple[float, float]] = {}
    for e in _stats(run.events["victim"]):
        points.append({
            "t": round(e["t"] - run.t0, 2),
            "video": {s: {"fps": round(v["fps"], 1), "delay_ms": v["delay_ms"],
                          "kbps": round(v["bitrate_bps"] / 1000)}
                      for s, v in e["video"].items()},
        })
    sent = {}
    for role in UNIMPAIRED:
        series = []
        for e in _stats(run.events[role]):
            t, b = e["t"], float(e["sent"]["sent_bytes"])
            if role in previous and t > previous[role][0]:
                series.append((round(t - run.t0, 2),
                               round((b - previous[role][1]) * 8 / (t - previous[role][0]) / 1e3)))
            previous[role] = (t, b)
        sent[role] = series
    return {"capacity_kbit": [(round(t - run.t0, 2), c) for t, c in run.capacity],
            "estimate_kbit": [(round(t - run.t0, 2), round(e / 1000)) for t, e in run.estimates],
            "victim_received": points, "sent_kbps": sent}


def plot_timeline(data: dict[str, Any], path: Path, title: str) -> None:
    """The link's capacity, what each sender sent, and what the victim received from each
    (bitrate, fps, capture-to-decoded delay) over time, and the server's estimate of the
    victim's downlink: the step-down scenario's plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, fps, delay) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    steps = data["capacity_kbit"]
    end = max((p["t"] for p in data["victim_received"]), default=steps[-1][0])
    xs = [t for t, _ in steps] + [end]
    ys = [c or 0 for _, c in steps] + [steps[-1][1] or 0]
    rate.step(xs, ys, where="post", color="black", label="link capacity")
    estimate = data.get("estimate_kbit", [])
    if estimate:
        rate.plot([t for t, _ in estimate], [e for _, e in estimate], ":", color="grey",
                  linewidth=2, label="server's estimate of the victim's downlink")
    for role, series in data["sent_kbps"].items():
        rate.plot([t for t, _ in series], [v for _, v in series], label=f"{role} sends")
    senders = sorted({s for p in data["victim_received"] for s in p["video"]})
    for sender in senders:
        points = [(p["t"], p["video"][sender]) for p in data["victim_received"]
                  if sender in p["video"]]
        rate.plot([t for t, _ in points], [v["kbps"] for _, v in points], "--",
                  label=f"victim receives {sender}")
        fps.plot([t for t, _ in points], [v["fps"] for _, v in points], label=sender)
        delay.plot([t for t, _ in points], [v["delay_ms"] or 0 for _, v in points],
                   label=sender)
    rate.set_ylabel("kbit/s")
    rate.legend(fontsize="small")
    fps.set_ylabel("fps at the victim")
    fps.legend(fontsize="small")
    delay.set_ylabel("delay ms (1 s median)")
    delay.set_xlabel("seconds into the measured window")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------- summary


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(numbers) if numbers else None


def row(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians over runs of the figures the table shows."""
    def victim_of(run: dict[str, Any], key: str) -> list[Any]:  # victim receiving others
        return [run["receivers"]["victim"]["video"][s][key] for s in UNIMPAIRED]

    def others_of_victim(run: dict[str, Any], key: str) -> list[Any]:
        return [run["receivers"][r]["video"]["victim"][key] for r in UNIMPAIRED]

    def others_of_each_other(run: dict[str, Any], key: str) -> list[Any]:
        return [run["receivers"]["alice"]["video"]["bob"][key],
                run["receivers"]["bob"]["video"]["alice"][key]]

    def per_run(fn: Any, key: str, combine: Any) -> Any:
        return _median([combine(fn(run, key)) for run in runs])

    def mean(values: list[Any]) -> Any:
        numbers = [v for v in values if v is not None]
        return sum(numbers) / len(numbers) if numbers else None

    victim = [run["receivers"]["victim"] for run in runs]
    return {
        "scenario": name,
        "label": SCENARIOS[name].label,
        "runs": len(runs),
        "window_s": _median([run["window_s"] for run in runs]),
        "cpu_cores": _median([run.get("cpu_cores") for run in runs]),
        "victim": {
            "decoded_pct": per_run(victim_of, "decoded_pct", mean),
            "frozen_s": per_run(victim_of, "frozen_s", max),
            "delay_p95_ms": per_run(victim_of, "delay_p95_ms", lambda v: max(
                (x for x in v if x is not None), default=None)),
            "nacks_sent": per_run(victim_of, "nacks_sent", sum),
            "plis_sent": per_run(victim_of, "plis_sent", sum),
            "glitches": _median([v["audio"]["glitches"] for v in victim]),
            "dropouts": _median([v["audio"]["dropouts"] for v in victim]),
            "audio_windows": _median([v["audio"]["windows"] for v in victim]),
            "concealed": _median([v["concealed"] for v in victim]),
            "sent_kbps": _median([v["sending"]["sent_kbps"] for v in victim]),
            "audio_realtime": _median([v["audio"].get("realtime") for v in victim]),
            "retransmitted": _median([v["sending"]["retransmitted"] for v in victim]),
        },
        "others_see_victim": {
            "decoded_pct": per_run(others_of_victim, "decoded_pct", mean),
            "frozen_s": per_run(others_of_victim, "frozen_s", max),
            "delay_p95_ms": per_run(others_of_victim, "delay_p95_ms", lambda v: max(
                (x for x in v if x is not None), default=None)),
        },
        "others": {  # the unimpaired participants' view of each other and their audio
            "decoded_pct": per_run(others_of_each_other, "decoded_pct", mean),
            "frozen_s": per_run(others_of_each_other, "frozen_s", max),
            "delay_p95_ms": per_run(others_of_each_other, "delay_p95_ms", lambda v: max(
                (x for x in v if x is not None), default=None)),
            "glitches": _median([max(run["receivers"][r]["audio"]["glitches"]
                                     for r in UNIMPAIRED) for run in runs]),
            "dropouts": _median([max(run["receivers"][r]["audio"]["dropouts"]
                                     for r in UNIMPAIRED) for run in runs]),
            "retransmitted": _median([sum(run["receivers"][r]["sending"]["retransmitted"]
                                          for r in UNIMPAIRED) for run in runs]),
            "server_retransmitted": _median([run["server_events"].get("retransmitted", 0)
                                             for run in runs]),
            "sent_kbps": _median([max(run["receivers"][r]["sending"]["sent_kbps"]
                                      for r in UNIMPAIRED) for run in runs]),
            "audio_realtime": _median([min(run["receivers"][r]["audio"].get("realtime", 1)
                                           for r in UNIMPAIRED) for run in runs]),
        },
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value}{unit}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| link of the victim | video decoded by victim | frozen | delay p95 | audio glitches "
        "/ dropouts | NACKs / PLIs sent, rtx (server, senders) | victim sends | others see the "
        "victim (decoded, frozen) | others: decoded, frozen, glitches | playout realtime |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        v, seen, o = r["victim"], r["others_see_victim"], r["others"]
        # below ~0.95 the bots' event loops lagged: CPU starvation, not the network
        realtime = min(v["audio_realtime"] or 1.0, o["audio_realtime"] or 1.0)
        lines.append(
            f"| {r['label']} | {_fmt(v['decoded_pct'], ' %')} | {_fmt(v['frozen_s'], ' s')} | "
            f"{_fmt(v['delay_p95_ms'], ' ms')} | {_fmt(v['glitches'])} / {_fmt(v['dropouts'])}"
            f" of {_fmt(v['audio_windows'])} | {_fmt(v['nacks_sent'])} / {_fmt(v['plis_sent'])}"
            f", {_fmt(o['server_retransmitted'])}, {_fmt(o['retransmitted'])} | "
            f"{_fmt(v['sent_kbps'], ' kbit/s')} | "
            f"{_fmt(seen['decoded_pct'], ' %')}, {_fmt(seen['frozen_s'], ' s')} | "
            f"{_fmt(o['decoded_pct'], ' %')}, {_fmt(o['frozen_s'], ' s')}, "
            f"{_fmt(o['glitches'])} | {_fmt(realtime)} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every lab and process is cleaned up."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after everyone joined before measuring")
    parser.add_argument("--runs", type=int, default=1, help="runs per scenario (median)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--mtu", type=int, default=0,
                        help="the veths' MTU (default: theirs, 1500)")
    parser.add_argument("--json", action="store_true", help="print the JSON on stdout")
    parser.add_argument("--keep", type=Path, help="keep the recordings under this directory")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="plot the first run of the step scenario (needs matplotlib: "
                        "pip install -e '.[bench]')")
    args = parser.parse_args()
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    options = Options(args.duration, args.warmup, args.width, args.height, args.fps,
                      args.mtu)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_before": os.getloadavg()},
        "options": {"duration": args.duration, "warmup": args.warmup, "runs": args.runs,
                    "video": f"{args.width}x{args.height}@{args.fps}"},
        "scenarios": {},
    }
    rows = []
    try:
        with terminate_as_interrupt():
            for name in names:
                runs = []
                for index in range(args.runs):
                    with tempfile.TemporaryDirectory(prefix="netbench-") as tmp:
                        workdir = args.keep / f"{name}-{index}" if args.keep else Path(tmp)
                        workdir.mkdir(parents=True, exist_ok=True)
                        print(f"==> {name} run {index + 1}/{args.runs}", file=sys.stderr)
                        used = resource.getrusage(resource.RUSAGE_CHILDREN)
                        started = time.monotonic()
                        try:
                            result = run_once(name, SCENARIOS[name], options, workdir)
                        except (RuntimeError, AssertionError) as exc:  # a bot that broke
                            print(f"    run failed: {exc}", file=sys.stderr)
                            report["scenarios"].setdefault(name, {}).setdefault(
                                "failed", []).append(str(exc)[-2000:])
                            continue
                        runs.append(analyse(result))
                        now = resource.getrusage(resource.RUSAGE_CHILDREN)
                        cpu = (now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
                        # CPU the server and bots used per second of the run (1.0 = a core)
                        runs[-1]["cpu_cores"] = round(cpu / (time.monotonic() - started), 2)
                        if args.plot and "timeline" in runs[-1] and len(runs) == 1:
                            plot_timeline(runs[-1]["timeline"], args.plot,
                                          SCENARIOS[name].label)
                if not runs:
                    continue
                report["scenarios"].setdefault(name, {}).update(
                    {"runs": runs, "row": row(name, runs)})
                rows.append(report["scenarios"][name]["row"])
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: namespaces and processes removed", file=sys.stderr)
        return 130
    report["machine"]["load_after"] = os.getloadavg()
    print(table(rows), file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
