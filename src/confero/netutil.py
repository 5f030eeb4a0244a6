"""Socket helpers shared by the server's and the client's media transports."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import time

#: Linux: the kernel's receive time of the last datagram read from a socket (timeval).
SIOCGSTAMP = 0x8906
#: An arrival is never placed further back than this (a clock step, a stale stamp).
MAX_RECEIVE_AGE = 1.0


def enlarge_socket_buffers(transport: asyncio.BaseTransport, size: int) -> None:
    """Ask for ``size`` bytes of send and receive buffer (best effort: the kernel caps it
    at net.core.[rw]mem_max). Media comes in bursts; a small buffer drops them."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def enable_receive_timestamps(sock: socket.socket | None) -> None:
    """Have the kernel stamp every datagram as it arrives (read by :func:`arrival_time`).
    The first SIOCGSTAMP on a socket turns stamping on (it fails with ENOENT then, as no
    datagram has a stamp yet). Not SO_TIMESTAMP: with it, the stamp goes only into
    ancillary data, which asyncio's recvfrom never reads, and SIOCGSTAMP finds none."""
    if sock is not None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(sock.fileno(), SIOCGSTAMP, bytes(16))


def arrival_time(sock: socket.socket | None) -> float:
    """When the kernel received the datagram just read from ``sock``, on the monotonic
    clock. Congestion control measures one-way delay variation from arrival times; taken
    when a busy event loop gets round to a packet, they would show the machine's load as
    network queueing and pull the estimate down. The kernel's stamp does not."""
    now = time.monotonic()
    if sock is None:
        return now
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCGSTAMP, bytes(16))
    except OSError:
        return now
    seconds, micros = struct.unpack("qq", raw)
    if seconds == 0:  # not stamped (timestamping starts with the first call)
        return now
    age = time.time() - (seconds + micros / 1e6)
    return float(now - min(max(age, 0.0), MAX_RECEIVE_AGE))
