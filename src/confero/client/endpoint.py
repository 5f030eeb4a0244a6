"""The client's media core, sans-I/O: the mirror of the server's ``MediaRouter``.

A :class:`MediaEndpoint` is one participant's media with one hop (the server today; the
peer in peer-to-peer mode later). It takes encoded frames with their capture time,
received datagrams and ``now``; it gives back datagrams to send
(:meth:`datagrams_to_send`), events (:meth:`next_event`: a video frame ready to decode, a
keyframe to encode) and its next deadline (:meth:`get_timer` / :meth:`handle_timer`), the
shape of aioquic's ``QuicConnection``. It owns SRTP, packetising, the retransmission
history, NACK and PLI, frame assembly, the audio jitter buffer and the statistics.
Codecs, devices, sockets and threads stay outside, in :mod:`confero.client.media`.

The clock rule: every ``now`` here is monotonic seconds (``time.monotonic()`` in the
shell, a plain float in tests). The capture time that travels in the RTP header extension
is the sender's wall clock in microseconds; it is named ``capture_us`` wherever it
appears and is never compared with ``now``. The endpoint maps ``now`` to wall time only
to stamp RTCP sender reports, through the ``wall_offset`` it is given.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from confero.client.frame_cipher import FrameCipher, SFrameError
from confero.client.stats import StreamStats
from confero.protocol import consent, red, rtcp
from confero.protocol.audio_jitter import LOST, AudioJitterBuffer
from confero.protocol.audio_streams import AudioStreams
from confero.protocol.congestion import CongestionSender
from confero.protocol.nack import NackGenerator, RetransmitBuffer
from confero.protocol.pacer import PacketKind
from confero.protocol.profile import (
    AUDIO_CLOCK,
    AUDIO_FRAME_TICKS,
    AUDIO_PAYLOAD_TYPE,
    EXT_AUDIO_LEVEL,
    EXT_CAPTURE_TIME,
    EXT_MIXER_LEVELS,
    PROBE_PAYLOAD_TYPE,
    RED_PAYLOAD_TYPE,
    VIDEO_CLOCK,
    VIDEO_PAYLOAD_TYPE,
)
from confero.protocol.rtp import RtpError, RtpPacket, is_rtcp
from confero.protocol.signaling import MediaGrant
from confero.protocol.srtp import SrtpContext, SrtpError, decode_key
from confero.protocol.token_bucket import TokenBucket
from confero.protocol.twcc import TwccRecorder, read_transport_seq
from confero.protocol.video_jitter import Frame, FrameAssembler
from confero.protocol.vp8 import packetize

KEEPALIVE_INTERVAL: Final = 1.0
MAX_REMOTE_STREAMS: Final = 32
#: Largest picture a receiver agrees to decode. A VP8 keyframe declares its size in 28
#: clear bits; a 37-byte frame declaring 12000x12000 would make the decoder allocate
#: hundreds of MiB. Frames beyond this are dropped before any decoder sees them.
MAX_VIDEO_WIDTH: Final = 1920
MAX_VIDEO_HEIGHT: Final = 1080
#: At most this many packets are retransmitted for one NACK.
MAX_RETRANSMIT_PER_NACK: Final = 64
#: Bound on queued events; a shell that stops draining loses the oldest video frames.
MAX_EVENTS: Final = 256
_NTP_EPOCH_OFFSET: Final = 2_208_988_800  # seconds from 1900 to 1970
#: Where the uplink estimate starts and what it may reach: a call starts at a rate most
#: links carry and climbs within seconds (see docs/architecture.md, congestion control).
START_BPS: Final = 600_000
MIN_BPS: Final = 60_000
MAX_BPS: Final = 2_500_000
#: A new target is reported to the encoder when it moved by this fraction.
TARGET_STEP: Final = 0.05


@dataclass(frozen=True)
class EndpointConfig:
    """What the server granted at join: keys and SSRCs for this membership."""

    audio_ssrc: int
    video_ssrc: int
    mix_ssrc: int
    tx_key: bytes
    rx_key: bytes
    #: the second video stream, a shared screen (issue 12); 0: none granted
    screen_ssrc: int = 0
    #: the camera's low-resolution copy (simulcast, issue 9); 0: none granted
    low_ssrc: int = 0

    @classmethod
    def from_grant(cls, grant: MediaGrant) -> EndpointConfig:
        return cls(grant.audio_ssrc, grant.video_ssrc, grant.mix_ssrc,
                   decode_key(grant.key_up), decode_key(grant.key_down), grant.screen_ssrc,
                   grant.low_ssrc)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class VideoFrameReady:
    """A complete frame of a remote sender: decode it, then call ``frame_decoded``."""

    ssrc: int
    frame: Frame
    #: The sender's capture time (its wall clock, microseconds), if it sent one.
    capture_us: int | None


@dataclass(frozen=True)
class KeyframeNeeded:
    """Someone asked (PLI) for a keyframe of our video: encode the next frame as one.
    ``stream``: which of our video streams, "camera", "camera_low" or "screen"."""

    stream: str = "camera"


@dataclass(frozen=True)
class TargetBitrate:
    """The uplink estimate moved: the encoders together should now produce ``bps``."""

    bps: int


Event = VideoFrameReady | KeyframeNeeded | TargetBitrate


# ---------------------------------------------------------------------------- internals


def keyframe_size(data: bytes) -> tuple[int, int] | None:
    """Width and height a VP8 keyframe declares (RFC 6386 9.1), or None for a delta frame
    or a frame too short to say. ``data`` is the frame (after the payload descriptor)."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    return (int.from_bytes(data[6:8], "little") & 0x3FFF,
            int.from_bytes(data[8:10], "little") & 0x3FFF)


