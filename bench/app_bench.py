"""The desktop app's UI frame rate and CPU with 4 and 9 remote video tiles.

Starts a server process and N send-only ``confero bot`` processes (640x480@30 synthetic
video; they decode nothing, so the machine's CPU goes to the app) in one meeting, runs the
real ``MainWindow`` in this process (Qt offscreen), joins, waits until every tile shows
video, then counts over a window how often each tile actually painted a new picture, and
the CPU this process used (GUI thread + engine thread).

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/app_bench.py --tiles 4 9

``--senders pre-encoded`` replaces the bots by one cheap process that sends pre-encoded
VP8 (640x480@30) for all N publishers, as ``capacity_bench.py`` does, and asks the server
for no video: the bots' live encoders take more than a core at 9 tiles, so this is the
way to see what the app itself can paint on a machine shared with its publishers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from confero.app.window import MainWindow


def wait(app: QApplication, condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds per thread of this process, by thread name (threads of one name, e.g. a
    pool's, are summed): where the app's CPU goes."""
    import threading

    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    seconds: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(task.name), "")
        name = name.rstrip("_0123456789") or name  # a pool's threads as one
        name = name or text[text.index("(") + 1:text.rindex(")")] + " " + task.name
        fields = text.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        seconds[name] = seconds.get(name, 0.0) + cpu
    return seconds


def server_view(url: str) -> dict[str, Any]:
    """The server's estimate of the subscribers' downlinks (min/median/max, bit/s) and the
    temporal layers it forwards (layer -> streams), from its /metrics."""
    import re
    import urllib.request

    http = url.replace("ws://", "http://").rsplit("/ws", 1)[0] + "/metrics"
    body = urllib.request.urlopen(http, timeout=5).read().decode()
    estimate = {stat: float(value) for stat, value in re.findall(
        r'confero_meeting_downlink_estimate_bps\{meeting="[^"]+",stat="(\w+)"\} (\S+)', body)}
    layers = {layer: float(value) for layer, value in re.findall(
        r'confero_meeting_forwarded_layer_streams\{layer="(\d)",meeting="[^"]+"\} (\S+)',
        body)}
    return {"downlink_estimate_bps": estimate, "forwarded_layer_streams": layers}


def load_camera(path: str) -> Any:
    """``SyntheticCamera`` from the file ``path`` (another tree's ``media/video.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("camera_from", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SyntheticCamera


async def generate(url: str, count: int, bitrate: int, camera_from: str | None) -> None:
    """``count`` publishers of pre-encoded 640x480@30 VP8 in one process; the first creates
    the meeting and prints its id. They ask for no video, so they cost the server little.
    A PLI is answered with a keyframe of the next picture (encoded apart beforehand), so a
    receiver that fell behind recovers at once, as from a live encoder.

    They also run against an older tree (``bench/app_reference.py``): what that tree's
    client cannot do is skipped, and ``camera_from`` gives them today's test picture, whose
    decoding costs what today's does."""
    from capacity_bench import FPS, Participant

    from confero.client import Client
    from confero.media.video import SyntheticCamera, Vp8Encoder
    from confero.protocol import rtcp
    from confero.protocol.rtp import is_rtcp
    from confero.protocol.srtp import SrtpError

    try:
        from confero.protocol import consent
    except ImportError:  # a tree from before consent freshness
        consent = None  # type: ignore[assignment]
    if camera_from:
        SyntheticCamera = load_camera(camera_from)

    class Sender(Participant):
        keyframe_wanted = False

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not is_rtcp(data):
                super().datagram_received(data, addr)
                return
            try:  # once: SRTCP refuses a second unprotect of the same packet (replay)
                packets = rtcp.parse_compound(self.srtp.unprotect_rtcp(data))
            except (SrtpError, rtcp.RtcpError):
                return  # a load generator: what it cannot read, it ignores
            for packet in packets:
                echo = consent.answer(packet, self.grant.video_ssrc) if consent else None
                if echo is not None:
                    self.transport.sendto(self.srtp.protect_rtcp(echo))
                self.keyframe_wanted |= isinstance(packet, rtcp.Pli)

    streams, keyframes = [], []
    for index in range(count):
        camera, encoder = SyntheticCamera(f"p{index}"), Vp8Encoder(640, 480, bitrate=bitrate)
        key_encoder = Vp8Encoder(640, 480, bitrate=bitrate)
        pictures = [camera.frame(k * 33_000) for k in range(60)]
        streams.append([b"".join(encoder.encode(picture, k * 3000, k == 0))
                        for k, picture in enumerate(pictures)])
        keyframes.append([b"".join(key_encoder.encode(picture, k * 3000, True))
                          for k, picture in enumerate(pictures)])
    loop = asyncio.get_running_loop()
    senders: list[Sender] = []
    meeting = ""
    for index in range(count):
        client = Client(url, f"p{index}")
        await client.connect()
        if index == 0:
            try:
                result = await client.create_meeting("bench", mode="server")
            except TypeError:  # a tree from before the meeting modes
                result = await client.create_meeting("bench")
            meeting = result.meeting.id
            print(json.dumps({"meeting_id": meeting}), flush=True)
        else:
            result = await client.join(meeting)
        grant = result.media
        assert grant is not None
        _, sender = await loop.create_datagram_endpoint(
            lambda g=grant: Sender(g),  # type: ignore[misc]
            remote_addr=("127.0.0.1", grant.port))
        senders.append(sender)
        try:
            await client.set_media(camera=True, microphone=False, receive_video=False)
        except TypeError:  # a tree from before "receive no video": the server sends it
            await client.set_media(camera=True, microphone=False)
    frame, start = 0, loop.time()
    while True:
        for sender, stream, keys in zip(senders, streams, keyframes, strict=True):
            if sender.keyframe_wanted:
                sender.keyframe_wanted = False
                sender.send_video(keys[frame % len(keys)], frame)
            else:
                sender.send_video(stream[frame % len(stream)], frame)
        frame += 1
        await asyncio.sleep(max(0.0, start + frame / FPS - loop.time()))


