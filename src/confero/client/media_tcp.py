"""The client end of media over a WebSocket, for networks that drop UDP (issue 10).

When nothing authenticated comes back from the server's UDP media port soon after joining
(the server answers the very first keepalive with a consent challenge, so on a working
path that takes one round trip), :class:`~confero.client.media.MediaSession` opens this
link to ``/media`` on the signaling server (same host, port and TLS as the signaling URL)
and sends there the same SRTP/SRTCP datagrams, one per binary message. The server treats
the connection as one more media address: the consent check runs over it, then media
flows. Sending never blocks the event loop: a bounded queue feeds a writer task, and a
datagram that finds the queue full is dropped and counted (congestion control sees the
loss, as on UDP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from confero.protocol.rtp import MAX_PACKET_SIZE

log = logging.getLogger(__name__)

#: Seconds after opening the UDP path without anything authenticated from the server
#: before the WebSocket is tried. A working path answers in one round trip; 2 s leaves
#: room for a slow server or a lossy first packet (the keepalive repeats every second).
FALLBACK_AFTER = 2.0
#: Seconds between attempts to open the WebSocket when it cannot be opened.
STREAM_RETRY = 5.0
#: On the WebSocket, one RTCP packet this often goes over UDP instead: if the server's
#: consent challenge comes back that way (the network lets UDP through again, or it was
#: only slow at the start), the session returns to UDP.
UDP_PROBE_INTERVAL = 10.0
#: After returning to UDP, the WebSocket still receives this long (the server moves its
#: sending to UDP once the consent check there passed): make-before-break.
STREAM_LINGER = 3.0
#: Datagrams waiting for the socket: a third of a second of 1.5 Mbit/s video.
SEND_QUEUE = 128
CONNECT_TIMEOUT = 5.0
HEARTBEAT = 5.0
MEDIA_PATH = "/media"


def stream_url(signaling_url: str) -> str:
    """``ws(s)://host:port/ws`` -> ``ws(s)://host:port/media``: the same server and TLS."""
    parts = urlsplit(signaling_url)
    return urlunsplit((parts.scheme, parts.netloc, MEDIA_PATH, "", ""))


class MediaStreamLink:
    """One WebSocket carrying datagrams both ways. ``on_datagram`` runs on the loop for
    each binary message received; ``on_closed`` once, when the connection ends (reason)."""

    def __init__(
        self,
        url: str,
        on_datagram: Callable[[bytes], None],
        *,
        ssl_context: ssl.SSLContext | bool = False,
        on_closed: Callable[[str], None] | None = None,
        send_queue: int = SEND_QUEUE,
    ) -> None:
        self.url = url
        self._ssl = ssl_context
        self._on_datagram = on_datagram
        self._on_closed = on_closed
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(send_queue)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.counters: dict[str, int] = {
            "sent_packets": 0, "sent_bytes": 0, "received_packets": 0, "received_bytes": 0,
            "send_queue_full": 0, "dropped_not_binary": 0,
        }

    @property
    def open(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Raises ``ConnectionError`` when the server cannot be reached this way."""
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await asyncio.wait_for(self._http.ws_connect(
                self.url, ssl=self._ssl, heartbeat=HEARTBEAT, compress=0,
                max_msg_size=MAX_PACKET_SIZE, autoping=True), timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._http.close()
            self._http = None
            raise ConnectionError(f"cannot open {self.url}: {exc!r}") from exc
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._write())]

    def send(self, datagram: bytes) -> bool:
        """Queue one datagram; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(datagram)
        except asyncio.QueueFull:
            self.counters["send_queue_full"] += 1
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        reason = "closed by the server"
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and isinstance(msg.data, bytes):
                    self.counters["received_packets"] += 1
                    self.counters["received_bytes"] += len(msg.data)
                    try:
                        self._on_datagram(msg.data)
                    except Exception:  # one bad datagram must not end the link
                        log.exception("media datagram from the stream failed")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"error: {ws.exception()!r}"
                else:
                    self.counters["dropped_not_binary"] += 1
        finally:
            if not self._closing and self._on_closed is not None:
                self._on_closed(reason)

    async def _write(self) -> None:
        ws = self._ws
        assert ws is not None
        while True:
            datagram = await self._queue.get()
            try:
                await ws.send_bytes(datagram)
            except (ConnectionError, RuntimeError):
                return  # the reader sees the close
            self.counters["sent_packets"] += 1
            self.counters["sent_bytes"] += len(datagram)