class _RemoteVideo:
    def __init__(self, ssrc: int, now: float) -> None:
        self.assembler = FrameAssembler()
        self.nack = NackGenerator()
        self.stats = StreamStats("video", ssrc, _window_start=now)
        self.last_keyframe_request = float("-inf")


@dataclass
class _RecentSeqs:
    """The last sequence numbers of one stream, to drop a copy that took the other path."""

    SIZE: Final = 1024

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()

    def seen(self, seq: int) -> bool:
        if seq in self._set:
            return True
        self._order.append(seq)
        self._set.add(seq)
        if len(self._order) > self.SIZE:
            self._set.discard(self._order.popleft())
        return False


@dataclass
class _Sender:
    ssrc: int
    seq: int = field(default_factory=lambda: secrets.randbelow(1 << 16))
    packets: int = 0
    octets: int = 0
    last_rtp_ts: int | None = None
    last_ntp: float | None = None  # the wall time (seconds) that last_rtp_ts stands for

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        return self.seq


@dataclass
class _VideoOut:
    """One video stream we send (camera or screen): its own numbering and history, so
    each is a complete RTP stream a receiver can repair and decode on its own."""

    sender: _Sender
    ts_offset: int = field(default_factory=lambda: secrets.randbelow(1 << 32))
    tl0picidx: int = field(default_factory=lambda: secrets.randbelow(256))
    picture_id: int = field(default_factory=lambda: secrets.randbelow(1 << 15))
    history: RetransmitBuffer = field(default_factory=lambda: RetransmitBuffer(1024))


#: The names of our video streams, as :meth:`MediaEndpoint.send_video_frame` takes them.
#: "camera_low" is the camera's low-resolution copy (simulcast, issue 9): it goes to the
#: server only, which forwards each subscriber either it or the camera.
VIDEO_STREAMS: Final = ("camera", "screen", "camera_low")