def measure(app: QApplication, tiles: int, window_s: float, size: str,
            senders: str = "bots", camera_from: str | None = None) -> dict[str, Any]:
    width, height = size.split("x")
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "confero.cli", "server", "--port", "0", "--media-port", "0",
             "--data-dir", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        bots: list[subprocess.Popen[str]] = []
        settings = QSettings(str(Path(data) / "app.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings=settings)
        try:
            def bot(name: str, *args: str) -> subprocess.Popen[str]:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "confero.cli", "bot", "--server", url, "--name",
                     name, "--no-stdin", "--send-only", "--no-simulcast", "--width", width,
                     "--height", height, *args],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                bots.append(proc)
                return proc

            if senders == "pre-encoded":
                first = subprocess.Popen(
                    [sys.executable, __file__, "--generate", url, "--tiles", str(tiles),
                     *(["--camera-from", camera_from] if camera_from else [])],
                    stdout=subprocess.PIPE, text=True)
                bots.append(first)
            else:
                first = bot("p0", "--create", "bench")
            assert first.stdout is not None
            meeting = json.loads(first.stdout.readline())["meeting_id"]
            for index in range(1 if senders == "bots" else tiles, tiles):
                bot(f"p{index}", "--join", meeting)
            window.resize(1280, 800)
            window.show()
            window.start.server.setText(url)
            window.start.name.setText("viewer")
            window.connect_to_server()
            assert wait(app, lambda: window.state == "connected", 20)
            window.engine.join_meeting(meeting, None)
            grid = window.meeting.grid
            assert wait(app, lambda: len(grid.tiles) == tiles
                        and all(t.shows_video() for t in grid.tiles.values()), 60)
            wait(app, lambda: False, 2.0)  # settle
            painted = {t.name: t.painted_frames for t in grid.tiles.values()}
            others = {"server": [server.pid], "bots": [proc.pid for proc in bots]}
            others0 = {k: sum(map(cpu_seconds, pids)) for k, pids in others.items()}
            threads0 = thread_cpu_seconds()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            wait(app, lambda: False, window_s)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            threads = {name: round((seconds - threads0.get(name, 0.0)) / wall, 3)
                       for name, seconds in thread_cpu_seconds().items()}
            shares = {f"{k}_cpu_share_of_one_core":
                      round((sum(map(cpu_seconds, pids)) - others0[k]) / wall, 3)
                      for k, pids in others.items()}
            fps = sorted((t.painted_frames - painted[t.name]) / wall
                         for t in grid.tiles.values())
            return {
                "tiles": tiles,
                "bot_video": size if senders == "bots" else "640x480 pre-encoded",
                "tile_fps_min": round(fps[0], 1),
                "tile_fps_median": round(fps[len(fps) // 2], 1),
                "app_cpu_share_of_one_core": round(cpu / wall, 3),
                # per thread: the GUI (painting), the engine (network, SRTP, jitter
                # buffers), the decoder (VP8 and the conversion to the tile's size)
                "app_cpu_by_thread": {name: share for name, share in sorted(
                    threads.items(), key=lambda item: -item[1]) if share >= 0.005},
                "app_cpu_ms_per_painted_frame": round(
                    1000 * cpu / max(1.0, sum(fps) * wall), 2),
                # the two cores are shared: what the server and the bots' encoders took,
                # and the machine's load (other work on it counts too)
                **shares,
                "load_average_1min": round(os.getloadavg()[0], 2),
                # why a tile shows fewer frames than sent: the server's congestion control
                "server_view": server_view(url),
            }
        finally:
            window.close()
            for proc in bots:
                proc.terminate()
            for proc in bots:
                proc.wait(10)
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[4, 9])
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--senders", choices=["bots", "pre-encoded"], default="bots")
    parser.add_argument("--camera-from", metavar="VIDEO_PY",
                        help="the pre-encoded senders' test picture: SyntheticCamera from "
                        "this file (bench/app_reference.py passes today's)")
    parser.add_argument("--generate", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:  # the pre-encoded senders' own process
        asyncio.run(generate(args.generate, args.tiles[0], 400_000, args.camera_from))
        return
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    results = [measure(app, n, args.window, args.size, args.senders, args.camera_from)
               for n in args.tiles]
    print(json.dumps({
        "bench": "app_ui",
        "platform": os.environ["QT_QPA_PLATFORM"],
        "results": results,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; the bots and the server share the machine",
    }, indent=2))


if __name__ == "__main__":
    main()
