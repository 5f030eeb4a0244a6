"""How many 4-person meetings (640x480 video + audio each) one server process carries.

Adds meetings step by step to a real ``confero server`` process. The participants live in
this process and are cheap on purpose: they send pre-encoded VP8 frames (about 660 kbit/s,
30 fps, from the synthetic camera) and pre-encoded Opus (everyone talking: the mixer's
worst case), and on reception only count frames and watch the mixed audio's arrival.
A step fails when any receiver sees a remote stream below 25 fps or an audio gap (a
mixed-audio packet more than 100 ms after the previous one, or a sequence hole). Frames
are counted by the RTP marker bit of arriving packets (the header is not encrypted), so
the receive side costs almost nothing. Both processes' CPU is printed per
step, so it is clear which side ran out first.

    .venv/bin/python bench/capacity_bench.py --steps 2,4,6,8,10,12,14,16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confero.client import Client
from confero.media.audio import OpusEncoder, SineSource
from confero.media.video import SyntheticCamera, Vp8Encoder
from confero.netutil import enlarge_socket_buffers
from confero.protocol import consent, rtcp
from confero.protocol.rtp import RtpPacket, is_rtcp
from confero.protocol.signaling import MediaGrant
from confero.protocol.srtp import SrtpContext, SrtpError, decode_key
from confero.protocol.vp8 import packetize

FPS = 30


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pre_encode() -> tuple[list[bytes], list[bytes]]:
    camera, encoder = SyntheticCamera("capacity"), Vp8Encoder(640, 480)
    video = [b"".join(encoder.encode(camera.frame(i), i * 3000, i == 0)) for i in range(60)]
    tone, opus = SineSource(440), OpusEncoder()
    audio = [opus.encode(tone.next_frame()) for _ in range(50)]
    return video, audio


@dataclass
class _Receive:
    frames: dict[int, int] = field(default_factory=dict)
    last_audio: float | None = None
    last_audio_seq: int | None = None
    audio_gaps: int = 0


class Participant(asyncio.DatagramProtocol):
    def __init__(self, grant: MediaGrant) -> None:
        self.grant = grant
        self.srtp = SrtpContext(tx_key=decode_key(grant.key_up), rx_key=decode_key(grant.key_down))
        self.rx = _Receive()
        self.transport: Any = None
        self.video_seq = 0
        self.audio_seq = 0
        self.picture_id = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        enlarge_socket_buffers(transport, 1024 * 1024)
        self.transport.sendto(self.srtp.protect_rtcp(
            rtcp.ReceiverReport(self.grant.video_ssrc).pack()))

    def send_video(self, frame: bytes, index: int) -> None:
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        payloads = packetize(frame, self.picture_id)
        for i, payload in enumerate(payloads):
            self.video_seq = (self.video_seq + 1) & 0xFFFF
            packet = RtpPacket(96, self.video_seq, index * 3000 & 0xFFFFFFFF,
                               self.grant.video_ssrc, payload, i == len(payloads) - 1)
            self.transport.sendto(self.srtp.protect_rtp(packet.serialize()))

    def send_audio(self, payload: bytes, index: int) -> None:
        self.audio_seq = (self.audio_seq + 1) & 0xFFFF
        packet = RtpPacket(111, self.audio_seq, index * 960 & 0xFFFFFFFF,
                           self.grant.audio_ssrc, payload, extensions={2: bytes([0x80 | 20])})
        self.transport.sendto(self.srtp.protect_rtp(packet.serialize()))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # SRTP leaves the RTP header in the clear: to stay cheap (so that the server, not
        # this generator, is what runs out), read only the header: frames end at a marker.
        if is_rtcp(data):  # the server's consent challenge: echo it, as clients do
            with contextlib.suppress(SrtpError, rtcp.RtcpError):
                for packet in rtcp.parse_compound(self.srtp.unprotect_rtcp(data)):
                    echo = consent.answer(packet, self.grant.video_ssrc)
                    if echo is not None:
                        self.transport.sendto(self.srtp.protect_rtcp(echo))
            return
        if len(data) < 12:
            return
        payload_type, seq, ssrc = data[1] & 0x7F, int.from_bytes(data[2:4], "big"), \
            int.from_bytes(data[8:12], "big")
        rx = self.rx
        if payload_type == 111:
            now = time.monotonic()
            if rx.last_audio is not None and now - rx.last_audio > 0.1:
                rx.audio_gaps += 1
            if rx.last_audio_seq is not None and (seq - rx.last_audio_seq) & 0xFFFF != 1:
                rx.audio_gaps += 1
            rx.last_audio, rx.last_audio_seq = now, seq
        elif data[1] & 0x80:
            rx.frames[ssrc] = rx.frames.get(ssrc, 0) + 1


async def run(steps: list[int], window: float) -> dict[str, Any]:
    video, audio = pre_encode()
    data_dir = tempfile.TemporaryDirectory()
    server = subprocess.Popen(  # noqa: ASYNC220 - once, before any load starts
        [sys.executable, "-m", "confero.cli", "server", "--port", "0", "--media-port", "0",
         "--data-dir", data_dir.name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    url = json.loads(server.stdout.readline())["url"]
    loop = asyncio.get_running_loop()
    participants: list[Participant] = []
    clients: list[Client] = []
    results = []
    stop = asyncio.Event()

    async def pump_video() -> None:
        index = 0
        start = loop.time()
        while not stop.is_set():
            for p in participants:
                p.send_video(video[index % len(video)], index)
            index += 1
            await asyncio.sleep(max(0.0, start + index / FPS - loop.time()))

    async def pump_audio() -> None:
        index = 0
        start = loop.time()
        while not stop.is_set():
            for p in participants:
                p.send_audio(audio[index % len(audio)], index)
            index += 1
            await asyncio.sleep(max(0.0, start + index * 0.02 - loop.time()))

    tasks = [asyncio.create_task(pump_video()), asyncio.create_task(pump_audio())]
    try:
        for meetings in steps:
            while len(participants) < meetings * 4:
                members = [Client(url, f"m{len(participants)}u{i}") for i in range(4)]
                for client in members:
                    await client.connect()
                clients.extend(members)
                created = await members[0].create_meeting("capacity")
                grants = [created.media] + [(await c.join(created.meeting.id)).media
                                            for c in members[1:]]
                for grant in grants:
                    assert grant is not None
                    _, protocol = await loop.create_datagram_endpoint(
                        lambda g=grant: Participant(g),  # type: ignore[misc]
                        remote_addr=("127.0.0.1", grant.port))
                    participants.append(protocol)
            await asyncio.sleep(2.5)  # settle: keyframes reach the new receivers
            before = [(dict(p.rx.frames), p.rx.audio_gaps) for p in participants]
            server_cpu, own_cpu = cpu_seconds(server.pid), time.process_time()
            await asyncio.sleep(window)
            server_cpu = cpu_seconds(server.pid) - server_cpu
            own_cpu = time.process_time() - own_cpu
            fps = []
            gaps = 0
            for p, (frames0, gaps0) in zip(participants, before, strict=True):
                for ssrc, count in p.rx.frames.items():
                    fps.append((count - frames0.get(ssrc, 0)) / window)
                gaps += p.rx.audio_gaps - gaps0
            step = {
                "meetings": meetings,
                "participants": len(participants),
                "min_fps": round(min(fps), 1) if fps else 0.0,
                "median_fps": round(sorted(fps)[len(fps) // 2], 1) if fps else 0.0,
                "audio_gaps": gaps,
                "server_cpu_share": round(server_cpu / window, 2),
                "load_generator_cpu_share": round(own_cpu / window, 2),
            }
            results.append(step)
            print(json.dumps(step), file=sys.stderr, flush=True)
            if step["min_fps"] < 25 or gaps:
                break
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        for client in clients:
            await client.close()
        server.terminate()
        server.wait(10)
        data_dir.cleanup()
    good = [s for s in results if s["min_fps"] >= 25 and not s["audio_gaps"]]
    return {
        "bench": "capacity_4_person_meetings",
        "video": "640x480@30 VP8 (~660 kbit/s, pre-encoded)",
        "audio": "Opus 20 ms, all four talking",
        "window_s": window,
        "steps": results,
        "max_meetings_ok": good[-1]["meetings"] if good else 0,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; the load generator shares the machine",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="2,4,6,8,10,12,14,16,20,24")
    parser.add_argument("--window", type=float, default=5.0)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    print(json.dumps(asyncio.run(run(steps, args.window)), indent=2))


if __name__ == "__main__":
    main()
