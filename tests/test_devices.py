"""Real device paths on a headless machine: PulseAudio null sinks for the microphone and
the speaker, Xvfb for screen sharing (see ../shared/TESTING.md). The tools are installed
by .ci/run; if one is missing these tests fail, they do not skip."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.bots import BotProcess, tone_levels
from tests.conftest import ServerProcess
from tests.sound import need, playing_tone, record_sink, write_wav


def test_microphone_and_speaker_through_pulseaudio(
    server: ServerProcess, pulse: dict[str, str], tmp_path: Path
) -> None:
    """Alice sends a 440 Hz sine; Bob's microphone hears a 660 Hz tone played into a null
    sink, and Bob plays what he receives on another null sink. Recording that sink's
    monitor must show 440 Hz; Alice's recording must show Bob's 660 Hz."""
    alice = bob = None
    with playing_tone(pulse, "mic", 660):
        try:
            alice = BotProcess(server.url, "alice", "--create", "sound", "--mode", "server",
                               "--audio",
                               "sine:440", "--video", "none", "--record",
                               str(tmp_path / "alice"), "--stats-interval", "0.5")
            meeting = alice.expect("joined")["meeting_id"]
            bob_env = {**pulse, "PULSE_SINK": "speaker", "PULSE_SOURCE": "mic.monitor"}
            bob = BotProcess(server.url, "bob", "--join", meeting, "--audio", "mic", "--play",
                             "--video", "none", "--stats-interval", "0.5", env=bob_env)
            bob.expect("stats", lambda e: e["audio"]["packets"] >= 100)
            recorded = record_sink(pulse, "speaker", seconds=2.0)
            alice.expect("stats", lambda e: e["audio"]["packets"] >= 100)
            for bot in (alice, bob):
                bot.send("leave")
                bot.finish()
        finally:
            for bot in (alice, bob):
                if bot is not None:
                    bot.cleanup()
    heard_by_bob = tmp_path / "bob_speaker.wav"
    write_wav(heard_by_bob, recorded)
    levels = tone_levels(heard_by_bob, [440, 660])
    assert levels[440] > -6 and levels[660] < -40, levels  # alice's tone, not his own
    levels = tone_levels(tmp_path / "alice" / "audio.wav", [440, 660])
    assert levels[660] > -6 and levels[440] < -40, levels  # bob's microphone reached alice


@pytest.fixture
def xvfb() -> Iterator[str]:
    """A virtual X screen covered by a window of a known colour; yields its DISPLAY."""
    need("Xvfb")
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


def test_the_camera_source_reads_through_opencv(tmp_path: Path) -> None:
    """No camera here: OpenCV opens a video file the way it opens /dev/video0, so the
    capture thread, the colour conversion and the scaling are exercised for real."""
    from fractions import Fraction

    from confero.media.devices import CameraSource
    from confero.media.video import SyntheticCamera, identity_code, luma_plane, read_stamp

    path = tmp_path / "camera.webm"
    camera = SyntheticCamera("Lens", 640, 480)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.bit_rate = 4_000_000
        for index in range(30):
            frame = camera.frame(index)
            frame.pts, frame.time_base = index, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    source = CameraSource(str(path), 320, 240)
    try:
        frame = source.frame(0)
        assert (frame.width, frame.height, frame.format.name) == (320, 240, "yuv420p")
        assert read_stamp(luma_plane(frame))[1] == identity_code("Lens")
    finally:
        source.close()
