"""The asyncio shell of the media plane: one UDP socket and the 20 ms mixing clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from confero.netutil import arrival_time, enable_receive_timestamps, enlarge_socket_buffers
from confero.pacing import Pacer
from confero.server.media_router import STREAM_HOST, Address, Datagram, MediaRouter
from confero.server.media_ws import MediaStreams
from confero.server.stun import StunResponder, is_stun

log = logging.getLogger(__name__)

MIX_INTERVAL = 0.020
#: Media arrives in bursts (a keyframe is a dozen packets, every publisher's frame lands at
#: once): a few MiB of socket buffer ride out a busy mixing tick without kernel drops.
SOCKET_BUFFER = 4 * 1024 * 1024


class MediaServer(asyncio.DatagramProtocol):
    def __init__(self, router: MediaRouter) -> None:
        self.router = router
        self.transport: asyncio.DatagramTransport | None = None
        self._clock: asyncio.Task[None] | None = None
        self._pacer: Pacer | None = None
        #: STUN binding requests share the port (RFC 7983 demux); its counters are the
        #: router's, so /metrics shows them with the other media events.
        self.stun = StunResponder(router.counters)
        self._sock: socket.socket | None = None
        #: Clients whose UDP is blocked send the same datagrams over WebSockets (``/media``
        #: on the signaling port, mounted by the HTTP shell); they have ``("tcp", n)``
        #: addresses and what the router sends there goes through these connections.
        self.streams = MediaStreams(self.stream_datagram, router.addresses_in_use)

    @classmethod
    async def start(cls, router: MediaRouter, host: str, port: int) -> MediaServer:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: cls(router), local_addr=(host, port)
        )
        protocol.transport = transport
        protocol._sock = transport.get_extra_info("socket")
        enable_receive_timestamps(protocol._sock)
        router.port = transport.get_extra_info("sockname")[1]
        enlarge_socket_buffers(transport, SOCKET_BUFFER)
        protocol._clock = asyncio.create_task(protocol._run_clock())
        return protocol

    @property
    def clock_overruns(self) -> int:
        """How often the mixing clock fell more than five ticks behind and skipped ahead."""
        return self._pacer.resyncs if self._pacer is not None else 0

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        await self.streams.close()
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            if is_stun(data):  # RFC 7983: STUN shares the port (issue 10)
                answer = self.stun.handle(data, addr[:2])
                if answer is not None and self.transport is not None:
                    self.transport.sendto(answer, addr)
                return
            self._send(self.router.handle_datagram(
                data, addr[:2], time.monotonic(), arrival_time(self._sock)))
        except Exception:  # one bad packet must never stop the media plane
            self.router.counters["internal_errors"] += 1
            log.exception("media packet from %s failed", addr)

    def stream_datagram(self, data: bytes, address: Address) -> None:
        """A datagram that came over a media WebSocket (no STUN there: no P2P over TCP)."""
        try:
            self._send(self.router.handle_datagram(data, address, time.monotonic()))
        except Exception:
            self.router.counters["internal_errors"] += 1
            log.exception("media packet from %s failed", address)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. a receiver that went away) are normal on UDP.
        self.router.counters["socket_errors"] += 1

    def _send(self, datagrams: list[Datagram]) -> None:
        transport = self.transport
        if transport is None:
            return
        for payload, address in datagrams:
            if address[0] == STREAM_HOST:
                self.streams.send(payload, address)
            else:
                transport.sendto(payload, address)

    async def _run_clock(self) -> None:
        """Tick every 20 ms on a drift-free schedule; resynchronise after a long stall."""
        self._pacer = Pacer(MIX_INTERVAL)
        while True:
            await self._pacer.wait()
            try:
                self._send(self.router.tick(time.monotonic()))
            except Exception:
                self.router.counters["internal_errors"] += 1
                log.exception("mixing tick failed")
