"""The RTCP packets confero uses: SR and RR (RFC 3550), generic NACK and PLI (RFC 4585).

A compound datagram is split into its packets; types we do not use (SDES, APP, XR, ...)
are returned as :class:`UnknownRtcp` so that a receiver can skip them without failing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SR, RR, SDES, BYE, RTPFB, PSFB = 200, 201, 202, 203, 205, 206
FMT_NACK, FMT_PLI = 1, 1


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


RtcpPacket = SenderReport | ReceiverReport | Nack | Pli | Bye | UnknownRtcp


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
        if packet_type == PSFB and count == FMT_PLI:
            sender, media = struct.unpack_from("!II", body)
            return Pli(sender, media)
        if packet_type == BYE:
            return Bye([int.from_bytes(body[4 * i : 4 * i + 4], "big") for i in range(count)
                        if 4 * i + 4 <= len(body)])
    except struct.error as exc:
        raise RtcpError(f"truncated RTCP packet of type {packet_type}") from exc
    return UnknownRtcp(packet_type, count, body)
