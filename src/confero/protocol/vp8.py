"""VP8 RTP payload format (RFC 7741): packetizer and payload-descriptor parser.

Every packet carries a 15-bit PictureID so a receiver can tell frames apart and notice a
whole lost frame even when RTP timestamps repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest RTP payload (descriptor included) we emit: leaves room for the RTP header,
#: extensions and SRTP's auth tag inside a 1280-byte IPv6 minimum MTU.
MAX_PAYLOAD = 1200
_DESCRIPTOR_SIZE = 4  # X-byte, I-byte, and 2 bytes of 15-bit PictureID


class Vp8Error(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    start_of_partition: bool
    partition_index: int
    picture_id: int | None
    header_size: int

    @property
    def starts_frame(self) -> bool:
        return self.start_of_partition and self.partition_index == 0


def packetize(frame: bytes, picture_id: int, max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """Split one encoded frame into RTP payloads of at most ``max_payload`` bytes."""
    if not frame:
        raise Vp8Error("cannot packetize an empty frame")
    chunk = max_payload - _DESCRIPTOR_SIZE
    pid = picture_id & 0x7FFF
    tail = bytes([0x80, 0x80 | (pid >> 8), pid & 0xFF])  # I=1; M=1, 15-bit PictureID
    payloads = []
    for offset in range(0, len(frame), chunk):
        first = 0x90 if offset == 0 else 0x80  # X=1, S=1 on the frame's first packet
        payloads.append(bytes([first]) + tail + frame[offset : offset + chunk])
    return payloads


def parse_descriptor(payload: bytes) -> Vp8Descriptor:
    if not payload:
        raise Vp8Error("empty VP8 payload")
    first = payload[0]
    offset = 1
    picture_id = None
    if first & 0x80:  # X: extension byte present
        if len(payload) < 2:
            raise Vp8Error("truncated VP8 descriptor")
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: PictureID
            if offset >= len(payload):
                raise Vp8Error("truncated PictureID")
            if payload[offset] & 0x80:
                if offset + 1 >= len(payload):
                    raise Vp8Error("truncated 15-bit PictureID")
                picture_id = ((payload[offset] & 0x7F) << 8) | payload[offset + 1]
                offset += 2
            else:
                picture_id = payload[offset]
                offset += 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            offset += 1
    if offset >= len(payload):
        raise Vp8Error("VP8 payload has a descriptor but no data")
    return Vp8Descriptor(
        start_of_partition=bool(first & 0x10),
        partition_index=first & 0x07,
        picture_id=picture_id,
        header_size=offset,
    )


def is_keyframe(payload: bytes, descriptor: Vp8Descriptor) -> bool:
    """Only meaningful on a frame's first packet: the VP8 header's P bit is 0 on keyframes."""
    return descriptor.starts_frame and not payload[descriptor.header_size] & 0x01


#: RFC 6386 9.1: the three bytes after a keyframe's 3-byte frame tag.
_KEYFRAME_START_CODE = b"\x9d\x01\x2a"


def keyframe_dimensions(payload: bytes) -> tuple[int, int] | None:
    """(width, height) a keyframe declares, read from the first RTP packet of the frame.

    The header is in the clear (it precedes any E2EE of the frame body), so a server or a
    receiver can refuse a "decoder bomb" (a tiny keyframe declaring a huge picture) before
    any decoder allocates for it. ``None`` for anything that is not the start of a keyframe
    with a valid start code: interframes, continuation packets, truncated or malformed
    payloads. The 2-bit scaling fields are ignored: they do not change the coded size.
    """
    # On the server's path for every video packet: a lean walk of the RFC 7741 descriptor
    # (the same rules as parse_descriptor) instead of building a Vp8Descriptor.
    if not payload or payload[0] & 0x17 != 0x10:  # S=1 and partition 0 start a frame
        return None
    offset = 1
    if payload[0] & 0x80:  # X
        if len(payload) < 3:
            return None
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: a 7- or 15-bit PictureID
            offset += 2 if payload[2] & 0x80 else 1
        if ext & 0x40:  # L
            offset += 1
        if ext & 0x30:  # T or K
            offset += 1
    header = payload[offset : offset + 10]
    if len(header) < 10 or header[0] & 0x01 or header[3:6] != _KEYFRAME_START_CODE:
        return None
    width = int.from_bytes(header[6:8], "little") & 0x3FFF
    height = int.from_bytes(header[8:10], "little") & 0x3FFF
    return width, height
