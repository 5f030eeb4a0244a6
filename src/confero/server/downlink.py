"""The server's side of congestion control: one estimate per link it sends on.

Every packet the server sends a participant (forwarded video, the audio mix,
retransmissions) is numbered with that participant's own transport-wide sequence number
and remembered; the participant's TWCC feedback turns into a delay-and-loss estimate of
its downlink (:class:`~confero.protocol.bwe.SendSideBwe`), which chooses how many
temporal layers of each publisher's video it gets. What the server receives from each
participant is recorded (:class:`~confero.protocol.twcc.TwccRecorder`) and fed back, so
each client's own estimator sees its uplink. Sans-I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from confero.protocol.bwe import SendSideBwe, Usage
from confero.protocol.congestion import WIRE_OVERHEAD
from confero.protocol.probe import Prober
from confero.protocol.rtcp import TransportFeedback
from confero.protocol.twcc import SentHistory, TwccRecorder, stamp_transport_seq

#: A subscriber's estimate starts here: most links carry it, and the base layers of a
#: few publishers fit in it; it climbs within seconds when the link carries more.
DOWNLINK_START_BPS = 1_000_000
DOWNLINK_MIN_BPS = 60_000
DOWNLINK_MAX_BPS = 20_000_000
#: What a subscriber's audio mix costs on the wire: Opus with the previous frame again
#: (RFC 2198) and headers, 50 packets a second.
MIX_SHARE_BPS = 96_000
#: How often each subscriber's layer choice is revisited.
LAYER_INTERVAL = 0.2
#: Forwarded video leaves for a participant at most at this multiple of its estimate (as
#: GCC's pacer): a 30 kB keyframe forwarded the moment it arrives would hit a small
#: bottleneck queue as one burst and lose its tail.
PACING_FACTOR = 2.5
#: ... in bursts of at most this many seconds' worth at that rate (a little more than the
#: router's 20 ms tick, which drains what waits).
PACING_BURST = 0.025
#: Video waits at most about this long: with more queued, the pace quickens to drain it in
#: this time (as GCC's pacer does), a burst a little late rather than a keyframe's tail
#: dropped and asked for again.
PACED_DRAIN_TIME = 0.5
#: Video waiting longer than this for its turn is dropped (counted): only a layer choice
#: far behind a collapsed link gets here; the receiver repairs or skips it.
MAX_PACED_DELAY = 2.0
#: A link is quiet enough to probe while its queueing delay stays below this.
PROBE_QUIET_QUEUE = 0.03
#: ... or when it has had no feedback this long (nothing sent: its last verdict is stale).
PROBE_STALE_FEEDBACK = 1.0


@dataclass
class Downlink:
    """Congestion state of the link from the server to one participant."""

    bwe: SendSideBwe = field(default_factory=lambda: SendSideBwe(
        start_bps=DOWNLINK_START_BPS, min_bps=DOWNLINK_MIN_BPS, max_bps=DOWNLINK_MAX_BPS))
    history: SentHistory = field(default_factory=SentHistory)
    next_seq: int = 0
    #: feedback the other way: what we received from this participant
    received: TwccRecorder = field(default_factory=TwccRecorder)
    feedbacks: int = 0
    last_feedback_at: float = float("-inf")
    #: what this participant would take if its link carried everything (all pictures at
    #: full size and every layer, and the mix, with the margin a move up needs), while
    #: some picture gets less than that, else 0: probes run only while it is above the
    #: estimate (set by the router's layer choice)
    wanted_bps: float = 0.0
    prober: Prober = field(default_factory=Prober)
    probes_raised: int = 0
    #: forwarded video waiting for its turn: (queued at, plain copy, where its
    #: extension 4 is), and the pacing budget in bytes
    paced: deque[tuple[float, bytes, int | None]] = field(default_factory=deque)
    pace_tokens: float = 0.0
    pace_last: float | None = None
    paced_bytes: int = 0
    paced_dropped: int = 0

    def stamp(self, plain: bytes, now: float, offset: int | None = None) -> bytes:
        """Number a plaintext RTP packet about to go to this participant (``offset``:
        where its extension 4 is, if the caller knows)."""
        stamped = stamp_transport_seq(plain, self.next_seq, offset)
        size = len(stamped) + WIRE_OVERHEAD
        self.history.on_sent(self.next_seq, size, now)
        self.prober.on_sent(self.next_seq, size, now)
        self.next_seq = (self.next_seq + 1) & 0xFFFF
        return stamped

    def pace(self, plain: bytes, now: float, offset: int | None = None) -> list[bytes]:
        """A forwarded video packet for this participant (plain, not yet numbered): the
        packets that may leave now, numbered (this one, earlier ones waiting, or none)."""
        if not self.paced:  # the common case: nothing waits, and there is budget
            self._refill(now)
            if self.pace_tokens > 0:
                self.pace_tokens -= len(plain) + WIRE_OVERHEAD
                return [self.stamp(plain, now, offset)]
        self.paced.append((now, plain, offset))
        self.paced_bytes += len(plain)
        return self.release(now)

    def _refill(self, now: float) -> None:
        rate = max(PACING_FACTOR * self.target_bps / 8,  # bytes per second
                   self.paced_bytes / PACED_DRAIN_TIME)
        if self.pace_last is None:
            self.pace_tokens = rate * PACING_BURST
            self.pace_last = now
        elif now > self.pace_last:
            self.pace_tokens = min(rate * PACING_BURST,
                                   self.pace_tokens + (now - self.pace_last) * rate)
            self.pace_last = now

    def release(self, now: float) -> list[bytes]:
        """What waited and may leave now, numbered (called on every forwarded packet and
        every router tick)."""
        self._refill(now)
        paced = self.paced
        while paced and now - paced[0][0] > MAX_PACED_DELAY:
            self.paced_bytes -= len(paced.popleft()[1])
            self.paced_dropped += 1
        out: list[bytes] = []
        while paced and self.pace_tokens > 0:  # may go below zero by one packet
            _, plain, offset = paced.popleft()
            self.paced_bytes -= len(plain)
            self.pace_tokens -= len(plain) + WIRE_OVERHEAD
            out.append(self.stamp(plain, now, offset))
        return out

    def on_feedback(self, feedback: TransportFeedback, now: float) -> None:
        self.feedbacks += 1
        self.last_feedback_at = now
        results = self.history.on_feedback(feedback, now)
        before = self.bwe.target_bps
        self.bwe.on_packet_results(results, now)
        outcome = self.prober.on_results(results, now)
        if outcome is not None and self.bwe.on_probe(outcome.estimate_bps(), now) > before:
            self.probes_raised += 1

    def padding(self, now: float, tick: float) -> list[int]:
        """Sizes of the probe padding packets to send this participant now."""
        bwe = self.bwe
        # what the estimator last saw, unless it saw nothing for a while (nothing was
        # sent): then its verdict is stale and the probe is what tells
        stale = now - self.last_feedback_at > PROBE_STALE_FEEDBACK
        # random loss (a radio link) below the loss controller's cut does not stop a
        # probe: only a probe shows whether the link has room despite it
        quiet = stale or (bwe.usage is Usage.NORMAL and bwe.loss.loss_fraction < bwe.loss.high
                          and bwe.queue_delay < PROBE_QUIET_QUEUE)
        return self.prober.padding(now, estimate_bps=self.target_bps,
                                   wanted_bps=self.wanted_bps, quiet=quiet, tick=tick)

    def tick(self, now: float) -> None:
        # a link we sent nothing on lately (a paused picture, a silent meeting) gets no
        # feedback and must not be backed off for it, even with packets unaccounted for
        self.bwe.on_tick(now, sending=self.history.in_flight > 0
                         and self.prober.sending_bps(now) > 0)

    @property
    def target_bps(self) -> int:
        return self.bwe.target_bps

    def video_share(self, publishers: int) -> float:
        """What each publisher's video may cost on this link (an equal share)."""
        return max(0.0, self.target_bps - MIX_SHARE_BPS) / max(1, publishers)
