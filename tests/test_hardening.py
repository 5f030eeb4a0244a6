"""Issue 7's attacks replayed against the real server process over real sockets.

Addresses: the server listens on 127.0.0.1, and Linux lets a client connect from any
127.x.y.z, so "another host" is a client bound to another loopback address.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from confero.client import (
    Client,
    ClientEvent,
    MeetingsChanged,
    RejoinFailed,
)
from confero.client.api import Rejoined
from tests.conftest import ClientFactory, ServerProcess, read_json_line
from tests.test_server import StalledClient, expect_error

WaitTimeout = 30.0  # generous: the box is busy; every wait ends on an event before this


@asynccontextmanager
async def raw_ws(url: str, source: str = "127.0.0.1"
                 ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.ws_connect(url, max_msg_size=0) as ws:
        yield ws


async def call(ws: aiohttp.ClientWebSocketResponse, kind: str, request_id: int,
               **fields: Any) -> dict[str, Any]:
    """Send one request, return its reply (events in between are skipped)."""
    await ws.send_str(json.dumps({"type": kind, "id": request_id, **fields}))
    async with asyncio.timeout(WaitTimeout):
        while True:
            message = json.loads(await ws.receive_str())
            if message.get("id") == request_id:
                return dict(message)


async def guess(url: str, source: str, meeting_id: str, password: str) -> str:
    """One password guess on a fresh socket, as an attacker would: the reply's type/code."""
    async with raw_ws(url, source) as ws:
        hello = await call(ws, "hello", 1, version=1, name=f"guesser {source}")
        assert hello["type"] == "ok", hello
        reply = await call(ws, "join_meeting", 2, meeting_id=meeting_id, password=password)
        return str(reply.get("code", reply["type"]))


