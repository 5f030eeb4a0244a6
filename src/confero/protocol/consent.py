"""Media consent check: an address gets media only after it proved it receives it.

Anyone holding a participant's keys can send authenticated packets with a forged source
address; if the server simply sent media to the source of the last authenticated packet,
that would turn it into a reflector aimed at any address (issue 7, item 4). So, as ICE
consent freshness does (RFC 7675), the server sends a random nonce to a new address and
moves the participant's media there only when the nonce comes back from that address.
Only the address's real owner sees the nonce: it travels SRTCP-encrypted, and a forger
that spoofs a victim's address never receives what is sent to it.

On the wire both messages are RTCP APP packets (RFC 3550 6.7, packet type 204) named
``CNSN``, carrying a 16-byte nonce; subtype 0 is the server's challenge, subtype 1 the
client's echo. Both are SRTCP-protected with the keys of the participant concerned.
Pure functions, no I/O: the server's router and the client's media endpoint call them.
"""

from __future__ import annotations

import hmac
import secrets
import struct

from confero.protocol import rtcp

APP = 204
NAME = b"CNSN"
SUBTYPE_CHALLENGE = 0
SUBTYPE_RESPONSE = 1
NONCE_SIZE = 16


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def _pack(subtype: int, ssrc: int, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a consent nonce has {NONCE_SIZE} bytes, got {len(nonce)}")
    body = struct.pack("!I", ssrc) + NAME + nonce
    return struct.pack("!BBH", 0x80 | subtype, APP, len(body) // 4) + body


def _nonce_of(packet: rtcp.RtcpPacket, subtype: int) -> bytes | None:
    if (
        not isinstance(packet, rtcp.UnknownRtcp)
        or packet.packet_type != APP
        or packet.count != subtype
        or len(packet.body) != 8 + NONCE_SIZE
        or packet.body[4:8] != NAME
    ):
        return None
    return packet.body[8:]


def make_challenge(sender_ssrc: int, nonce: bytes) -> bytes:
    """The plain RTCP challenge the server protects and sends to a candidate address."""
    return _pack(SUBTYPE_CHALLENGE, sender_ssrc, nonce)


def answer(packet: rtcp.RtcpPacket, sender_ssrc: int) -> bytes | None:
    """The plain RTCP echo a client sends back for a challenge; ``None`` if ``packet`` is
    not a challenge. ``sender_ssrc`` is one of the client's own SSRCs, so the server can
    attribute and authenticate the echo like any other packet of the client's."""
    nonce = _nonce_of(packet, SUBTYPE_CHALLENGE)
    return None if nonce is None else _pack(SUBTYPE_RESPONSE, sender_ssrc, nonce)


def verify(packet: rtcp.RtcpPacket, nonce: bytes) -> bool:
    """True if ``packet`` is the echo of the challenge that carried ``nonce``."""
    echoed = _nonce_of(packet, SUBTYPE_RESPONSE)
    return echoed is not None and hmac.compare_digest(echoed, nonce)


def is_response(packet: rtcp.RtcpPacket) -> bool:
    """Any consent echo, valid or not (the router does not treat it as feedback)."""
    return _nonce_of(packet, SUBTYPE_RESPONSE) is not None
