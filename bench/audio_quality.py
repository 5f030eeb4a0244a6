"""Audio quality through a real server: dropouts and clicks, glitches under CPU load, latency.

    .venv/bin/python bench/audio_quality.py toggle   # 3 bots, the third toggling its mic
    .venv/bin/python bench/audio_quality.py stream   # the same, the third in this process
    .venv/bin/python bench/audio_quality.py sim      # the same scenario, the server's mixer
                                                     # alone on a virtual clock (no load noise)
    .venv/bin/python bench/audio_quality.py hogs     # 4 bots, two busy loops beside them
    .venv/bin/python bench/audio_quality.py latency  # media_bench's audio latency path
    .venv/bin/python bench/audio_quality.py all

Each prints JSON. The server is a real ``confero server`` process on loopback; the
participants are ``confero bot`` processes sending steady sine tones (not multiples of
50 Hz, so a 20 ms window never holds whole periods of them by accident). The listener
records what it plays (``--record``: audio.wav, one 20 ms frame per playout tick) and the
recording is analysed window by window (20 ms): the expected tones are fitted by least
squares (a sine and a cosine per tone, so any phase fits), which gives each tone's
amplitude and a residual (everything that is not the tones: codec noise, and clicks).

- a *dropout* frame: a tone's fitted amplitude falls below half of what was sent
  (``SineSource``'s 8000);
- a *click* frame: the residual's RMS is above four times its median and above 2 % of
  full scale (so codec noise on a quiet stretch never counts);
- a *glitch* frame: either of them.

``toggle`` measures end to end (server and the bot's client playout); ``stream`` isolates
the server: the toggling listener lives in this process, keeps every mixed packet it
receives, and afterwards decodes them in RTP timestamp order with one decoder (Opus PLC
for a missing timestamp), i.e. what an ideal client with no timing problems would play.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from media_bench import MACHINE, Server, bench_audio_async

from confero.client import Client
from confero.media.audio import OpusEncoder, SineSource
from confero.media.opus import Decoder
from confero.protocol import consent, rtcp
from confero.protocol.profile import AUDIO_PAYLOAD_TYPE, EXT_AUDIO_LEVEL
from confero.protocol.rtp import RtpError, RtpPacket, Unwrapper, is_rtcp
from confero.protocol.signaling import MediaGrant
from confero.protocol.srtp import SrtpContext, SrtpError, decode_key

WINDOW = 960  # 20 ms at 48 kHz
RATE = 48_000
CLICK_FLOOR = 0.02 * 32768
SENT_AMPLITUDE = 8000.0  # the bots' sine:HZ sources


class Bot:
    """A ``confero bot`` process steered through its stdin; its events are read on a
    thread so a full pipe never blocks it."""

    def __init__(self, server: Server, name: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "confero.cli", "bot", "--server", server.url,
             "--name", name, "--video", "none", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._first = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue
            self._first.set()

    def first(self, timeout: float = 30) -> dict[str, Any]:
        if not self._first.wait(timeout):
            raise RuntimeError("bot printed nothing")
        return self.events[0]

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30) -> dict[str, Any] | None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.say("leave")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(10)
        self._reader.join(5)
        return next((e for e in self.events if e.get("event") == "done"), None)


def read_wav(path: Path) -> npt.NDArray[np.float64]:
    with wave.open(str(path), "rb") as wav:
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def analyse(samples: npt.NDArray[np.float64], tones: list[float], absent: list[float],
            skip_seconds: float, marks: list[int] | None = None,
            end_seconds: float | None = None) -> dict[str, Any]:
    """Per 20 ms window: amplitudes of ``tones`` (expected) and ``absent`` (must not be
    heard, e.g. the listener's own tone), and the residual. ``marks`` (window indices from
    the start of ``samples``, e.g. where the mic toggled) split the glitches into those
    within 240 ms after a mark (from 40 ms before) and the others. ``end_seconds``: where
    the call ended in the recording (the talkers leaving is not a dropout)."""
    start = int(skip_seconds * RATE) // WINDOW * WINDOW
    end = len(samples) if end_seconds is None else int(end_seconds * RATE)
    body = samples[start:end]
    count = len(body) // WINDOW
    if count < 10:
        raise RuntimeError(f"recording too short: {len(samples)} samples")
    frames = body[: count * WINDOW].reshape(count, WINDOW)
    t = np.arange(WINDOW) / RATE
    freqs = [*tones, *absent]
    basis = np.column_stack(
        [f(2 * np.pi * freq * t) for freq in freqs for f in (np.sin, np.cos)]
        + [np.ones(WINDOW)]
    )
    coeffs, *_ = np.linalg.lstsq(basis, frames.T, rcond=None)
    fitted = (basis @ coeffs).T
    residual = np.sqrt(np.mean((frames - fitted) ** 2, axis=1))
    amplitude = np.sqrt(coeffs[0:-1:2] ** 2 + coeffs[1::2] ** 2).T  # (count, len(freqs))
    expected = amplitude[:, : len(tones)]
    medians = np.median(expected, axis=0)
    dropout = (expected < 0.5 * SENT_AMPLITUDE).any(axis=1)
    click = (residual > 4 * np.median(residual)) & (residual > CLICK_FLOOR)
    glitch = dropout | click
    minutes = count * WINDOW / RATE / 60
    leak = amplitude[:, len(tones):]
    near = np.zeros(count, dtype=bool)
    for mark in marks or []:
        first = mark - start // WINDOW
        near[max(0, first - 2): max(0, first + 12)] = True
    split = {
        "glitch_frames_near_toggles": int((glitch & near).sum()),
        "glitch_frames_elsewhere": int((glitch & ~near).sum()),
        "frames_near_toggles": int(near.sum()),
    } if marks else {}
    return {
        **split,
        "frames": int(count),
        "dropout_frames": int(dropout.sum()),
        "click_frames": int(click.sum()),
        "glitch_frames": int(glitch.sum()),
        "dropouts_per_minute": round(float(dropout.sum()) / minutes, 2),
        "clicks_per_minute": round(float(click.sum()) / minutes, 2),
        "glitch_percent": round(100 * float(glitch.sum()) / count, 3),
        "tone_amplitude_median": [round(float(m), 1) for m in medians],
        "residual_rms_median": round(float(np.median(residual)), 1),
        "residual_rms_max": round(float(residual.max()), 1),
        "peak_abs": int(np.abs(frames).max()),
        "own_tone_amplitude_max": (
            [round(float(a), 1) for a in leak.max(axis=0)] if absent else []),
        "dropout_at_s": [round(skip_seconds + i * WINDOW / RATE, 2)
                         for i in np.flatnonzero(dropout)[:40]],
        "click_at_s": [round(skip_seconds + i * WINDOW / RATE, 2)
                       for i in np.flatnonzero(click)[:40]],
    }


def server_mixer_counts(server: Server) -> dict[str, float]:
    body = urllib.request.urlopen(server.http + "metrics", timeout=5).read().decode()
    counts: dict[str, float] = {}
    pattern = r'^confero_mixer_frames(?:_total)?\{[^}]*op="(\w+)"[^}]*\} (\S+)$'
    for kind, value in re.findall(pattern, body, re.M):
        counts[kind] = counts.get(kind, 0.0) + float(value)
    busy = re.findall(r'^confero_mixer_busy_seconds(?:_total)?\{[^}]*\} (\S+)$', body, re.M)
    counts["busy_seconds"] = round(sum(float(b) for b in busy), 3)
    return counts


def run_meeting(seconds: float, talkers: list[float], toggler_tone: float | None,
                toggle_every: float) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    """``talkers`` bots send steady tones; one more bot (the listener) records, and when
    ``toggler_tone`` is set sends that tone with its mic toggled every ``toggle_every``."""
    server = Server()
    bots: list[Bot] = []
    record = tempfile.TemporaryDirectory()
    try:
        first = Bot(server, "t0", "--create", "audio quality", "--audio", f"sine:{talkers[0]}",
                    "--duration", str(seconds + 10))
        bots.append(first)
        meeting = first.first()["meeting_id"]
        for i, tone in enumerate(talkers[1:], 1):
            bots.append(Bot(server, f"t{i}", "--join", meeting, "--audio", f"sine:{tone}",
                            "--duration", str(seconds + 10)))
        audio = f"sine:{toggler_tone}" if toggler_tone else "none"
        listener = Bot(server, "listener", "--join", meeting, "--audio", audio,
                       "--record", record.name, "--duration", str(seconds + 10))
        bots.append(listener)
        for bot in bots:
            bot.first()
        started = time.monotonic()
        toggles = 0
        mic_on = toggler_tone is not None
        while (elapsed := time.monotonic() - started) < seconds:
            if toggler_tone is not None and elapsed >= (toggles + 1) * toggle_every:
                mic_on = not mic_on
                listener.say("mic on" if mic_on else "mic off")
                toggles += 1
            time.sleep(0.01)  # a bench's pacing loop, not a test's synchronisation
        counts = server_mixer_counts(server)
        summaries = [bot.finish() for bot in bots]
        samples = read_wav(Path(record.name) / "audio.wav")
    finally:
        for bot in bots:
            if bot.proc.poll() is None:
                bot.proc.terminate()
                bot.proc.wait(10)
        server.close()
        record.cleanup()
    listener_audio = (summaries[-1] or {}).get("stats", {}).get("audio", {})
    return samples, {"toggles": toggles, "server_mixer": counts,
                     "listener_audio_stats": listener_audio}


def bench_toggle(seconds: float) -> dict[str, Any]:
    tones, own = [437.0, 613.0], 811.0
    samples, info = run_meeting(seconds, tones, own, 1.5)
    return {
        "bench": "audio_toggle",
        "scenario": "loopback, real server, 3 bots: two steady tones (437, 613 Hz), the "
                    "third (the recorded listener) toggling its 811 Hz mic every 1.5 s",
        "seconds": seconds,
        **info,
        **analyse(samples, tones, [own], skip_seconds=3.0, end_seconds=seconds),
        "load_average": os.getloadavg(),
        "machine": MACHINE,
    }


class RawListener(asyncio.DatagramProtocol):
    """The toggling participant, on raw SRTP/UDP: sends its tone while the mic is on and
    keeps every mixed audio packet (timestamp, payload)."""

    def __init__(self, grant: MediaGrant) -> None:
        self.grant = grant
        self.srtp = SrtpContext(tx_key=decode_key(grant.key_up), rx_key=decode_key(grant.key_down))
        self.transport: Any = None
        self.received: list[tuple[float, int, bytes]] = []  # arrival, timestamp, payload
        self.audio_seq = 0
        self.source = SineSource(811.0)
        self.encoder = OpusEncoder()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.transport.sendto(self.srtp.protect_rtcp(
            rtcp.ReceiverReport(self.grant.audio_ssrc).pack()))

    def send_audio(self, index: int) -> None:
        payload = self.encoder.encode(self.source.next_frame())
        self.audio_seq = (self.audio_seq + 1) & 0xFFFF
        packet = RtpPacket(AUDIO_PAYLOAD_TYPE, self.audio_seq, index * 960 & 0xFFFFFFFF,
                           self.grant.audio_ssrc, payload,
                           extensions={EXT_AUDIO_LEVEL: bytes([0x80 | 20])})
        self.transport.sendto(self.srtp.protect_rtp(packet.serialize()))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if is_rtcp(data):  # the server's consent challenge: echo it, as clients do
            with contextlib.suppress(SrtpError, rtcp.RtcpError):
                for control in rtcp.parse_compound(self.srtp.unprotect_rtcp(data)):
                    echo = consent.answer(control, self.grant.video_ssrc)
                    if echo is not None:
                        self.transport.sendto(self.srtp.protect_rtcp(echo))
            return
        try:
            packet = RtpPacket.parse(self.srtp.unprotect_rtp(data))
        except (SrtpError, RtpError):
            return
        if packet.payload_type == AUDIO_PAYLOAD_TYPE:
            self.received.append((time.monotonic(), packet.timestamp, packet.payload))


def decode_stream(received: list[tuple[float, int, bytes]], toggled_at: list[float]
                  ) -> tuple[npt.NDArray[np.float64], list[int]]:
    """Every packet at its timestamp, one continuous decoder, PLC for the gaps (up to
    5 frames; longer gaps are the server sending nothing, played as silence). Also the
    output frame at which each toggle took effect (the first packet that arrived after)."""
    decoder = Decoder()
    unwrap = Unwrapper(32)
    frames: dict[int, bytes] = {}
    arrivals: list[tuple[float, int]] = []
    for arrival, timestamp, payload in received:
        index = unwrap.unwrap(timestamp) // 960
        frames[index] = payload
        arrivals.append((arrival, index))
    first, last = min(frames), max(frames)
    marks = []
    for moment in toggled_at:
        after = [index for arrival, index in arrivals if arrival >= moment]
        if after:
            marks.append(after[0] - first)
    out: list[npt.NDArray[np.int16]] = []
    missing = 0
    for index in range(first, last + 1):
        payload = frames.get(index)
        if payload is not None:
            out.append(decoder.decode(payload))
            missing = 0
        else:
            missing += 1
            out.append(decoder.conceal() if missing <= 5 else np.zeros(960, np.int16))
    return np.concatenate(out).astype(np.float64), marks


async def stream_meeting(seconds: float, tones: list[float],
                         toggle_every: float) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
    server = Server()
    bots: list[Bot] = []
    loop = asyncio.get_running_loop()
    try:
        first = Bot(server, "t0", "--create", "audio quality", "--audio", f"sine:{tones[0]}",
                    "--duration", str(seconds + 10))
        bots.append(first)
        meeting = first.first()["meeting_id"]
        for i, tone in enumerate(tones[1:], 1):
            bots.append(Bot(server, f"t{i}", "--join", meeting, "--audio", f"sine:{tone}",
                            "--duration", str(seconds + 10)))
        for bot in bots:
            bot.first()
        async with Client(server.url, "toggler") as client:
            grant = (await client.join(meeting)).media
            assert grant is not None
            transport, listener = await loop.create_datagram_endpoint(
                lambda: RawListener(grant), remote_addr=("127.0.0.1", grant.port))
            start = loop.time()
            index = toggles = 0
            mic_on = True
            toggled_at: list[float] = []
            while (elapsed := loop.time() - start) < seconds:
                if elapsed >= (toggles + 1) * toggle_every:
                    mic_on, toggles = not mic_on, toggles + 1
                    toggled_at.append(time.monotonic())
                if mic_on:
                    listener.send_audio(index)
                index += 1
                await asyncio.sleep(max(0.0, start + index * 0.02 - loop.time()))
            counts = server_mixer_counts(server)
            transport.close()
        for bot in bots:
            bot.finish()
    finally:
        for bot in bots:
            if bot.proc.poll() is None:
                bot.proc.terminate()
                bot.proc.wait(10)
        server.close()
    samples, marks = decode_stream(listener.received, toggled_at)
    return samples, {
        "marks": marks, "toggles": toggles, "server_mixer": counts,
        "packets_received": len(listener.received)}


def bench_stream(seconds: float) -> dict[str, Any]:
    tones, own = [437.0, 613.0], 811.0
    samples, info = asyncio.run(stream_meeting(seconds, tones, 1.5))
    marks = info.pop("marks")
    return {
        "bench": "audio_toggle_server_stream",
        "scenario": "as audio_toggle, but the toggling listener is raw SRTP/UDP in the bench "
                    "process and its received mix is decoded in timestamp order afterwards "
                    "(the server's part alone, no client playout timing)",
        "seconds": seconds,
        **info,
        **analyse(samples, tones, [own], skip_seconds=3.0, marks=marks),
        "load_average": os.getloadavg(),
        "machine": MACHINE,
    }


def _wakes(rng: Any, ticks: int, stall_p: float, stall_max: float, offset: float
           ) -> list[tuple[float, int]]:
    """When a 20 ms asyncio clock (confero.pacing.Pacer) really runs, on a machine where a
    wake-up is late by up to ``stall_max`` s with probability ``stall_p``: (time, tick)."""
    out: list[tuple[float, int]] = []
    due, now = offset, 0.0
    while due < ticks * 0.02:
        now = max(now, due)
        if rng.random() < stall_p:
            now += rng.uniform(0.0, stall_max)
        if now - due > 5 * 0.02:  # the Pacer gives up on missed ticks
            due = now
        out.append((now, round((due - offset) / 0.02)))
        due += 0.02
    return out


def bench_sim(seconds: float, spike: float, stall_p: float, stall_max: float,
              seed: int = 1) -> dict[str, Any]:
    """The toggling scenario through the server's mixer alone (sans-I/O), on a virtual
    clock. Packets arrive in order, 0-3 ms late and one in ten up to ``spike`` s late (the
    network); every sender and the mixer run on their own 20 ms clocks whose wake-ups may
    stall (``stall_p``, ``stall_max``: a busy machine); the toggler's received mix is
    decoded by one continuous decoder. Deterministic, so it compares code, not machines."""
    import random

    from confero.server.mixer import MeetingMixer

    rng = random.Random(seed)
    tones = {"a": 437.0, "b": 613.0}
    senders = {pid: (SineSource(hz), OpusEncoder()) for pid, hz in {**tones, "c": 811.0}.items()}
    mixer = MeetingMixer()
    for pid in senders:
        mixer.add(pid)
    ticks = int(seconds / 0.02)
    toggle = 75  # 1.5 s
    events: list[tuple[float, int, str, int, bytes]] = []
    for i, (pid, (source, encoder)) in enumerate(senders.items()):
        arrival = 0.0
        for sent, n in _wakes(rng, ticks, stall_p, stall_max, 0.003 * i):
            payload = encoder.encode(source.next_frame())
            if pid == "c" and (n // toggle) % 2 == 1:
                continue
            late = rng.uniform(0.0, spike if rng.random() < 0.1 else 0.003)
            arrival = max(arrival, sent + late)
            events.append((arrival, 0, pid, n, payload))
    events += [(now, 1, "", k, b"") for now, k in _wakes(rng, ticks, stall_p, stall_max, 0.01)]
    decoder = Decoder()
    out: list[npt.NDArray[np.int16]] = []
    for now, kind, pid, n, payload in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:
            mixer.push(pid, n * 960, payload, 20, now)
            continue
        mix = mixer.mix().get("c")
        out.append(decoder.decode(mix) if mix else decoder.conceal())
    samples = np.concatenate(out).astype(np.float64)
    marks = list(range(toggle, ticks, toggle))
    stats = mixer.stats
    return {
        "bench": "audio_toggle_mixer_sim",
        "scenario": "the toggle scenario through MeetingMixer on a virtual clock; arrival "
                    f"jitter 0-3 ms plus one packet in ten up to {spike * 1000:.0f} ms late; "
                    f"clock wake-ups stalled with p={stall_p} by up to {stall_max * 1000:.0f} ms",
        "seconds": seconds,
        "server_mixer": {"decoded": stats.decoded, "encoded": stats.encoded,
                         "concealed": stats.concealed,
                         "mixer_ms_per_tick": round(stats.busy_seconds / ticks * 1000, 3)},
        **analyse(samples, list(tones.values()), [811.0], skip_seconds=1.0, marks=marks),
        "machine": MACHINE,
    }


def bench_hogs(seconds: float, hogs: int) -> dict[str, Any]:
    tones = [437.0, 613.0, 787.0]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        samples, info = run_meeting(seconds, tones, None, 0)
    finally:
        for proc in busy:
            proc.terminate()
            proc.wait(10)
    return {
        "bench": "audio_under_cpu_load",
        "scenario": f"loopback, real server, 4 bots (3 steady tones, 1 recorded listener), "
                    f"{hogs} busy-looping processes",
        "seconds": seconds,
        **info,
        **analyse(samples, tones, [], skip_seconds=3.0, end_seconds=seconds),
        "load_average": os.getloadavg(),
        "machine": MACHINE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["toggle", "stream", "sim", "hogs", "latency", "all"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--spike", type=float, default=0.030,
                        help="sim: the latest a packet arrives, in seconds")
    parser.add_argument("--stall-p", type=float, default=0.0,
                        help="sim: share of clock wake-ups that are late")
    parser.add_argument("--stall-max", type=float, default=0.0,
                        help="sim: the latest such a wake-up is, in seconds")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    if args.which in ("toggle", "all"):
        results.append(bench_toggle(args.seconds))
    if args.which in ("stream", "all"):
        results.append(bench_stream(args.seconds))
    if args.which in ("sim", "all"):
        results.append(bench_sim(args.seconds, args.spike, args.stall_p, args.stall_max))
    if args.which in ("hogs", "all"):
        results.append(bench_hogs(args.seconds, args.hogs))
    if args.which in ("latency", "all"):
        results.append(asyncio.run(bench_audio_async(min(args.seconds, 15.0))))
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


if __name__ == "__main__":
    main()
