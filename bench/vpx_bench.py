"""Encoding cost of the ctypes libvpx encoder against PyAV's, plus live-bitrate behaviour.

    .venv/bin/python bench/vpx_bench.py [--frames 300] [--rounds 3]
    .venv/bin/python bench/vpx_bench.py --simulcast [--frames 300] [--rounds 3]

``--simulcast`` measures what the camera's low-resolution copy (issue 9) adds to the
encoder thread instead: the camera alone against the camera plus its copy (scaled from
the same picture to half its size, encoded every second frame), as CPU seconds per second
of video, with PyAV's encoder in the same run as the reference.

Prints one JSON object. Every encoder gets the same pre-rendered 640x480 frames of the
synthetic camera (so the camera's cost is not counted), runs are interleaved round by round
so machine load hits them alike, and the PyAV encoder measured in the same run is the
reference. Per-frame cost is CPU time of this process (time.process_time) around encode().
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import av

from confero.media.video import SyntheticCamera, Vp8Encoder
from confero.media.vpx import VpxVp8Encoder, libvpx_version
from confero.protocol.layers import LayerForwarder
from confero.protocol.rtp import RtpPacket
from confero.protocol.vp8 import packetize, parse_descriptor

W, H, FPS = 640, 480, 30
BITRATE = 1_200_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_encoder(name: str, frames: list[av.VideoFrame]) -> dict[str, Any]:
    if name == "pyav":
        pyav = Vp8Encoder(W, H, FPS, BITRATE)

        def encode(frame: av.VideoFrame, pts: int) -> list[bytes]:
            return pyav.encode(frame, pts)
    else:
        layers = 3 if name == "vpx_3_layers" else 1
        vpx = VpxVp8Encoder(W, H, FPS, BITRATE, temporal_layers=layers)

        def encode(frame: av.VideoFrame, pts: int) -> list[bytes]:
            out = vpx.encode(frame, pts)
            for f in out:
                per_layer[f.temporal_id] += len(f.data)
            return [f.data for f in out]
    per_layer = [0, 0, 0]
    costs, sizes = [], 0
    for i, frame in enumerate(frames):
        start = time.process_time()
        out = encode(frame, i * 3000)
        costs.append(time.process_time() - start)
        sizes += sum(len(d) for d in out)
    return {"costs": costs, "bits": sizes * 8, "frames": len(frames), "per_layer": per_layer}


def step_response(frames: list[av.VideoFrame]) -> dict[str, Any]:
    """2 Mbit/s, then 300 kbit/s from frame 2 s on: output per 0.5 s, keyframes, call cost."""
    encoder = VpxVp8Encoder(W, H, FPS, 2_000_000, temporal_layers=3)
    per_frame: list[int] = []
    keyframes: list[int] = []
    calls: list[float] = []
    for i in range(4 * FPS):
        frame = frames[i % len(frames)]
        if i == 2 * FPS:
            start = time.perf_counter()
            encoder.set_bitrate(300_000)
            calls.append(time.perf_counter() - start)
        out = encoder.encode(frame, i * 3000)
        per_frame.append(sum(len(f.data) for f in out))
        keyframes += [i for f in out if f.keyframe]
    half = FPS // 2
    windows = [sum(per_frame[a : a + half]) * 8 * 2 for a in range(0, len(per_frame), half)]
    for k in range(200):  # the cost of the call alone, alternating targets
        start = time.perf_counter()
        encoder.set_bitrate(400_000 if k % 2 else 500_000)
        calls.append(time.perf_counter() - start)
    return {
        "bps_per_half_second": windows,
        "change_at_s": 2.0,
        "keyframes_at_frame": keyframes,
        "set_bitrate_ms_first_change": round(calls[0] * 1000, 4),
        "set_bitrate_ms_median": round(statistics.median(calls[1:]) * 1000, 4),
        "set_bitrate_ms_p99": round(percentile(calls[1:], 0.99) * 1000, 4),
    }


def forwarder_cost() -> dict[str, Any]:
    packets = []
    seq, tl0 = 0, 0
    pattern = (0, 2, 1, 2)
    for i in range(3000):  # i is the PictureID
        tid = pattern[i % 4]
        tl0 += tid == 0
        for k, payload in enumerate(packetize(b"\x01" * 3000, i, temporal=(tid, True, tl0))):
            packets.append(RtpPacket(96, seq & 0xFFFF, i * 3000, 1, payload, marker=k == 2))
            seq += 1
    result = {}
    for target in (2, 0):
        forwarder = LayerForwarder(target)
        start = time.process_time()
        for packet in packets:
            forwarder.forward(packet)
        result[f"max_tid_{target}_us_per_packet"] = round(
            (time.process_time() - start) / len(packets) * 1e6, 2)
    # the server's case: parse once per publisher packet, forward to 10 subscribers
    forwarders = [LayerForwarder(k % 3) for k in range(10)]
    start = time.process_time()
    for packet in packets:
        descriptor = parse_descriptor(packet.payload)
        for forwarder in forwarders:
            forwarder.forward(packet, descriptor)
    result["ten_subscribers_us_per_publisher_packet"] = round(
        (time.process_time() - start) / len(packets) * 1e6, 2)
    return result


LOW_W, LOW_H, LOW_BPS = W // 2, H // 2, 150_000


def run_simulcast(frames: list[av.VideoFrame], with_copy: bool) -> dict[str, float]:
    """One pass as the client's encoder thread does it: the camera's encoder for every
    frame, and (``with_copy``) the copy for every second one, scaled from that frame.
    CPU time of this thread (time.thread_time) around the work of each stream."""
    camera = VpxVp8Encoder(W, H, FPS, BITRATE - (LOW_BPS if with_copy else 0),
                           temporal_layers=3)
    low = VpxVp8Encoder(LOW_W, LOW_H, FPS // 2, LOW_BPS, temporal_layers=3)
    camera_cpu = scale_cpu = low_cpu = 0.0
    camera_bytes = low_bytes = low_frames = 0
    for i, frame in enumerate(frames):
        start = time.thread_time()
        camera_bytes += sum(len(f.data) for f in camera.encode(frame, i * 3000))
        scaled = time.thread_time()
        camera_cpu += scaled - start
        if with_copy and i % 2 == 0:
            small = frame.reformat(width=LOW_W, height=LOW_H)
            encode = time.thread_time()
            low_bytes += sum(len(f.data) for f in low.encode(small, i * 3000))
            done = time.thread_time()
            scale_cpu += encode - scaled
            low_cpu += done - encode
            low_frames += 1
    camera.close()
    low.close()
    seconds = len(frames) / FPS
    return {"camera_cpu_s": camera_cpu, "scale_cpu_s": scale_cpu, "copy_cpu_s": low_cpu,
            "video_s": seconds, "camera_bps": camera_bytes * 8 / seconds,
            "copy_bps": low_bytes * 8 / seconds, "copy_frames": low_frames}


def simulcast_main(frames: list[av.VideoFrame], rounds: int) -> dict[str, Any]:
    alone: list[dict[str, float]] = []
    both: list[dict[str, float]] = []
    reference: list[float] = []
    for k in range(rounds):  # interleaved, each first in turn: machine load hits all alike
        for with_copy in (k % 2 == 1, k % 2 == 0):
            (both if with_copy else alone).append(run_simulcast(frames, with_copy))
        costs = run_encoder("pyav", frames)["costs"][1:]
        reference.append(statistics.fmean(costs))

    def per_second(runs: list[dict[str, float]], *keys: str) -> float:
        return statistics.median(sum(r[k] for k in keys) / r["video_s"] for r in runs)

    camera_alone = per_second(alone, "camera_cpu_s")
    with_copy = per_second(both, "camera_cpu_s", "scale_cpu_s", "copy_cpu_s")
    return {
        "bench": "vpx_simulcast",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "libvpx": libvpx_version(),
        "camera": f"{W}x{H}@{FPS}, 3 temporal layers",
        "copy": f"{LOW_W}x{LOW_H}@{FPS // 2}, 3 temporal layers, {LOW_BPS} bit/s",
        "frames_per_round": len(frames),
        "rounds": rounds,
        "camera_alone": {
            "cpu_s_per_s": round(camera_alone, 4),
            "output_bps": round(statistics.median(r["camera_bps"] for r in alone)),
        },
        "camera_plus_copy": {
            "cpu_s_per_s": round(with_copy, 4),
            "camera_cpu_s_per_s": round(per_second(both, "camera_cpu_s"), 4),
            "scale_cpu_s_per_s": round(per_second(both, "scale_cpu_s"), 4),
            "copy_cpu_s_per_s": round(per_second(both, "copy_cpu_s"), 4),
            "camera_output_bps": round(statistics.median(r["camera_bps"] for r in both)),
            "copy_output_bps": round(statistics.median(r["copy_bps"] for r in both)),
        },
        "extra_cpu_fraction": round(with_copy / camera_alone - 1, 3),
        # the same, from the pass with the copy alone (no run-to-run noise): what scaling
        # and encoding the copy cost against the camera's encode beside it
        "copy_vs_camera_same_pass": round(statistics.median(
            (r["scale_cpu_s"] + r["copy_cpu_s"]) / r["camera_cpu_s"] for r in both), 3),
        # calibration: the same machine's PyAV VP8 encoder at 640x480, in the same run
        "reference_pyav_640x480_ms_per_frame": round(statistics.median(reference) * 1000, 3),
        "camera_alone_vs_reference": round(
            camera_alone / FPS / statistics.median(reference), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--simulcast", action="store_true",
                        help="the camera alone against the camera plus its low copy")
    args = parser.parse_args()
    camera = SyntheticCamera("bench", W, H)
    frames = [camera.frame(i * 33_333) for i in range(args.frames)]
    if args.simulcast:
        print(json.dumps(simulcast_main(frames, args.rounds), indent=2))
        return
    names = ("pyav", "vpx_1_layer", "vpx_3_layers")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            runs[name].append(run_encoder(name, frames))
    encoders = {}
    for name, results in runs.items():
        costs = [c for r in results for c in r["costs"][1:]]  # the first frame is a keyframe
        encoders[name] = {
            "ms_per_frame_median": round(statistics.median(costs) * 1000, 3),
            "ms_per_frame_mean": round(statistics.fmean(costs) * 1000, 3),
            "ms_per_frame_p95": round(percentile(costs, 0.95) * 1000, 3),
            "output_bps": round(statistics.fmean(r["bits"] * FPS / r["frames"] for r in results)),
        }
        if name == "vpx_3_layers":
            layer_bytes = [sum(r["per_layer"][t] for r in results) for t in range(3)]
            encoders[name]["share_of_bits_per_tid"] = [
                round(b / sum(layer_bytes), 3) for b in layer_bytes]
    reference = encoders["pyav"]["ms_per_frame_mean"]
    for entry in encoders.values():
        entry["mean_cost_vs_pyav"] = round(entry["ms_per_frame_mean"] / reference, 3)
    print(json.dumps({
        "bench": "vpx",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "libvpx": libvpx_version(),
        "size": f"{W}x{H}@{FPS}",
        "target_bps": BITRATE,
        "frames_per_round": args.frames,
        "rounds": args.rounds,
        "encoders": encoders,
        "step_2M_to_300k": step_response(frames),
        "forwarder": forwarder_cost(),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
