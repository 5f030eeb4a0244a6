"""The real server process over real WebSockets: the meeting life cycle end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from confero.client import (
    ChatEvent,
    Client,
    ClientEvent,
    ConnectionFailed,
    MeetingEnded,
    MeetingsChanged,
    ParticipantJoined,
    ParticipantLeft,
    RequestError,
)
from tests.conftest import ClientFactory, ServerProcess


def is_type(kind: type) -> Any:
    return lambda event: isinstance(event, kind)


async def expect_error(code: str, coro: Any) -> RequestError:
    with pytest.raises(RequestError) as err:
        await coro
    assert err.value.code == code, err.value
    assert err.value.message
    return err.value


async def test_create_list_join_chat_leave_cancel(connect: ClientFactory) -> None:
    alice, bob, carol = await connect("alice"), await connect("bob"), await connect("carol")
    created = await alice.create_meeting("Planning", password="hunter2")
    mid = created.meeting.id
    assert created.is_creator and created.meeting.participant_count == 1

    [listed] = await bob.list_meetings()
    assert (listed.id, listed.title, listed.creator, listed.participant_count,
            listed.has_password) == (mid, "Planning", "alice", 1, True)

    await expect_error("wrong_password", bob.join(mid))
    await expect_error("wrong_password", bob.join(mid, "hunter3"))
    joined = await bob.join(mid, "hunter2")
    assert [p.name for p in joined.participants] == ["alice", "bob"] and not joined.is_creator
    event = await alice.wait_for(is_type(ParticipantJoined))
    assert isinstance(event, ParticipantJoined) and event.participant.name == "bob"

    sent = await alice.send_chat("hello bob")
    for client in (alice, bob):
        chat = await client.wait_for(is_type(ChatEvent))
        assert isinstance(chat, ChatEvent)
        assert (chat.message.sender, chat.message.text, chat.message.seq) == (
            "alice", "hello bob", sent.seq
        )
        assert chat.message.ts == sent.ts

    await carol.join(mid, "hunter2")
    assert {p.name for p in alice.participants.values()} >= {"alice", "bob"}
    history = (await carol.leave(), await carol.join(mid, "hunter2"))[1].history
    assert [m.text for m in history] == ["hello bob"]

    await bob.leave()
    left = await alice.wait_for(lambda e: isinstance(e, ParticipantLeft) and e.name == "bob")
    assert isinstance(left, ParticipantLeft) and left.reason == "left"

    await expect_error("not_creator", carol.cancel())
    await alice.cancel()
    for client in (alice, carol):
        ended = await client.wait_for(is_type(MeetingEnded))
        assert isinstance(ended, MeetingEnded) and ended.reason == "cancelled"
        assert client.meeting is None
    await expect_error("meeting_ended", bob.join(mid, "hunter2"))
    assert await bob.list_meetings() == []


async def test_meeting_ends_when_the_last_participant_leaves(connect: ClientFactory) -> None:
    alice, watcher = await connect("alice"), await connect("watcher")
    mid = (await alice.create_meeting("short")).meeting.id
    await watcher.wait_for(lambda e: isinstance(e, MeetingsChanged) and len(e.meetings) == 1)
    await alice.leave()
    await watcher.wait_for(lambda e: isinstance(e, MeetingsChanged) and e.meetings == [])
    await expect_error("meeting_ended", watcher.join(mid))


async def test_http_endpoints_report_meetings_and_metrics(
    server: ServerProcess, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    mid = (await alice.create_meeting("Metrics")).meeting.id
    await alice.send_chat("one")
    await alice.send_chat("two")
    await expect_error("not_found", (await connect("bob")).join("doesnotexist"))
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http + "healthz") as response:
            health = await response.json()
        assert health["status"] == "ok" and health["meetings"] == 1
        assert health["connections"] == 2
        async with http.get(server.http + "api/meetings") as response:
            listing = await response.json()
        assert [m["id"] for m in listing["meetings"]] == [mid]
        async with http.get(server.http + "metrics") as response:
            metrics = await response.text()
        async with http.get(server.http) as response:
            page = await response.text()
    assert mid in page and "Metrics" in page
    values = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("confero_")
    )
    assert float(values["confero_meetings_open"]) == 1
    assert float(values["confero_participants"]) == 1
    assert float(values["confero_chat_messages_total"]) == 2
    assert float(values['confero_errors_total{code="not_found"}']) == 1
    assert float(values['confero_messages_received_total{type="hello"}']) == 2


async def raw_request(ws: aiohttp.ClientWebSocketResponse, frame: str | bytes) -> dict[str, Any]:
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)
    reply = await ws.receive(timeout=5)
    assert reply.type == aiohttp.WSMsgType.TEXT, reply
    return dict(json.loads(reply.data))


async def test_malformed_messages_get_errors_and_the_connection_stays_usable(
    server: ServerProcess, connect: ClientFactory
) -> None:
    bystander = await connect("bystander")
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        cases: list[tuple[str | bytes, str]] = [
            ("not json at all", "bad_json"),
            ('"a string"', "bad_message"),
            ('{"type": "teleport", "id": 5}', "unknown_type"),
            ('{"type": "hello", "id": 6}', "invalid_field"),
            ('{"type": "hello", "id": 7, "version": "one", "name": "x"}', "invalid_field"),
            ('{"type": "list_meetings", "id": 8}', "hello_required"),
            (json.dumps({"type": "chat", "id": 9, "text": "x" * 20_000}), "too_large"),
            (b"\x00\x01binary junk", "bad_json"),
        ]
        for frame, code in cases:
            reply = await raw_request(ws, frame)
            assert (reply["type"], reply["code"]) == ("error", code), (frame, reply)
            assert reply["message"]
        hello = '{"type": "hello", "id": 10, "version": 1, "name": "mallory"}'
        assert (await raw_request(ws, hello))["type"] == "ok"
        ok = await raw_request(ws, '{"type": "list_meetings", "id": 11}')
        assert ok == {"type": "ok", "id": 11, "result": {"meetings": []}}
    assert await bystander.list_meetings() == []


async def test_a_flood_is_rate_limited_without_harming_anyone(
    server: ServerProcess, connect: ClientFactory
) -> None:
    victim = await connect("victim")
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        await raw_request(ws, '{"type": "hello", "id": 1, "version": 1, "name": "flood"}')
        for i in range(300):
            await ws.send_str(json.dumps({"type": "ping", "id": 100 + i}))
        codes = []
        for _ in range(300):
            reply = json.loads((await ws.receive(timeout=5)).data)
            codes.append(reply.get("code", reply["type"]))
        assert codes.count("rate_limited") > 200
        assert set(codes) == {"ok", "rate_limited"}
        # the flooder's connection is alive and served again once it slows down: a slow
        # trickle of pings (one per 50 ms, under the rate) is answered "ok" again
        replies = []
        for attempt in range(100):
            reply = await raw_request(ws, f'{{"type": "ping", "id": {10_000 + attempt}}}')
            replies.append(reply["type"])
            if reply["type"] == "ok":
                break
            await asyncio.sleep(0.05)  # the pace of a well-behaved client
        assert replies[-1] == "ok", replies
    await victim.ping()


async def test_a_frame_beyond_the_hard_limit_closes_only_that_connection(
    server: ServerProcess, connect: ClientFactory
) -> None:
    victim = await connect("victim")
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        await ws.send_str("x" * 300_000)
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    await victim.ping()


async def test_duplicate_display_name_in_a_meeting(connect: ClientFactory) -> None:
    first, second = await connect("Sam"), await connect("sam")
    mid = (await first.create_meeting("names")).meeting.id
    error = await expect_error("name_taken", second.join(mid))
    assert "Sam" in error.message
    assert first.participants.keys() == {first.participant_id}


async def test_two_meetings_are_isolated(connect: ClientFactory) -> None:
    """Chat and events of one meeting never reach a participant of the other."""
    a1, a2, b1, b2 = [await connect(n) for n in ("a1", "a2", "b1", "b2")]
    seen: dict[str, list[ClientEvent]] = {c.name: [] for c in (a1, a2, b1, b2)}
    for c in (a1, a2, b1, b2):
        c.add_listener(seen[c.name].append)
    ma = (await a1.create_meeting("A")).meeting.id
    mb = (await b1.create_meeting("B")).meeting.id
    await a2.join(ma)
    await b2.join(mb)
    for i in range(5):
        await a1.send_chat(f"secret A{i}")
        await b2.send_chat(f"secret B{i}")
    await a2.leave()
    await b1.cancel()
    for c in (a1, b1):
        await c.wait_for(lambda e: isinstance(e, (ParticipantLeft, MeetingEnded)))
    await a1.ping()
    await b2.wait_for(is_type(MeetingEnded))

    def meeting_ids(name: str) -> set[str]:
        """Which meetings the events a client received speak of."""
        ids = set()
        for event in seen[name]:
            if isinstance(event, ChatEvent):
                ids.add(event.message.meeting_id)
            elif isinstance(event, (ParticipantJoined, ParticipantLeft, MeetingEnded)):
                ids.add(event.meeting_id)
        return ids

    assert meeting_ids("a1") == meeting_ids("a2") == {ma}
    assert meeting_ids("b1") == meeting_ids("b2") == {mb}
    texts = {name: [e.message.text for e in events if isinstance(e, ChatEvent)]
             for name, events in seen.items()}
    assert texts["a1"] == texts["a2"] == [f"secret A{i}" for i in range(5)]
    assert texts["b1"] == texts["b2"] == [f"secret B{i}" for i in range(5)]


async def test_ten_meetings_of_five_chat_concurrently_exactly_once_in_one_order(
    connect: ClientFactory,
) -> None:
    meetings, size, per_client = 10, 5, 10
    groups: list[list[Client]] = []
    for m in range(meetings):
        members = [await connect(f"m{m}u{u}") for u in range(size)]
        mid = (await members[0].create_meeting(f"load {m}")).meeting.id
        for member in members[1:]:
            await member.join(mid)
        groups.append(members)
    expected = size * per_client
    received: dict[int, list[tuple[int, str]]] = {}
    complete = asyncio.Event()
    pending = {id(member) for members in groups for member in members}

    def recorder(member: Client) -> Callable[[ClientEvent], None]:
        log = received.setdefault(id(member), [])

        def record(event: ClientEvent) -> None:
            if isinstance(event, ChatEvent):
                log.append((event.message.seq, event.message.text))
                if len(log) == expected:
                    pending.discard(id(member))
                    if not pending:
                        complete.set()

        return record

    for members in groups:
        for member in members:
            member.add_listener(recorder(member))

    async def chatter(client: Client) -> None:
        for i in range(per_client):
            await client.send_chat(f"{client.name}#{i}")

    await asyncio.gather(*(chatter(c) for members in groups for c in members))
    await asyncio.wait_for(complete.wait(), 30)
    for m, members in enumerate(groups):
        reference = received[id(members[0])]
        assert [seq for seq, _ in reference] == list(range(1, expected + 1))
        assert sorted(text for _, text in reference) == sorted(
            f"m{m}u{u}#{i}" for u in range(size) for i in range(per_client)
        )
        for member in members[1:]:
            assert received[id(member)] == reference  # same messages, same order, once each


class StalledClient:
    """A raw WebSocket client that sends (pings, to look alive) but never reads."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)  # read the handshake only, byte by byte
        assert b" 101 " in response.split(b"\r\n", 1)[0]
        self.stop = threading.Event()

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x80 | opcode]) + (
            bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def keep_pinging(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.send(0x9, b"alive")
            except OSError:
                return


async def test_a_client_that_stops_reading_is_dropped_not_buffered(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """It answers nothing but keeps its TCP connection and heartbeat alive: only the
    bounded outbox can notice, and the server must cut it rather than wait on it."""
    server = server_factory("--rate-limit", "100000", "--rate-burst", "100000",
                            "--max-chat-per-sender", "100000")
    async with Client(server.url, "alice") as alice:
        mid = (await alice.create_meeting("firehose")).meeting.id
        sloth = StalledClient(server.url)
        sloth.send(0x1, b'{"type": "hello", "id": 1, "version": 1, "name": "sloth"}')
        sloth.send(0x1, json.dumps({"type": "join_meeting", "id": 2, "meeting_id": mid}).encode())
        pinger = threading.Thread(target=sloth.keep_pinging, daemon=True)
        pinger.start()
        try:
            await alice.wait_for(is_type(ParticipantJoined))
            left = asyncio.create_task(
                alice.wait_for(lambda e: isinstance(e, ParticipantLeft) and e.name == "sloth",
                               timeout=60)
            )
            text = "x" * 3900
            while not left.done():
                await asyncio.gather(*(alice.send_chat(text) for _ in range(50)))
            event = left.result()
            assert isinstance(event, ParticipantLeft) and event.reason == "disconnected"
            async with aiohttp.ClientSession() as http:
                async with http.get(server.http + "healthz") as response:
                    assert (await response.json())["connections"] == 1  # alice only
                async with http.get(server.http + "metrics") as response:
                    metrics = await response.text()
            assert "confero_slow_consumers_total 1.0" in metrics
        finally:
            sloth.stop.set()
            sloth.sock.close()


async def test_connections_per_address_are_bounded(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-connections-per-address", "2")
    async with Client(server.url, "one") as one, Client(server.url, "two"):
        third = Client(server.url, "three", reconnect=False)
        with pytest.raises(ConnectionFailed, match="too many connections from this address"):
            await third.connect()
        await one.ping()  # the others are unaffected
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        while True:  # the server frees the slots once it has seen the sockets close
            async with http.get(server.http + "healthz") as response:
                if (await response.json())["connections"] == 0:
                    break
            await asyncio.sleep(0.05)  # polling an HTTP endpoint: there is no event
    async with Client(server.url, "later"):  # the slots came back
        pass
