"""Media benchmarks: video and audio latency, server CPU per forwarded packet, mixer load.

    .venv/bin/python bench/media_bench.py video   # capture -> decoded, through the server
    .venv/bin/python bench/media_bench.py forward # server CPU per forwarded packet
    .venv/bin/python bench/media_bench.py audio   # captured frame -> sound-device hand-off
    .venv/bin/python bench/media_bench.py mixer   # 10-speaker mixing, share of one core
    .venv/bin/python bench/media_bench.py all

Each prints one JSON object. The server is a real ``confero server`` process on loopback;
video uses ``confero bot`` processes (640x480@30 VP8); audio runs two participants in this
process so one clock times both ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from confero.client import Client
from confero.client.media import MediaSession
from confero.media.audio import FRAME_SAMPLES, OpusEncoder, Samples, SineSource
from confero.protocol import consent, rtcp
from confero.protocol.profile import EXT_TRANSPORT_SEQ
from confero.protocol.rtp import RtpPacket
from confero.protocol.srtp import SrtpContext, decode_key
from confero.protocol.vp8 import packetize
from confero.server.mixer import MeetingMixer

MACHINE = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


class Server:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "confero.cli", "server", "--port", "0", "--media-port", "0",
             "--data-dir", self._dir.name],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.url, self.http = str(ready["url"]), str(ready["http"])

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.http + "metrics", timeout=5).read().decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._dir.cleanup()


def bot(server: Server, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "confero.cli", "bot", "--server", server.url, "--name", name,
         "--no-stdin", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def first_line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    return dict(json.loads(proc.stdout.readline()))


def done_event(proc: subprocess.Popen[str], seen: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    """Read a bot's events up to its ``done``; the others go into ``seen``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "done":
            proc.wait(30)
            return dict(event)
        if seen is not None:
            seen.append(event)
    raise RuntimeError("bot ended without a done event")


# ---------------------------------------------------------------------------- video


def bench_video(seconds: float) -> dict[str, Any]:
    """One publisher (640x480@30), one subscriber: capture -> decoded latency and fps."""
    server = Server()
    try:
        publisher = bot(server, "publisher", "--create", "video bench", "--audio", "none",
                        "--duration", str(seconds + 3))
        meeting = first_line(publisher)["meeting_id"]
        time.sleep(1.0)  # the publisher is well into its stream when the subscriber joins
        subscriber = bot(server, "subscriber", "--join", meeting, "--video", "none",
                         "--duration", str(seconds))
        events: list[dict[str, Any]] = []
        summary = done_event(subscriber, events)
        done_event(publisher)
    finally:
        server.close()
    [stream] = summary["stats"]["video"].values()
    return {
        "bench": "video_latency",
        "resolution": "640x480",
        "fps_target": 30,
        "seconds": seconds,
        "frames_decoded": stream["frames_decoded"],
        "fps_measured": round(stream["frames_decoded"] / seconds, 1),
        "latency_ms": stream["delay_percentiles_ms"],
        "lost_packets": stream["lost"],
        "late_join_first_frame_ms": next(
            (e["after_join_ms"] for e in events if e["event"] == "video_started"), None),
        "machine": MACHINE,
    }


