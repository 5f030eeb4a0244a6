"""Real device paths on a headless machine: PulseAudio null sinks for the microphone and
the speaker, Xvfb for screen sharing (see ../shared/TESTING.md). The tools are installed
by .ci/run; if one is missing these tests fail, they do not skip."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from tests.bots import BotProcess, tone_levels
from tests.conftest import ServerProcess

SINKS = ("speaker_b", "mic_b")


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"missing tools {missing}: .ci/run installs them (apt)"


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private PulseAudio daemon with two null sinks; yields the environment to use it."""
    _need("pulseaudio", "pactl", "pacat", "parecord")
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


def test_microphone_and_speaker_through_pulseaudio(
    server: ServerProcess, pulse: dict[str, str], tmp_path: Path
) -> None:
    """Alice sends a 440 Hz sine; Bob's microphone hears a 660 Hz tone played into a null
    sink, and Bob plays what he receives on another null sink. Recording that sink's
    monitor must show 440 Hz; Alice's recording must show Bob's 660 Hz."""
    feeder = subprocess.Popen(
        ["pacat", "-p", "--raw", "--format=s16le", "--rate=48000", "--channels=1",
         "-d", "mic_b"], stdin=subprocess.PIPE, env=pulse,
    )
    stop_feeding = threading.Event()

    def feed() -> None:  # pacat takes it in real time: write from a thread, 1 s at a time
        second = tone_bytes(660, 1.0)
        assert feeder.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            while not stop_feeding.is_set():
                feeder.stdin.write(second)
                feeder.stdin.flush()

    threading.Thread(target=feed, daemon=True).start()
    alice = bob = None
    try:
        alice = BotProcess(server.url, "alice", "--create", "sound", "--audio", "sine:440",
                           "--video", "none", "--record", str(tmp_path / "alice"),
                           "--stats-interval", "0.5")
        meeting = alice.expect("joined")["meeting_id"]
        bob_env = {**pulse, "PULSE_SINK": "speaker_b", "PULSE_SOURCE": "mic_b.monitor"}
        bob = BotProcess(server.url, "bob", "--join", meeting, "--audio", "mic", "--play",
                         "--video", "none", "--stats-interval", "0.5", env=bob_env)
        bob.expect("stats", lambda e: e["audio"]["packets"] >= 100)
        recorded = record_sink(pulse, "speaker_b", seconds=2.0)
        alice.expect("stats", lambda e: e["audio"]["packets"] >= 100)
        for bot in (alice, bob):
            bot.send("leave")
            bot.finish()
    finally:
        stop_feeding.set()
        feeder.kill()
        for bot in (alice, bob):
            if bot is not None:
                bot.cleanup()
    heard_by_bob = tmp_path / "bob_speaker.wav"
    _write_wav(heard_by_bob, recorded)
    levels = tone_levels(heard_by_bob, [440, 660])
    assert levels[440] > -6 and levels[660] < -40, levels  # alice's tone, not his own
    levels = tone_levels(tmp_path / "alice" / "audio.wav", [440, 660])
    assert levels[660] > -6 and levels[440] < -40, levels  # bob's microphone reached alice


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


def _write_wav(path: Path, pcm: bytes) -> None:
    import wave

    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(48000)
        wav.writeframes(pcm)


@pytest.fixture
def xvfb() -> Iterator[str]:
    """A virtual X screen covered by a window of a known colour; yields its DISPLAY."""
    _need("Xvfb")
    for number in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{number}").exists():
            break
    display = f":{number}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten",
                               "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    painter: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 15
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            assert server.poll() is None, "Xvfb exited"
            assert time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.05)  # polling the X server's socket: no event to wait on
        painter = subprocess.Popen(
            [sys.executable, "-c", PAINTER], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "DISPLAY": display},
        )
        assert painter.stdout is not None and painter.stdout.readline().strip() == "painted"
        yield display
    finally:
        if painter is not None:
            painter.kill()
            painter.wait(10)
        server.terminate()
        server.wait(10)


PAINTER = """
import tkinter
root = tkinter.Tk()
root.overrideredirect(True)
root.geometry("640x480+0+0")
root.configure(background="#c83214")
root.update()
print("painted", flush=True)
root.mainloop()
"""


def test_screen_share_reaches_the_others(
    server: ServerProcess, xvfb: str, tmp_path: Path
) -> None:
    presenter = BotProcess(server.url, "presenter", "--create", "slides", "--video",
                           f"screen:{xvfb}")
    meeting = presenter.expect("joined")["meeting_id"]
    viewer = BotProcess(server.url, "viewer", "--join", meeting, "--video", "none",
                        "--record", str(tmp_path / "viewer"), "--stats-interval", "0.5")
    try:
        started = viewer.expect("video_started", lambda e: e["name"] == "presenter")
        assert (started["width"], started["height"]) == (320, 240)
        viewer.expect("stats", lambda e: e["video"].get("presenter", {}).get(
            "frames_decoded", 0) >= 10)
        for bot in (viewer, presenter):
            bot.send("leave")
            bot.finish()
    finally:
        for bot in (viewer, presenter):
            bot.cleanup()
    [recording] = (tmp_path / "viewer").glob("video-presenter-*.webm")
    with av.open(str(recording)) as container:
        frame = next(iter(container.decode(video=0)))
    red, green, blue = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
    # the X root window's colour, #c83214, through VP8 and back
    assert abs(red - 0xC8) < 20 and abs(green - 0x32) < 20 and abs(blue - 0x14) < 20
