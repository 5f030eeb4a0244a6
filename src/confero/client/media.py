"""The asyncio shell around the client's media core (:mod:`confero.client.endpoint`).

It owns what the sans-I/O endpoint must not: the UDP socket, one ``call_at`` timer re-armed
from :meth:`MediaEndpoint.get_timer`, the codecs, the sources, and the threads. Video is
captured, encoded and decoded on worker threads (libvpx releases the GIL), so a busy event
loop never delays a frame and a slow decode never delays the network; Opus (about 0.1 ms
a frame) stays on the loop. Playout is pulled by the sound device's own clock
(:meth:`pull_audio`, on the device's thread), or by a 20 ms schedule on the loop when there
is no device (bots). ``now`` is ``time.monotonic()`` (the event loop's clock) everywhere;
the capture time sent on the wire is the wall clock, named ``capture_us``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import av

from confero.client.adaptation import (
    ResolutionLadder,
    SimulcastSplit,
    low_copy_size,
    split_video,
    video_share,
)
from confero.client.audio_mix import Crossfade, LocalMixer
from confero.client.endpoint import (
    LOST,
    START_BPS,
    EndpointConfig,
    KeyframeNeeded,
    MediaEndpoint,
    TargetBitrate,
    VideoFrameReady,
)
from confero.client.frame_cipher import FrameCipher
from confero.client.media_tcp import (
    FALLBACK_AFTER,
    STREAM_LINGER,
    STREAM_RETRY,
    UDP_PROBE_INTERVAL,
    MediaStreamLink,
)
from confero.client.p2p_switch import PathSwitch
from confero.client.simulcast import CameraPick
from confero.client.stats import StreamStats
from confero.media.audio import FRAME_SECONDS, SILENCE, Samples, level_dbov
from confero.media.opus import Decoder as OpusDecoder
from confero.media.opus import Encoder as OpusEncoder
from confero.media.opus import OpusError
from confero.media.video import Vp8Decoder, make_video_encoder
from confero.media.vpx import EncodedFrame, VideoEncoder
from confero.netutil import arrival_time, enable_receive_timestamps, enlarge_socket_buffers
from confero.pacing import Pacer
from confero.protocol.rtp import is_rtcp
from confero.protocol.signaling import MediaGrant
from confero.protocol.video_jitter import Frame
from confero.protocol.video_playout import VideoPlayout

if TYPE_CHECKING:  # aioice (and dnspython) cost ~0.3 s to import: only when P2P starts
    from confero.client.p2p import PeerLink

log = logging.getLogger(__name__)

#: A keyframe costs 5-10 times a delta frame: however many receivers ask (PLI), at most
#: one per this interval, so a lossy link cannot start a keyframe storm that fills it.
KEYFRAME_MIN_INTERVAL = 0.5
#: Frames of one stream waiting for the decoder thread before we stop feeding it and ask
#: for a keyframe instead: a bounded queue, about a quarter of a second at 30 fps.
MAX_PENDING_DECODES = 8
#: At a P2P switch playout crosses to the new audio source once it delivered this many
#: frames in a row (100 ms): the old source carries on meanwhile, both hold the same sound.
STEADY_FRAMES = 5

__all__ = ["AudioSource", "DecodedVideo", "MediaSession", "StreamStats", "VideoSource"]


class VideoSource(Protocol):
    width: int
    height: int

    def frame(self, capture_us: int) -> av.VideoFrame: ...


class AudioSource(Protocol):
    def next_frame(self) -> Samples: ...


@dataclass
class DecodedVideo:
    ssrc: int
    frame: av.VideoFrame
    capture_us: int | None
    #: When it was decoded (monotonic seconds).
    received_at: float
    encoded: Frame  # what arrived, for recording without re-encoding
    #: What the session's ``prepare_video`` made of it on the decoder thread (e.g. a QImage).
    prepared: Any = None
    #: False when the sender's other camera stream is the one shown (simulcast: the
    #: camera and its low copy, see :class:`~confero.client.simulcast.CameraPick`);
    #: such a frame is for recording only, not for a tile or the statistics.
    shown: bool = True


def _nothing() -> None:
    pass


class MediaSession(asyncio.DatagramProtocol):
    def __init__(
        self,
        grant: MediaGrant,
        host: str,
        *,
        on_video: Callable[[DecodedVideo], None] | None = None,
        on_audio: Callable[[Samples], None] | None = None,
        fps: int = 30,
        device_playout: bool = False,
        receive_video: bool = True,
        on_source_error: Callable[[str, str], None] | None = None,
        prepare_video: Callable[[int, av.VideoFrame], Any] | None = None,
        cipher: FrameCipher | None = None,
        on_level: Callable[[int], None] | None = None,
        media_transport: str = "auto",
        stream_url: str | None = None,
        stream_ssl: ssl.SSLContext | bool = False,
        on_transport: Callable[[str, str], None] | None = None,
        udp_port: int | None = None,
        simulcast: bool = True,
        stream_group: Callable[[int], int] | None = None,
    ) -> None:
        """``device_playout``: a sound device pulls audio with :meth:`pull_audio` (from its
        own thread, on its own clock); otherwise a 20 ms schedule on the event loop does,
        and hands each frame to ``on_audio``. ``prepare_video(ssrc, frame)`` runs on the
        decoder thread for every decoded frame (convert it for display there, not on the
        loop).

        ``media_transport``: ``auto`` (UDP; the WebSocket at ``stream_url`` when nothing
        comes back over UDP within :data:`FALLBACK_AFTER`), ``udp`` or ``tcp`` (only;
        ``tcp_again``: the same, because the previous session found UDP blocked).
        ``on_transport(transport, reason)`` is told each choice. ``udp_port`` replaces
        the grant's port for UDP (tests: a dead port is a network that drops UDP).

        ``simulcast``: also send a low-resolution copy of the camera on the granted
        ``low_ssrc`` (issue 9; never under E2EE, never to a peer). ``stream_group`` maps a
        received video SSRC to the sender's camera SSRC (a low copy's to its camera's):
        of the streams of one group one is shown at a time (:class:`CameraPick`)."""
        self.grant = grant
        self.address = (grant.host or host, udp_port or grant.port)
        # ---- media over a WebSocket when UDP is blocked (issue 10)
        self._transport_policy = media_transport
        self._stream_url = stream_url
        self._stream_ssl = stream_ssl
        self._on_transport = on_transport
        self._stream: MediaStreamLink | None = None
        self._udp_heard: asyncio.Event | None = None
        self._transport_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_udp = False  # the next RTCP packet goes over UDP (see _flush)
        self._lingering: set[MediaStreamLink] = set()  # retired, still receiving a moment
        self._linger_tasks: set[asyncio.Task[None]] = set()
        #: "udp" or "tcp": where the server path's datagrams go now, and why
        self.media_transport = "udp"
        self.transport_reason = ""
        #: seconds from open() to the WebSocket carrying media (None: never fell back)
        self.fallback_seconds: float | None = None
        self._opened_at = 0.0
        self._config = EndpointConfig.from_grant(grant)
        self._receive_video = receive_video
        self._endpoint: MediaEndpoint | None = None
        # The endpoint is shared with the sound device's thread (pull_audio).
        self._lock = threading.Lock()
        self._on_video = on_video
        self._on_audio = on_audio
        self._on_source_error = on_source_error  # (kind "video"/"audio", message)
        self._prepare_video = prepare_video
        self._cipher = cipher  # end-to-end frame encryption (E2EE meetings only)
        self._on_level = on_level  # each captured frame's level (-dBov), muted or not
        self.fps = fps
        self.transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        self._video_task: asyncio.Task[None] | None = None
        #: the second video stream, a shared screen (issue 12), on its own encoder thread
        self._screen_task: asyncio.Task[None] | None = None
        self.screen_fps = 15
        self._audio_task: asyncio.Task[None] | None = None
        self._playout_task: asyncio.Task[None] | None = None
        self._device_playout = device_playout
        self._keyframe_wanted = {"camera": True, "screen": True, "camera_low": True}
        # ---- simulcast (issue 9): a low copy of the camera; one shown stream per sender
        self.simulcast = simulcast
        self._simulcast_split = SimulcastSplit()
        #: CPU seconds the encoder threads spent per stream (camera, its low copy, screen)
        self.encode_seconds: dict[str, float] = {"camera": 0.0, "camera_low": 0.0, "screen": 0.0}
        self._stream_group = stream_group
        self._camera_pick = CameraPick()
        #: the uplink estimate (bit/s), from the endpoint's congestion control
        self.target_bps = START_BPS
        self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="video-encode")
        self._screen_pool = ThreadPoolExecutor(1, thread_name_prefix="screen-encode")
        self._decode_pool = ThreadPoolExecutor(1, thread_name_prefix="video-decode")
        self._decoders: dict[int, Vp8Decoder] = {}  # touched on the decoder thread only
        self._pending_decodes: dict[int, int] = {}
        # bumped when a stream is forgotten: frames of it still on the decoder thread
        # then belong to the past and are not delivered
        self._generations: dict[int, int] = {}
        #: per stream: when to show each decoded frame (jitter smoothed, least delay)
        self._video_playouts: dict[int, VideoPlayout] = {}
        self._audio_decoder = OpusDecoder()
        self._audio_decode_lock = threading.Lock()
        self._closed = False
        #: While muted the microphone keeps capturing (its level stays known, so the app
        #: can say "you are talking while muted") but nothing is sent.
        self.audio_muted = False
        #: Level of our own microphone's last frame (-dBov, 127 = silence) and when
        #: (monotonic seconds).
        self.own_level: tuple[int, float] = (127, 0.0)
        self._extra_counters: dict[str, int] = {"source_errors": 0, "decode_backlog": 0}
        # ---- peer-to-peer (issue 10): the direct path, the switch, local audio mixing
        self._peer: PeerLink | None = None
        self.switch = PathSwitch()
        self._local_mixer = LocalMixer()
        self._crossfade = Crossfade(ramp_frames=2)  # 40 ms
        # frames in a row each source delivered (not concealed): a switch moves playout
        # to the new source only once it runs steadily, the old one carries until then
        self._mix_run = 0
        self._direct_run = 0
        #: what playout took from where, and how often it had to conceal (per source)
        self.playout_counters: dict[str, int] = {
            "mix_frames": 0, "mix_concealed": 0, "direct_frames": 0, "direct_concealed": 0,
            "blended": 0, "silent": 0, "heard_concealed": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        self._endpoint = MediaEndpoint(self._config, now, wall_offset=time.time() - now,
                                       receive_video=self._receive_video,
                                       cipher=self._cipher)
        transport, _ = await loop.create_datagram_endpoint(lambda: self, remote_addr=self.address)
        self.transport = transport
        self._sock = transport.get_extra_info("socket")
        enable_receive_timestamps(self._sock)
        enlarge_socket_buffers(transport, 1024 * 1024)
        self._service()
        self.set_device_playout(self._device_playout)
        self._opened_at = time.monotonic()
        self._udp_heard = asyncio.Event()
        if self._stream_url is not None and self._transport_policy != "udp":
            self._transport_task = asyncio.create_task(self._choose_transport())

    def set_device_playout(self, device: bool) -> None:
        """True: a sound device pulls audio (:meth:`pull_audio`); False: a 20 ms schedule
        on the loop does (for bots, or when no speaker could be opened)."""
        self._device_playout = device
        if device and self._playout_task is not None:
            self._playout_task.cancel()
            self._playout_task = None
        elif not device and self._playout_task is None and self.transport is not None:
            self._playout_task = asyncio.create_task(self._emulated_device())

    async def close(self) -> None:
        self.set_video_source(None)
        self.set_screen_source(None)
        self.set_audio_source(None)
        tasks = [t for t in (self._video_task, self._screen_task, self._audio_task,
                             self._playout_task) if t]
        self._playout_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks_left = [t for t in (self._transport_task, self._probe_task) if t is not None]
        for task in [*tasks_left, *self._linger_tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._transport_task = self._probe_task = None
        for link in list(self._lingering):
            await link.close()
        self._lingering.clear()
        if self.transport is not None and self._endpoint is not None:
            with self._lock:
                self._endpoint.close()
            self._flush()
            self.transport.close()
            self.transport = None
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()
        self._encode_pool.shutdown(wait=False, cancel_futures=True)
        self._screen_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def error_received(self, exc: Exception) -> None:
        log.debug("media socket error: %s", exc)

    # ------------------------------------------------------------------ the core's I/O

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        endpoint = self._endpoint
        if endpoint is None or self._closed:
            return
        heard = self._udp_heard
        with self._lock:
            counters = endpoint.counters
            refused = counters["dropped_auth"] + counters["dropped_malformed"]
            endpoint.receive_datagram(data, time.monotonic(), arrival_time(self._sock))
            authentic = refused == counters["dropped_auth"] + counters["dropped_malformed"]
        if heard is not None and authentic and not heard.is_set():
            heard.set()  # the server answers over UDP: no need for the WebSocket
        if authentic and self._stream is not None and self._transport_policy != "tcp":
            self._return_to_udp()  # before _service: the echo of this challenge goes by UDP
        self._service()

    def _on_timer(self) -> None:
        self._timer = None
        endpoint = self._endpoint
        if endpoint is None or self._closed:
            return
        with self._lock:
            endpoint.handle_timer(time.monotonic())
        self._service()

    def _service(self) -> None:
        """After any input: send what the core produced, act on its events, re-arm the
        one timer (only when the core's deadline moved earlier than the armed one)."""
        endpoint, loop = self._endpoint, self._loop
        if endpoint is None or loop is None or self._closed:
            return
        if self.switch.switching:
            with self._lock:
                self.switch.poll(endpoint, time.monotonic())
        self._flush()
        while True:
            with self._lock:
                event = endpoint.next_event()
            if event is None:
                break
            if isinstance(event, VideoFrameReady):
                self._decode_later(event)
            elif isinstance(event, KeyframeNeeded):
                self._keyframe_wanted[event.stream] = True
            elif isinstance(event, TargetBitrate):
                self.target_bps = event.bps
        self._flush()
        with self._lock:
            deadline = endpoint.get_timer()
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)

    def _flush(self) -> None:
        endpoint, transport = self._endpoint, self.transport
        if endpoint is None:
            return
        with self._lock:
            datagrams = endpoint.datagrams_to_send()
        stream = self._stream
        if stream is not None:
            for datagram in datagrams:
                if self._probe_udp and transport is not None and is_rtcp(datagram):
                    self._probe_udp = False  # is UDP through again? (UDP_PROBE_INTERVAL)
                    transport.sendto(datagram)
                else:
                    stream.send(datagram)
        elif transport is not None:
            for datagram in datagrams:
                transport.sendto(datagram)
        peer = self._peer
        if peer is not None:
            with self._lock:
                direct = endpoint.peer_datagrams_to_send()
            for datagram in direct:
                peer.send(datagram)

    # ------------------------------------------------------------------ UDP or TCP

    async def _choose_transport(self) -> None:
        """UDP unless the server stays silent there; then the WebSocket, retried every
        few seconds while UDP is still silent and it cannot be opened."""
        heard = self._udp_heard
        assert heard is not None
        forced = self._transport_policy in ("tcp", "tcp_again")
        if not forced:
            try:
                await asyncio.wait_for(heard.wait(), FALLBACK_AFTER)
            except TimeoutError:
                pass
            else:
                self._set_transport("udp", "udp_ok")
                return
        reason = {"tcp": "forced", "tcp_again": "udp_blocked_before"}.get(
            self._transport_policy, "udp_timeout")
        while not self._closed:
            if await self._open_stream(reason):
                return
            if heard.is_set() and not forced:
                break  # UDP answered after all
            self._set_transport("udp", "tcp_failed")
            if forced:
                await asyncio.sleep(STREAM_RETRY)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard.wait(), STREAM_RETRY)
                if heard.is_set():
                    break
        if heard.is_set() and not self._closed:
            self._set_transport("udp", "udp_ok")

    async def _open_stream(self, reason: str) -> bool:
        assert self._stream_url is not None
        link = MediaStreamLink(self._stream_url, self._stream_datagram,
                               ssl_context=self._stream_ssl, on_closed=self._stream_closed)
        try:
            await link.connect()
        except ConnectionError as exc:
            log.warning("media over WebSocket failed: %s", exc)
            return False
        endpoint = self._endpoint
        heard = self._udp_heard
        late_udp = (heard is not None and heard.is_set()
                    and self._transport_policy not in ("tcp", "tcp_again"))
        if self._closed or endpoint is None or late_udp:  # UDP answered meanwhile: keep it
            await link.close()
            return False
        self._stream = link
        self.fallback_seconds = time.monotonic() - self._opened_at
        with self._lock:
            endpoint.nudge_keepalive(time.monotonic())  # start the consent check there now
        self._service()
        self._set_transport("tcp", reason)
        if self._transport_policy != "tcp":
            self._probe_task = asyncio.create_task(self._probe_udp_now_and_then())
        return True

    async def _probe_udp_now_and_then(self) -> None:
        while self._stream is not None and not self._closed:
            await asyncio.sleep(UDP_PROBE_INTERVAL)
            self._probe_udp = True

    def _return_to_udp(self) -> None:
        """Something authenticated came over UDP while on the WebSocket: UDP works (again).
        Send there from now on; the WebSocket receives a little longer, until the server
        has moved its sending over (the consent check, answered by UDP)."""
        link, self._stream = self._stream, None
        if link is None:
            return
        self._probe_udp = False
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None
        self._lingering.add(link)

        async def retire() -> None:
            try:
                await asyncio.sleep(STREAM_LINGER)
            finally:
                self._lingering.discard(link)
                await link.close()

        task = asyncio.create_task(retire())
        self._linger_tasks.add(task)
        task.add_done_callback(self._linger_tasks.discard)
        endpoint = self._endpoint
        if endpoint is not None:
            with self._lock:
                endpoint.nudge_keepalive(time.monotonic())
        self._set_transport("udp", "udp_recovered")

    def _stream_datagram(self, data: bytes) -> None:
        endpoint = self._endpoint
        if endpoint is None or self._closed:
            return
        with self._lock:
            endpoint.receive_datagram(data, time.monotonic())  # no kernel stamp on TCP
        self._service()

    def _stream_closed(self, reason: str) -> None:
        """The WebSocket went away: back to UDP, and look again."""
        log.warning("media WebSocket closed: %s", reason)
        if self._stream is None or self._closed:
            return  # a retired one (back on UDP), or the session is closing
        self._stream = None
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None
        self._set_transport("udp", "tcp_closed")
        if self._udp_heard is not None:
            self._udp_heard.clear()
        with self._lock:
            if self._endpoint is not None:
                self._endpoint.nudge_keepalive(time.monotonic())
        self._service()
        self._transport_task = asyncio.create_task(self._choose_transport())

    def _set_transport(self, transport: str, reason: str) -> None:
        if (transport, reason) == (self.media_transport, self.transport_reason):
            return
        self.media_transport, self.transport_reason = transport, reason
        if self._on_transport is not None:
            self._on_transport(transport, reason)

    def transport_counters(self) -> dict[str, object]:
        stream = self._stream
        return {"transport": self.media_transport, "reason": self.transport_reason,
                "fallback_ms": None if self.fallback_seconds is None
                else round(self.fallback_seconds * 1000),
                "stream": dict(stream.counters) if stream is not None else {}}

    # ------------------------------------------------------------------ sources

    def set_video_source(self, source: VideoSource | None) -> None:
        if self._video_task is not None:
            self._video_task.cancel()
            self._video_task = None
        if source is not None:
            self._keyframe_wanted["camera"] = self._keyframe_wanted["camera_low"] = True
            self._video_task = asyncio.create_task(self._send_video(source))

    def set_screen_source(self, source: VideoSource | None) -> None:
        """Share a screen as the second video stream (None: stop sharing). The camera
        carries on; while the screen is on it gets most of the video budget."""
        if self._screen_task is not None:
            self._screen_task.cancel()
            self._screen_task = None
        if source is not None:
            if not self.grant.screen_ssrc:
                raise ValueError("the server granted no screen-share stream")
            self._keyframe_wanted["screen"] = True
            self._screen_task = asyncio.create_task(
                self._guard_source("screen", self._video_loop(source, "screen")))

    def set_audio_source(self, source: AudioSource | None) -> None:
        if self._audio_task is not None:
            self._audio_task.cancel()
            self._audio_task = None
        if source is not None:
            self._audio_task = asyncio.create_task(self._send_audio(source))

    async def encoder_idle(self) -> None:
        """Returns once the encoder thread finished what it had started (so a source that
        was just replaced can be closed without racing a capture)."""
        with contextlib.suppress(RuntimeError):  # the pool is gone: nothing runs there
            await asyncio.get_running_loop().run_in_executor(self._encode_pool, _nothing)

    async def screen_encoder_idle(self) -> None:
        """As :meth:`encoder_idle`, for the screen's encoder thread."""
        with contextlib.suppress(RuntimeError):
            await asyncio.get_running_loop().run_in_executor(self._screen_pool, _nothing)

    @property
    def sending_video(self) -> bool:
        return self._video_task is not None

    @property
    def sending_screen(self) -> bool:
        return self._screen_task is not None

    def _video_budget(self, stream: str) -> int:
        """This stream's part of the video share of the uplink estimate."""
        camera, screen = split_video(video_share(self.target_bps, self.sending_audio),
                                     camera_on=self.sending_video,
                                     screen_on=self.sending_screen)
        return screen if stream == "screen" else camera

    @property
    def sending_audio(self) -> bool:
        return self._audio_task is not None and not self.audio_muted

    # ------------------------------------------------------------------ sending

    async def _send_video(self, source: VideoSource) -> None:
        await self._guard_source("video", self._video_loop(source, "camera"))

    async def _send_audio(self, source: AudioSource) -> None:
        await self._guard_source("audio", self._audio_loop(source))

    async def _guard_source(self, kind: str, sending: Coroutine[Any, Any, None]) -> None:
        """A device that dies must stop its stream, not the session or the app."""
        try:
            await sending
        except Exception as exc:
            log.warning("%s source failed: %s", kind, exc)
            self._extra_counters["source_errors"] += 1
            if kind == "video":
                self._video_task = None
            elif kind == "screen":
                self._screen_task = None
            else:
                self._audio_task = None
            if self._on_source_error is not None:
                self._on_source_error(kind, str(exc))

    async def _video_loop(self, source: VideoSource, stream: str) -> None:
        """Capture, encode and send one video stream ("camera" or "screen"), each on its
        own encoder thread. The camera's thread also encodes its low-resolution copy
        (simulcast, issue 9) from the same captured picture, every second frame."""
        loop = asyncio.get_running_loop()
        pool = self._screen_pool if stream == "screen" else self._encode_pool
        fps = self.screen_fps if stream == "screen" else self.fps
        ladder = ResolutionLadder(source.width, source.height)
        # three temporal layers: the server forwards each subscriber the layers its
        # downlink carries (30, 15 or 7.5 fps) without touching the encoder
        encoder = make_video_encoder(source.width, source.height, fps,
                                     self._video_budget(stream), temporal_layers=3)
        low_size = low_copy_size(source.width, source.height) if stream == "camera" else None
        low_fps = max(1, fps // 2)
        low_encoders: list[VideoEncoder] = []  # made on the encoder thread when first used
        pacer = Pacer(1 / fps, resync_after=1)  # behind a frame: drop, keep pace
        spent = self.encode_seconds

        def capture_and_encode(capture_us: int, pts: int, keyframe: bool, bitrate: int,
                               low_bitrate: int, low_keyframe: bool
                               ) -> tuple[list[EncodedFrame], list[EncodedFrame]]:
            """On the encoder thread: follow the estimate, then capture and encode (and
            the copy, when ``low_bitrate`` asks for one)."""
            started = time.thread_time()
            width, height = ladder.choose(bitrate)
            if (width, height) != (encoder.width, encoder.height):
                encoder.reconfigure(width, height, fps)  # its next frame is a keyframe
            if bitrate != encoder.bitrate:
                encoder.set_bitrate(bitrate)  # live, no keyframe (libvpx)
            captured = frame = source.frame(capture_us)
            if (frame.width, frame.height) != (width, height):
                frame = frame.reformat(width=width, height=height)
            encoded = encoder.encode(frame, pts, keyframe)
            between = time.thread_time()
            spent[stream] += between - started
            if not low_bitrate or low_size is None:
                return encoded, []
            if not low_encoders:
                low_encoders.append(make_video_encoder(*low_size, low_fps, low_bitrate,
                                                       temporal_layers=3))
            low = low_encoders[0]
            if low_bitrate != low.bitrate:
                low.set_bitrate(low_bitrate)
            small = captured.reformat(width=low_size[0], height=low_size[1],
                                      format="yuv420p")
            low_encoded = low.encode(small, pts, low_keyframe)
            spent["camera_low"] += time.thread_time() - between
            return encoded, low_encoded

        last_keyframe = {stream: float("-inf"), "camera_low": float("-inf")}
        index = 0
        low_was_on = False
        try:
            while True:
                captured_at = time.monotonic()
                capture_us = int(time.time() * 1e6)
                bitrate, copy_bps = self._video_budget(stream), 0
                endpoint = self._endpoint
                if (low_size is not None and self.simulcast and endpoint is not None
                        and endpoint.sends_low_copy):
                    bitrate, copy_bps = self._simulcast_split.split(bitrate)
                if not copy_bps:
                    low_was_on = False
                low_bitrate = 0 if index % 2 else copy_bps  # the copy: every second frame
                if low_bitrate and not low_was_on:
                    # (re)starting the copy: receivers and the server need a keyframe
                    self._keyframe_wanted["camera_low"] = low_was_on = True
                keyframe = self._keyframe_wanted[stream] and (
                    captured_at >= last_keyframe[stream] + KEYFRAME_MIN_INTERVAL)
                if keyframe:  # else the request waits for the interval to pass
                    self._keyframe_wanted[stream] = False
                    last_keyframe[stream] = captured_at
                low_keyframe = bool(low_bitrate) and self._keyframe_wanted["camera_low"] and (
                    captured_at >= last_keyframe["camera_low"] + KEYFRAME_MIN_INTERVAL)
                if low_keyframe:
                    self._keyframe_wanted["camera_low"] = False
                    last_keyframe["camera_low"] = captured_at
                pts = int(captured_at * 90_000)
                encoded, low_encoded = await loop.run_in_executor(
                    pool, capture_and_encode, capture_us, pts, keyframe, bitrate,
                    low_bitrate, low_keyframe)
                index += 1
                endpoint = self._endpoint
                if endpoint is not None and not self._closed:
                    with self._lock:
                        for name, frames, layered in (
                            (stream, encoded, encoder.temporal_layers > 1),
                            ("camera_low", low_encoded,
                             bool(low_encoders) and low_encoders[0].temporal_layers > 1),
                        ):
                            for frame in frames:
                                endpoint.send_video_frame(
                                    frame.data, keyframe=frame.keyframe,
                                    capture_us=capture_us, captured_at=captured_at,
                                    now=time.monotonic(),
                                    temporal_id=frame.temporal_id if layered else None,
                                    layer_sync=frame.layer_sync, stream=name)
                    self._service()
                await pacer.wait()
        finally:
            with contextlib.suppress(RuntimeError):  # the pool is gone: the session closed
                pool.submit(encoder.close)
                for low in low_encoders:
                    pool.submit(low.close)

    async def _audio_loop(self, source: AudioSource) -> None:
        # in-band FEC: each packet carries a coarse copy of the previous one, so a single
        # loss is rebuilt by the receiver (the server's mixer) instead of concealed
        encoder = OpusEncoder(bitrate=32_000, packet_loss_perc=10)
        pacer = Pacer(FRAME_SECONDS)
        was_muted = False
        while True:
            endpoint = self._endpoint
            if endpoint is not None:
                # protect as much as the uplink actually loses (at least a little)
                loss = endpoint.congestion.bwe.loss.loss_fraction
                percent = max(5, min(30, round(loss * 100 * 1.5)))
                if percent != encoder.packet_loss_perc:
                    encoder.set_packet_loss_perc(percent)
            samples = source.next_frame()
            now = time.monotonic()
            level = level_dbov(samples)
            self.own_level = (level, now)
            if self._on_level is not None:
                self._on_level(level)
            endpoint = self._endpoint
            if self.audio_muted:
                if not was_muted and endpoint is not None:
                    with self._lock:
                        endpoint.audio_paused()
                was_muted = True
            elif endpoint is not None and not self._closed:
                was_muted = False
                payload = encoder.encode(samples)
                with self._lock:
                    endpoint.send_audio_frame(payload, level=level,
                                              capture_us=int(time.time() * 1e6), now=now)
                self._service()  # the pacer may hold it: the timer must know
            await pacer.wait()

    # ------------------------------------------------------------------ receiving video

    def _decode_later(self, event: VideoFrameReady) -> None:
        """Hand a complete frame to the decoder thread, in order, with a bounded backlog."""
        ssrc = event.ssrc
        pending = self._pending_decodes.get(ssrc, 0)
        if pending >= MAX_PENDING_DECODES:
            # The decoder cannot keep up: skipping delta frames would corrupt the picture,
            # so drop this one and start again from a keyframe.
            self._extra_counters["decode_backlog"] += 1
            if self._endpoint is not None:
                with self._lock:
                    self._endpoint.decode_failed(ssrc)
            return
        self._pending_decodes[ssrc] = pending + 1
        generation = self._generations.get(ssrc, 0)
        try:
            future = self._decode_pool.submit(self._decode, ssrc, event.frame.data)
        except RuntimeError:  # the pool shut down: the session is closing
            return
        loop = self._loop

        def done(finished: Future[tuple[av.VideoFrame, Any] | None]) -> None:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._decoded, event, generation, finished)

        future.add_done_callback(done)

    def _decode(self, ssrc: int, data: bytes) -> tuple[av.VideoFrame, Any] | None:
        """On the decoder thread."""
        decoder = self._decoders.get(ssrc)
        if decoder is None:
            decoder = self._decoders[ssrc] = Vp8Decoder()
        frame = decoder.decode(data)
        if frame is None:
            return None
        prepared = self._prepare_video(ssrc, frame) if self._prepare_video is not None else None
        return frame, prepared

    def _decoded(self, event: VideoFrameReady, generation: int,
                 done: Future[tuple[av.VideoFrame, Any] | None]) -> None:
        ssrc = event.ssrc
        if generation != self._generations.get(ssrc, 0):
            return  # the stream was forgotten (camera off, sender left) meanwhile
        self._pending_decodes[ssrc] = max(0, self._pending_decodes.get(ssrc, 1) - 1)
        endpoint = self._endpoint
        if endpoint is None or self._closed or done.cancelled():
            return
        try:
            result = done.result()
        except Exception:
            log.exception("video decoder failed")
            result = None
        if result is None:
            with self._lock:
                endpoint.decode_failed(ssrc)
            self._service()
            return
        frame, prepared = result
        now = time.monotonic()
        playout = self._video_playouts.get(ssrc)
        if playout is None:
            playout = self._video_playouts[ssrc] = VideoPlayout()
        release = playout.schedule(event.frame.timestamp, now)
        decoded = DecodedVideo(ssrc, frame, event.capture_us, now, event.frame, prepared)
        loop = self._loop
        if release - now > 0.001 and loop is not None:
            # held to its place in the smoothed schedule (at most VideoPlayout.max_delay)
            loop.call_at(release, self._show, decoded, generation)
        else:
            self._show(decoded, generation)

    def _show(self, decoded: DecodedVideo, generation: int) -> None:
        endpoint = self._endpoint
        if (endpoint is None or self._closed
                or generation != self._generations.get(decoded.ssrc, 0)):
            return  # closed, or the stream was forgotten while the frame waited
        capture_us = decoded.capture_us
        delay = time.time() - capture_us / 1e6 if capture_us is not None else None
        frame = decoded.frame
        group = self._stream_group(decoded.ssrc) if self._stream_group is not None else None
        if group is not None:  # one of a sender's camera streams (simulcast): shown?
            decoded.shown = self._camera_pick.offer(
                group, decoded.ssrc, keyframe=decoded.encoded.keyframe,
                timestamp=decoded.encoded.timestamp, area=frame.width * frame.height,
                now=time.monotonic())
        with self._lock:
            if decoded.shown:
                endpoint.frame_decoded(decoded.ssrc, width=frame.width, height=frame.height,
                                       delay=delay)
            else:
                endpoint.frame_superseded(decoded.ssrc)
        if self._on_video is not None:
            self._on_video(decoded)

    # ------------------------------------------------------------------ audio playout

    async def _emulated_device(self) -> None:
        pacer = Pacer(FRAME_SECONDS)
        while True:
            await pacer.wait()
            try:
                self.pull_audio()
            except Exception:
                log.exception("audio playout failed")

    def pull_audio(self) -> Samples:
        """The next 20 ms to play (thread-safe; a sound device's callback may call it).
        Also hands the frame to ``on_audio``, on the calling thread."""
        endpoint = self._endpoint
        if endpoint is None:
            return SILENCE
        now = time.monotonic()
        with self._lock:
            item = endpoint.pop_audio()
            upcoming = endpoint.peek_next_audio() if item is LOST else None
            direct_items = endpoint.pop_peer_audio(now)  # P2P: each sender's own stream
        with self._audio_decode_lock:
            # one decoder for the whole stream, across silences: its state continues
            try:
                if item is None:
                    samples = SILENCE
                elif item is LOST:  # Opus' own repair: the next packet's FEC, else PLC
                    decoder = self._audio_decoder
                    samples = decoder.decode_fec(upcoming) if upcoming else decoder.conceal()
                else:
                    assert isinstance(item, bytes)
                    samples = self._audio_decoder.decode(item)
            except OpusError:
                samples = self._audio_decoder.conceal()
            if direct_items or self._crossfade.weight_b > 0.0:
                samples = self._blend(item, samples, direct_items)
            elif item is not None:
                self.playout_counters["mix_frames"] += 1
                if item is LOST:
                    self.playout_counters["mix_concealed"] += 1
                    self.playout_counters["heard_concealed"] += 1
        if self._on_audio is not None:
            self._on_audio(samples)
        return samples

    def _blend(self, item: object, mixed: Samples, direct_items: dict[int, object]
               ) -> Samples:
        """The server's mix and the senders' own streams (P2P), crossfaded at a switch."""
        counters = self.playout_counters
        direct = self._local_mixer.mix(direct_items)
        if direct is not None:
            counters["direct_frames"] += 1
            if any(not isinstance(v, bytes) for v in direct_items.values()):
                counters["direct_concealed"] += 1
        if item is not None:
            counters["mix_frames"] += 1
            if item is LOST:
                counters["mix_concealed"] += 1
        mix_ok = isinstance(item, bytes)
        direct_ok = bool(direct_items) and all(isinstance(v, bytes)
                                               for v in direct_items.values())
        self._mix_run = self._mix_run + 1 if mix_ok else 0
        self._direct_run = self._direct_run + 1 if direct_ok else 0
        steady = STEADY_FRAMES
        if self.switch.prefer_direct:
            prefer_direct = self._direct_run >= steady or self._mix_run == 0
        else:
            prefer_direct = self._mix_run < steady and self._direct_run > 0
        weight_before = self._crossfade.weight_b
        out = self._crossfade.step(mixed if item is not None else None, direct,
                                   prefer_direct)
        # what a listener hears concealed: a source's concealment counts only while that
        # source is in the output (the path being left may run dry under the fade-out)
        heard_mix = weight_before < 1.0 or self._crossfade.weight_b < 1.0
        heard_direct = weight_before > 0.0 or self._crossfade.weight_b > 0.0
        if ((heard_mix and item is LOST)
                or (heard_direct and direct is not None
                    and any(not isinstance(v, bytes) for v in direct_items.values()))):
            counters["heard_concealed"] += 1
        if 0.0 < self._crossfade.weight_b < 1.0 or weight_before != self._crossfade.weight_b:
            counters["blended"] += 1
        if out is None:
            counters["silent"] += 1
            return SILENCE
        return out

    # ------------------------------------------------------------------ peer-to-peer

    @property
    def peer(self) -> PeerLink | None:
        return self._peer

    def attach_peer(self, link: PeerLink) -> None:
        """Use ``link`` as the direct path once its keys are known (:meth:`peer_keys`)."""
        self._peer = link

    def peer_keys(self, tx_key: bytes, rx_key: bytes) -> None:
        endpoint = self._endpoint
        if endpoint is not None:
            with self._lock:
                endpoint.start_peer(tx_key, rx_key)

    def peer_datagram_received(self, data: bytes) -> None:
        endpoint = self._endpoint
        if endpoint is None or self._closed:
            return
        with self._lock:
            endpoint.receive_peer_datagram(data, time.monotonic())
        self._service()

    def switch_to_p2p(self) -> None:
        """The meeting went P2P: send on the direct path too, leave the server once the
        peer is heard directly (make-before-break)."""
        endpoint = self._endpoint
        if endpoint is None or not endpoint.peer_open:
            return
        with self._lock:
            self.switch.to_p2p(endpoint, time.monotonic())
            endpoint.nudge_keepalive(time.monotonic())
        self._service()

    def switch_to_server(self) -> None:
        """Back through the server: resume there at once, drop the direct path once the
        server's media flows again."""
        endpoint = self._endpoint
        if endpoint is None:
            return
        with self._lock:
            self.switch.to_server(endpoint, time.monotonic())
        self._service()

    def rekey_server(self, grant: MediaGrant) -> None:
        """New server-path keys (same port and SSRCs), from a ``mode_changed``."""
        endpoint = self._endpoint
        if endpoint is None or grant.audio_ssrc != self._config.audio_ssrc:
            return
        config = EndpointConfig.from_grant(grant)
        self.grant, self._config = grant, config
        with self._lock:
            endpoint.rekey_server(config.tx_key, config.rx_key)
            endpoint.nudge_keepalive(time.monotonic())  # re-open the path under new keys
        self._service()

    def detach_peer(self) -> None:
        """The P2P session is over: the server path carries everything."""
        self._peer = None
        endpoint = self._endpoint
        if endpoint is not None:
            with self._lock:
                endpoint.stop_peer()
                self.switch.mode = "server"
        self._service()

    def peer_heard_at(self) -> float | None:
        endpoint = self._endpoint
        return endpoint.peer_heard_at if endpoint is not None else None

    def path_counters(self) -> dict[str, object]:
        endpoint = self._endpoint
        if endpoint is None:
            return {}
        with self._lock:
            return {
                "mode": self.switch.mode,
                "to_server": endpoint.send_to_server,
                "to_peer": endpoint.send_to_peer,
                "peer": dict(endpoint.peer_counters),
                "playout": dict(self.playout_counters),
                "switches": [
                    {"to": r.to, "ms": None if r.completed is None
                     else round((r.completed - r.started) * 1000, 1),
                     "by_timeout": r.by_timeout}
                    for r in self.switch.history
                ],
            }

    # ------------------------------------------------------------------ queries, control

    @property
    def counters(self) -> dict[str, int]:
        endpoint = self._endpoint
        base = dict(endpoint.counters) if endpoint is not None else {}
        return {**base, **self._extra_counters}

    def stats(self) -> dict[str, object]:
        endpoint = self._endpoint
        if endpoint is None:
            return {"video": {}, "audio": {}, "audio_buffer": {}, "sent": {}}
        with self._lock:
            stats = endpoint.stats()
        stats["sent"] = {**stats["sent"], **self._extra_counters}  # type: ignore[dict-item]
        stats["encode_cpu_s"] = {k: round(v, 3) for k, v in self.encode_seconds.items()}
        return stats

    def speaking(self, now: float, window: float = 0.4, threshold: int = 50) -> dict[int, int]:
        """Audio SSRCs talking in the mix now (``now``: monotonic seconds)."""
        endpoint = self._endpoint
        if endpoint is None:
            return {}
        with self._lock:
            return endpoint.speaking(now, window, threshold)

    def request_keyframe(self, ssrc: int, now: float, interval: float = 0.5) -> None:
        endpoint = self._endpoint
        if endpoint is not None:
            with self._lock:
                endpoint.request_keyframe(ssrc, now, interval)
            self._flush()

    def forget_stream(self, ssrc: int, *, ended: bool) -> None:
        endpoint = self._endpoint
        if endpoint is not None:
            with self._lock:
                endpoint.forget_stream(ssrc, ended=ended)
        self._pending_decodes.pop(ssrc, None)
        self._video_playouts.pop(ssrc, None)
        self._camera_pick.forget(ssrc)
        self._generations[ssrc] = self._generations.get(ssrc, 0) + 1
        with contextlib.suppress(RuntimeError):
            self._decode_pool.submit(self._decoders.pop, ssrc, None)

    def forget_audio_stream(self, ssrc: int) -> None:
        """A sender of its own audio stream (E2EE) left: free its buffer and decoder."""
        endpoint = self._endpoint
        if endpoint is not None:
            with self._lock:
                endpoint.forget_audio_stream(ssrc)
        with self._audio_decode_lock:
            self._local_mixer.forget(ssrc)