class MediaEndpoint:
    """One participant's media with one hop; see the module docstring."""

    def __init__(
        self,
        config: EndpointConfig,
        now: float,
        *,
        wall_offset: float = 0.0,
        receive_video: bool = True,
        max_video_size: tuple[int, int] = (MAX_VIDEO_WIDTH, MAX_VIDEO_HEIGHT),
        cipher: FrameCipher | None = None,
    ) -> None:
        """``wall_offset``: wall-clock seconds minus ``now``, to stamp sender reports.
        ``cipher``: end-to-end frame encryption (E2EE meetings), None for ordinary ones."""
        self.config = config
        self._srtp = SrtpContext(tx_key=config.tx_key, rx_key=config.rx_key)
        self._wall_offset = wall_offset
        self._receive_video = receive_video
        self._max_video_size = max_video_size
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._video = _Sender(config.video_ssrc)
        self._audio = _Sender(config.audio_ssrc)
        # our video streams by name, and by SSRC (for NACK and PLI)
        camera = _VideoOut(self._video)
        self._video_out: dict[str, _VideoOut] = {"camera": camera}
        if config.screen_ssrc:
            self._video_out["screen"] = _VideoOut(_Sender(config.screen_ssrc))
        # the camera's copy: not under E2EE (see docs/protocol.md, simulcast). Its RTP
        # timestamps share the camera's offset: one capture instant, one timestamp on
        # both streams, whichever a subscriber is switched to.
        self._low_ssrc = config.low_ssrc if cipher is None else 0
        if self._low_ssrc:
            self._video_out["camera_low"] = _VideoOut(_Sender(self._low_ssrc),
                                                      ts_offset=camera.ts_offset)
        self._video_by_ssrc = {out.sender.ssrc: (name, out)
                               for name, out in self._video_out.items()}
        # congestion control of the uplink: pacing, transport-wide sequence numbers, the
        # delay+loss estimate; and the receive side of the downlink's (the server's) one
        self.congestion = CongestionSender(start_bps=START_BPS, min_bps=MIN_BPS,
                                           max_bps=MAX_BPS)
        self._reported_target = 0
        self._twcc = TwccRecorder()
        self._peer_twcc = TwccRecorder()  # the direct path's (issue 10)
        self._audio_ts = secrets.randbelow(1 << 32)
        self._audio_marker = True
        #: our previous audio frame (RTP timestamp, payload), for RFC 2198 redundancy
        self._recent_audio = red.RedHistory()
        #: send each audio frame with a copy of the previous one (RFC 2198), except under
        #: E2EE (the server forwards those packets as they are, to clients that mix)
        self.redundant_audio = True
        # retransmissions: at most half a 1.2 Mbit/s stream, with a 64 kB burst
        self._retransmit_budget = TokenBucket(rate=75_000, burst=64_000, now=now)
        self._remote: dict[int, _RemoteVideo] = {}
        self.jitter = AudioJitterBuffer(target=2, min_target=1, max_target=10,
                                         hold_on_underrun=True)
        self.audio_stats = StreamStats("audio", config.mix_ssrc, _window_start=now)
        #: audio SSRC -> (level in -dBov, when heard), from the mix's CSRCs (RFC 6465)
        self._speaker_levels: dict[int, tuple[int, float]] = {}
        self._next_keepalive = now  # the first datagram opens the path at once
        #: End-to-end encryption of whole frames (None: an ordinary meeting).
        self.cipher = cipher
        #: SSRC -> [frames decrypted, frames that failed to decrypt (dropped)]
        self.e2ee_frames: dict[int, list[int]] = {}
        self._last_now = now
        self.counters: dict[str, int] = {
            "sent_packets": 0, "sent_bytes": 0, "dropped_auth": 0, "dropped_malformed": 0,
            "retransmitted": 0, "retransmit_over_budget": 0, "plis_received": 0,
            "nacks_received": 0, "keyframes_sent": 0, "video_ignored": 0,
            "dropped_oversize_frame": 0, "dropped_too_many_streams": 0, "events_dropped": 0,
            "feedback_received": 0, "probe_packets": 0,
        }
        # the camera's low copy (simulcast): apart, so "keyframes_sent" keeps its meaning
        self.counters.update(low_frames_sent=0, low_keyframes_sent=0, low_packets_sent=0)
        # ---- the peer-to-peer path (issue 10): a second hop with its own SRTP keys.
        # Which hops our media goes to; RTCP keepalives always go to the server.
        self.send_to_server = True
        self.send_to_peer = False
        self._peer_srtp: SrtpContext | None = None
        self._peer_out: list[bytes] = []
        #: each sender's own audio stream (the peer's, in P2P), beside the server's mix
        self.peer_audio = AudioStreams()
        self._recent: dict[int, _RecentSeqs] = {}  # duplicates across the two paths
        #: when authenticated media (RTP) last came from each hop, and any packet from
        #: the peer (its RTCP too: a liveness check of the direct path)
        self.server_rtp_at: float | None = None
        self.peer_rtp_at: float | None = None
        self.peer_heard_at: float | None = None
        self.peer_counters: dict[str, int] = {
            "sent_packets": 0, "sent_bytes": 0, "received_packets": 0, "received_bytes": 0,
            "dropped_auth": 0, "duplicates": 0,
        }

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        deadlines = [self._next_keepalive, self.congestion.next_wakeup()]
        for recorder in (self._twcc, self._peer_twcc):
            feedback = recorder.next_feedback_time()
            if feedback is not None:
                deadlines.append(feedback)
        for remote in self._remote.values():
            for deadline in (remote.nack.next_deadline(), remote.assembler.next_deadline()):
                if deadline is not None:
                    deadlines.append(deadline)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        self._advance(now)
        self._drain(now)
        if self._twcc.feedback_due(now):
            for feedback in self._twcc.build_feedback(now, self.config.video_ssrc,
                                                       self.config.mix_ssrc):
                self._out.append(self._srtp.protect_rtcp(feedback))  # the server's path only
        if self._peer_twcc.feedback_due(now):
            for feedback in self._peer_twcc.build_feedback(now, self.config.video_ssrc,
                                                            self.config.mix_ssrc):
                if self._peer_srtp is not None and self.send_to_peer:  # our path in use
                    self._peer_out.append(self._peer_srtp.protect_rtcp(feedback))
        rtt = self.congestion.bwe.rtt
        for ssrc, remote in self._remote.items():
            for frame in remote.assembler.poll(now):
                self._frame_ready(ssrc, remote, frame)
            remote.nack.rtt = rtt
            lost = remote.nack.due(now)
            if lost:
                self._send_rtcp(rtcp.Nack(self.config.video_ssrc, ssrc, lost).pack())
                remote.stats.nacks_sent += 1
            if remote.assembler.keyframe_request_due(now):
                self._send_rtcp(rtcp.Pli(self.config.video_ssrc, ssrc).pack())
                remote.stats.plis_sent += 1
        if now >= self._next_keepalive:
            self._next_keepalive = now + KEEPALIVE_INTERVAL
            self._send_reports(now)
            for remote in self._remote.values():
                remote.stats.roll(now)
            self.audio_stats.roll(now)

    # ------------------------------------------------------------------ sending

    def send_video_frame(self, data: bytes, *, keyframe: bool, capture_us: int,
                         captured_at: float, temporal_id: int | None = None,
                         layer_sync: bool = False, now: float | None = None,
                         stream: str = "camera") -> None:
        """One encoded VP8 frame. ``captured_at`` is the capture moment on the monotonic
        clock (it sets the RTP timestamp); ``capture_us`` the same moment on the wall
        clock, carried in the header extension for receivers' delay figures.
        ``stream``: "camera", or "screen" (the second stream, on the granted screen SSRC;
        both share the pacer and the uplink estimate)."""
        self._advance(captured_at if now is None else now)
        out = self._video_out.get(stream)
        if out is None:
            refused = f"{stream}_not_granted"
            self.counters[refused] = self.counters.get(refused, 0) + 1
            return
        if self.cipher is not None:
            try:
                data = self.cipher.protect_video(data)
            except SFrameError:
                self.counters["e2ee_protect_failed"] = self.counters.get(
                    "e2ee_protect_failed", 0) + 1
                return
        out.picture_id = (out.picture_id + 1) & 0x7FFF
        rtp_ts = (int(captured_at * VIDEO_CLOCK) + out.ts_offset) & 0xFFFFFFFF
        temporal = None
        if temporal_id is not None:
            # TL0PICIDX counts base-layer frames, so a receiver of only some layers can
            # tell a missing base frame from a dropped upper-layer one (RFC 7741)
            if temporal_id == 0:
                out.tl0picidx = (out.tl0picidx + 1) & 0xFF
            temporal = (temporal_id, layer_sync, out.tl0picidx)
        payloads = packetize(data, out.picture_id, temporal=temporal)
        sender = out.sender
        if stream == "camera_low":  # counted apart: "keyframes_sent" keeps its meaning
            self.counters["low_frames_sent"] += 1
            self.counters["low_keyframes_sent"] += keyframe
        elif keyframe:
            self.counters["keyframes_sent"] += 1
        for index, payload in enumerate(payloads):
            seq = sender.next_seq()
            packet = RtpPacket(
                payload_type=VIDEO_PAYLOAD_TYPE,
                sequence_number=seq,
                timestamp=rtp_ts,
                ssrc=sender.ssrc,
                payload=payload,
                marker=index == len(payloads) - 1,
                extensions={EXT_CAPTURE_TIME: capture_us.to_bytes(8, "big")} if index == 0
                else {},
            )
            plain = packet.serialize()
            out.history.store(seq, plain)
            self._send_rtp(plain, sender, PacketKind.VIDEO)
        self._drain(captured_at if now is None else now)
        sender.last_rtp_ts = rtp_ts
        sender.last_ntp = captured_at + self._wall_offset

    def send_audio_frame(self, payload: bytes, *, level: int, capture_us: int,
                         now: float) -> None:
        """One 20 ms Opus frame with its RFC 6464 level (-dBov, 127 = silence)."""
        self._advance(now)
        if self.cipher is not None:
            try:
                payload = self.cipher.protect_audio(payload)
            except SFrameError:
                self.counters["e2ee_protect_failed"] = self.counters.get(
                    "e2ee_protect_failed", 0) + 1
                return
        self._audio_ts = (self._audio_ts + AUDIO_FRAME_TICKS) & 0xFFFFFFFF
        wire_type, wire_payload = AUDIO_PAYLOAD_TYPE, payload
        if self._audio_marker:
            self._recent_audio.clear()
        # RFC 2198: the previous frame rides along, so one lost packet costs nothing (and
        # the one before it on a lossy uplink)
        bwe = self.congestion.bwe
        wrapped = self._recent_audio.wrap(
            self._audio_ts, payload, AUDIO_PAYLOAD_TYPE,
            red.copies_for(bwe.loss.loss_fraction, bwe.target_bps)
            if self.redundant_audio and self.cipher is None else 0)
        if wrapped is not None:
            wire_type, wire_payload = RED_PAYLOAD_TYPE, wrapped
        packet = RtpPacket(
            payload_type=wire_type,
            sequence_number=self._audio.next_seq(),
            timestamp=self._audio_ts,
            ssrc=self.config.audio_ssrc,
            payload=wire_payload,
            marker=self._audio_marker,
            extensions={
                EXT_CAPTURE_TIME: capture_us.to_bytes(8, "big"),
                EXT_AUDIO_LEVEL: bytes([(0x80 if level < 127 else 0) | level]),
            },
        )
        self._audio_marker = False
        self._send_rtp(packet.serialize(), self._audio, PacketKind.AUDIO)
        self._drain(now)
        self._audio.last_rtp_ts, self._audio.last_ntp = self._audio_ts, now + self._wall_offset

    @property
    def sends_low_copy(self) -> bool:
        """Whether the camera's low-resolution copy is wanted now: granted, not E2EE, and
        the server's path alone in use (in P2P, or half-way through a switch, the one
        receiver gets the camera directly: encoding the copy would be wasted work)."""
        return bool(self._low_ssrc) and self.send_to_server and not self.send_to_peer

    def audio_paused(self) -> None:
        """The microphone stopped sending: the next frame starts a talkspurt (marker)."""
        self._audio_marker = True
        self._recent_audio.clear()

    def close(self) -> None:
        """Say goodbye (RTCP BYE) for our streams; the datagram is in the output."""
        self._send_rtcp(rtcp.Bye([self.config.audio_ssrc, *self._video_by_ssrc]).pack())

    def _send_rtp(self, plain: bytes, sender: _Sender | None, kind: PacketKind) -> None:
        """Into the pacer; :meth:`_drain` takes out what may leave now."""
        self.congestion.enqueue(plain, kind, self._last_now)
        if sender is not None:
            sender.packets += 1
            sender.octets += len(plain) - 12

    def _advance(self, now: float) -> None:
        """``now`` never goes backwards inside the core (a capture time may be older than
        the last datagram's arrival)."""
        self._last_now = max(self._last_now, now)

    def _drain(self, now: float) -> None:
        self._advance(now)
        for plain in self.congestion.poll(self._last_now):
            peer = self._peer_srtp if self.send_to_peer else None  # P2P (issue 10)
            if self._low_ssrc and int.from_bytes(plain[8:12], "big") == self._low_ssrc:
                peer = None  # the camera's copy is for the server alone
                self.counters["low_packets_sent"] += self.send_to_server
            if peer is not None:
                peer_protected = peer.protect_rtp(plain)
                self._peer_out.append(peer_protected)
                self.peer_counters["sent_packets"] += 1
                self.peer_counters["sent_bytes"] += len(peer_protected)
            if not self.send_to_server:
                continue
            protected = self._srtp.protect_rtp(plain)
            self._out.append(protected)
            self.counters["sent_packets"] += 1
            self.counters["sent_bytes"] += len(protected)
        target = self.congestion.target_bps
        if abs(target - self._reported_target) > TARGET_STEP * max(1, self._reported_target):
            self._reported_target = target
            self._push_event(TargetBitrate(target))

    def _send_rtcp(self, plain: bytes, *, keepalive: bool = False,
                   server_only: bool = False) -> None:
        if self.send_to_peer and self._peer_srtp is not None and not server_only:
            self._peer_out.append(self._peer_srtp.protect_rtcp(plain))
        if self.send_to_server or keepalive:
            self._out.append(self._srtp.protect_rtcp(plain))

    def _send_reports(self, now: float) -> None:
        """Sender reports for what we send (they let receivers map RTP time to wall time:
        lip sync), or a receiver report as a keepalive that holds the NAT binding."""
        packets: list[bytes] = []
        low_report: bytes | None = None
        senders = [(out.sender, VIDEO_CLOCK) for out in self._video_out.values()]
        for sender, clock in (*senders, (self._audio, AUDIO_CLOCK)):
            if sender.last_rtp_ts is None or sender.last_ntp is None:
                continue
            wall = now + self._wall_offset
            rtp_now = (sender.last_rtp_ts + int((wall - sender.last_ntp) * clock)) & 0xFFFFFFFF
            ntp = int((wall + _NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF
            report = rtcp.SenderReport(sender.ssrc, ntp, rtp_now, sender.packets,
                                       sender.octets & 0xFFFFFFFF).pack()
            if sender.ssrc == self._low_ssrc:
                low_report = report  # the copy's report: the server's path only
            else:
                packets.append(report)
        if not packets:
            packets.append(rtcp.ReceiverReport(self.config.video_ssrc).pack())
        self._send_rtcp(b"".join(packets), keepalive=True)
        if low_report is not None and self.send_to_server:
            self._send_rtcp(low_report, server_only=True)

    # ------------------------------------------------------------------ receiving

    def receive_datagram(self, data: bytes, now: float,
                         arrived_at: float | None = None) -> None:
        """A datagram from the server. ``arrived_at``: when the kernel received it (it may
        be well before ``now`` on a busy machine); what was received is timed by it,
        what is sent in answer by ``now``."""
        self._advance(now)
        arrival = now if arrived_at is None else arrived_at
        try:
            if is_rtcp(data):
                self._on_rtcp(self._srtp.unprotect_rtcp(data), now)
            else:
                plain = self._srtp.unprotect_rtp(data)
                self.server_rtp_at = now
                self._receive_rtp(plain, len(data), now, arrival, self._twcc,
                                  both_paths=self._peer_srtp is not None)
        except SrtpError:
            self.counters["dropped_auth"] += 1
            self._maybe_duplicate(data)
        except (RtpError, rtcp.RtcpError):
            self.counters["dropped_malformed"] += 1

    def _maybe_duplicate(self, data: bytes) -> None:
        """A refused RTP packet of a stream we receive is most often a replay: a second
        copy (a retransmission after the original came late). Its sequence number is in
        the clear; telling the NACK logic lets it learn the path's reordering. A forged
        one can at most make us wait a little longer before asking."""
        if len(data) < 12 or is_rtcp(data):
            return
        remote = self._remote.get(int.from_bytes(data[8:12], "big"))
        if remote is not None:
            remote.nack.on_duplicate(int.from_bytes(data[2:4], "big"))

    def _on_rtcp(self, plain: bytes, now: float) -> None:
        for packet in rtcp.parse_compound(plain):
            if isinstance(packet, rtcp.Nack) and packet.media_ssrc in self._video_by_ssrc:
                self.counters["nacks_received"] += 1
                history = self._video_by_ssrc[packet.media_ssrc][1].history
                self._retransmit(history, packet.lost[:MAX_RETRANSMIT_PER_NACK], now)
            elif isinstance(packet, rtcp.Pli) and packet.media_ssrc in self._video_by_ssrc:
                self.counters["plis_received"] += 1
                self._push_event(KeyframeNeeded(self._video_by_ssrc[packet.media_ssrc][0]))
            elif isinstance(packet, rtcp.TransportFeedback):
                self.counters["feedback_received"] += 1
                self.congestion.on_feedback(packet, now)
                self._drain(now)
            # consent check: echo the server's nonce so it sends our media to the address
            # we receive at (a forged source address gets no echo, so no media)
            elif (echo := consent.answer(packet, self.config.video_ssrc)) is not None:
                self._send_rtcp(echo)

    def _retransmit(self, history: RetransmitBuffer, sequence_numbers: list[int],
                    now: float) -> None:
        for seq in sequence_numbers:
            stored = history.get(seq)
            if stored is None:
                continue
            if not self._retransmit_budget.allow(now, len(stored)):
                self.counters["retransmit_over_budget"] += 1
                continue
            self._send_rtp(stored, None, PacketKind.RETRANSMISSION)
            self.counters["retransmitted"] += 1
        self._drain(now)

    def _on_rtp(self, plain: bytes, size: int, now: float) -> None:
        packet = RtpPacket.parse(plain)
        if packet.payload_type == RED_PAYLOAD_TYPE:
            unpacked = self._unpack_redundant(packet, now)
            if unpacked is None:
                return
            packet = unpacked
        if packet.payload_type == AUDIO_PAYLOAD_TYPE and packet.ssrc != self.config.mix_ssrc:
            self._on_sender_audio(packet, now)  # a sender's own stream (P2P, E2EE)
            return
        if packet.ssrc == self.config.mix_ssrc and packet.payload_type == AUDIO_PAYLOAD_TYPE:
            self.audio_stats.on_packet(packet, size, now, AUDIO_CLOCK)
            if packet.payload:  # an empty one is a loss, not a frame
                self.jitter.push(packet.timestamp, packet.payload, now)
            levels = packet.extensions.get(EXT_MIXER_LEVELS, b"")
            for ssrc, level in zip(packet.csrcs, levels, strict=False):
                self._speaker_levels[ssrc] = (level & 0x7F, now)
            return
        if packet.payload_type != VIDEO_PAYLOAD_TYPE:
            self.counters["dropped_malformed"] += 1
            return
        if not self._receive_video:
            self.counters["video_ignored"] += 1
            return
        remote = self._remote.get(packet.ssrc)
        if remote is None:
            if len(self._remote) >= MAX_REMOTE_STREAMS:
                self.counters["dropped_too_many_streams"] += 1
                return
            remote = self._remote[packet.ssrc] = _RemoteVideo(packet.ssrc, now)
        remote.stats.on_packet(packet, size, now, VIDEO_CLOCK)
        remote.nack.on_packet(packet.sequence_number, now)
        for frame in remote.assembler.push(packet, now):
            self._frame_ready(packet.ssrc, remote, frame)

    def _unpack_redundant(self, packet: RtpPacket, now: float) -> RtpPacket | None:
        """RFC 2198 audio: the redundant copies go into their stream's buffer (where they
        fill a hole, if any), the primary comes back as a plain Opus packet."""
        try:
            blocks = red.decode(packet.payload, AUDIO_PAYLOAD_TYPE)
        except red.RedError:
            self.counters["dropped_malformed"] += 1
            return None
        for block in blocks[:-1]:
            if not block.data:
                continue
            timestamp = (packet.timestamp - block.offset) & 0xFFFFFFFF
            if packet.ssrc == self.config.mix_ssrc:
                self.jitter.push(timestamp, block.data, now, redundant=True)
            elif self.cipher is None:  # a sender's own stream (peer to peer)
                self.peer_audio.push(packet.ssrc, timestamp, block.data, now,
                                     redundant=True)
        packet.payload_type = AUDIO_PAYLOAD_TYPE
        packet.payload = blocks[-1].data
        return packet

    def _on_sender_audio(self, packet: RtpPacket, now: float) -> None:
        """A sender's own audio (forwarded, not mixed: E2EE or peer to peer); in an E2EE
        meeting it is decrypted here, so the jitter buffer holds only authentic frames."""
        if not packet.payload:  # an empty one is a loss, not a frame
            return
        payload = self._unprotect(packet.ssrc, packet.payload, video=False)
        if payload is None:
            return
        level = packet.extensions.get(EXT_AUDIO_LEVEL)
        if level:
            self._speaker_levels[packet.ssrc] = (level[0] & 0x7F, now)
        self.peer_audio.push(packet.ssrc, packet.timestamp, payload, now)

    def _unprotect(self, ssrc: int, data: bytes, *, video: bool) -> bytes | None:
        """The frame in clear, or None (counted) when it cannot be decrypted."""
        cipher = self.cipher
        if cipher is None:
            return data
        counts = self.e2ee_frames.get(ssrc)
        if counts is None:
            if len(self.e2ee_frames) >= 4 * MAX_REMOTE_STREAMS:
                self.e2ee_frames.clear()
            counts = self.e2ee_frames[ssrc] = [0, 0]
        try:
            plain = cipher.unprotect_video(data) if video else cipher.unprotect_audio(data)
        except SFrameError:
            counts[1] += 1
            return None
        counts[0] += 1
        return plain

    def _frame_ready(self, ssrc: int, remote: _RemoteVideo, frame: Frame) -> None:
        if self.cipher is not None:
            plain = self._unprotect(ssrc, frame.data, video=True)
            if plain is None:
                # Not shown, not decoded. Once keys arrive, the decoder's failure on the
                # next delta frame asks for a keyframe; asking here would let a participant
                # without the passphrase make everyone send keyframes.
                remote.stats.frames_dropped += 1
                return
            frame = dataclasses.replace(frame, data=plain)
        if frame.keyframe:
            size = keyframe_size(frame.data)
            max_width, max_height = self._max_video_size
            if size is None or size[0] > max_width or size[1] > max_height:
                self.counters["dropped_oversize_frame"] += 1
                remote.stats.frames_dropped += 1
                return
        capture = frame.extensions.get(EXT_CAPTURE_TIME)
        capture_us = int.from_bytes(capture, "big") if capture and len(capture) == 8 else None
        self._push_event(VideoFrameReady(ssrc, frame, capture_us))

    def _push_event(self, event: Event) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        self._events.append(event)

    # ------------------------------------------------------------------ the peer path

    def start_peer(self, tx_key: bytes, rx_key: bytes) -> None:
        """Open the direct path with this P2P session's fresh keys (ours protects what we
        send, the peer's what it sends). Nothing is sent there until ``send_to_peer``."""
        self._peer_srtp = SrtpContext(tx_key=tx_key, rx_key=rx_key)
        self._peer_out = []
        self._peer_twcc = TwccRecorder()
        self.peer_rtp_at = self.peer_heard_at = None

    def stop_peer(self) -> None:
        """Close the direct path: its keys die with it; the server path carries all."""
        self._peer_srtp = None
        self.send_to_peer = False
        self.send_to_server = True
        self._peer_out = []
        self._recent.clear()

    def rekey_server(self, tx_key: bytes, rx_key: bytes) -> None:
        """The server renewed our server-path keys (back from P2P): new SRTP state, same
        SSRCs. Packets still in flight under the old keys are refused and counted."""
        self._srtp = SrtpContext(tx_key=tx_key, rx_key=rx_key)

    def nudge_keepalive(self, now: float) -> None:
        """Send RTCP reports at the next timer: at a switch the other side learns at once
        that our direct path is up, even if we send no media."""
        self._next_keepalive = min(self._next_keepalive, now)

    @property
    def peer_open(self) -> bool:
        return self._peer_srtp is not None

    def peer_datagrams_to_send(self) -> list[bytes]:
        out, self._peer_out = self._peer_out, []
        return out

    def receive_peer_datagram(self, data: bytes, now: float,
                              arrived_at: float | None = None) -> None:
        """A datagram from the peer's ICE path (STUN is aioice's, never seen here)."""
        self._advance(now)
        arrival = now if arrived_at is None else arrived_at
        srtp = self._peer_srtp
        if srtp is None:
            self.peer_counters["dropped_auth"] += 1
            return
        try:
            if is_rtcp(data):
                plain = srtp.unprotect_rtcp(data)
                self.peer_heard_at = now
                self._on_rtcp(plain, now)
                return
            plain = srtp.unprotect_rtp(data)
        except SrtpError:
            self.peer_counters["dropped_auth"] += 1
            return
        except (RtpError, rtcp.RtcpError):
            self.counters["dropped_malformed"] += 1
            return
        self.peer_heard_at = self.peer_rtp_at = now
        self.peer_counters["received_packets"] += 1
        self.peer_counters["received_bytes"] += len(data)
        try:
            self._receive_rtp(plain, len(data), now, arrival, self._peer_twcc,
                              both_paths=True)
        except (RtpError, rtcp.RtcpError):
            self.counters["dropped_malformed"] += 1

    def _receive_rtp(self, plain: bytes, size: int, now: float, arrival: float,
                     twcc: TwccRecorder, *, both_paths: bool) -> None:
        """What either path does with an authentic RTP packet. Transport-wide feedback is
        per path (each path's sender stamps its own sequence), timed by the kernel's
        arrival; a packet that already came by the other path is dropped; the rest is
        timed by ``now``, when we got round to it, so the jitter buffer covers this
        process's own lateness too."""
        transport_seq = read_transport_seq(plain)
        if transport_seq is not None:
            twcc.on_packet(transport_seq, arrival)
        if plain[1] & 0x7F == PROBE_PAYLOAD_TYPE:  # bandwidth-probe padding: only counted
            self.counters["probe_packets"] += 1
            return
        if both_paths and self._duplicate(plain):
            return
        self._on_rtp(plain, size, now)

    def _duplicate(self, plain: bytes) -> bool:
        """The same packet (SSRC and sequence number) already came by the other path."""
        ssrc = int.from_bytes(plain[8:12], "big")
        recent = self._recent.get(ssrc)
        if recent is None:
            if len(self._recent) >= MAX_REMOTE_STREAMS:
                self._recent.clear()
            recent = self._recent[ssrc] = _RecentSeqs()
        if recent.seen(int.from_bytes(plain[2:4], "big")):
            self.peer_counters["duplicates"] += 1
            return True
        return False

    def pop_peer_audio(self, now: float) -> dict[int, bytes | object]:
        """The next 20 ms of every sender's own audio stream (see :class:`AudioStreams`)."""
        return self.peer_audio.pop(now)

    # ------------------------------------------------------------------ decoder feedback

    def frame_decoded(self, ssrc: int, *, width: int, height: int,
                      delay: float | None) -> None:
        """The shell decoded a frame of ``ssrc``; ``delay`` is capture-to-decoded seconds."""
        remote = self._remote.get(ssrc)
        if remote is not None:
            remote.stats.on_frame(delay)
            remote.stats.width, remote.stats.height = width, height

    def frame_superseded(self, ssrc: int) -> None:
        """The shell decoded a frame of ``ssrc`` but showed the sender's other camera
        stream (simulcast): not counted as a frame shown."""
        remote = self._remote.get(ssrc)
        if remote is not None:
            remote.stats.frames_superseded += 1

    def decode_failed(self, ssrc: int) -> None:
        """The decoder could not use a frame: wait for (and ask for) a keyframe."""
        remote = self._remote.get(ssrc)
        if remote is not None:
            remote.stats.decode_errors += 1
            remote.assembler.request_keyframe()

    def request_keyframe(self, ssrc: int, now: float, interval: float = 0.5) -> None:
        """Ask one sender for a keyframe (e.g. a recording must start with one); repeated
        calls send at most one PLI per ``interval``, as the server forwards no more."""
        remote = self._remote.get(ssrc)
        if remote is None or now < remote.last_keyframe_request + interval:
            return
        remote.last_keyframe_request = now
        self._send_rtcp(rtcp.Pli(self.config.video_ssrc, ssrc).pack())
        remote.stats.plis_sent += 1

    def forget_stream(self, ssrc: int, *, ended: bool) -> None:
        """Drop a video stream's receive state. ``ended`` (its sender left) also drops its
        SRTP state; a camera that is merely off keeps it, since the stream resumes with
        the same rollover counter."""
        self._remote.pop(ssrc, None)
        if ended:
            self._srtp.forget(ssrc)
            self.e2ee_frames.pop(ssrc, None)

    def forget_audio_stream(self, ssrc: int) -> None:
        """A sender's own audio stream ended (they left)."""
        self.peer_audio.forget(ssrc)
        self.e2ee_frames.pop(ssrc, None)
        self._srtp.forget(ssrc)

    # ------------------------------------------------------------------ audio playout

    def pop_audio(self) -> bytes | object | None:
        """The next 20 ms of the mix to play: Opus bytes, :data:`LOST` (conceal it), or
        None (nothing is playing). Called on the playout clock (a sound device's)."""
        item = self.jitter.pop()
        if isinstance(item, bytes):
            self.audio_stats.on_frame(None)
        return item

    def peek_next_audio(self) -> bytes | None:
        """The frame after the one :meth:`pop_audio` just reported :data:`LOST`, if it is
        already here: its in-band FEC can rebuild the lost one."""
        return self.jitter.peek()

    # ------------------------------------------------------------------ queries

    def speaking(self, now: float, window: float = 0.4, threshold: int = 50) -> dict[int, int]:
        """Audio SSRCs heard in the mix within ``window`` seconds louder than ``threshold``
        (-dBov), with their level: who is talking right now."""
        return {
            ssrc: level
            for ssrc, (level, at) in list(self._speaker_levels.items())
            if now - at <= window and level < threshold
        }

    def stats(self) -> dict[str, object]:
        return {
            "video": {ssrc: r.stats.public() for ssrc, r in self._remote.items()},
            "audio": self.audio_stats.public(),
            "audio_buffer": {
                "target_frames": self.jitter.target,
                "depth_frames": self.jitter.depth,
                "concealed": self.jitter.concealed,
                "recovered": self.jitter.recovered,
                "late": self.jitter.late,
            },
            "sent": dict(self.counters),
            "sender_audio": self.peer_audio.stats(),
            "e2ee": {ssrc: {"decrypted": ok, "undecryptable": bad}
                     for ssrc, (ok, bad) in self.e2ee_frames.items()},
            "uplink": {
                "target_bps": self.congestion.target_bps,
                "delay_based_bps": round(self.congestion.bwe.rate.bitrate_bps),
                "loss_based_bps": round(self.congestion.bwe.loss.bitrate_bps),
                "loss_fraction": round(self.congestion.bwe.loss.loss_fraction, 4),
                "usage": self.congestion.bwe.usage.name,
                "rtt_ms": None if self.congestion.bwe.rtt is None
                else round(self.congestion.bwe.rtt * 1000, 1),
                "pacer_queue_ms": round(self.congestion.pacer.queue_delay() * 1000, 1),
                "pacer_dropped_video": self.congestion.pacer.dropped_video,
            },
        }


__all__ = [
    "LOST",
    "EndpointConfig",
    "Event",
    "KeyframeNeeded",
    "MediaEndpoint",
    "TargetBitrate",
    "VideoFrameReady",
    "keyframe_size",
]
