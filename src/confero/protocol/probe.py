"""Bandwidth probing: finding out whether a link carries more than we send (sans-I/O).

A delay-based estimator only learns from what is sent: its increase is capped near the
acknowledged rate, so a sender that was pushed down (a capacity drop, a subscriber moved to
a low copy or a paused picture) sends little, and its estimate grows only by a few percent a
second after the link recovers -- tens of seconds from 300 kbit/s back to 2 Mbit/s. A probe
asks the link directly: for a short window (``duration``) the sender adds padding so that
everything it sends runs at ``factor`` x the estimate, and transport feedback tells at what
rate it arrived. If it arrived as fast as it left, the link carries that rate and the
estimate jumps there; if not, what did arrive is a measure of the link.

Probes run only while the receiver would take more than the estimate gives it
(``wanted_bps``), and only on a quiet link (no overuse, loss or standing queue). A probe
that finds nothing doubles the wait before the next, up to ``max_interval``: a link that is
really full is probed rarely. The padding is spread over the window at the sender's tick,
never sent as one burst, so a small bottleneck queue sees a rate, not a spike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from confero.protocol.twcc import PacketResult

#: The largest padding packet (bytes of payload): as large as media packets, not larger.
MAX_PADDING = 1100
#: A probe succeeds when it arrived at least this share of the rate it left at, with at
#: most ``MAX_PROBE_LOSS`` of its packets lost.
ARRIVAL_SHARE = 0.9
MAX_PROBE_LOSS = 0.1
#: What the estimate becomes of a failed probe's arrival rate (the link, with a margin).
FAILED_PROBE_SHARE = 0.9


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    sent_bps: float
    received_bps: float
    lost: int
    packets: int

    @property
    def succeeded(self) -> bool:
        return (self.received_bps >= ARRIVAL_SHARE * self.sent_bps
                and self.lost <= MAX_PROBE_LOSS * self.packets)

    def estimate_bps(self) -> float:
        """What the link carries, as far as this probe shows."""
        if self.succeeded:
            return min(self.sent_bps, self.received_bps)
        return FAILED_PROBE_SHARE * self.received_bps


@dataclass(slots=True)
class _Cluster:
    started: float
    ends: float
    padding_bps: float
    #: transport seq (16 bit) -> (send time, size); every packet sent in the window
    sent: dict[int, tuple[float, int]] = field(default_factory=dict)
    arrivals: dict[int, float | None] = field(default_factory=dict)


class Prober:
    """Decides when to probe one link, how much padding each tick adds, and what the
    feedback on the probe window says."""

    def __init__(self, *, interval: float = 1.0, max_interval: float = 16.0,
                 duration: float = 0.1, factor: float = 2.0, min_gain: float = 1.05,
                 send_window: float = 0.5) -> None:
        self.interval = interval
        self.max_interval = max_interval
        self.duration = duration
        self.factor = factor
        self.min_gain = min_gain
        self.send_window = send_window
        self._wait = interval
        self._next: float | None = None
        self._cluster: _Cluster | None = None
        # bytes sent in the last ``send_window`` seconds, in tenths of a second (a ring:
        # this runs for every packet the server sends)
        self._slots = max(1, round(send_window * 10))
        self._ring = [0] * self._slots
        self._slot = 0  # the tenth of a second the newest bytes belong to
        self.probes = 0
        self.succeeded = 0
        self.padding_packets = 0
        self.padding_bytes = 0

    @property
    def probing(self) -> bool:
        return self._cluster is not None

    def sending_bps(self, now: float) -> float:
        self._advance(int(now * 10))
        # the older slots are whole tenths; the newest one only as far as ``now``
        span = (self._slots - 1 + (now * 10 - int(now * 10))) / 10
        return sum(self._ring) * 8 / max(span, 0.1)

    def _advance(self, slot: int) -> None:
        if slot <= self._slot:
            return
        for step in range(self._slot + 1, min(slot, self._slot + self._slots) + 1):
            self._ring[step % self._slots] = 0
        self._slot = slot

    def on_sent(self, transport_seq: int, size: int, now: float) -> None:
        """Every packet sent on the link (media, padding), with its wire size."""
        slot = int(now * 10)
        if slot != self._slot:
            self._advance(slot)
        self._ring[slot % self._slots] += size
        cluster = self._cluster
        if cluster is not None and cluster.started <= now <= cluster.ends:
            cluster.sent[transport_seq & 0xFFFF] = (now, size)

    def padding(self, now: float, *, estimate_bps: float, wanted_bps: float,
                quiet: bool, tick: float) -> list[int]:
        """Payload sizes of the padding packets to send now (called once per ``tick``)."""
        if self._next is None:
            self._next = now + self.interval
        cluster = self._cluster
        if cluster is None:
            if (now < self._next or not quiet
                    or wanted_bps < self.min_gain * estimate_bps):
                return []
            probe_bps = min(self.factor * estimate_bps, wanted_bps)
            # media alone may already run at the probe's rate (more than the estimate:
            # a picture that is never paused): then the window measures that, unpadded
            padding_bps = max(0.0, probe_bps - self.sending_bps(now))
            cluster = self._cluster = _Cluster(now, now + self.duration, padding_bps)
            self.probes += 1
        if now > cluster.ends or cluster.padding_bps <= 0:
            return []
        total = int(cluster.padding_bps * tick / 8)
        count = max(1, math.ceil(total / MAX_PADDING))
        sizes = [max(1, total // count)] * count
        self.padding_packets += count
        self.padding_bytes += sum(sizes)
        return sizes

    def on_results(self, results: Sequence[PacketResult], now: float) -> ProbeOutcome | None:
        """Feedback on sent packets; the probe's outcome once all of its window is known
        (or 1 s after the window, with whatever is known by then)."""
        cluster = self._cluster
        if cluster is None:
            return None
        for result in results:
            seq = result.transport_seq & 0xFFFF
            if seq in cluster.sent:
                cluster.arrivals[seq] = result.arrival_time
        if now <= cluster.ends or (len(cluster.arrivals) < len(cluster.sent)
                                   and now < cluster.ends + 1.0):
            return None
        self._cluster = None
        outcome = self._outcome(cluster)
        if outcome is not None and outcome.succeeded:
            self.succeeded += 1
            self._wait = self.interval
        else:
            self._wait = min(self._wait * 2, self.max_interval)
        self._next = now + self._wait
        return outcome

    @staticmethod
    def _outcome(cluster: _Cluster) -> ProbeOutcome | None:
        sent = sorted(cluster.sent.values())
        received = sorted((arrival, cluster.sent[seq][1]) for seq, arrival
                          in cluster.arrivals.items() if arrival is not None)
        if len(sent) < 3 or len(received) < 2:
            return None
        send_span = sent[-1][0] - sent[0][0]
        arrival_span = received[-1][0] - received[0][0]
        if send_span <= 0 or arrival_span <= 0:
            return None
        # n packets span n - 1 gaps: the first one's bytes left before the span began
        sent_bps = sum(size for _, size in sent[1:]) * 8 / send_span
        received_bps = sum(size for _, size in received[1:]) * 8 / arrival_span
        return ProbeOutcome(sent_bps, received_bps, len(sent) - len(received), len(sent))
