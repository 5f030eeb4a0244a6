"""Transport-wide congestion control bookkeeping, sans-I/O.

Every media packet a sender puts on a path carries a transport-wide sequence number
(:data:`confero.protocol.profile.EXT_TRANSPORT_SEQ`, two bytes, assigned when the packet
actually leaves, i.e. after the pacer). The receiving end of the path runs a
:class:`TwccRecorder` that notes when each one arrived and reports it back every ~50 ms as
:class:`~confero.protocol.rtcp.TransportFeedback`; the sending end keeps a
:class:`SentHistory` that joins those reports with what it sent, giving the
:class:`PacketResult` list the bandwidth estimator (:mod:`confero.protocol.bwe`) eats.

Arrival times in a :class:`PacketResult` are on the receiver's clock: only differences
between them mean anything, which is all a delay-based estimator needs.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from confero.protocol.profile import EXT_TRANSPORT_SEQ
from confero.protocol.rtcp import (
    MAX_TWCC_STATUS,
    TWCC_DELTA_TICK,
    TWCC_REFERENCE_TICKS,
    TransportFeedback,
)
from confero.protocol.rtp import RtpError, RtpPacket, Unwrapper, seq_distance

#: Statuses per feedback packet we build: keeps one feedback under ~1 KB even when every
#: packet needs a two-byte delta, well inside a datagram.
FEEDBACK_MAX_STATUS = 400
assert FEEDBACK_MAX_STATUS <= MAX_TWCC_STATUS
_DELTA_MIN, _DELTA_MAX = -0x8000, 0x7FFF


def _transport_seq_offset(packet: bytes) -> int | None:
    """Where the two value bytes of extension :data:`EXT_TRANSPORT_SEQ` sit in a plaintext
    RTP packet (one-byte header extensions), without parsing the rest."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise RtpError("not an RTP packet")
    if not packet[0] & 0x10:
        return None
    offset = 12 + 4 * (packet[0] & 0x0F)
    if offset + 4 > len(packet) or packet[offset : offset + 2] != b"\xbe\xde":
        return None
    end = offset + 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    if end > len(packet):
        raise RtpError("extension runs past the end of the packet")
    i = offset + 4
    while i < end:
        byte = packet[i]
        if byte == 0:
            i += 1
            continue
        ext_id, length = byte >> 4, (byte & 0x0F) + 1
        if ext_id == 15 or i + 1 + length > end:
            return None
        if ext_id == EXT_TRANSPORT_SEQ and length == 2:
            return i + 1
        i += 1 + length
    return None


def transport_seq_offset(packet: bytes) -> int | None:
    """Where extension 4's two bytes sit in a plaintext RTP packet (None: not there).
    Copies of one packet that differ only after the header share it: find it once."""
    return _transport_seq_offset(packet)


def stamp_transport_seq(packet: bytes, transport_seq: int,
                        offset: int | None = None) -> bytes:
    """The plaintext RTP ``packet`` carrying ``transport_seq`` in its extension 4.

    Fast path: the packet already has the extension (a placeholder written when it was
    packetised, or the previous hop's number on a forwarded packet) and two bytes are
    patched. Otherwise it is re-serialised with the extension added. Stamp after the
    pacer, then SRTP-protect: the authentication tag covers the extension.
    """
    if offset is None:
        offset = _transport_seq_offset(packet)
    value = (transport_seq & 0xFFFF).to_bytes(2, "big")
    if offset is not None:
        return packet[:offset] + value + packet[offset + 2 :]
    rtp = RtpPacket.parse(packet)
    rtp.extensions[EXT_TRANSPORT_SEQ] = value
    return rtp.serialize()


def read_transport_seq(packet: bytes) -> int | None:
    """The transport-wide sequence number of a plaintext RTP packet, if it has one."""
    offset = _transport_seq_offset(packet)
    return None if offset is None else int.from_bytes(packet[offset : offset + 2], "big")


@dataclass(frozen=True, slots=True)
class PacketResult:
    """What became of one sent packet, as learnt from transport feedback."""

    transport_seq: int  # unwrapped (monotonic) transport sequence number
    size: int  # bytes on the wire, as given to :meth:`SentHistory.on_sent`
    send_time: float  # sender's ``now`` (monotonic seconds) when it left
    arrival_time: float | None  # receiver clock seconds; None = reported not received

    @property
    def received(self) -> bool:
        return self.arrival_time is not None