async def bench_forward_async(seconds: float, subscribers: int, rate: int) -> dict[str, Any]:
    """Server CPU per forwarded packet, with the server as the only real work.

    A publisher in this process sends ``rate`` SRTP video packets per second (pre-built
    1100-byte VP8 payloads: no encoder in the way); ``subscribers`` participants bind their
    UDP sockets with one keepalive each and never read (the kernel discards what overflows
    their buffers; the server's work is the same). Server CPU comes from /proc.
    """
    server = Server()
    sockets: list[socket.socket] = []
    try:
        await asyncio.sleep(1)
        user0, system0 = cpu_times(server.proc.pid)
        await asyncio.sleep(3)
        user1, system1 = cpu_times(server.proc.pid)
        idle = (user1 - user0 + system1 - system0) / 3
        clients = [Client(server.url, f"p{i}") for i in range(subscribers + 1)]
        for client in clients:
            await client.connect()
        meeting = (await clients[0].create_meeting("forwarding bench")).meeting.id
        grants = [clients[0].media_grant]
        for client in clients[1:]:
            grants.append((await client.join(meeting)).media)
        target = ("127.0.0.1", grants[0].port)  # type: ignore[union-attr]
        contexts = []
        for grant in grants:
            assert grant is not None
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            ctx = SrtpContext(tx_key=decode_key(grant.key_up), rx_key=decode_key(grant.key_down))
            udp.sendto(ctx.protect_rtcp(rtcp.ReceiverReport(grant.video_ssrc).pack()), target)
            # the server's consent challenge: echo it, as clients do (these sockets are not
            # read again, so they miss the refreshes: fine for runs shorter than 30 s)
            udp.settimeout(10)
            [challenge] = rtcp.parse_compound(ctx.unprotect_rtcp(udp.recv(2048)))
            echo = consent.answer(challenge, grant.video_ssrc)
            assert echo is not None
            udp.sendto(ctx.protect_rtcp(echo), target)
            sockets.append(udp)
            contexts.append(ctx)
        publisher, pub_ctx, pub_grant = sockets[0], contexts[0], grants[0]
        assert pub_grant is not None
        payload = packetize(b"\x01" + b"v" * 1100, 1)[0]
        await asyncio.sleep(0.5)
        packets_before = server.metric("confero_media_forwarded_packets_total")
        user0, system0 = cpu_times(server.proc.pid)
        started = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                # as a client sends it: with its transport-wide sequence number (ext 4),
                # which the server rewrites in place for each subscriber
                packet = RtpPacket(96, sent & 0xFFFF, sent // 3 * 3000, pub_grant.video_ssrc,
                                   payload, marker=sent % 3 == 2,
                                   extensions={EXT_TRANSPORT_SEQ: (sent & 0xFFFF).to_bytes(
                                       2, "big")})
                publisher.sendto(pub_ctx.protect_rtp(packet.serialize()), target)
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.5)
        user1, system1 = cpu_times(server.proc.pid)
        packets = server.metric("confero_media_forwarded_packets_total") - packets_before
        for client in clients:
            await client.close()
    finally:
        for udp in sockets:
            udp.close()
        server.close()
    user, system = user1 - user0, system1 - system0
    window = seconds + 0.5
    net_user = user - idle * window  # idle is almost all user time (timers)
    return {
        "bench": "server_forwarding",
        "subscribers": subscribers,
        "published_packets_per_s": rate,
        "seconds": seconds,
        "forwarded_packets": int(packets),
        "forwarded_packets_per_s": round(packets / window, 1),
        "server_cpu_share_of_one_core": round((user + system) / window, 3),
        "server_idle_cpu_share": round(idle, 4),
        "user_us_per_forwarded_packet": round(net_user / packets * 1e6, 2),
        "system_us_per_forwarded_packet": round(system / packets * 1e6, 2),
        "total_us_per_forwarded_packet": round((net_user + system) / packets * 1e6, 2),
        "note": "per forwarded packet = per packet per subscriber: SRTP unprotect (shared by "
                "the subscribers) + protect, the routing, sendto; system time includes the "
                "kernel's loopback delivery, which a real NIC would not charge to us",
        "machine": MACHINE,
    }


# ---------------------------------------------------------------------------- audio


class BurstSource:
    """Silence with a 20 ms tone burst every ``period`` frames; remembers when each burst
    frame was captured (handed over complete, i.e. the end of the captured frame)."""

    def __init__(self, period: int = 25) -> None:
        self.period = period
        self._tone = SineSource(1000, 12000)
        self._count = 0
        self.burst_times: list[float] = []

    def next_frame(self) -> Samples:
        self._count += 1
        if self._count % self.period == 0:
            self.burst_times.append(time.time())
            return self._tone.next_frame()
        return np.zeros(FRAME_SAMPLES, dtype=np.int16)


