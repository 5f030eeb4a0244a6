"""RTP packets (RFC 3550) with RFC 8285 one-byte header extensions.

Parsing is strict and bounded: anything that is not a well-formed RTP version 2 packet
raises :class:`RtpError`, which the caller counts and drops. Serialisation writes exactly
what was parsed, so a forwarded packet keeps its bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_HEADER_SIZE = 12
MAX_PACKET_SIZE = 1500
_ONE_BYTE_PROFILE = 0xBEDE
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet."""


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 sit where RTP has M+PT."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def peek_ssrc(data: bytes) -> int:
    """The sender SSRC of an RTP or RTCP packet without parsing the rest."""
    if is_rtcp(data):
        if len(data) < 8:
            raise RtpError("RTCP packet shorter than 8 bytes")
        return int.from_bytes(data[4:8], "big")
    if len(data) < RTP_HEADER_SIZE:
        raise RtpError("RTP packet shorter than its fixed header")
    return int.from_bytes(data[8:12], "big")


@dataclass(slots=True)
class RtpPacket:
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: list[int] = field(default_factory=list)
    #: RFC 8285 one-byte extensions: id (1-14) -> value (1-16 bytes).
    extensions: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise RtpError(f"RTP packet of {size} bytes is shorter than its fixed header")
        if size > MAX_PACKET_SIZE:
            raise RtpError(f"RTP packet of {size} bytes exceeds {MAX_PACKET_SIZE}")
        first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise RtpError("not RTP version 2")
        csrc_count = first & 0x0F
        offset = RTP_HEADER_SIZE + 4 * csrc_count
        if offset > size:
            raise RtpError("CSRC list runs past the end of the packet")
        csrcs = [int.from_bytes(data[i : i + 4], "big") for i in range(12, offset, 4)]
        extensions: dict[int, bytes] = {}
        if first & 0x10:
            if offset + 4 > size:
                raise RtpError("extension header runs past the end of the packet")
            profile, words = struct.unpack_from("!HH", data, offset)
            offset += 4
            end = offset + 4 * words
            if end > size:
                raise RtpError("extension runs past the end of the packet")
            if profile == _ONE_BYTE_PROFILE:
                extensions = _parse_one_byte(data[offset:end])
            offset = end
        end = size
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or offset + padding > size:
                raise RtpError("invalid RTP padding")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
            csrcs=csrcs,
            extensions=extensions,
        )

    def serialize(self) -> bytes:
        first = 0x80 | len(self.csrcs)
        ext = b""
        if self.extensions:
            first |= 0x10
            body = b"".join(
                bytes([(ext_id << 4) | (len(value) - 1)]) + value
                for ext_id, value in sorted(self.extensions.items())
            )
            body += b"\x00" * (-len(body) % 4)
            ext = struct.pack("!HH", _ONE_BYTE_PROFILE, len(body) // 4) + body
        second = (0x80 if self.marker else 0) | self.payload_type
        header = _HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)
        csrcs = b"".join(c.to_bytes(4, "big") for c in self.csrcs)
        return header + csrcs + ext + self.payload


def _parse_one_byte(block: bytes) -> dict[int, bytes]:
    extensions: dict[int, bytes] = {}
    i = 0
    while i < len(block):
        byte = block[i]
        if byte == 0:  # padding
            i += 1
            continue
        ext_id, length = byte >> 4, (byte & 0x0F) + 1
        if ext_id == 15:
            break  # reserved: stop parsing, as RFC 8285 says
        if i + 1 + length > len(block):
            raise RtpError("header extension element runs past its block")
        extensions[ext_id] = bytes(block[i + 1 : i + 1 + length])
        i += 1 + length
    return extensions


def seq_distance(a: int, b: int) -> int:
    """Signed distance a - b in 16-bit sequence space, in [-32768, 32767]."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


class Unwrapper:
    """Turns wrapping ``bits``-bit counters (sequence numbers, timestamps) into a monotonic
    count: a value within half the range ahead of the highest seen is newer."""

    __slots__ = ("_half", "_last", "_mask")

    def __init__(self, bits: int = 16) -> None:
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def unwrap(self, value: int) -> int:
        if self._last is None:
            self._last = value + self._mask + 1  # room for values that arrive before it
            return self._last
        delta = (value - self._last) & self._mask
        if delta >= self._half:
            delta -= self._mask + 1
        unwrapped = self._last + delta
        if unwrapped > self._last:
            self._last = unwrapped
        return unwrapped


class SequenceUnwrapper(Unwrapper):
    """16-bit RTP sequence numbers."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(16)
