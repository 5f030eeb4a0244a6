"""The aiohttp shell around :class:`SignalingCore`: sockets, the clock, HTTP endpoints.

Each WebSocket gets a bounded outbox drained by its own writer task, so one slow reader
never delays the others: when its outbox is full it is disconnected (counted as a slow
consumer) instead of making the server buffer without limit.
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
from confero.server.media_app import MediaServer
from confero.server.media_router import MediaRouter
from confero.server.metrics import make_registry
from confero.server.registry import MeetingRegistry
from confero.server.store import Store

log = logging.getLogger(__name__)

#: Frames above this are refused by aiohttp itself (connection closed with 1009); frames
#: between MAX_MESSAGE_BYTES and this get a ``too_large`` error and the connection lives on.
HARD_FRAME_LIMIT = 256 * 1024
OUTBOX_LIMIT = 1024
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
    ) -> None:
        self.core = core
        self.media = media
        self.heartbeat = heartbeat
        #: Open WebSockets per remote address: the per-connection rate limit means little
        #: if one host may open connections without end.
        self.max_per_address = max_per_address
        self._per_address: Counter[str] = Counter()
        self._peers: dict[int, _Peer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.shell_counters = {"slow_consumers_total": 0, "binary_frames_total": 0,
                               "refused_connections_total": 0}
        self.metrics = make_registry(core, lambda: dict(self.shell_counters), media)
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

    # ------------------------------------------------------------------ WebSocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        address = request.remote or "?"
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
        conn_id = self.core.open_connection(time.time())
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
                    self._apply(self.core.handle(conn_id, msg.data, time.time()))
                elif msg.type == WSMsgType.ERROR:
                    log.info("connection %d failed: %s", conn_id, ws.exception())
        finally:
            self._per_address[address] -= 1  # first: /healthz then tells the truth
            if self._per_address[address] <= 0:
                del self._per_address[address]
            self._peers.pop(conn_id, None)
            writer.cancel()
            try:
                self._apply(self.core.close_connection(conn_id, time.time()))
            finally:
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        return ws

    async def _write(self, peer: _Peer) -> None:
        while True:
            data = await peer.outbox.get()
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
                    try:
                        peer.outbox.put_nowait(action.data)
                    except asyncio.QueueFull:
                        # It stopped reading: a polite close would wait on it forever.
                        self.shell_counters["slow_consumers_total"] += 1
                        log.info("connection %d is too slow to read; dropping it", conn_id)
                        peer.abort()
            elif isinstance(action, Close):
                peer = self._peers.get(action.conn_id)
                if peer is not None:
                    self._close_soon(peer, action.code, action.reason)

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
                self._apply(self.core.tick(time.time()))
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
        return web.json_response(
            {
                "status": "ok",
                "version": __version__,
                "meetings": len(self.core.registry.open_meetings()),
                "connections": self.core.connection_count(),
            }
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
    registry = MeetingRegistry(empty_grace=config.empty_grace)
    settings = CoreSettings(
        rate=config.rate, burst=config.burst, heartbeat_interval=config.heartbeat
    )
    core = SignalingCore(registry, store, settings, media=media)
    restored = core.restore(time.time())
    if restored:
        log.info("restored %d open meeting(s); they end in %gs unless someone joins",
                 restored, config.empty_grace)
    server = SignalingServer(core, config.heartbeat, media,
                             max_per_address=config.max_connections_per_address)

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
    router = MediaRouter(config.media_port, host=config.media_host)
    media = await MediaServer.start(router, config.host, config.media_port)
    server = build_server(config, media=router)
    context = _ssl_context(config)
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=context)
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
