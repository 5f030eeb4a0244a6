"""Raw TCP connections, before HTTP: a cap per address, and a reserve of file descriptors.

A connection that never sends a request costs a file descriptor until aiohttp's idle
timeout (``keepalive_timeout``, which also runs before the first request) closes it. The
guard bounds what one address can hold at once and refuses new connections while the
process is near its descriptor limit, so the ones already open (and ``/healthz``) keep
working, and says so in one log line every few seconds instead of an error per accept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import resource
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: Descriptors kept free for the database, the media socket, logs and the like.
FD_RESERVE = 64
#: The listening socket's backlog; also how many sockets asyncio accepts in one burst.
BACKLOG = 64
#: Accept bursts that can be open before the guard has refused (and closed) any of them:
#: asyncio accepts a burst, makes the transports a loop pass later, calls connection_made
#: one more pass later, and closes an aborted socket yet another pass later.
BURSTS_IN_FLIGHT = 3
#: At most one "running low on descriptors" line per this many seconds.
LOG_INTERVAL = 10.0


def address_key(address: str) -> str:
    """Who a limit per address counts: the IPv4 address, or the /64 of an IPv6 one (one
    host usually holds a whole /64, so counting single IPv6 addresses would be no limit)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionGuard:
    """Counts raw connections per address; decides (sans-I/O) whether to take one more."""

    def __init__(self, max_per_address: int, max_total: int) -> None:
        self.max_per_address = max_per_address
        self.max_total = max_total
        self.per_address: Counter[str] = Counter()
        self.total = 0
        self.refused_per_address = 0
        self.refused_low_fds = 0
        self._logged_at = float("-inf")

    def admit(self, address: str, now: float) -> bool:
        if self.total >= self.max_total:
            self.refused_low_fds += 1
            if now - self._logged_at >= LOG_INTERVAL:
                self._logged_at = now
                log.error(
                    "running low on file descriptors: %d connections open, the limit is %d "
                    "(ulimit -n %d); refusing new connections until some close. Raise "
                    "'ulimit -n' or lower --max-sockets-per-address",
                    self.total, self.max_total, fd_limit())
            return False
        if self.per_address[address] >= self.max_per_address:
            self.refused_per_address += 1
            return False
        self.per_address[address] += 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]

    def note_accept_failure(self, now: float) -> None:
        """The kernel refused an accept (EMFILE and kin): one line, not a traceback each."""
        self.refused_low_fds += 1
        if now - self._logged_at >= LOG_INTERVAL:
            self._logged_at = now
            log.error("out of file descriptors (ulimit -n %d): new connections wait. Raise "
                      "'ulimit -n' or lower --max-sockets-per-address", fd_limit())


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 32


def connection_budget(backlog: int = BACKLOG) -> int:
    """Connections the process can take now without running out of descriptors.

    asyncio accepts sockets in bursts of ``backlog`` before any of them reaches the guard,
    so the descriptors of a few bursts are kept free besides the reserve."""
    limit = fd_limit()
    if limit == resource.RLIM_INFINITY:
        return 1 << 20
    return max(8, limit - open_fds() - FD_RESERVE - BURSTS_IN_FLIGHT * backlog)


def raise_fd_limit(target: int = 65536) -> tuple[int, int]:
    """Raise the soft descriptor limit towards the hard one (the usual soft 1024 is what
    idle sockets exhausted); returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, wanted
    return soft, soft


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol once the guard has admitted the connection."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = address_key(str(peer[0])) if isinstance(peer, tuple) and peer else "?"
        if not self._guard.admit(address, asyncio.get_running_loop().time()):
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return
        self._address = address
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return
        self._guard.release(self._address)
        self._address = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._address is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass the :class:`ConnectionGuard` first."""

    __slots__ = ("guard",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self.guard
        factory: Callable[[], asyncio.Protocol] = lambda: _Guarded(server(), guard)  # noqa: E731
        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=BACKLOG,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def install_accept_error_handler(loop: asyncio.AbstractEventLoop, guard: ConnectionGuard
                                 ) -> None:
    """asyncio reports EMFILE on accept through the loop's exception handler, with a
    traceback every second: turn that into the guard's single line."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" in str(context.get("message", "")):
            guard.note_accept_failure(loop.time())
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
