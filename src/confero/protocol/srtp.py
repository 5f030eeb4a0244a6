"""SRTP/SRTCP protection (RFC 3711) for one hop, over libsrtp (pylibsrtp).

Each participant has two master keys, handed out over the (TLS) signaling channel at
join: ``key_up`` protects what the client sends to the server, ``key_down`` what the
server sends to the client. The server decrypts, routes, and re-protects per receiver:
hop-by-hop protection, not end-to-end (that is SFrame's job, later).
"""

from __future__ import annotations

import base64
import contextlib
import secrets

import pylibsrtp
from pylibsrtp import Policy, Session

PROFILE = "AES_CM_128_HMAC_SHA1_80"
KEY_LENGTH = 30  # 16-byte AES key + 14-byte salt
#: SRTP adds a 10-byte auth tag to RTP, and a 4-byte index plus the tag to RTCP.
MAX_OVERHEAD = 14
#: Replay window in packets: as deep as the NACK histories (512 on the server, 1024 in
#: clients), so a retransmission is not refused as "too old" (libsrtp's default is 128).
REPLAY_WINDOW = 1024


class SrtpError(ValueError):
    """Authentication, replay or format failure: the packet must be dropped."""


def new_master_key() -> bytes:
    return secrets.token_bytes(KEY_LENGTH)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str) -> bytes:
    key = base64.b64decode(text, validate=True)
    if len(key) != KEY_LENGTH:
        raise SrtpError(f"an SRTP master key has {KEY_LENGTH} bytes, got {len(key)}")
    return key


class SrtpContext:
    """Protects with ``tx_key``, unprotects with ``rx_key`` (replay-protected)."""

    def __init__(self, tx_key: bytes, rx_key: bytes) -> None:
        tx_policy = Policy(key=tx_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        tx_policy.allow_repeat_tx = True  # retransmissions resend the same sequence number
        tx_policy.window_size = REPLAY_WINDOW
        self._tx = Session(policy=tx_policy)
        rx_policy = Policy(key=rx_key, ssrc_type=Policy.SSRC_ANY_INBOUND)
        rx_policy.window_size = REPLAY_WINDOW
        self._rx = Session(policy=rx_policy)

    def forget(self, ssrc: int) -> None:
        """Drop the receive state of a stream that ended (a participant left)."""
        with contextlib.suppress(pylibsrtp.Error):
            self._rx.remove_stream(ssrc)

    def protect_rtp(self, packet: bytes) -> bytes:
        try:
            return bytes(self._tx.protect(packet))
        except pylibsrtp.Error as exc:
            raise SrtpError(str(exc)) from exc

    def protect_rtcp(self, packet: bytes) -> bytes:
        try:
            return bytes(self._tx.protect_rtcp(packet))
        except pylibsrtp.Error as exc:
            raise SrtpError(str(exc)) from exc

    def unprotect_rtp(self, packet: bytes) -> bytes:
        try:
            return bytes(self._rx.unprotect(packet))
        except pylibsrtp.Error as exc:
            raise SrtpError(str(exc)) from exc

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        try:
            return bytes(self._rx.unprotect_rtcp(packet))
        except pylibsrtp.Error as exc:
            raise SrtpError(str(exc)) from exc
