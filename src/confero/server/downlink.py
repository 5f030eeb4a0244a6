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

from dataclasses import dataclass, field

from confero.protocol.bwe import SendSideBwe
from confero.protocol.congestion import WIRE_OVERHEAD
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

    def stamp(self, plain: bytes, now: float, offset: int | None = None) -> bytes:
        """Number a plaintext RTP packet about to go to this participant (``offset``:
        where its extension 4 is, if the caller knows)."""
        stamped = stamp_transport_seq(plain, self.next_seq, offset)
        self.history.on_sent(self.next_seq, len(stamped) + WIRE_OVERHEAD, now)
        self.next_seq = (self.next_seq + 1) & 0xFFFF
        return stamped

    def on_feedback(self, feedback: TransportFeedback, now: float) -> None:
        self.feedbacks += 1
        self.bwe.on_packet_results(self.history.on_feedback(feedback, now), now)

    def tick(self, now: float) -> None:
        self.bwe.on_tick(now, sending=self.history.in_flight > 0)

    @property
    def target_bps(self) -> int:
        return self.bwe.target_bps

    def video_share(self, publishers: int) -> float:
        """What each publisher's video may cost on this link (an equal share)."""
        return max(0.0, self.target_bps - MIX_SHARE_BPS) / max(1, publishers)
