"""The app's CPU at 9 tiles against the app as it was when issue 12 was filed, measured
back to back in the same run on the same machine.

Issue 12 rebuilt the app (icon bar, layouts, quality indicators, ...) and asks that its
CPU grow no more than 10 % over the figures of that day. A figure copied from an old
table says little on a machine whose speed varies 2-3x, so this checks out the tree of
that day (``REFERENCE``, the commit before the rebuild) into a temporary git worktree and
runs ``bench/app_bench.py --tiles 9 --senders pre-encoded`` against both trees, in turns:
each tree's own app and server, the same pre-encoded senders, today's test picture for
both (decoding costs what the picture makes it cost).

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/app_reference.py --runs 3

Needs the git history (a clone, not an archive). Prints JSON: each run's figures and the
medians' ratio (current / reference) of the app's CPU and of its CPU per painted frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: main just before issue 12's app rebuild (the "today" of the issue's CPU target)
REFERENCE = "b1b520f5a47067921b507b6349e8da9b0a21b32e"


def run_bench(tree: Path, bench: Path, tiles: int, window: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, str(bench), "--tiles", str(tiles), "--senders", "pre-encoded",
         "--window", str(window),
         "--camera-from", str(ROOT / "src" / "confero" / "media" / "video.py")],
        env=env, cwd=tree, capture_output=True, text=True, timeout=300, check=False)
    start = done.stdout.find("{")
    if done.returncode != 0 or start < 0:
        raise RuntimeError(f"app_bench failed in {tree}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout[start:])["results"][0]
    result.pop("server_view", None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=9)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--reference", default=REFERENCE, help="the commit to compare with")
    args = parser.parse_args()
    old = Path(tempfile.mkdtemp(prefix="confero-reference-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force",
                    str(old), args.reference], check=True, capture_output=True)
    try:
        # today's bench (per-thread CPU, the senders) in the old tree, beside its modules
        shutil.copy(ROOT / "bench" / "app_bench.py", old / "bench" / "app_bench_today.py")
        runs: dict[str, list[dict[str, Any]]] = {"reference": [], "current": []}
        for _ in range(args.runs):
            runs["reference"].append(run_bench(old, old / "bench" / "app_bench_today.py",
                                               args.tiles, args.window))
            runs["current"].append(run_bench(ROOT, ROOT / "bench" / "app_bench.py",
                                             args.tiles, args.window))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                       check=False, capture_output=True)

    def median(which: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[which]))

    summary = {
        which: {key: median(which, key) for key in (
            "tile_fps_min", "tile_fps_median", "app_cpu_share_of_one_core",
            "app_cpu_ms_per_painted_frame")}
        for which in runs
    }
    print(json.dumps({
        "bench": "app_reference",
        "reference_commit": args.reference,
        "tiles": args.tiles,
        "medians": summary,
        "current_over_reference": {
            key: round(summary["current"][key] / summary["reference"][key], 3)
            for key in ("app_cpu_share_of_one_core", "app_cpu_ms_per_painted_frame")},
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load {os.getloadavg()[0]:.2f} at the end",
    }, indent=2))


if __name__ == "__main__":
    main()
