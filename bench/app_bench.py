"""The desktop app's UI frame rate and CPU with 4 and 9 remote video tiles.

Starts a server process and N send-only ``confero bot`` processes (640x480@30 synthetic
video; they decode nothing, so the machine's CPU goes to the app) in one meeting, runs the
real ``MainWindow`` in this process (Qt offscreen), joins, waits until every tile shows
video, then counts over a window how often each tile actually painted a new picture, and
the CPU this process used (GUI thread + engine thread).

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/app_bench.py --tiles 4 9
"""

from __future__ import annotations

import argparse
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


def measure(app: QApplication, tiles: int, window_s: float, size: str) -> dict[str, Any]:
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
                     name, "--no-stdin", "--send-only", "--width", width, "--height", height,
                     *args],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                bots.append(proc)
                return proc

            first = bot("p0", "--create", "bench")
            assert first.stdout is not None
            meeting = json.loads(first.stdout.readline())["meeting_id"]
            for index in range(1, tiles):
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
            cpu0, wall0 = time.process_time(), time.perf_counter()
            wait(app, lambda: False, window_s)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            shares = {f"{k}_cpu_share_of_one_core":
                      round((sum(map(cpu_seconds, pids)) - others0[k]) / wall, 3)
                      for k, pids in others.items()}
            fps = sorted((t.painted_frames - painted[t.name]) / wall
                         for t in grid.tiles.values())
            return {
                "tiles": tiles,
                "bot_video": size,
                "tile_fps_min": round(fps[0], 1),
                "tile_fps_median": round(fps[len(fps) // 2], 1),
                "app_cpu_share_of_one_core": round(cpu / wall, 3),
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
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    results = [measure(app, n, args.window, args.size) for n in args.tiles]
    print(json.dumps({
        "bench": "app_ui",
        "platform": os.environ["QT_QPA_PLATFORM"],
        "results": results,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; the bots and the server share the machine",
    }, indent=2))


if __name__ == "__main__":
    main()
