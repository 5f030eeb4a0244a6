"""Helpers for tests that run ``confero bot`` processes and analyse what they recorded."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from confero.media.video import luma_plane, read_stamp_any

Event = dict[str, Any]


class BotProcess:
    def __init__(self, url: str, name: str, *args: str,
                 env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "confero.cli", "bot", "--server", url, "--name", name,
             "--width", "320", "--height", "240", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
        )
        self.events: queue.Queue[Event] = queue.Queue()
        self.history: list[Event] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def expect(self, kind: str, predicate: Callable[[Event], bool] = lambda e: True,
               timeout: float = 15.0) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"{self.name}: no {kind!r} event within {timeout}s; saw "
                    f"{[e['event'] for e in self.history]}; stderr: {''.join(self.stderr)[-2000:]}"
                ) from None
            self.history.append(event)
            if event["event"] == kind and predicate(event):
                return event
            if event["event"] == "error":
                raise AssertionError(f"{self.name} reported an error: {event}")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def finish(self, timeout: float = 30.0) -> Event:
        done = self.expect("done", timeout=timeout)
        assert self.proc.wait(10) == 0, "".join(self.stderr)
        return done

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def tone_levels(wav_path: Path, frequencies: list[float]) -> dict[float, float]:
    """Level (dB relative to the strongest bin) of each frequency, as the median over the
    recording's audible half-second windows: a tone that is present is near 0 dB and an
    absent one far below. The median (not one FFT of everything) keeps a rare glitch on a
    busy machine -- broadband for one window -- from reading as a leaked tone, while a tone
    that really leaked is in every window and still shows."""
    with wave.open(str(wav_path)) as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    samples = samples.astype(np.float64)
    assert len(samples) >= rate, f"{wav_path} holds less than a second of audio"
    size, hop = rate // 2, rate // 4
    window = np.hanning(size)
    freqs = np.fft.rfftfreq(size, 1 / rate)
    per_window: list[dict[float, float]] = []
    for start in range(0, len(samples) - size + 1, hop):
        chunk = samples[start : start + size]
        if np.abs(chunk).max() < 1000:
            continue  # silence: before the others were heard, or after they left
        spectrum = np.abs(np.fft.rfft(chunk * window))
        peak = spectrum.max()
        per_window.append({
            f: float(20 * np.log10(spectrum[(freqs > f - 8) & (freqs < f + 8)].max() / peak))
            for f in frequencies
        })
    assert len(per_window) >= 3, f"{wav_path} holds less than a second of sound"
    return {f: float(np.median([w[f] for w in per_window])) for f in frequencies}


#: On a loaded machine a starved sender leaves gaps in its stream, and every gap splatters
#: energy around its tone (about -35 dB nearby). A tone that leaked is a narrow peak near
#: 0 dB; splatter is smooth: "absent" compares a tone with its neighbours 30 Hz away.
NEIGHBOUR = 30.0


def levels_of(path: Path, tones: list[float]) -> dict[float, float]:
    probes = sorted({f + d for f in tones for d in (-NEIGHBOUR, 0.0, NEIGHBOUR)})
    return tone_levels(path, probes)


def absent(levels: dict[float, float], tone: float) -> bool:
    around = max(levels[tone - NEIGHBOUR], levels[tone + NEIGHBOUR])
    return levels[tone] < max(-40.0, around + 10)


def video_identities(webm_path: Path) -> tuple[int, set[int]]:
    """Decode a recorded file independently: (frames, identities read from their stamps)."""
    identities: set[int] = set()
    frames = 0
    with av.open(str(webm_path)) as container:
        for frame in container.decode(video=0):
            frames += 1
            identities.add(read_stamp_any(luma_plane(frame))[1])  # a copy's too
    return frames, identities


@pytest.fixture
def bots() -> Iterator[list[BotProcess]]:
    """Bots started by a test (``start_bot``), killed at its end whatever happened."""
    started: list[BotProcess] = []
    yield started
    for bot in started:
        bot.cleanup()


def start_bot(bots: list[BotProcess], url: str, name: str, *args: str) -> BotProcess:
    """A bot that reports its statistics twice a second."""
    bot = BotProcess(url, name, "--stats-interval", "0.5", *args)
    bots.append(bot)
    return bot