async def metric(server: ServerProcess, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(server.http + "metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def wait_metric(server: ServerProcess, name: str, at_least: float) -> None:
    async with asyncio.timeout(WaitTimeout):
        while True:
            if await metric(server, name) >= at_least:
                return
            await asyncio.sleep(0.1)  # polling an HTTP endpoint: there is no event


def cut(client: Client) -> None:
    """Drop the client's TCP link as a network failure would."""
    assert client._ws is not None
    client._ws._response.connection.transport.abort()  # type: ignore[union-attr]


# ---------------------------------------------------------------- item 1: slow consumer


async def test_a_reader_that_stalls_is_closed_with_4008_and_its_queue_freed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """The attack: join results of ~1 MB (a long chat history), asked for again and again on
    a socket that is never read. Before, nothing happened until 1024 frames (~1 GB) were
    queued; now the byte budget (4 MiB) cuts it within a few requests."""
    server = server_factory("--rate-limit", "1000", "--rate-burst", "1000")
    alice = Client(server.url, "alice")
    await alice.connect()
    mid = (await alice.create_meeting("long history")).meeting.id
    for n in range(300):
        await alice.send_chat(f"{n} " + "\u00e9" * 1900)  # ~3.8 kB of UTF-8 each
    sloth = StalledClient(server.url)
    try:
        sloth.send(0x1, b'{"type": "hello", "id": 1, "version": 1, "name": "sloth"}')
        for n in range(18):  # 36 frames: under the rate limit's burst of 40
            sloth.send(0x1, json.dumps({"type": "join_meeting", "id": 2 + 2 * n,
                                        "meeting_id": mid}).encode())
            sloth.send(0x1, json.dumps({"type": "leave_meeting", "id": 3 + 2 * n}).encode())
        await wait_metric(server, "confero_slow_consumers_total", 1)
        # Now read everything: what reached the socket, then the close frame saying why.
        code = await asyncio.to_thread(read_close_code, sloth.sock)
        assert code == 4008
        async with aiohttp.ClientSession() as http, http.get(server.http + "healthz") as resp:
            assert (await resp.json())["connections"] == 1  # alice only
        await alice.ping()  # nobody else was disturbed
    finally:
        sloth.sock.close()
        await alice.close()


def read_close_code(sock: socket.socket) -> int | None:
    """Read a server's frames until its close frame; its status code (None if cut)."""
    sock.settimeout(WaitTimeout)
    buffer = b""
    try:
        while True:
            while len(buffer) >= 2:
                size, offset = buffer[1] & 0x7F, 2
                if size == 126:
                    size, offset = int.from_bytes(buffer[2:4], "big"), 4
                elif size == 127:
                    size, offset = int.from_bytes(buffer[2:10], "big"), 10
                if len(buffer) < offset + size:
                    break
                if buffer[0] & 0x0F == 0x8:
                    return int.from_bytes(buffer[offset:offset + 2], "big")
                buffer = buffer[offset + size:]
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None
            buffer += chunk
    except OSError:
        return None


# ---------------------------------------------------------------- item 3: password guessing


async def test_guessing_from_one_address_is_cut_off_even_on_new_sockets(
    server: ServerProcess, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    mid = (await alice.create_meeting("secret", password="right one")).meeting.id
    results = [await guess(server.url, "127.0.0.2", mid, f"wrong {n}") for n in range(8)]
    assert results[:5] == ["wrong_password"] * 5
    assert results[5:] == ["rate_limited"] * 3  # a new socket does not reset the budget
    # Even the right password from that address waits out the backoff ...
    assert await guess(server.url, "127.0.0.2", mid, "right one") == "rate_limited"
    # ... while anyone else gets in at once.
    assert await guess(server.url, "127.0.0.3", mid, "right one") == "ok"


async def test_a_members_rejoin_is_never_refused_while_others_guess(
    server: ServerProcess, connect: ClientFactory
) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    mid = (await alice.create_meeting("secret", password="right one")).meeting.id
    await bob.join(mid, "right one")
    stop = asyncio.Event()
    codes: list[str] = []

    async def botnet() -> None:
        n = 0
        while not stop.is_set():  # bounded by the test: stopped right after the rejoin
            n += 1
            source = f"127.0.{n % 200 + 1}.{n // 200 % 250 + 2}"
            codes.append(await guess(server.url, source, mid, f"guess {n}"))

    guessers = [asyncio.create_task(botnet()) for _ in range(4)]
    try:
        async with asyncio.timeout(WaitTimeout):
            while True:
                if codes.count("rate_limited") >= 5:  # the meeting's budget is spent
                    break
                await asyncio.sleep(0.05)  # the guessers' progress has no event
        bob.reconnect_timeout = WaitTimeout
        cut(bob)
        event = await bob.wait_for(lambda e: isinstance(e, (Rejoined, RejoinFailed)),
                                   timeout=WaitTimeout)
        assert isinstance(event, Rejoined), event
        assert bob.meeting is not None and bob.meeting.id == mid
    finally:
        stop.set()
        await asyncio.gather(*guessers, return_exceptions=True)
    assert "ok" not in codes


async def test_the_client_retries_a_rate_limited_rejoin_later() -> None:
    """A scripted server: the first two rejoins are refused with rate_limited, the third
    is let in. The client must keep its meeting, not report the refusal as final."""
    from aiohttp import web

    joins: list[int] = []
    sockets: list[web.WebSocketResponse] = []
    result = {
        "meeting": {"id": "m1", "title": "t", "creator": "a", "participant_count": 1,
                    "has_password": True, "created_at": 0.0},
        "participants": [], "history": [], "history_complete": True, "is_creator": False,
    }

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.append(ws)
        async for msg in ws:
            req = json.loads(msg.data)
            if req["type"] == "hello":
                reply: dict[str, Any] = {"type": "ok", "id": req["id"], "result": {
                    "participant_id": "p", "resume_token": "t" * 40, "protocol_version": 1,
                    "server": "fake", "heartbeat_interval": 2.0}}
            elif req["type"] == "join_meeting":
                joins.append(req["id"])
                if 1 < len(joins) <= 3:
                    reply = {"type": "error", "id": req["id"], "code": "rate_limited",
                             "message": "too many wrong passwords; try again in 1 s"}
                else:
                    reply = {"type": "ok", "id": req["id"], "result": result}
            else:
                reply = {"type": "ok", "id": req["id"], "result": {}}
            await ws.send_str(json.dumps(reply))
        return ws

    app = web.Application()
    app.add_routes([web.get("/ws", handler)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = Client(f"ws://127.0.0.1:{port}/ws", "bob", reconnect_timeout=WaitTimeout)
    try:
        await client.connect()
        await client.join("m1", "pw")
        await sockets[0].close()  # the link drops
        event = await client.wait_for(lambda e: isinstance(e, (Rejoined, RejoinFailed)),
                                      timeout=WaitTimeout)
        assert isinstance(event, Rejoined), event
        assert len(joins) == 4 and client.meeting is not None
    finally:
        await client.close()
        await runner.cleanup()


# ---------------------------------------------------------------- item 6: idle sockets


def idle_socket(server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    parts = urlsplit(server.http)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    return sock


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True if the server closes (or resets) the socket within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_a_connection_that_never_sends_a_request_is_closed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--idle-timeout", "1")
    sock = idle_socket(server)
    try:
        assert await asyncio.to_thread(closed_within, sock, WaitTimeout)
    finally:
        sock.close()


async def test_raw_sockets_per_address_are_capped_and_others_still_get_in(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-sockets-per-address", "5", "--idle-timeout", "600")
    held = [idle_socket(server, "127.0.0.2") for _ in range(5)]
    extra = idle_socket(server, "127.0.0.2")
    try:
        assert await asyncio.to_thread(closed_within, extra, WaitTimeout)
        assert not await asyncio.to_thread(closed_within, held[0], 0.5)  # held ones live
        async with aiohttp.ClientSession() as http, http.get(server.http + "healthz") as r:
            assert r.status == 200  # another address is served
        assert await metric(server, "confero_refused_sockets_per_address_total") >= 1
    finally:
        for sock in [*held, extra]:
            sock.close()


def start_logged_server(data_dir: Path, log_path: Path, *extra: str,
                        nofile: int | None = None) -> ServerProcess:
    """Like conftest's server, with stderr kept in a file and an optional fd limit."""
    args = [sys.executable, "-m", "confero.cli", "--log-level", "INFO", "server", "--port",
            "0", "--media-port", "0", "--data-dir", str(data_dir), "--heartbeat", "2",
            *extra]

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with log_path.open("w") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True,
                                preexec_fn=limit, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        ready = read_json_line(proc, 20)
    except BaseException:
        proc.kill()
        raise
    return ServerProcess(proc, str(ready["url"]), str(ready["http"]), data_dir,
                         int(str(ready["media_port"])), args)


@pytest.fixture
def logged_server(tmp_path: Path) -> Iterator[Callable[..., tuple[ServerProcess, Path]]]:
    started: list[ServerProcess] = []

    def factory(*extra: str, nofile: int | None = None, data_dir: Path | None = None
                ) -> tuple[ServerProcess, Path]:
        log_path = tmp_path / f"server{len(started)}.log"
        server = start_logged_server(data_dir or tmp_path / "data", log_path, *extra,
                                     nofile=nofile)
        started.append(server)
        return server, log_path

    yield factory
    for server in started:
        server.stop()


async def wait_log(log_path: Path, text: str) -> str:
    async with asyncio.timeout(WaitTimeout):
        while True:
            content = await asyncio.to_thread(log_path.read_text)
            if text in content:
                return content
            await asyncio.sleep(0.1)  # a log file has no event to wait on


async def test_running_low_on_descriptors_is_one_clear_line_and_the_server_recovers(
    logged_server: Callable[..., tuple[ServerProcess, Path]],
) -> None:
    server, log_path = logged_server("--idle-timeout", "600", nofile=400)
    held: list[socket.socket] = []
    try:
        for n in range(400):  # from many addresses: the per-address cap is not what stops it
            held.append(idle_socket(server, f"127.0.{n // 4 + 1}.{n % 4 + 2}"))
        content = await wait_log(log_path, "running low on file descriptors")
        assert "ulimit -n" in content and "Traceback" not in content
        assert await metric_or_none(server) is None  # full: the attacker holds every slot
        for sock in held:
            sock.close()
        held.clear()
        async with asyncio.timeout(WaitTimeout):
            while True:  # back once the sockets are gone
                if await metric_or_none(server) is not None:
                    break
                await asyncio.sleep(0.1)  # polling an HTTP endpoint: there is no event
        assert server.proc.poll() is None
    finally:
        for sock in held:
            sock.close()


async def metric_or_none(server: ServerProcess) -> float | None:
    try:
        return await asyncio.wait_for(
            metric(server, "confero_refused_sockets_low_fds_total"), 2)
    except (aiohttp.ClientError, TimeoutError):
        return None


# ---------------------------------------------------------------- items 8, 14: the store


@pytest.mark.parametrize("damage", ["garbage", "truncated", "directory"])
def test_a_damaged_database_is_one_clear_line_at_start(tmp_path: Path, damage: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "confero.sqlite3"
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 200)
    elif damage == "directory":
        db.mkdir()
    else:
        import sqlite3

        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE chat (x TEXT)")
        conn.executemany("INSERT INTO chat VALUES (?)", [("x" * 500,)] * 400)
        conn.commit()
        conn.close()
        content = db.read_bytes()
        db.write_bytes(content[: len(content) // 2 + 100])
    proc = subprocess.run(
        [sys.executable, "-m", "confero.cli", "server", "--port", "0", "--media-port", "0",
         "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "confero.sqlite3" in lines[0]
    assert any(word in lines[0] for word in ("restore", "move it away")), lines[0]


async def test_a_database_deleted_while_running_is_reported(
    logged_server: Callable[..., tuple[ServerProcess, Path]],
) -> None:
    server, log_path = logged_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http + "healthz") as response:
            assert response.status == 200 and (await response.json())["store"] == "ok"
        (server.data_dir / "confero.sqlite3").unlink()
        async with asyncio.timeout(WaitTimeout):
            while True:
                async with http.get(server.http + "healthz") as response:
                    if response.status == 503:
                        body = await response.json()
                        break
                await asyncio.sleep(0.1)  # polling an HTTP endpoint: there is no event
    assert body["status"] == "failing" and "deleted" in body["store"]
    await wait_log(log_path, "was deleted or replaced while the server was running")


# ---------------------------------------------------------------- items 9, 10, 11


async def test_chat_quota_per_sender_and_per_meeting(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-chat-per-sender", "3", "--max-chat-per-meeting", "5")
    async with Client(server.url, "alice") as alice, Client(server.url, "bob") as bob:
        mid = (await alice.create_meeting("chatty")).meeting.id
        await bob.join(mid)
        for n in range(3):
            await alice.send_chat(f"a{n}")
        await expect_error("chat_quota", alice.send_chat("one too many"))
        await bob.send_chat("b0")
        await bob.send_chat("b1")
        error = await expect_error("chat_quota", bob.send_chat("the meeting is full"))
        assert "5" in error.message


async def test_lobby_updates_reach_only_those_in_the_lobby(connect: ClientFactory) -> None:
    member, watcher, churner = await connect("member"), await connect("watcher"), \
        await connect("churner")
    await member.create_meeting("in a call")
    seen: dict[str, int] = {"member": 0, "watcher": 0}

    def counter(name: str) -> Callable[[ClientEvent], None]:
        def count(event: ClientEvent) -> None:
            if isinstance(event, MeetingsChanged):
                seen[name] += 1
        return count

    member.add_listener(counter("member"))
    watcher.add_listener(counter("watcher"))
    for n in range(5):
        await churner.create_meeting(f"churn {n}")
        await churner.leave()
    await churner.create_meeting("final")
    async with asyncio.timeout(WaitTimeout):
        while True:  # the last change reaches the watcher ...
            event = await watcher.wait_for(lambda e: isinstance(e, MeetingsChanged))
            assert isinstance(event, MeetingsChanged)
            if "final" in [m.title for m in event.meetings]:
                break
    await member.ping()  # ... and anything sent to the member before this has arrived
    assert seen["watcher"] >= 1 and seen["member"] == 0


async def test_a_meeting_is_capped_in_participants(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-participants", "2")
    async with Client(server.url, "a") as a, Client(server.url, "b") as b, \
            Client(server.url, "c") as c:
        mid = (await a.create_meeting("small")).meeting.id
        await b.join(mid)
        error = await expect_error("meeting_full", c.join(mid))
        assert "2" in error.message
        await b.leave()
        await c.join(mid)  # a freed place can be taken


# ---------------------------------------------------------------- items 12, 13


async def test_deeply_nested_json_gets_bad_json_and_the_connection_lives(
    server: ServerProcess,
) -> None:
    async with raw_ws(server.url) as ws:
        for depth in (1000, 5000):
            frame = '{"type": "hello", "id": 1, "x": ' + "[" * depth + "]" * depth + "}"
            await ws.send_str(frame)
            reply = json.loads(await asyncio.wait_for(ws.receive_str(), WaitTimeout))
            assert reply["type"] == "error" and reply["code"] == "bad_json", reply
        assert (await call(ws, "hello", 2, version=1, name="still here"))["type"] == "ok"


async def test_look_alike_and_invisible_names_are_refused(connect: ClientFactory) -> None:
    alice = await connect("alice")
    mid = (await alice.create_meeting("names")).meeting.id
    for impostor in ("\u0430lice", "\uff41\uff4c\uff49\uff43\uff45", "ALICE", "al\u00a0ice",
                     "\u0430\u04cf\u0456\u0441\u0435"):
        client = await connect(impostor)
        await expect_error("name_taken", client.join(mid))
        await client.close()
    for invisible in ("\u3164", "\u2800", "\u00a0", "\u3164\u2800", "\u115f"):
        with pytest.raises(Exception, match=r"visible|blank"):
            await connect(invisible, reconnect=False)
    fine = await connect("\u0430\u043d\u044f")  # Cyrillic "аня" is a name of its own
    await fine.join(mid)



async def test_lobby_churn_sends_deltas_not_the_whole_list(connect: ClientFactory,
                                                           server: ServerProcess) -> None:
    """20 meetings open; one person creates and leaves a meeting over and over. Before,
    each change sent every watcher the whole list (~4 kB here); now only what changed."""
    for n in range(20):
        await (await connect(f"host{n}")).create_meeting(f"standing meeting number {n}")
    churner = await connect("churner")
    library_watcher = await connect("watcher")
    await library_watcher.list_meetings()
    async with raw_ws(server.url) as ws:
        assert (await call(ws, "hello", 1, version=1, name="raw watcher"))["type"] == "ok"
        listed = await call(ws, "list_meetings", 2)
        full_size = len(json.dumps(listed["result"]))
        for n in range(5):
            await churner.create_meeting(f"churn {n}")
            await churner.leave()
        await churner.create_meeting("final")
        sizes: list[int] = []
        async with asyncio.timeout(WaitTimeout):
            while True:
                frame = await ws.receive_str()
                event = json.loads(frame)
                assert event["type"] == "meetings_delta", event["type"]
                sizes.append(len(frame))
                if "final" in [m["title"] for m in event["changed"]]:
                    break
    # The first delta may catch up on the hosts' meetings (changes are coalesced); every
    # later one is a churn step: one record and a few ids, not the whole list.
    assert full_size > 3000 and sizes[0] < full_size, (full_size, sizes)
    assert all(size < 600 for size in sizes[1:]), (full_size, sizes)
    # The client library applies the deltas: its listeners still see the whole list.
    async with asyncio.timeout(WaitTimeout):
        while True:
            event = await library_watcher.wait_for(lambda e: isinstance(e, MeetingsChanged))
            assert isinstance(event, MeetingsChanged)
            if "final" in [m.title for m in event.meetings]:
                break
    assert len(event.meetings) == 21 and event.meetings[-1].title == "final"
