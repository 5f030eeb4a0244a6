"""One sending path's congestion control, wired the one right way.

:class:`CongestionSender` bundles the :class:`~confero.protocol.pacer.Pacer`, the
transport-wide sequence numbers, the :class:`~confero.protocol.twcc.SentHistory` and the
:class:`~confero.protocol.bwe.SendSideBwe`, so that numbers are assigned in the order
packets leave, sizes are counted the same way everywhere and the pacer always runs at the
current estimate. The receiving end of the path only needs a
:class:`~confero.protocol.twcc.TwccRecorder`. Sans-I/O: the caller protects (SRTP) and
sends what :meth:`CongestionSender.poll` returns, and arms a timer for
:meth:`CongestionSender.next_wakeup`.
"""

from __future__ import annotations

from confero.protocol.bwe import SendSideBwe
from confero.protocol.pacer import Pacer, PacketKind
from confero.protocol.rtcp import TransportFeedback
from confero.protocol.twcc import SentHistory, stamp_transport_seq

#: Bytes a plaintext RTP packet grows by on the wire: SRTP tag (10) + UDP (8) + IPv4 (20).
#: Counting them keeps the estimate in the units a bottleneck (e.g. a token bucket) counts.
WIRE_OVERHEAD = 38


class CongestionSender:
    def __init__(
        self,
        *,
        start_bps: float = 300_000,
        min_bps: float = 50_000,
        max_bps: float = 5_000_000,
        pacing_factor: float = 2.5,
        max_queue_delay: float = 0.5,
        overhead: int = WIRE_OVERHEAD,
        tick_interval: float = 0.1,
    ) -> None:
        self.bwe = SendSideBwe(start_bps=start_bps, min_bps=min_bps, max_bps=max_bps)
        self.pacer = Pacer(
            target_bps=start_bps, pacing_factor=pacing_factor, max_queue_delay=max_queue_delay
        )
        self.history = SentHistory()
        self.overhead = overhead
        self.tick_interval = tick_interval
        self._next_seq = 0
        self._next_tick: float | None = None

    @property
    def target_bps(self) -> int:
        """What the encoders (all streams of this path together) should produce."""
        return self.bwe.target_bps

    def enqueue(self, packet: bytes, kind: PacketKind, now: float) -> None:
        """A plaintext RTP packet to send on this path."""
        self.pacer.enqueue(packet, kind, now)

    def poll(self, now: float) -> list[bytes]:
        """Plaintext RTP packets to protect and send now, each stamped with its
        transport-wide sequence number (extension 4)."""
        out: list[bytes] = []
        for packet in self.pacer.poll(now):
            stamped = stamp_transport_seq(packet, self._next_seq)
            self.history.on_sent(self._next_seq, len(stamped) + self.overhead, now)
            self._next_seq = (self._next_seq + 1) & 0xFFFF
            out.append(stamped)
        self._maybe_tick(now)
        return out

    def on_feedback(self, feedback: TransportFeedback, now: float) -> int:
        """A transport feedback from the path's receiver; returns the new target."""
        results = self.history.on_feedback(feedback, now)
        self.pacer.set_rate(self.bwe.on_packet_results(results, now))
        return self.target_bps

    def on_rtt(self, rtt: float) -> None:
        self.bwe.on_rtt(rtt)

    def _maybe_tick(self, now: float) -> None:
        if self._next_tick is not None and now < self._next_tick:
            return
        self._next_tick = now + self.tick_interval
        lost = self.history.expire(now)
        if lost:
            self.bwe.on_packet_results(lost, now)
        self.pacer.set_rate(self.bwe.on_tick(now, sending=self.history.in_flight > 0))

    def handle_timer(self, now: float) -> list[bytes]:
        """Same as :meth:`poll`; named for the caller's timer callback."""
        return self.poll(now)

    def next_wakeup(self) -> float:
        """When to call :meth:`poll` again: the pacer's next release or the next tick."""
        tick = self._next_tick if self._next_tick is not None else 0.0
        send = self.pacer.next_send_time()
        return tick if send is None else min(send, tick)
