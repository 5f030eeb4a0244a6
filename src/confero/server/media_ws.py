"""Media over a WebSocket, for clients whose UDP cannot reach the media port (issue 10).

Corporate and hotel networks often drop all UDP but let HTTPS through. Such a client opens
a second WebSocket, ``/media`` on the signaling port (so it gets the server's TLS for
free), and sends there exactly the SRTP/SRTCP datagrams it would have sent over UDP, one
per binary message. The router does not know the difference: each connection gets a
synthetic address ``("tcp", n)`` and its datagrams go through
:meth:`MediaRouter.handle_datagram` like any other. Nothing about the WebSocket itself is
trusted: a datagram is attributed by its SSRC and authenticated with its owner's SRTP key,
and the router sends media to the connection only after it answered the usual consent
check there, so the connection needs no login of its own and a stranger's connection
carries nothing.

Sending never blocks the media loop: each connection has a bounded queue that a writer
task drains into the socket; when the peer's TCP window is full the queue fills and
further datagrams are dropped and counted, which the router's congestion control then
sees as loss, exactly as on a congested UDP path. A connection whose address no
participant uses (no packet authenticated there, or its owner left) is closed after
``idle_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from confero.protocol.rtp import MAX_PACKET_SIZE
from confero.server.media_router import STREAM_HOST, Address

log = logging.getLogger(__name__)

#: Datagrams waiting for one connection's socket: about 1/3 s of a 1.5 Mbit/s downlink.
SEND_QUEUE = 128
#: WebSocket ping interval: a connection that stops answering is closed (the router's
#: consent freshness would stop sending to it anyway, this frees the socket).
HEARTBEAT = 5.0
#: Media WebSockets open at once, per remote address and in all.
MAX_PER_ADDRESS = 16
MAX_STREAMS = 4096
#: A connection no participant uses is closed after this many seconds.
IDLE_TIMEOUT = 15.0
SWEEP_INTERVAL = 5.0

__all__ = ["STREAM_HOST", "MediaStreams"]


@dataclass
class _Stream:
    ws: web.WebSocketResponse
    remote: str
    opened_at: float
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))
    used_at: float = 0.0


class MediaStreams:
    """The ``/media`` WebSocket endpoint. ``receive(datagram, address)`` hands a datagram
    to the media plane; ``in_use()`` returns the addresses the router still sends to or
    is checking (for closing idle connections)."""

    def __init__(
        self,
        receive: Callable[[bytes, Address], None],
        in_use: Callable[[], set[Address]],
        *,
        send_queue: int = SEND_QUEUE,
        idle_timeout: float = IDLE_TIMEOUT,
        max_per_address: int = MAX_PER_ADDRESS,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self._receive = receive
        self._in_use = in_use
        self.send_queue = send_queue
        self.idle_timeout = idle_timeout
        self.max_per_address = max_per_address
        self.max_streams = max_streams
        self._streams: dict[Address, _Stream] = {}
        self._per_address: Counter[str] = Counter()
        self._next_id = 1
        self._sweeper: asyncio.Task[None] | None = None
        #: exported in /metrics as confero_media_stream_events_total{event=...}
        self.counters: Counter[str] = Counter(dict.fromkeys((
            "opened", "closed", "refused", "received_packets", "received_bytes",
            "sent_packets", "sent_bytes", "send_queue_full", "dropped_not_binary",
            "dropped_no_stream", "closed_idle"), 0))

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------------ aiohttp side

    async def handle(self, request: web.Request) -> web.StreamResponse:
        remote = request.remote or "?"
        if (len(self._streams) >= self.max_streams
                or self._per_address[remote] >= self.max_per_address):
            self.counters["refused"] += 1
            raise web.HTTPTooManyRequests(text="too many media connections\n")
        # SRTP is incompressible: no permessage-deflate; a frame larger than a datagram
        # can be is refused by aiohttp (close 1009)
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_PACKET_SIZE,
                                   compress=False)
        await ws.prepare(request)
        address: Address = (STREAM_HOST, self._next_id)
        self._next_id += 1
        now = time.monotonic()
        stream = _Stream(ws, remote, now, asyncio.Queue(self.send_queue), used_at=now)
        self._streams[address] = stream
        self._per_address[remote] += 1
        self.counters["opened"] += 1
        self._ensure_sweeper()
        writer = asyncio.create_task(self._write(stream))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and isinstance(msg.data, bytes):
                    self.counters["received_packets"] += 1
                    self.counters["received_bytes"] += len(msg.data)
                    self._receive(msg.data, address)
                elif msg.type == WSMsgType.ERROR:
                    log.info("media stream %s failed: %s", address, ws.exception())
                else:
                    self.counters["dropped_not_binary"] += 1
        finally:
            self._streams.pop(address, None)
            self._per_address[remote] -= 1
            if self._per_address[remote] <= 0:
                del self._per_address[remote]
            self.counters["closed"] += 1
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    async def _write(self, stream: _Stream) -> None:
        ws, queue = stream.ws, stream.queue
        while True:
            payload = await queue.get()
            try:
                await ws.send_bytes(payload)
            except (ConnectionError, RuntimeError):
                return  # the reader sees the close and cleans up
            self.counters["sent_packets"] += 1
            self.counters["sent_bytes"] += len(payload)

    # ------------------------------------------------------------------ media plane side

    def send(self, payload: bytes, address: Address) -> None:
        """Queue a datagram for the connection behind ``address``; never blocks."""
        stream = self._streams.get(address)
        if stream is None:
            self.counters["dropped_no_stream"] += 1
            return
        try:
            stream.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.counters["send_queue_full"] += 1

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):
                await stream.ws.close(code=1001, message=b"server stopping")

    # ------------------------------------------------------------------ idle connections

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while self._streams:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep(time.monotonic())
            except Exception:
                log.exception("media stream sweep failed")

    async def sweep(self, now: float) -> None:
        """Close connections that no participant has used for ``idle_timeout``."""
        in_use = self._in_use()
        idle: list[_Stream] = []
        for address, stream in self._streams.items():
            if address in in_use:
                stream.used_at = now
            elif now - stream.used_at > self.idle_timeout:
                idle.append(stream)
        for stream in idle:
            self.counters["closed_idle"] += 1
            with contextlib.suppress(Exception):
                await stream.ws.close(code=1008, message=b"no media on this connection")
