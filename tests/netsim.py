"""A deterministic simulated bottleneck and a sans-I/O call driven through it.

:class:`Link` is one direction of a path: a FIFO served at ``capacity_bps`` with a byte
limit (tail drop), then a fixed propagation delay, optional uniform jitter (which reorders,
as an impaired real link does) and optional random loss, all from a seeded RNG, so every
run of a scenario is the same.

:class:`CallSim` drives a :class:`CongestionSender` (pacer -> transport sequence numbers
stamped into real RTP packets -> sent history) over a :class:`Link` to a
:class:`TwccRecorder`, whose RTCP feedback comes back over a delay-only return path into
the sender's estimator, on a fake clock in 1 ms steps. The encoder is ideal: each frame is
exactly its share of the target on the wire (headers and per-packet overhead included).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

from confero.protocol import rtcp
from confero.protocol.bwe import SendSideBwe
from confero.protocol.congestion import WIRE_OVERHEAD, CongestionSender
from confero.protocol.pacer import Pacer, PacketKind
from confero.protocol.profile import EXT_TRANSPORT_SEQ
from confero.protocol.rtp import RtpPacket
from confero.protocol.twcc import SentHistory, TwccRecorder, read_transport_seq

MTU_PAYLOAD = 1200
RTP_HEADERS = 12 + 8  # fixed header + the extension block holding the transport seq
AUDIO_PAYLOAD = 80  # every 20 ms: (80 + 20 + 38) bytes = ~55 kbit/s on the wire
AUDIO_BPS = (AUDIO_PAYLOAD + RTP_HEADERS + WIRE_OVERHEAD) * 8 * 50


def _rtp(payload_type: int, seq: int, size: int) -> bytes:
    return RtpPacket(payload_type, seq & 0xFFFF, 0, 0x1234, bytes(size),
                     extensions={EXT_TRANSPORT_SEQ: b"\x00\x00"}).serialize()


class Link:
    def __init__(
        self,
        capacity_bps: float,
        *,
        queue_bytes: int = 60_000,
        delay: float = 0.02,
        overhead: int = WIRE_OVERHEAD,
        jitter: float = 0.0,
        loss: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.capacity_bps = capacity_bps
        self.overhead = overhead  # bytes below the RTP packet (SRTP tag, UDP, IP)
        self.queue_bytes = queue_bytes
        self.delay = delay
        self.jitter = jitter
        self.loss = loss
        self._rng = random.Random(seed)
        self._queue: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._busy_until = 0.0
        self._in_flight: list[tuple[float, int, bytes]] = []
        self._order = 0
        self.random_losses = 0
        self.tail_drops = 0
        self.delivered_bytes = 0
        #: (time it left the queue, seconds it spent queued) per packet
        self.sojourns: list[tuple[float, float]] = []

    def set_capacity(self, capacity_bps: float, now: float) -> None:
        self._serve(now)
        self.capacity_bps = capacity_bps

    def send(self, data: bytes, now: float) -> None:
        self._serve(now)
        if self.loss and self._rng.random() < self.loss:
            self.random_losses += 1
            return
        if self._queued + len(data) + self.overhead > self.queue_bytes:
            self.tail_drops += 1
            return
        self._queue.append((now, data))
        self._queued += len(data) + self.overhead

    def _serve(self, now: float) -> None:
        while self._queue:
            enqueued, data = self._queue[0]
            start = max(enqueued, self._busy_until)
            finish = start + (len(data) + self.overhead) * 8 / self.capacity_bps
            if finish > now:
                break
            self._queue.popleft()
            self._queued -= len(data) + self.overhead
            self._busy_until = finish
            self.sojourns.append((finish, finish - enqueued))
            arrival = finish + self.delay
            if self.jitter:
                arrival += self._rng.uniform(-self.jitter, self.jitter)
            self._order += 1
            heapq.heappush(self._in_flight, (arrival, self._order, data))

    def deliver(self, now: float) -> list[tuple[float, bytes]]:
        """(arrival time, packet) for everything that has arrived by ``now``."""
        self._serve(now)
        out: list[tuple[float, bytes]] = []
        while self._in_flight and self._in_flight[0][0] <= now:
            arrival, _, data = heapq.heappop(self._in_flight)
            self.delivered_bytes += len(data) + self.overhead
            out.append((arrival, data))
        return out

    def queue_delay(self, now: float) -> float:
        """How long a packet entering now would wait before it leaves the bottleneck."""
        self._serve(now)
        backlog = max(self._busy_until - now, 0.0) + self._queued * 8 / self.capacity_bps
        return backlog if self._queue else max(self._busy_until - now, 0.0)


@dataclass(slots=True)
class Sample:
    t: float
    capacity_bps: float
    target_bps: int
    sent_bps: float
    queue_delay: float


@dataclass
class CallSim:
    link: Link
    start_bps: float = 300_000
    min_bps: float = 50_000
    max_bps: float = 5_000_000
    fps: int = 30
    audio: bool = True
    return_delay: float | None = None  # feedback path; default: the link's delay
    increase_per_s: float | None = None  # None: SendSideBwe's default
    keyframe_every: float = 0.0  # seconds; a keyframe is ``keyframe_size`` x a normal frame
    keyframe_size: float = 6.0
    sender: CongestionSender = field(init=False)
    bwe: SendSideBwe = field(init=False)
    pacer: Pacer = field(init=False)
    history: SentHistory = field(init=False)
    recorder: TwccRecorder = field(init=False)
    samples: list[Sample] = field(default_factory=list)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.sender = CongestionSender(start_bps=self.start_bps, min_bps=self.min_bps,
                                       max_bps=self.max_bps)
        if self.increase_per_s is not None:
            self.sender.bwe.rate.increase_per_s = self.increase_per_s
        self.bwe, self.pacer, self.history = self.sender.bwe, self.sender.pacer, self.sender.history
        self.recorder = TwccRecorder()
        self._rtp_seq = 0
        self._feedback: list[tuple[float, bytes]] = []
        self._next_frame = 0.0
        self._next_audio = 0.0
        self._next_sample = 0.0
        self._next_keyframe = 0.0
        self._sent_window: deque[tuple[float, int]] = deque()

    def run(self, until: float, *, step: float = 0.001, sample_every: float = 0.1) -> None:
        delay = self.link.delay if self.return_delay is None else self.return_delay
        steps = round((until - self.now) / step)
        base = self.now
        for i in range(1, steps + 1):
            t = base + i * step
            self.now = t
            self._produce(t)
            for packet in self.sender.poll(t):
                self._sent_window.append((t, len(packet) + self.link.overhead))
                self.link.send(packet, t)
            for arrival, data in self.link.deliver(t):
                seq = read_transport_seq(data)
                assert seq is not None
                self.recorder.on_packet(seq, arrival)
            if self.recorder.feedback_due(t):
                for fb in self.recorder.build_feedback(t, 1, 2):
                    self._feedback.append((t + delay, fb))
            while self._feedback and self._feedback[0][0] <= t:
                _, fb = self._feedback.pop(0)
                for packet in rtcp.parse_compound(fb):
                    assert isinstance(packet, rtcp.TransportFeedback)
                    self.sender.on_feedback(packet, t)
            if t >= self._next_sample:
                self._sample(t)
                self._next_sample += sample_every

    def _produce(self, t: float) -> None:
        if self.audio and t >= self._next_audio:
            self._send_rtp(111, AUDIO_PAYLOAD, PacketKind.AUDIO, t)
            self._next_audio += 0.02
        if t >= self._next_frame:
            budget = self.bwe.target_bps - (AUDIO_BPS if self.audio else 0)
            frame = max(int(budget / self.fps / 8), 300)
            if self.keyframe_every and t >= self._next_keyframe:
                frame = int(frame * self.keyframe_size)
                self._next_keyframe += self.keyframe_every
            per_packet = RTP_HEADERS + self.link.overhead
            packets = -(-frame // (MTU_PAYLOAD + per_packet))
            payload = max(frame - packets * per_packet, packets)
            for i in range(packets):
                self._send_rtp(96, payload // packets + (i < payload % packets),
                               PacketKind.VIDEO, t)
            self._next_frame += 1 / self.fps

    def _send_rtp(self, payload_type: int, size: int, kind: PacketKind, t: float) -> None:
        self.sender.enqueue(_rtp(payload_type, self._rtp_seq, size), kind, t)
        self._rtp_seq += 1

    def _sample(self, t: float) -> None:
        while self._sent_window and self._sent_window[0][0] < t - 0.5:
            self._sent_window.popleft()
        sent = sum(size for _, size in self._sent_window) * 8 / 0.5
        self.samples.append(
            Sample(t, self.link.capacity_bps, self.bwe.target_bps, sent, self.link.queue_delay(t))
        )

    def set_capacity(self, capacity_bps: float) -> None:
        self.link.set_capacity(capacity_bps, self.now)

    def targets(self, start: float, end: float) -> list[int]:
        return [s.target_bps for s in self.samples if start <= s.t < end]

    def sojourns(self, start: float, end: float) -> list[float]:
        return [d for t, d in self.link.sojourns if start <= t < end]
