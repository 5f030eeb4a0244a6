"""VP8 RTP payload format (RFC 7741): packetizer and payload-descriptor parser.

Every packet carries a 15-bit PictureID so a receiver can tell frames apart and notice a
whole lost frame even when RTP timestamps repeat. Temporally layered streams also carry
TL0PICIDX and the TID/Y byte on every packet, so a forwarder can decide on any packet of a
frame, even when the frame's first packet is late.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest RTP payload (descriptor included) we emit: leaves room for the RTP header,
#: extensions and SRTP's auth tag inside a 1280-byte IPv6 minimum MTU.
MAX_PAYLOAD = 1200
_DESCRIPTOR_SIZE = 4  # X-byte, I-byte, and 2 bytes of 15-bit PictureID
_LAYERED_DESCRIPTOR_SIZE = 6  # ... plus TL0PICIDX and the TID/Y/KEYIDX byte
_KEYFRAME_START_CODE = b"\x9d\x01\x2a"


class Vp8Error(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    start_of_partition: bool
    partition_index: int
    picture_id: int | None
    header_size: int
    #: Temporal layering (RFC 7741 L/T/K bits); None when the packet does not carry them.
    tl0picidx: int | None = None
    tid: int | None = None
    layer_sync: bool = False
    key_index: int | None = None
    #: N bit: the frame is not used as a reference by any other frame.
    non_reference: bool = False
    #: Offset of the 15-bit PictureID (or 7-bit) field, for in-place rewriting.
    picture_id_offset: int | None = None
    picture_id_bits: int = 0
    tl0picidx_offset: int | None = None

    @property
    def starts_frame(self) -> bool:
        return self.start_of_partition and self.partition_index == 0


def packetize(
    frame: bytes,
    picture_id: int,
    max_payload: int = MAX_PAYLOAD,
    temporal: tuple[int, bool, int] | None = None,
    key_index: int | None = None,
) -> list[bytes]:
    """Split one encoded frame into RTP payloads of at most ``max_payload`` bytes.

    ``temporal`` is (TID, layer sync, TL0PICIDX) for a temporally layered stream; each packet
    then carries them. ``key_index`` (KEYIDX, 5 bits) is optional.
    """
    if not frame:
        raise Vp8Error("cannot packetize an empty frame")
    pid = picture_id & 0x7FFF
    ext = 0x80  # I: PictureID present
    tail = bytes([0x80 | (pid >> 8), pid & 0xFF])  # M=1, 15-bit PictureID
    if temporal is not None or key_index is not None:
        if temporal is not None:
            tid, sync, tl0picidx = temporal
            if not 0 <= tid <= 3:
                raise Vp8Error(f"TID {tid} does not fit in 2 bits")
            ext |= 0x60  # L and T
            tail += bytes([tl0picidx & 0xFF])
            tidbyte = (tid << 6) | (0x20 if sync else 0)
        else:
            tidbyte = 0
        if key_index is not None:
            ext |= 0x10  # K
            tidbyte |= key_index & 0x1F
        tail += bytes([tidbyte])
    header = bytes([ext]) + tail
    chunk = max_payload - 1 - len(header)
    if chunk <= 0:
        raise Vp8Error("max_payload leaves no room for data")
    payloads = []
    for offset in range(0, len(frame), chunk):
        first = 0x90 if offset == 0 else 0x80  # X=1, S=1 on the frame's first packet
        payloads.append(bytes([first]) + header + frame[offset : offset + chunk])
    return payloads


def parse_descriptor(payload: bytes) -> Vp8Descriptor:
    if not payload:
        raise Vp8Error("empty VP8 payload")
    first = payload[0]
    offset = 1
    picture_id = tl0picidx = tid = key_index = pid_offset = tl0_offset = None
    pid_bits = 0
    layer_sync = False
    if first & 0x80:  # X: extension byte present
        if len(payload) < 2:
            raise Vp8Error("truncated VP8 descriptor")
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: PictureID
            if offset >= len(payload):
                raise Vp8Error("truncated PictureID")
            pid_offset = offset
            if payload[offset] & 0x80:
                if offset + 1 >= len(payload):
                    raise Vp8Error("truncated 15-bit PictureID")
                picture_id = ((payload[offset] & 0x7F) << 8) | payload[offset + 1]
                pid_bits = 15
                offset += 2
            else:
                picture_id = payload[offset]
                pid_bits = 7
                offset += 1
        if ext & 0x40:  # L: TL0PICIDX
            if offset >= len(payload):
                raise Vp8Error("truncated TL0PICIDX")
            tl0_offset = offset
            tl0picidx = payload[offset]
            offset += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            if offset >= len(payload):
                raise Vp8Error("truncated TID/KEYIDX byte")
            byte = payload[offset]
            if ext & 0x20:
                tid = byte >> 6
                layer_sync = bool(byte & 0x20)
            if ext & 0x10:
                key_index = byte & 0x1F
            offset += 1
    if offset >= len(payload):
        raise Vp8Error("VP8 payload has a descriptor but no data")
    return Vp8Descriptor(
        start_of_partition=bool(first & 0x10),
        partition_index=first & 0x07,
        picture_id=picture_id,
        header_size=offset,
        tl0picidx=tl0picidx,
        tid=tid,
        layer_sync=layer_sync,
        key_index=key_index,
        non_reference=bool(first & 0x20),
        picture_id_offset=pid_offset,
        picture_id_bits=pid_bits,
        tl0picidx_offset=tl0_offset,
    )


def rewrite_descriptor(
    payload: bytes,
    descriptor: Vp8Descriptor,
    picture_id: int | None = None,
    tl0picidx: int | None = None,
) -> bytes:
    """The payload with its PictureID and/or TL0PICIDX replaced in place (same size).

    A forwarder that drops frames renumbers pictures so each receiver sees no gaps.
    """
    out = bytearray(payload)
    if picture_id is not None and descriptor.picture_id_offset is not None:
        at = descriptor.picture_id_offset
        if descriptor.picture_id_bits == 15:
            out[at] = 0x80 | ((picture_id >> 8) & 0x7F)
            out[at + 1] = picture_id & 0xFF
        else:
            out[at] = picture_id & 0x7F
    if tl0picidx is not None and descriptor.tl0picidx_offset is not None:
        out[descriptor.tl0picidx_offset] = tl0picidx & 0xFF
    return bytes(out)


def is_keyframe(payload: bytes, descriptor: Vp8Descriptor) -> bool:
    """Only meaningful on a frame's first packet: the VP8 header's P bit is 0 on keyframes."""
    return descriptor.starts_frame and not payload[descriptor.header_size] & 0x01


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
