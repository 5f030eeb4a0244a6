"""Property-based abuse of a running server: random and mutated frames, then a normal client.

Every frame sent must be answered by a well-formed ``ok``/``error`` (or close the
connection, for frames over the hard limit), and the server must keep serving everyone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confero.client import ChatEvent, Client
from confero.protocol.signaling import REQUEST_TYPES
from tests.conftest import ServerProcess, start_server


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(Path(tmp_path_factory.mktemp("fuzz")))
    yield server
    server.stop()


json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=10,
)

VALID: dict[str, dict[str, Any]] = {
    "hello": {"version": 1, "name": "fuzzy"},
    "list_meetings": {},
    "create_meeting": {"title": "fuzzed", "password": "pw"},
    "join_meeting": {"meeting_id": "abcdefghjk", "password": None},
    "leave_meeting": {},
    "cancel_meeting": {"meeting_id": "abcdefghjk"},
    "chat": {"text": "hi"},
    "ping": {},
    "set_media": {"camera": True, "microphone": False},
    "raise_hand": {"raised": True},
    "p2p_signal": {"session": 1, "ufrag": "abcd", "pwd": "secretsecret",
                   "key": "A" * 40, "candidates": ["1 1 UDP 1 10.0.0.1 5000 typ host"],
                   "end_of_candidates": True},
    "p2p_state": {"session": 1, "state": "connected"},
    "meeting_media": {},
    "e2ee_blob": {"to": "abcdefgh", "blob": "AAAA"},
}
assert set(VALID) == set(REQUEST_TYPES)


@st.composite
def mutated_messages(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(sorted(VALID)))
    message: dict[str, Any] = {"type": kind, "id": draw(st.integers(0, 10**6)), **VALID[kind]}
    for _ in range(draw(st.integers(0, 3))):
        if not message:
            break
        action = draw(st.sampled_from(["drop", "retype", "add", "rename_type", "grow"]))
        key = draw(st.sampled_from(sorted(message)))
        if action == "drop":
            message.pop(key, None)
        elif action == "retype":
            message[key] = draw(json_values)
        elif action == "add":
            message[draw(st.text(max_size=12))] = draw(json_values)
        elif action == "rename_type":
            message["type"] = draw(st.sampled_from([*VALID, "", "HELLO", "x" * 100]))
        else:
            message[key] = "x" * draw(st.integers(1, 40_000))
    return json.dumps(message)


frames = st.lists(
    mutated_messages()
    | st.text(max_size=200)
    | st.binary(max_size=200)
    | json_values.map(json.dumps),
    min_size=1,
    max_size=8,
)


async def send_and_check(url: str, greet: bool, batch: list[str | bytes]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        if greet:
            await ws.send_str(json.dumps({"type": "hello", "id": 0, "version": 1,
                                          "name": "fuzzer"}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "ok"
        for frame in batch:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            # Read until this frame's reply: events (a meeting list, a chat) may come first.
            while True:
                reply = await ws.receive(timeout=5)
                assert reply.type == aiohttp.WSMsgType.TEXT, (frame[:200], reply)
                message = json.loads(reply.data)
                assert isinstance(message, dict) and isinstance(message.get("type"), str)
                if message["type"] in ("ok", "error"):
                    if message["type"] == "error":
                        assert message["code"] and message["message"]
                        assert message["code"] != "internal", message
                    break


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(greet=st.booleans(), batch=frames)
def test_random_and_mutated_frames_get_answers(
    fuzz_server: ServerProcess, greet: bool, batch: list[str | bytes]
) -> None:
    asyncio.run(send_and_check(fuzz_server.url, greet, batch))
    assert fuzz_server.proc.poll() is None


async def test_a_normal_client_still_works_after_the_fuzzing(fuzz_server: ServerProcess) -> None:
    async with Client(fuzz_server.url, "normal") as alice, Client(fuzz_server.url, "b") as bob:
        mid = (await alice.create_meeting("after the storm")).meeting.id
        await bob.join(mid)
        await bob.send_chat("all fine")
        chat = await alice.wait_for(lambda e: isinstance(e, ChatEvent))
        assert isinstance(chat, ChatEvent) and chat.message.text == "all fine"
    async with aiohttp.ClientSession() as http, http.get(fuzz_server.http + "metrics") as resp:
        metrics = await resp.text()
    assert 'confero_errors_total{code="internal"}' not in metrics
