"""A participant's media with the server: UDP + SRTP, send and receive pipelines.

Send: a video source -> VP8 (realtime) -> RFC 7741 packets (<= 1200 bytes) -> SRTP -> UDP,
keeping the last packets to answer NACKs, and a keyframe whenever a PLI arrives; an audio
source -> 20 ms Opus frames with an RFC 6464 level -> SRTP -> UDP.

Receive: each remote video SSRC gets a frame assembler (released when complete), a NACK
generator and a decoder (PLI on a decode failure or on joining); the mixed audio goes into
an adaptive jitter buffer played out on a 20 ms clock. Per-stream statistics are kept for
the UI and the bot. Callbacks run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import av
import numpy as np

from confero.media.audio import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    OPUS_PAYLOAD_TYPE,
    SILENCE,
    OpusDecoder,
    OpusEncoder,
    Samples,
    conceal,
    level_dbov,
)
from confero.media.video import Vp8Decoder, Vp8Encoder
from confero.netutil import enlarge_socket_buffers
from confero.pacing import Pacer
from confero.protocol import consent, rtcp
from confero.protocol.audio_jitter import LOST, AudioJitterBuffer
from confero.protocol.nack import NackGenerator, RetransmitBuffer
from confero.protocol.profile import (
    EXT_AUDIO_LEVEL,
    EXT_CAPTURE_TIME,
    EXT_MIXER_LEVELS,
    VIDEO_CLOCK,
    VIDEO_PAYLOAD_TYPE,
)
from confero.protocol.rtp import RtpError, RtpPacket, SequenceUnwrapper, is_rtcp
from confero.protocol.signaling import MediaGrant
from confero.protocol.srtp import SrtpContext, SrtpError, decode_key
from confero.protocol.video_jitter import Frame, FrameAssembler
from confero.protocol.vp8 import packetize

log = logging.getLogger(__name__)

CONTROL_INTERVAL = 0.02
KEEPALIVE_INTERVAL = 1.0
MAX_REMOTE_STREAMS = 32


class VideoSource(Protocol):
    width: int
    height: int

    def frame(self, capture_us: int) -> av.VideoFrame: ...


class AudioSource(Protocol):
    def next_frame(self) -> Samples: ...


@dataclass
class StreamStats:
    """What a receiver knows about one remote stream (cumulative counters + rates)."""

    kind: str
    ssrc: int
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    nacks_sent: int = 0
    plis_sent: int = 0
    frames_decoded: int = 0
    decode_errors: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    bitrate_bps: float = 0.0
    jitter_ms: float = 0.0
    delay_ms: float | None = None  # capture (sender clock) to decoded (our clock)
    _window_start: float = 0.0
    _window_frames: int = 0
    _window_bytes: int = 0
    _delays: list[float] = field(default_factory=list)
    _all_delays: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    _highest_seq: int | None = None
    _first_seq: int | None = None
    _unwrap: SequenceUnwrapper = field(default_factory=SequenceUnwrapper)
    _transit: float | None = None

    def on_packet(self, packet: RtpPacket, size: int, now: float, clock_rate: int) -> None:
        self.packets += 1
        self.bytes += size
        self._window_bytes += size
        seq = self._unwrap.unwrap(packet.sequence_number)
        if self._first_seq is None:
            self._first_seq = seq
        if self._highest_seq is None or seq > self._highest_seq:
            self._highest_seq = seq
        self.lost = max(0, self._highest_seq - self._first_seq + 1 - self.packets)
        transit = now - packet.timestamp / clock_rate
        if self._transit is not None:
            delta = abs(transit - self._transit)
            if delta < 10:  # ignore timestamp jumps (a new talkspurt, a restart)
                self.jitter_ms += (delta * 1000 - self.jitter_ms) / 16
        self._transit = transit

    def on_frame(self, delay: float | None) -> None:
        self.frames_decoded += 1
        self._window_frames += 1
        if delay is not None:
            self._delays.append(delay)
            self._all_delays.append(delay)

    def roll(self, now: float) -> None:
        """Close the current one-second window: compute fps, bitrate and delay."""
        span = now - self._window_start
        if span <= 0:
            return
        self.fps = self._window_frames / span
        self.bitrate_bps = self._window_bytes * 8 / span
        if self._delays:
            self.delay_ms = float(np.median(self._delays)) * 1000
        self._window_start = now
        self._window_frames = self._window_bytes = 0
        self._delays = []

    def delay_percentiles(self) -> dict[str, float] | None:
        """Capture-to-decoded delay over the last 20 000 frames, in milliseconds."""
        if not self._all_delays:
            return None
        ms = np.array(self._all_delays) * 1000
        return {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p95": round(float(np.percentile(ms, 95)), 2),
            "max": round(float(ms.max()), 2),
            "frames": len(ms),
        }

    def public(self) -> dict[str, object]:
        values: dict[str, object] = {
            k: v for k, v in self.__dict__.items() if not k.startswith("_")
        }
        values["delay_percentiles_ms"] = self.delay_percentiles()
        return values


@dataclass
class DecodedVideo:
    ssrc: int
    frame: av.VideoFrame
    capture_us: int | None
    received_at: float
    encoded: Frame  # what arrived, for recording without re-encoding


class _RemoteVideo:
    def __init__(self, ssrc: int, now: float) -> None:
        self.last_keyframe_request = float("-inf")
        self.assembler = FrameAssembler()
        self.nack = NackGenerator()
        self.decoder = Vp8Decoder()
        self.stats = StreamStats("video", ssrc, _window_start=now)


class MediaSession(asyncio.DatagramProtocol):
    def __init__(
        self,
        grant: MediaGrant,
        host: str,
        *,
        on_video: Callable[[DecodedVideo], None] | None = None,
        on_audio: Callable[[Samples], None] | None = None,
        clock: Callable[[], float] = time.time,
        fps: int = 30,
        device_playout: bool = False,
        receive_video: bool = True,
        on_source_error: Callable[[str, str], None] | None = None,
    ) -> None:
        """``device_playout``: a sound device pulls audio with :meth:`pull_audio` (from its
        own thread, on its own clock); otherwise a 20 ms timer on the event loop does, and
        hands each frame to ``on_audio``."""
        self.grant = grant
        self.address = (grant.host or host, grant.port)
        self._srtp = SrtpContext(tx_key=decode_key(grant.key_up), rx_key=decode_key(grant.key_down))
        self._on_video = on_video
        self._on_audio = on_audio
        self._clock = clock
        self.fps = fps
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._video_task: asyncio.Task[None] | None = None
        self._audio_task: asyncio.Task[None] | None = None
        self._playout_task: asyncio.Task[None] | None = None
        self._video_seq = secrets.randbelow(1 << 16)
        self._audio_seq = secrets.randbelow(1 << 16)
        self._audio_ts = secrets.randbelow(1 << 32)
        self._ts_offset = secrets.randbelow(1 << 32)
        self._picture_id = secrets.randbelow(1 << 15)
        self._history = RetransmitBuffer(1024)
        self._keyframe_wanted = True
        self._remote: dict[int, _RemoteVideo] = {}
        self._jitter = AudioJitterBuffer(target=2, min_target=1, max_target=10)
        self._audio_decoder = OpusDecoder()
        self._audio_lock = threading.Lock()  # the jitter buffer is shared with the device
        self._device_playout = device_playout
        self._receive_video = receive_video  # False: a send-only load generator
        self._on_source_error = on_source_error  # (kind "video"/"audio", message)
        self._last_audio: Samples | None = None
        self._concealed_in_a_row = 0
        self.audio_stats = StreamStats("audio", grant.mix_ssrc)
        # audio SSRC -> (level in -dBov, when heard), from the mix's CSRCs (RFC 6465)
        self._speaker_levels: dict[int, tuple[int, float]] = {}
        #: Level of our own microphone's last frame (-dBov, 127 = silence) and when.
        self.own_level: tuple[int, float] = (127, 0.0)
        self.counters: dict[str, int] = {
            "sent_packets": 0, "sent_bytes": 0, "dropped_auth": 0, "dropped_malformed": 0,
            "retransmitted": 0, "plis_received": 0, "nacks_received": 0, "keyframes_sent": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, remote_addr=self.address)
        self.transport = transport
        enlarge_socket_buffers(transport, 1024 * 1024)
        self._send_keepalive()
        self._tasks = [
            asyncio.create_task(self._every(CONTROL_INTERVAL, self._control)),
            asyncio.create_task(self._every(KEEPALIVE_INTERVAL, self._keepalive)),
        ]
        self.set_device_playout(self._device_playout)

    def set_device_playout(self, device: bool) -> None:
        """True: a sound device pulls audio (:meth:`pull_audio`); False: a 20 ms timer on
        the loop does (for bots, or when no speaker could be opened)."""
        self._device_playout = device
        if device and self._playout_task is not None:
            self._playout_task.cancel()
            self._playout_task = None
        elif not device and self._playout_task is None and self.transport is not None:
            self._playout_task = asyncio.create_task(self._every(FRAME_SECONDS, self._playout))

    async def close(self) -> None:
        self.set_video_source(None)
        self.set_audio_source(None)
        tasks = [t for t in (*self._tasks, self._video_task, self._audio_task,
                             self._playout_task) if t]
        self._playout_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self._send_rtcp(rtcp.Bye([self.grant.audio_ssrc, self.grant.video_ssrc]).pack())
            self.transport.close()
            self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def error_received(self, exc: Exception) -> None:
        log.debug("media socket error: %s", exc)

    # ------------------------------------------------------------------ sources

    def set_video_source(self, source: VideoSource | None) -> None:
        if self._video_task is not None:
            self._video_task.cancel()
            self._video_task = None
        if source is not None:
            self._keyframe_wanted = True
            self._video_task = asyncio.create_task(self._send_video(source))

    def set_audio_source(self, source: AudioSource | None) -> None:
        if self._audio_task is not None:
            self._audio_task.cancel()
            self._audio_task = None
        if source is not None:
            self._audio_task = asyncio.create_task(self._send_audio(source))

    @property
    def sending_video(self) -> bool:
        return self._video_task is not None

    @property
    def sending_audio(self) -> bool:
        return self._audio_task is not None

    # ------------------------------------------------------------------ statistics

    def stats(self) -> dict[str, object]:
        return {
            "video": {ssrc: r.stats.public() for ssrc, r in self._remote.items()},
            "audio": self.audio_stats.public(),
            "audio_buffer": {
                "target_frames": self._jitter.target,
                "depth_frames": self._jitter.depth,
                "concealed": self._jitter.concealed,
                "late": self._jitter.late,
            },
            "sent": dict(self.counters),
        }

    # ------------------------------------------------------------------ sending

    async def _send_video(self, source: VideoSource) -> None:
        await self._guard_source("video", self._video_loop(source))

    async def _send_audio(self, source: AudioSource) -> None:
        await self._guard_source("audio", self._audio_loop(source))

    async def _guard_source(self, kind: str, sending: Coroutine[Any, Any, None]) -> None:
        """A device that dies must stop its stream, not the session or the app."""
        try:
            await sending
        except Exception as exc:
            log.warning("%s source failed: %s", kind, exc)
            self.counters["source_errors"] = self.counters.get("source_errors", 0) + 1
            if kind == "video":
                self._video_task = None
            else:
                self._audio_task = None
            if self._on_source_error is not None:
                self._on_source_error(kind, str(exc))

    async def _video_loop(self, source: VideoSource) -> None:
        encoder = Vp8Encoder(source.width, source.height, self.fps)
        pacer = Pacer(1 / self.fps, resync_after=1)  # behind a frame: drop, keep pace
        while True:
            capture = self._clock()
            capture_us = int(capture * 1e6)
            rtp_ts = (int(capture * VIDEO_CLOCK) + self._ts_offset) & 0xFFFFFFFF
            keyframe, self._keyframe_wanted = self._keyframe_wanted, False
            for data in encoder.encode(source.frame(capture_us), rtp_ts, keyframe):
                self._send_frame(data, rtp_ts, capture_us, keyframe)
            await pacer.wait()

    def _send_frame(self, data: bytes, rtp_ts: int, capture_us: int, keyframe: bool) -> None:
        self._picture_id = (self._picture_id + 1) & 0x7FFF
        payloads = packetize(data, self._picture_id)
        if keyframe:
            self.counters["keyframes_sent"] += 1
        for index, payload in enumerate(payloads):
            self._video_seq = (self._video_seq + 1) & 0xFFFF
            packet = RtpPacket(
                payload_type=VIDEO_PAYLOAD_TYPE,
                sequence_number=self._video_seq,
                timestamp=rtp_ts,
                ssrc=self.grant.video_ssrc,
                payload=payload,
                marker=index == len(payloads) - 1,
                extensions={EXT_CAPTURE_TIME: capture_us.to_bytes(8, "big")} if index == 0
                else {},
            )
            plain = packet.serialize()
            self._history.store(self._video_seq, plain)
            self._send_rtp(plain)

    async def _audio_loop(self, source: AudioSource) -> None:
        encoder = OpusEncoder()
        pacer = Pacer(FRAME_SECONDS)
        first = True
        while True:
            samples = source.next_frame()
            capture_us = int(self._clock() * 1e6)
            level = level_dbov(samples)
            self.own_level = (level, capture_us / 1e6)
            payload = encoder.encode(samples)
            self._audio_seq = (self._audio_seq + 1) & 0xFFFF
            self._audio_ts = (self._audio_ts + FRAME_SAMPLES) & 0xFFFFFFFF
            packet = RtpPacket(
                payload_type=OPUS_PAYLOAD_TYPE,
                sequence_number=self._audio_seq,
                timestamp=self._audio_ts,
                ssrc=self.grant.audio_ssrc,
                payload=payload,
                marker=first,
                extensions={
                    EXT_CAPTURE_TIME: capture_us.to_bytes(8, "big"),
                    EXT_AUDIO_LEVEL: bytes([(0x80 if level < 127 else 0) | level]),
                },
            )
            first = False
            self._send_rtp(packet.serialize())
            await pacer.wait()

    def _send_rtp(self, plain: bytes) -> None:
        if self.transport is None:
            return
        protected = self._srtp.protect_rtp(plain)
        self.transport.sendto(protected)
        self.counters["sent_packets"] += 1
        self.counters["sent_bytes"] += len(protected)

    def _send_rtcp(self, plain: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(self._srtp.protect_rtcp(plain))

    def _send_keepalive(self) -> None:
        self._send_rtcp(rtcp.ReceiverReport(self.grant.video_ssrc).pack())

    # ------------------------------------------------------------------ receiving

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = self._clock()
        try:
            if is_rtcp(data):
                self._on_rtcp(self._srtp.unprotect_rtcp(data))
            else:
                self._on_rtp(self._srtp.unprotect_rtp(data), len(data), now)
        except SrtpError:
            self.counters["dropped_auth"] += 1
        except (RtpError, rtcp.RtcpError):
            self.counters["dropped_malformed"] += 1

    def _on_rtcp(self, plain: bytes) -> None:
        for packet in rtcp.parse_compound(plain):
            if isinstance(packet, rtcp.Nack) and packet.media_ssrc == self.grant.video_ssrc:
                self.counters["nacks_received"] += 1
                for seq in packet.lost[:64]:
                    stored = self._history.get(seq)
                    if stored is not None:
                        self._send_rtp(stored)
                        self.counters["retransmitted"] += 1
            elif isinstance(packet, rtcp.Pli) and packet.media_ssrc == self.grant.video_ssrc:
                self.counters["plis_received"] += 1
                self._keyframe_wanted = True
            # consent check (issue 7 item 4; the lead carries this over to the endpoint):
            # echo the server's nonce so it sends our media to this address
            elif (echo := consent.answer(packet, self.grant.video_ssrc)) is not None:
                self._send_rtcp(echo)

    def _on_rtp(self, plain: bytes, size: int, now: float) -> None:
        packet = RtpPacket.parse(plain)
        if packet.ssrc == self.grant.mix_ssrc and packet.payload_type == OPUS_PAYLOAD_TYPE:
            with self._audio_lock:
                self.audio_stats.on_packet(packet, size, now, 48_000)
                if packet.payload:  # an empty one is a loss, not a frame
                    self._jitter.push(packet.timestamp, packet.payload, now)
            levels = packet.extensions.get(EXT_MIXER_LEVELS, b"")
            for ssrc, level in zip(packet.csrcs, levels, strict=False):
                self._speaker_levels[ssrc] = (level & 0x7F, now)
            return
        if packet.payload_type != VIDEO_PAYLOAD_TYPE:
            self.counters["dropped_malformed"] += 1
            return
        if not self._receive_video:
            self.counters["video_ignored"] = self.counters.get("video_ignored", 0) + 1
            return
        remote = self._remote.get(packet.ssrc)
        if remote is None:
            if len(self._remote) >= MAX_REMOTE_STREAMS:
                return
            remote = self._remote[packet.ssrc] = _RemoteVideo(packet.ssrc, now)
        remote.stats.on_packet(packet, size, now, VIDEO_CLOCK)
        remote.nack.on_packet(packet.sequence_number, now)
        for frame in remote.assembler.push(packet, now):
            self._decode(remote, frame, now)

    def _decode(self, remote: _RemoteVideo, frame: Frame, now: float) -> None:
        decoded = remote.decoder.decode(frame.data)
        if decoded is None:
            remote.stats.decode_errors += 1
            remote.assembler.request_keyframe()
            return
        capture = frame.extensions.get(EXT_CAPTURE_TIME)
        capture_us = int.from_bytes(capture, "big") if capture and len(capture) == 8 else None
        done = self._clock()
        remote.stats.on_frame(done - capture_us / 1e6 if capture_us is not None else None)
        remote.stats.width, remote.stats.height = decoded.width, decoded.height
        if self._on_video is not None:
            self._on_video(DecodedVideo(remote.stats.ssrc, decoded, capture_us, done, frame))

    def speaking(self, now: float, window: float = 0.4, threshold: int = 50) -> dict[int, int]:
        """Audio SSRCs heard in the mix within ``window`` seconds louder than ``threshold``
        (-dBov), with their level: who is talking right now."""
        return {
            ssrc: level
            for ssrc, (level, at) in list(self._speaker_levels.items())
            if now - at <= window and level < threshold
        }

    def request_keyframe(self, ssrc: int, now: float, interval: float = 0.5) -> None:
        """Ask one sender for a keyframe (e.g. a recording must start with one); repeated
        calls send at most one PLI per ``interval``, as the server forwards no more."""
        remote = self._remote.get(ssrc)
        if remote is None or now - remote.last_keyframe_request < interval:
            return
        remote.last_keyframe_request = now
        self._send_rtcp(rtcp.Pli(self.grant.video_ssrc, ssrc).pack())
        remote.stats.plis_sent += 1

    def forget_stream(self, ssrc: int, *, ended: bool) -> None:
        """Drop a video stream's receive state: the frames, the decoder, the statistics.
        ``ended`` (its sender left) also drops its SRTP state; a camera that is merely off
        keeps it, since the stream resumes with the same rollover counter."""
        self._remote.pop(ssrc, None)
        if ended:
            self._srtp.forget(ssrc)

    # ------------------------------------------------------------------ periodic work

    async def _every(self, interval: float, work: Callable[[float], None]) -> None:
        pacer = Pacer(interval)
        while True:
            await pacer.wait()
            try:
                work(self._clock())
            except Exception:
                log.exception("media periodic task failed")

    def _control(self, now: float) -> None:
        for ssrc, remote in self._remote.items():
            for frame in remote.assembler.poll(now):
                self._decode(remote, frame, now)
            lost = remote.nack.due(now)
            if lost:
                self._send_rtcp(rtcp.Nack(self.grant.video_ssrc, ssrc, lost).pack())
                remote.stats.nacks_sent += 1
            if remote.assembler.keyframe_request_due(now):
                self._send_rtcp(rtcp.Pli(self.grant.video_ssrc, ssrc).pack())
                remote.stats.plis_sent += 1

    def _keepalive(self, now: float) -> None:
        self._send_keepalive()
        for remote in self._remote.values():
            remote.stats.roll(now)
        with self._audio_lock:
            self.audio_stats.roll(now)

    def _playout(self, now: float) -> None:
        self.pull_audio()

    def pull_audio(self) -> Samples:
        """The next 20 ms to play (thread-safe; a sound device's callback may call it).
        Also hands the frame to ``on_audio``, on the calling thread."""
        with self._audio_lock:
            item = self._jitter.pop()
            if item is None:
                samples = SILENCE
                self._last_audio = None
            elif item is LOST:
                self._concealed_in_a_row += 1
                samples = conceal(self._last_audio, self._concealed_in_a_row)
            else:
                assert isinstance(item, bytes)
                samples = self._audio_decoder.decode(item)
                self._last_audio = samples
                self._concealed_in_a_row = 0
                self.audio_stats.on_frame(None)
        if self._on_audio is not None:
            self._on_audio(samples)
        return samples