class TwccRecorder:
    """Receiver side: arrival times by transport sequence number, reported periodically.

    Reordered packets are welcome: a packet that arrives after its number was already
    reported as missing moves the next report's start back to it (the sender then learns it
    did arrive). Memory is bounded by ``history`` seconds and ``max_packets`` entries.
    """

    def __init__(
        self,
        *,
        interval: float = 0.05,
        max_pending: int = 100,
        history: float = 0.5,
        max_packets: int = 2048,
    ) -> None:
        self.interval = interval
        self.max_pending = max_pending
        self.history = history
        self.max_packets = max_packets
        self._unwrap = Unwrapper(16)
        # unwrapped seq -> arrival, in arrival order (OrderedDict: O(1) pops at the front)
        self._arrivals: OrderedDict[int, float] = OrderedDict()
        self._next_report: int | None = None  # first sequence number the next report covers
        self._highest: int | None = None
        self._pending = 0
        self._last_feedback: float | None = None
        self._fb_count = 0
        self.duplicates = 0
        self.too_late = 0  # arrived after its report, and too old to report again
        self.skipped = 0  # numbers never reported because of a jump larger than we cover

    def on_packet(self, transport_seq: int, now: float) -> None:
        seq = self._unwrap.unwrap(transport_seq & 0xFFFF)
        if seq in self._arrivals:
            self.duplicates += 1
            return
        if self._next_report is not None and seq < self._next_report:
            oldest = min(self._arrivals, default=seq)
            if seq < oldest or self._highest is None or self._highest - seq >= self.max_packets:
                self.too_late += 1
                return
            self._next_report = seq  # report it (and what came since) again
        self._arrivals[seq] = now
        if self._highest is None or seq > self._highest:
            self._highest = seq
        if self._next_report is None:
            self._next_report = seq
        self._pending += 1
        self._trim(now)

    def _trim(self, now: float) -> None:
        # Insertion order is arrival order, so the front holds the oldest entries.
        while self._arrivals:
            seq, arrival = next(iter(self._arrivals.items()))
            reported = self._next_report is not None and seq < self._next_report
            if len(self._arrivals) > self.max_packets or (
                reported and arrival < now - self.history
            ):
                self._arrivals.popitem(last=False)
            else:
                break

    def feedback_due(self, now: float) -> bool:
        if self._pending == 0:
            return False
        if self._pending >= self.max_pending or self._last_feedback is None:
            return True
        return now - self._last_feedback >= self.interval

    def next_feedback_time(self) -> float | None:
        """When :meth:`feedback_due` turns true by itself: None when there is nothing to
        report, ``-inf`` when it is due already (for the caller's timer)."""
        if self._pending == 0:
            return None
        if self._last_feedback is None or self._pending >= self.max_pending:
            return -float("inf")
        return self._last_feedback + self.interval

    def build_feedback(self, now: float, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """Packed feedback packets for everything since the last report (usually one)."""
        return [fb.pack() for fb in self.build_feedback_packets(now, sender_ssrc, media_ssrc)]

    def build_feedback_packets(
        self, now: float, sender_ssrc: int, media_ssrc: int
    ) -> list[TransportFeedback]:
        self._last_feedback = now
        self._pending = 0
        if self._next_report is None or self._highest is None:
            return []
        start, end = self._next_report, self._highest + 1
        if end - start > self.max_packets:
            self.skipped += end - self.max_packets - start
            start = end - self.max_packets
        self._next_report = end
        packets: list[TransportFeedback] = []
        seq = start
        while seq < end:
            fb, seq = self._one_packet(seq, end, now, sender_ssrc, media_ssrc)
            packets.append(fb)
        return packets

    def _one_packet(
        self, start: int, end: int, now: float, sender_ssrc: int, media_ssrc: int
    ) -> tuple[TransportFeedback, int]:
        deltas: list[int | None] = []
        reference: int | None = None
        previous = 0  # ticks of the previous received packet (or of the reference time)
        seq = start
        while seq < end and len(deltas) < FEEDBACK_MAX_STATUS:
            arrival = self._arrivals.get(seq)
            if arrival is None:
                deltas.append(None)
            else:
                ticks = round(arrival / TWCC_DELTA_TICK)
                if reference is None:
                    reference = ticks // TWCC_REFERENCE_TICKS
                    previous = reference * TWCC_REFERENCE_TICKS
                delta = ticks - previous
                if not _DELTA_MIN <= delta <= _DELTA_MAX:
                    break  # does not fit: the next packet starts with a fresh reference
                deltas.append(delta)
                previous = ticks
            seq += 1
        if reference is None:
            reference = round(now / TWCC_DELTA_TICK) // TWCC_REFERENCE_TICKS
        fb = TransportFeedback(
            sender_ssrc, media_ssrc, start & 0xFFFF, reference & 0xFFFFFF, self._fb_count, deltas
        )
        self._fb_count = (self._fb_count + 1) & 0xFF
        return fb, seq


@dataclass(slots=True)
class _Sent:
    send_time: float
    size: int
    state: int = 0  # 0 unreported, 1 reported missing, 2 received, 3 declared lost


class SentHistory:
    """Sender side: what left when, joined with transport feedback.

    Each packet yields one :class:`PacketResult`: received (with its arrival time) as soon
    as a feedback says so, or lost once it has been reported missing and no later feedback
    revised that within ``loss_wait`` seconds. The wait is what keeps reordering (a packet
    overtaken near the end of one report arrives in time for the next) from counting as
    loss. A packet declared lost that turns up later still yields its received result.
    Keeps at most ``max_packets`` entries; feedback about older ones is ignored and counted.
    """

    def __init__(self, *, max_packets: int = 8192, loss_wait: float = 0.15) -> None:
        self.max_packets = max_packets
        self.loss_wait = loss_wait
        self._sent: OrderedDict[int, _Sent] = OrderedDict()  # in send order
        self._highest: int | None = None
        self._reference = Unwrapper(24)
        self._missing: deque[tuple[float, int]] = deque(maxlen=max_packets)
        self._in_flight = 0
        self.unknown = 0  # statuses for packets we do not (or no longer) know

    def on_sent(self, transport_seq: int, size: int, now: float) -> None:
        seq = self._unwrap_sent(transport_seq)
        previous = self._sent.get(seq)
        if previous is not None and previous.state in (0, 1):
            self._in_flight -= 1
        self._sent[seq] = _Sent(now, size)
        self._in_flight += 1
        if self._highest is None or seq > self._highest:
            self._highest = seq
        while len(self._sent) > self.max_packets:
            _, evicted = self._sent.popitem(last=False)
            if evicted.state in (0, 1):
                self._in_flight -= 1

    def _unwrap_sent(self, transport_seq: int) -> int:
        if self._highest is None:
            return (transport_seq & 0xFFFF) + 0x10000
        return self._highest + seq_distance(transport_seq & 0xFFFF, self._highest & 0xFFFF)

    @property
    def in_flight(self) -> int:
        """Packets sent and not yet known received or lost."""
        return self._in_flight

    def on_feedback(self, fb: TransportFeedback, now: float) -> list[PacketResult]:
        results: list[PacketResult] = []
        if self._highest is None:
            self.unknown += len(fb.deltas)
            return results
        base = self._unwrap_sent(fb.base_seq)
        ticks = self._reference.unwrap(fb.reference_time) * TWCC_REFERENCE_TICKS
        for offset, delta in enumerate(fb.deltas):
            if delta is not None:
                ticks += delta
            entry = self._sent.get(base + offset)
            if entry is None:
                self.unknown += 1
            elif delta is None:
                if entry.state == 0:
                    entry.state = 1
                    self._missing.append((now + self.loss_wait, base + offset))
            elif entry.state != 2:
                if entry.state in (0, 1):
                    self._in_flight -= 1
                entry.state = 2
                arrival = ticks * TWCC_DELTA_TICK
                results.append(PacketResult(base + offset, entry.size, entry.send_time, arrival))
        return results + self.expire(now)

    def expire(self, now: float) -> list[PacketResult]:
        """Lost results for packets missing longer than ``loss_wait`` (called by
        :meth:`on_feedback`; call it on a timer too if feedback may stop)."""
        results: list[PacketResult] = []
        while self._missing and self._missing[0][0] <= now:
            _, seq = self._missing.popleft()
            entry = self._sent.get(seq)
            if entry is not None and entry.state == 1:
                entry.state = 3
                self._in_flight -= 1
                results.append(PacketResult(seq, entry.size, entry.send_time, None))
        return results

    def on_feedbacks(
        self, feedbacks: Iterable[TransportFeedback], now: float
    ) -> list[PacketResult]:
        results: list[PacketResult] = []
        for fb in feedbacks:
            results += self.on_feedback(fb, now)
        return results
