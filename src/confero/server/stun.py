"""STUN binding server (RFC 8489) on the media port, sans-I/O.

Clients learn their public address (a server-reflexive ICE candidate) from the same
server that carries their media, so peer-to-peer needs no third party. The media port
carries RTP/RTCP and STUN side by side; RFC 7983 tells them apart by the first byte:
0-3 is STUN, 128-191 is RTP/RTCP. Only unauthenticated binding requests are answered
(no MESSAGE-INTEGRITY: the server knows no ICE passwords); the answer carries
XOR-MAPPED-ADDRESS and FINGERPRINT. Anything else is dropped and counted.

The message codec is aioice's (``aioice.stun``); only the decision is here.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from aioice import stun

Address = tuple[str, int]

#: Largest STUN message read; a binding request is 20 bytes plus a few attributes.
MAX_STUN_SIZE: Final = 548
SOFTWARE: Final = "confero"


def is_stun(data: bytes) -> bool:
    """RFC 7983 demultiplexing: STUN's first byte is 0..3 (and it has the magic cookie)."""
    return len(data) >= 20 and data[0] < 4 and data[4:8] == b"\x21\x12\xa4\x42"


class StunResponder:
    """Answers binding requests with the address they came from."""

    def __init__(self, counters: Counter[str] | None = None) -> None:
        self.counters: Counter[str] = counters if counters is not None else Counter()

    def handle(self, data: bytes, address: Address) -> bytes | None:
        """The response to send back to ``address``, or None (dropped, counted)."""
        if len(data) > MAX_STUN_SIZE:
            self.counters["stun_dropped_oversize"] += 1
            return None
        try:
            request = stun.parse_message(data)
        except (ValueError, KeyError, IndexError):
            self.counters["stun_dropped_malformed"] += 1
            return None
        except Exception:  # aioice's parser raises others on some hostile inputs
            self.counters["stun_dropped_malformed"] += 1
            return None
        if request.message_method != stun.Method.BINDING or (
            request.message_class != stun.Class.REQUEST
        ):
            # indications (keepalives) and responses need no answer
            self.counters["stun_ignored"] += 1
            return None
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = (address[0], address[1])
        response.attributes["SOFTWARE"] = SOFTWARE
        response.add_fingerprint()
        self.counters["stun_answered"] += 1
        return bytes(response)
