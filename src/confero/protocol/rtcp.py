"""The RTCP packets confero uses: SR and RR (RFC 3550), generic NACK and PLI (RFC 4585),
transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

A compound datagram is split into its packets; types we do not use (SDES, APP, XR, ...)
are returned as :class:`UnknownRtcp` so that a receiver can skip them without failing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SR, RR, SDES, BYE, RTPFB, PSFB = 200, 201, 202, 203, 205, 206
FMT_NACK, FMT_PLI = 1, 1
FMT_TWCC = 15
#: Transport feedback units: receive deltas in 250 us ticks, the reference time in 64 ms.
TWCC_DELTA_TICK = 0.00025
TWCC_REFERENCE_TICKS = 256  # delta ticks per reference-time unit (64 ms)
#: Most packet statuses one feedback may carry; a feedback is a few hundred bytes at most
#: for this many, and a peer claiming 65 535 lost packets must not make us build a huge list.
MAX_TWCC_STATUS = 4096


class RtcpError(ValueError):
    """A datagram that is not valid RTCP."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int  # 0..255, fraction of 256
    cumulative_lost: int
    highest_seq: int  # extended highest sequence number received
    jitter: int  # RTP timestamp units
    last_sr: int = 0
    delay_since_last_sr: int = 0

    def pack(self) -> bytes:
        lost = self.cumulative_lost & 0xFFFFFF
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (self.fraction_lost << 24) | lost,
            self.highest_seq & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.last_sr,
            self.delay_since_last_sr,
        )

    @classmethod
    def unpack(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP time
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    def pack(self) -> bytes:
        body = struct.pack(
            "!IQIII", self.ssrc, self.ntp_timestamp, self.rtp_timestamp,
            self.packet_count, self.octet_count,
        ) + b"".join(r.pack() for r in self.reports)
        return _header(len(self.reports), SR, body) + body


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    def pack(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(r.pack() for r in self.reports)
        return _header(len(self.reports), RR, body) + body


@dataclass(frozen=True, slots=True)
class Nack:
    """Generic NACK: the receiver ``sender_ssrc`` misses ``lost`` of ``media_ssrc``."""

    sender_ssrc: int
    media_ssrc: int
    lost: list[int]

    def pack(self) -> bytes:
        body = struct.pack("!II", self.sender_ssrc, self.media_ssrc)
        for pid, blp in _nack_pairs(self.lost):
            body += struct.pack("!HH", pid, blp)
        return _header(FMT_NACK, RTPFB, body) + body


@dataclass(frozen=True, slots=True)
class Pli:
    """Picture Loss Indication: ``media_ssrc`` should send a keyframe."""

    sender_ssrc: int
    media_ssrc: int

    def pack(self) -> bytes:
        body = struct.pack("!II", self.sender_ssrc, self.media_ssrc)
        return _header(FMT_PLI, PSFB, body) + body


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: list[int]

    def pack(self) -> bytes:
        body = b"".join(s.to_bytes(4, "big") for s in self.ssrcs)
        return _header(len(self.ssrcs), BYE, body) + body


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    packet_type: int
    count: int
    body: bytes


@dataclass(frozen=True, slots=True)
class TransportFeedback:
    """Transport-wide CC feedback: which transport sequence numbers arrived, and when.

    ``deltas`` has one entry per packet from ``base_seq`` on: ``None`` when not received,
    else the receive time in 250 us ticks after the previous received packet (the first one
    after ``reference_time`` x 64 ms). Ticks stay integers so sender and receiver agree
    exactly; :mod:`confero.protocol.twcc` turns them into seconds.
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int  # 24 bits, 64 ms units, on the feedback sender's clock
    fb_count: int  # 8 bits, wraps
    deltas: list[int | None]

    def pack(self) -> bytes:
        if not 1 <= len(self.deltas) <= MAX_TWCC_STATUS:
            raise ValueError(f"transport feedback needs 1..{MAX_TWCC_STATUS} statuses")
        symbols = [_twcc_symbol(d) for d in self.deltas]
        body = struct.pack(
            "!IIHHI", self.sender_ssrc, self.media_ssrc, self.base_seq & 0xFFFF, len(symbols),
            ((self.reference_time & 0xFFFFFF) << 8) | (self.fb_count & 0xFF),
        )
        body += b"".join(struct.pack("!H", chunk) for chunk in _twcc_chunks(symbols))
        for delta, symbol in zip(self.deltas, symbols, strict=True):
            if symbol == 1:
                body += struct.pack("!B", delta)
            elif symbol == 2:
                body += struct.pack("!h", delta)
        body += b"\x00" * (-len(body) % 4)
        return _header(FMT_TWCC, RTPFB, body) + body


RtcpPacket = SenderReport | ReceiverReport | Nack | Pli | Bye | TransportFeedback | UnknownRtcp


def _header(count: int, packet_type: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError("RTCP body must be a multiple of 4 bytes")
    return struct.pack("!BBH", 0x80 | count, packet_type, len(body) // 4)


def _nack_pairs(lost: list[int]) -> list[tuple[int, int]]:
    """Pack sequence numbers into (PID, BLP) pairs: PID plus a bitmask of the next 16."""
    pairs: list[tuple[int, int]] = []
    if not lost:
        return pairs
    first = lost[0] & 0xFFFF  # order relative to the first (oldest) entry: wrap-around safe
    for seq in sorted({s & 0xFFFF for s in lost}, key=lambda s: (s - first) & 0xFFFF):
        if pairs:
            pid, blp = pairs[-1]
            distance = (seq - pid) & 0xFFFF
            if 1 <= distance <= 16:
                pairs[-1] = (pid, blp | (1 << (distance - 1)))
                continue
        pairs.append((seq, 0))
    return pairs


def _twcc_symbol(delta: int | None) -> int:
    """0: not received, 1: small delta (1 byte, 0..63.75 ms), 2: large or negative (2 bytes)."""
    if delta is None:
        return 0
    if 0 <= delta <= 0xFF:
        return 1
    if -0x8000 <= delta <= 0x7FFF:
        return 2
    raise ValueError(f"receive delta of {delta} ticks does not fit in 16 bits")


def _twcc_chunks(symbols: list[int]) -> list[int]:
    """Greedy chunking: a run-length chunk for runs of 7 or more (what a two-bit vector
    holds), else the densest status vector that fits; the last vector may reach past the
    status count, whose spare slots the receiver ignores."""
    chunks: list[int] = []
    i, n = 0, len(symbols)
    while i < n:
        run = 1
        while i + run < n and run < 0x1FFF and symbols[i + run] == symbols[i]:
            run += 1
        if run >= 7 or i + run == n:
            chunks.append((symbols[i] << 13) | run)
            i += run
        elif all(s <= 1 for s in symbols[i : i + 14]):
            chunk = 0x8000
            for bit, symbol in enumerate(symbols[i : i + 14]):
                chunk |= symbol << (13 - bit)
            chunks.append(chunk)
            i += 14
        else:
            chunk = 0xC000
            for slot, symbol in enumerate(symbols[i : i + 7]):
                chunk |= symbol << (12 - 2 * slot)
            chunks.append(chunk)
            i += 7
    return chunks


def _parse_twcc(body: bytes) -> TransportFeedback:
    sender, media, base_seq, status_count, ref_word = struct.unpack_from("!IIHHI", body)
    if not 1 <= status_count <= MAX_TWCC_STATUS:
        raise RtcpError(f"transport feedback with {status_count} statuses")
    symbols: list[int] = []
    offset = 16
    while len(symbols) < status_count:
        (chunk,) = struct.unpack_from("!H", body, offset)
        offset += 2
        if not chunk & 0x8000:  # run length
            symbol, run = chunk >> 13 & 0x3, chunk & 0x1FFF
            if symbol == 3:
                raise RtcpError("reserved status symbol in transport feedback")
            symbols += [symbol] * min(run, status_count - len(symbols))
        elif not chunk & 0x4000:  # 14 one-bit symbols
            symbols += [chunk >> (13 - bit) & 1 for bit in range(14)]
        else:  # 7 two-bit symbols
            vector = [chunk >> (12 - 2 * slot) & 0x3 for slot in range(7)]
            if 3 in vector[: status_count - len(symbols)]:
                raise RtcpError("reserved status symbol in transport feedback")
            symbols += vector
    deltas: list[int | None] = []
    for symbol in symbols[:status_count]:
        if symbol == 0:
            deltas.append(None)
        elif symbol == 1:
            deltas.append(body[offset])  # IndexError -> truncated, caught by the caller
            offset += 1
        else:
            deltas.append(struct.unpack_from("!h", body, offset)[0])
            offset += 2
    return TransportFeedback(sender, media, base_seq, ref_word >> 8, ref_word & 0xFF, deltas)


def parse_compound(data: bytes) -> list[RtcpPacket]:
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise RtcpError("truncated RTCP header")
        first, packet_type, words = struct.unpack_from("!BBH", data, offset)
        if first >> 6 != 2:
            raise RtcpError("not RTCP version 2")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise RtcpError("RTCP packet runs past the end of the datagram")
        count = first & 0x1F
        body = data[offset + 4 : end]
        packets.append(_parse_one(packet_type, count, body))
        offset = end
    if not packets:
        raise RtcpError("empty RTCP datagram")
    return packets


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    try:
        if packet_type == SR:
            ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body)
            reports = [ReportBlock.unpack(body, 24 + 24 * i) for i in range(count)]
            return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports)
        if packet_type == RR:
            (ssrc,) = struct.unpack_from("!I", body)
            reports = [ReportBlock.unpack(body, 4 + 24 * i) for i in range(count)]
            return ReceiverReport(ssrc, reports)
        if packet_type == RTPFB and count == FMT_NACK:
            sender, media = struct.unpack_from("!II", body)
            lost: list[int] = []
            for i in range(8, len(body) - 3, 4):
                pid, blp = struct.unpack_from("!HH", body, i)
                lost.append(pid)
                lost += [(pid + bit + 1) & 0xFFFF for bit in range(16) if blp >> bit & 1]
            return Nack(sender, media, lost)
        if packet_type == RTPFB and count == FMT_TWCC:
            return _parse_twcc(body)
        if packet_type == PSFB and count == FMT_PLI:
            sender, media = struct.unpack_from("!II", body)
            return Pli(sender, media)
        if packet_type == BYE:
            return Bye([int.from_bytes(body[4 * i : 4 * i + 4], "big") for i in range(count)
                        if 4 * i + 4 <= len(body)])
    except (struct.error, IndexError) as exc:
        raise RtcpError(f"truncated RTCP packet of type {packet_type}") from exc
    return UnknownRtcp(packet_type, count, body)
