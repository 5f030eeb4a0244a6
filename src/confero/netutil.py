"""Socket helpers shared by the server's and the client's media transports."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def enlarge_socket_buffers(transport: asyncio.BaseTransport, size: int) -> None:
    """Ask for ``size`` bytes of send and receive buffer (best effort: the kernel caps it
    at net.core.[rw]mem_max). Media comes in bursts; a small buffer drops them."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)
