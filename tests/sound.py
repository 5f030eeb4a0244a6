"""PulseAudio on a headless machine (../shared/TESTING.md): a private daemon with null
sinks, a tone fed into a sink (a microphone for whoever records its monitor), and exact
recordings of what a sink plays."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

#: "speaker": where a client plays; "mic": what a client records (from its monitor).
SINKS = ("speaker", "mic")


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"missing tools {missing}: .ci/run installs them (apt)"


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon with two null sinks; yields the environment to use it."""
    need("pulseaudio", "pactl", "pacat", "parecord")
    runtime = tmp_path / "pulse"
    runtime.mkdir(mode=0o700)
    script = runtime / "null.pa"
    script.write_text(
        "load-module module-native-protocol-unix\n"
        + "".join(f"load-module module-null-sink sink_name={s} rate=48000\n" for s in SINKS)
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime),
           "PULSE_SERVER": f"unix:{runtime}/pulse/native"}
    daemon = subprocess.Popen(
        ["pulseaudio", "-n", "-F", str(script), "--exit-idle-time=-1", "--daemonize=no",
         "--system=false", "--disallow-exit"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    keepers: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode:
            assert daemon.poll() is None, "pulseaudio exited"
            assert time.monotonic() < deadline, "pulseaudio did not start"
            time.sleep(0.1)  # polling a daemon's readiness: no event to wait on
        for sink in SINKS:  # keep every sink running, or new streams stall ~2 s
            with open("/dev/zero", "rb") as zeros:
                keepers.append(subprocess.Popen(
                    ["pacat", "-p", "--latency-msec=20", "--raw", "--format=s16le",
                     "--rate=48000", "--channels=1", "-d", sink], stdin=zeros, env=env,
                ))
        yield env
    finally:
        for proc in [*keepers, daemon]:
            proc.terminate()
            proc.wait(10)


def tone_bytes(frequency: float, seconds: float) -> bytes:
    t = np.arange(int(48000 * seconds)) / 48000
    return (9000 * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()



@contextlib.contextmanager
def playing_tone(env: dict[str, str], sink: str, frequency: float) -> Iterator[None]:
    """Play a continuous tone into ``sink`` (its monitor then sounds like a microphone)."""
    feeder = subprocess.Popen(
        ["pacat", "-p", "--raw", "--format=s16le", "--rate=48000", "--channels=1",
         "-d", sink], stdin=subprocess.PIPE, env=env,
    )
    stop = threading.Event()

    def feed() -> None:  # pacat takes it in real time: write from a thread, 1 s at a time
        second = tone_bytes(frequency, 1.0)
        assert feeder.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            while not stop.is_set():
                feeder.stdin.write(second)
                feeder.stdin.flush()

    threading.Thread(target=feed, daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        feeder.kill()
        feeder.wait(10)


def record_sink(env: dict[str, str], sink: str, seconds: float) -> bytes:
    """Exactly ``seconds`` of what a sink plays, read from its monitor."""
    wanted = int(48000 * seconds) * 2
    recorder = subprocess.Popen(
        ["pacat", "--record", "--raw", "--format=s16le", "--rate=48000", "--channels=1",
         f"--device={sink}.monitor"], stdout=subprocess.PIPE, env=env,
    )
    assert recorder.stdout is not None
    data = b""
    try:
        while len(data) < wanted:
            chunk = recorder.stdout.read(wanted - len(data))
            assert chunk, "the recorder stopped"
            data += chunk
    finally:
        recorder.kill()
        recorder.wait(10)
    return data


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(48000)
        wav.writeframes(pcm)


