"""The aiohttp shell around :class:`SignalingCore`: sockets, the clock, HTTP endpoints.

Each WebSocket gets a bounded outbox drained by its own writer task, so one slow reader
never delays the others: when its outbox holds more than its byte budget (or frame count)
it is disconnected with close code 4008 (counted as a slow consumer), its queued frames are
dropped at once, and the socket is aborted if the close cannot get through in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import json
import logging
import signal
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from confero import __version__
from confero.protocol import signaling as sig
from confero.server.core import Action, Close, CoreSettings, Send, SignalingCore
from confero.server.guard import (
    ConnectionGuard,
    GuardedSite,
    address_key,
    connection_budget,
    install_accept_error_handler,
    raise_fd_limit,
)
from confero.server.media_app import MediaServer
from confero.server.media_router import MediaRouter
from confero.server.media_ws import MediaStreams
from confero.server.metrics import make_registry
from confero.server.registry import MeetingRegistry
from confero.server.store import Store

log = logging.getLogger(__name__)

#: Frames above this are refused by aiohttp itself (connection closed with 1009); frames
#: between MAX_MESSAGE_BYTES and this get a ``too_large`` error and the connection lives on.
HARD_FRAME_LIMIT = 256 * 1024
OUTBOX_LIMIT = 1024
#: Bytes a connection may have queued and unsent before it counts as a slow consumer.
OUTBOX_BYTES = 4 * 1024 * 1024
#: WebSocket close code for a client that does not read fast enough (see docs/protocol.md).
CLOSE_TOO_SLOW = 4008
TICK_INTERVAL = 0.2


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8750
    data_dir: Path = Path("data")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    heartbeat: float = 2.0
    empty_grace: float = 30.0
    rate: float = 20.0
    burst: float = 40.0
    max_connections_per_address: int = 256
    media_port: int = 8751
    #: Address clients should send media to; empty: the host they used for signaling.
    media_host: str = ""
    #: TURN relay for peer-to-peer media (coturn, use-auth-secret); empty: none
    turn_url: str = ""
    turn_secret: str = ""
    #: Largest picture a VP8 keyframe may declare (either way round); larger are dropped.
    max_video_size: tuple[int, int] = (1920, 1080)
    outbox_bytes: int = OUTBOX_BYTES
    #: Seconds a TCP connection may sit idle without an HTTP request (also before the first).
    idle_timeout: float = 15.0
    #: Raw TCP connections (HTTP or WebSocket) one address may hold open at once.
    max_sockets_per_address: int = 300
    max_participants: int = 50
    chat_retention_days: float = 30.0
    max_chat_per_meeting: int = 10_000
    max_chat_per_sender: int = 2_000


CLOSE_TIMEOUT = 2.0  # a close handshake that takes longer is cut by aborting the socket


@dataclass
class _Peer:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    outbox: asyncio.Queue[bytes | None]  # None: close after what is queued
    close_code: int = WSCloseCode.GOING_AWAY
    close_reason: str = ""
    #: Being torn down: no more frames are queued for it.
    closing: bool = False
    #: Bytes in ``outbox`` not yet handed to the socket.
    queued_bytes: int = 0

    def enqueue(self, data: bytes, budget: int) -> bool:
        """Queue a frame; False when the peer is over its budget (it has stopped reading)."""
        if self.queued_bytes + len(data) > budget or self.outbox.full():
            return False
        self.queued_bytes += len(data)
        self.outbox.put_nowait(data)
        return True

    def discard_queued(self) -> None:
        """Drop what is queued so its memory is returned now, not when the socket dies."""
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.queued_bytes = 0

    async def close(self, code: int, reason: str) -> None:
        """Close politely, but never wait on a peer that stopped reading."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()),
                                   CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError):
            self.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class SignalingServer:
    def __init__(
        self,
        core: SignalingCore,
        heartbeat: float,
        media: MediaRouter | None = None,
        max_per_address: int = 256,
        outbox_bytes: int = OUTBOX_BYTES,
    ) -> None:
        self.core = core
        self.media = media
        self.heartbeat = heartbeat
        #: Open WebSockets per remote address: the per-connection rate limit means little
        #: if one host may open connections without end.
        self.max_per_address = max_per_address
        self.outbox_bytes = outbox_bytes
        self._per_address: Counter[str] = Counter()
        self._peers: dict[int, _Peer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.shell_counters = {"slow_consumers_total": 0, "binary_frames_total": 0,
                               "refused_connections_total": 0}
        #: Set by ``serve`` when raw connections pass a guard (its refusals are exported).
        self.guard: ConnectionGuard | None = None
        #: Set by ``serve``: media WebSockets of clients whose UDP is blocked (counters).
        self.media_streams: MediaStreams | None = None
        self.metrics = make_registry(core, self._counters, media)
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/", self._index),
                web.get("/ws", self._websocket),
                web.get("/api/meetings", self._api_meetings),
                web.get("/healthz", self._healthz),
                web.get("/metrics", self._metrics),
            ]
        )
        self.app.on_startup.append(self._start_ticker)
        self.app.on_shutdown.append(self._close_all)

    def _counters(self) -> dict[str, int]:
        counters = dict(self.shell_counters)
        if self.guard is not None:
            counters["refused_sockets_per_address_total"] = self.guard.refused_per_address
            counters["refused_sockets_low_fds_total"] = self.guard.refused_low_fds
        if self.media_streams is not None:
            for event, value in self.media_streams.counters.items():
                counters[f"media_stream_{event}_total"] = value
        return counters

    # ------------------------------------------------------------------ WebSocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        address = address_key(request.remote or "?")
        if self._per_address[address] >= self.max_per_address:
            self.shell_counters["refused_connections_total"] += 1
            raise web.HTTPTooManyRequests(
                text=f"too many connections from {address} "
                f"(at most {self.max_per_address})\n")
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat, max_msg_size=HARD_FRAME_LIMIT, decode_text=False
        )
        await ws.prepare(request)
        return await self._serve(ws, request, address)

    async def _serve(self, ws: web.WebSocketResponse, request: web.Request, address: str
                     ) -> web.StreamResponse:
        self._per_address[address] += 1
        conn_id = self.core.open_connection(time.monotonic(), address)
        peer = _Peer(ws, request.transport, asyncio.Queue(OUTBOX_LIMIT))
        self._peers[conn_id] = peer
        writer = asyncio.create_task(self._write(peer))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and isinstance(
                    msg.data, (bytes, str)
                ):
                    if msg.type == WSMsgType.BINARY:
                        self.shell_counters["binary_frames_total"] += 1
                    self._apply(self.core.handle(conn_id, msg.data, time.monotonic()))
                elif msg.type == WSMsgType.ERROR:
                    log.info("connection %d failed: %s", conn_id, ws.exception())
        finally:
            self._per_address[address] -= 1  # first: /healthz then tells the truth
            if self._per_address[address] <= 0:
                del self._per_address[address]
            self._peers.pop(conn_id, None)
            writer.cancel()
            try:
                self._apply(self.core.close_connection(conn_id, time.monotonic()))
            finally:
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        return ws

    async def _write(self, peer: _Peer) -> None:
        while True:
            data = await peer.outbox.get()
            if data is not None:
                peer.queued_bytes -= len(data)
            if data is None:
                await peer.close(peer.close_code, peer.close_reason)
                return
            try:
                await peer.ws.send_frame(data, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return  # the reader side sees the close and cleans up

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                for conn_id in action.conn_ids:
                    peer = self._peers.get(conn_id)
                    if peer is None or peer.closing:
                        continue
                    if not peer.enqueue(action.data, self.outbox_bytes):
                        self._drop_slow(conn_id, peer)
            elif isinstance(action, Close):
                peer = self._peers.get(action.conn_id)
                if peer is not None:
                    self._close_soon(peer, action.code, action.reason)

    def _drop_slow(self, conn_id: int, peer: _Peer) -> None:
        """It stopped reading: free its queue now, say why if it can still hear it, and
        abort the socket if the close cannot get through (a polite close could wait
        forever)."""
        self.shell_counters["slow_consumers_total"] += 1
        log.info("connection %d is too slow to read (over %d queued bytes); dropping it",
                 conn_id, self.outbox_bytes)
        peer.discard_queued()
        self._close_soon(peer, CLOSE_TOO_SLOW, "too slow: not reading what the server sends")
        peer.closing = True
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, peer.abort)

    def _close_soon(self, peer: _Peer, code: int, reason: str) -> None:
        """Close after what is already queued has been sent."""
        peer.close_code, peer.close_reason = code, reason
        try:
            peer.outbox.put_nowait(None)
        except asyncio.QueueFull:
            peer.abort()

    # ------------------------------------------------------------------ lifecycle

    async def _start_ticker(self, app: web.Application) -> None:
        task = asyncio.create_task(self._tick_forever())
        self._tasks.add(task)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                self._apply(self.core.tick(time.monotonic()))
            except Exception:
                log.exception("registry tick failed")

    async def _close_all(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(
            *(peer.close(WSCloseCode.GOING_AWAY, "server shutting down")
              for peer in list(self._peers.values()))
        )

    # ------------------------------------------------------------------ HTTP

    async def _api_meetings(self, request: web.Request) -> web.Response:
        meetings = self.core.registry.open_meetings()
        return web.Response(
            body=sig.encode(sig.MeetingsResult(meetings)), content_type="application/json"
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self.core.store_problem()
        return web.json_response(
            {
                "status": "ok" if problem is None else "failing",
                "store": "ok" if problem is None else problem,
                "version": __version__,
                "meetings": len(self.core.registry.open_meetings()),
                "connections": self.core.connection_count(),
            },
            status=200 if problem is None else 503,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _index(self, request: web.Request) -> web.Response:
        ws_url = f"{'wss' if request.secure else 'ws'}://{request.host}/ws"
        rows = "".join(
            f"<tr><td><code>{html.escape(m.id)}</code></td><td>{html.escape(m.title)}</td>"
            f"<td>{html.escape(m.creator)}</td><td>{m.participant_count}</td>"
            f"<td>{'yes' if m.has_password else ''}</td></tr>"
            for m in self.core.registry.open_meetings()
        ) or '<tr><td colspan="5">no open meetings yet</td></tr>'
        page = _INDEX_PAGE.format(version=__version__, ws_url=html.escape(ws_url), rows=rows)
        page = page.replace("</body>", self._media_section() + "</body>")
        return web.Response(text=page, content_type="text/html")

    def _media_section(self) -> str:
        """Per meeting: its mode and the media the server received and forwarded, so a
        person can see that a peer-to-peer meeting sends nothing through the server."""
        if self.media is None:
            return ""
        modes = self.core.meeting_modes()
        rows = "".join(
            f"<tr><td><code>{html.escape(mid)}</code></td>"
            f"<td>{html.escape(modes.get(mid, 'server'))}</td>"
            f"<td>{c['received_packets']}</td><td>{c['received_bytes']}</td>"
            f"<td>{c['forwarded_packets']}</td><td>{c['forwarded_bytes']}</td>"
            f"<td>{c['mixed_packets']}</td><td>{c['mixer_decoded']}</td></tr>"
            for mid, c in sorted(self.media.meeting_media().items())
        ) or '<tr><td colspan="8">no media yet</td></tr>'
        return (
            "<h2>Media per meeting</h2><table><tr><th>meeting</th><th>mode</th>"
            "<th>received packets</th><th>received bytes</th><th>forwarded packets</th>"
            "<th>forwarded bytes</th><th>mixed packets</th><th>mixer frames decoded</th></tr>"
            f"{rows}</table>\n"
        )


_INDEX_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>confero server</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto}}
td,th{{padding:.2em .8em;text-align:left}}code{{background:#eee;padding:0 .2em}}</style>
</head><body>
<h1>confero server {version}</h1>
<p>The server is running. Join from a terminal:</p>
<pre>.venv/bin/confero chat --server {ws_url} --name YOUR_NAME</pre>
<h2>Open meetings</h2>
<table><tr><th>id</th><th>title</th><th>creator</th><th>people</th><th>password</th></tr>
{rows}</table>
<p><a href="/api/meetings">/api/meetings</a> &middot; <a href="/healthz">/healthz</a>
&middot; <a href="/metrics">/metrics</a></p>
</body></html>
"""


def build_server(
    config: ServerConfig, store: Store | None = None, media: MediaRouter | None = None
) -> SignalingServer:
    store = store or Store.in_directory(config.data_dir)
    registry = MeetingRegistry(empty_grace=config.empty_grace,
                               max_participants=config.max_participants,
                               wall_offset=time.time() - time.monotonic())
    settings = CoreSettings(
        rate=config.rate, burst=config.burst, heartbeat_interval=config.heartbeat,
        chat_retention=config.chat_retention_days * 86400.0,
        max_chat_per_meeting=config.max_chat_per_meeting,
        max_chat_per_sender=config.max_chat_per_sender,
    )
    settings.turn_url, settings.turn_secret = config.turn_url, config.turn_secret
    core = SignalingCore(registry, store, settings, media=media)
    restored = core.restore(time.monotonic())
    if restored:
        log.info("restored %d open meeting(s); they end in %gs unless someone joins",
                 restored, config.empty_grace)
    server = SignalingServer(core, config.heartbeat, media,
                             max_per_address=config.max_connections_per_address,
                             outbox_bytes=config.outbox_bytes)

    async def close_store(app: web.Application) -> None:
        store.close()

    server.app.on_cleanup.append(close_store)
    return server


def _ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise SystemExit("error: --tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(config: ServerConfig) -> None:
    """Run until SIGINT/SIGTERM. Prints one JSON line with the bound URLs once listening."""
    store = Store.in_directory(config.data_dir)  # a bad database stops us before anything
    router = MediaRouter(config.media_port, host=config.media_host,
                         max_video_size=config.max_video_size,
                         wall_offset=time.time() - time.monotonic())
    media = await MediaServer.start(router, config.host, config.media_port)
    server = build_server(config, store=store, media=router)
    # media over a WebSocket for clients whose UDP is blocked (issue 10)
    server.app.router.add_get("/media", media.streams.handle)
    server.media_streams = media.streams

    async def close_media_streams(app: web.Application) -> None:
        await media.streams.close()

    server.app.on_shutdown.append(close_media_streams)
    context = _ssl_context(config)
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False,
                           keepalive_timeout=config.idle_timeout)
    await runner.setup()
    before, after = raise_fd_limit()
    if after != before:
        log.info("raised the file descriptor limit from %d to %d", before, after)
    guard = ConnectionGuard(config.max_sockets_per_address, connection_budget())
    install_accept_error_handler(asyncio.get_running_loop(), guard)
    server.guard = guard
    site = GuardedSite(runner, config.host, config.port, guard, ssl_context=context)
    await site.start()
    host, port = runner.addresses[0][:2]
    scheme = "https" if context else "http"
    url_host = f"[{host}]" if ":" in host else host
    print(
        json.dumps(
            {
                "event": "listening",
                "url": f"{'wss' if context else 'ws'}://{url_host}:{port}/ws",
                "http": f"{scheme}://{url_host}:{port}/",
                "media_port": router.port,
                "data_dir": str(config.data_dir.resolve()),
                "version": __version__,
            }
        ),
        flush=True,
    )
    print(
        f"confero server listening on {scheme}://{url_host}:{port}/ - open it in a browser, or "
        f"join from a terminal: confero chat --server {'wss' if context else 'ws'}://"
        f"{url_host}:{port}/ws --name YOUR_NAME",
        file=sys.stderr,
        flush=True,
    )
    if context is None and not _is_loopback(config.host):
        print(
            f"WARNING: listening on {config.host} without TLS: chat and the media keys travel "
            "in the clear. Use --tls-cert/--tls-key beyond a trusted network.",
            file=sys.stderr,
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        print(json.dumps({"event": "stopping"}), file=sys.stderr, flush=True)
        await runner.cleanup()
        await media.stop()