async def bench_audio_async(seconds: float) -> dict[str, Any]:
    server = Server()
    try:
        async with Client(server.url, "speaker") as speaker, Client(
            server.url, "listener"
        ) as listener:
            created = await speaker.create_meeting("audio bench")
            joined = await listener.join(created.meeting.id)
            source = BurstSource()
            onsets: list[float] = []
            previous_loud = False

            def on_audio(samples: Samples) -> None:
                nonlocal previous_loud
                loud = bool(np.abs(samples).max() > 2000)
                if loud and not previous_loud:
                    onsets.append(time.time())  # the moment this frame goes to the device
                previous_loud = loud

            assert created.media is not None and joined.media is not None
            talk = MediaSession(created.media, "127.0.0.1")
            hear = MediaSession(joined.media, "127.0.0.1", on_audio=on_audio)
            await talk.open()
            await hear.open()
            talk.set_audio_source(source)
            await asyncio.sleep(seconds)
            await talk.close()
            await hear.close()
    finally:
        server.close()
    latencies = []
    for onset in onsets:
        earlier = [t for t in source.burst_times if t <= onset]
        if earlier and onset - earlier[-1] < 0.4:
            latencies.append((onset - earlier[-1]) * 1000)
    latencies.sort()
    return {
        "bench": "audio_latency",
        "path": "capture (20 ms frame complete) -> Opus -> SRTP/UDP -> server jitter buffer -> "
                "20 ms mixer -> Opus -> client adaptive jitter buffer -> decoded hand-off",
        "bursts_sent": len(source.burst_times),
        "bursts_heard": len(latencies),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
            "min": round(latencies[0], 1),
            "max": round(latencies[-1], 1),
        } if latencies else None,
        "machine": MACHINE,
    }


# ---------------------------------------------------------------------------- mixer


def bench_mixer(speakers: int, seconds: float) -> dict[str, Any]:
    """Every speaker talking at once (the worst case), driven on a virtual 20 ms clock."""
    mixer = MeetingMixer()
    encoded: dict[str, list[bytes]] = {}
    for i in range(speakers):
        source, encoder = SineSource(300 + 70 * i), OpusEncoder()
        encoded[f"p{i}"] = [encoder.encode(source.next_frame()) for _ in range(50)]
        mixer.add(f"p{i}")
    ticks = int(seconds / 0.02)
    started = time.perf_counter()
    cpu_started = time.process_time()
    for tick in range(ticks):
        now = tick * 0.02
        for pid, frames in encoded.items():
            mixer.push(pid, (tick * FRAME_SAMPLES) & 0xFFFFFFFF, frames[tick % 50], 20, now)
        mixer.mix()
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - started
    return {
        "bench": "mixer",
        "speakers_all_talking": speakers,
        "ticks": ticks,
        "cpu_ms_per_tick": round(cpu / ticks * 1000, 3),
        "share_of_one_core": round(cpu / (ticks * 0.02), 4),
        "wall_ms_per_tick": round(wall / ticks * 1000, 3),
        "decoded": mixer.stats.decoded,
        "encoded": mixer.stats.encoded,
        "machine": MACHINE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["video", "forward", "audio", "mixer", "all"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=8)
    parser.add_argument("--rate", type=int, default=1500,
                        help="published packets per second for 'forward'")
    parser.add_argument("--speakers", type=int, default=10)
    args = parser.parse_args()
    results = []
    if args.which in ("video", "all"):
        results.append(bench_video(args.seconds))
    if args.which in ("forward", "all"):
        results.append(asyncio.run(bench_forward_async(args.seconds, args.subscribers,
                                                       args.rate)))
    if args.which in ("audio", "all"):
        results.append(asyncio.run(bench_audio_async(args.seconds)))
    if args.which in ("mixer", "all"):
        results.append(bench_mixer(args.speakers, args.seconds))
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


if __name__ == "__main__":
    main()
