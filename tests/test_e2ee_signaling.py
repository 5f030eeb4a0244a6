"""E2EE signaling against the real server process: the meeting option and the blob relay.

The relay is the server's whole part in end-to-end encryption; these tests pin what it must
guarantee: a blob reaches exactly the named member of the sender's own E2EE meeting, is
bounded in size and rate, and nothing else gets it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest

from confero.client import Client, RequestError
from confero.protocol import signaling as sig
from tests.conftest import ClientFactory, ServerProcess

_BLOBS: dict[int, list[sig.E2eeBlobReceived]] = {}


def blob_events(client: Client) -> list[sig.E2eeBlobReceived]:
    """Blobs the client received since :func:`collect` (in arrival order)."""
    return _BLOBS[id(client)]


async def collect(client: Client) -> Client:
    seen = _BLOBS[id(client)] = []
    client.add_listener(lambda e: seen.append(e) if isinstance(e, sig.E2eeBlobReceived)
                        else None)
    return client


async def people(connect: ClientFactory, *names: str) -> list[Client]:
    return [await collect(await connect(name)) for name in names]


async def expect_error(code: str, coro: Any) -> None:
    with pytest.raises(RequestError) as err:
        await coro
    assert err.value.code == code, err.value


async def test_the_e2ee_option_is_kept_and_shown_in_the_list(connect: ClientFactory) -> None:
    alice, bob, carol = await people(connect, "alice", "bob", "carol")
    secret = await alice.create_meeting("Secret", e2ee=True)
    plain = await bob.create_meeting("Plain")
    assert secret.meeting.e2ee and not plain.meeting.e2ee
    listed = {m.id: m.e2ee for m in await carol.list_meetings()}
    assert listed == {secret.meeting.id: True, plain.meeting.id: False}
    joined = await carol.join(secret.meeting.id)
    assert joined.meeting.e2ee


async def test_blobs_reach_only_the_named_member_of_the_same_meeting(
    connect: ClientFactory,
) -> None:
    alice, bob, carol = await people(connect, "alice", "bob", "carol")
    dave, erin = await people(connect, "dave", "erin")
    first = await alice.create_meeting("One", e2ee=True)
    await bob.join(first.meeting.id)
    await carol.join(first.meeting.id)
    second = await dave.create_meeting("Two", e2ee=True)
    await erin.join(second.meeting.id)
    await alice.relay_e2ee_blob(bob.participant_id or "", b"\x01\x02for bob")
    event = await bob.wait_for(lambda e: isinstance(e, sig.E2eeBlobReceived), timeout=5)
    assert isinstance(event, sig.E2eeBlobReceived)
    assert event.from_ == alice.participant_id and event.meeting_id == first.meeting.id
    assert base64.b64decode(event.blob) == b"\x01\x02for bob"
    # never across meetings, never to oneself, never to someone unknown
    await expect_error("not_found", alice.relay_e2ee_blob(dave.participant_id or "", b"x"))
    await expect_error("not_found", alice.relay_e2ee_blob(alice.participant_id or "", b"x"))
    await expect_error("not_found", alice.relay_e2ee_blob("nobody", b"x"))
    await dave.relay_e2ee_blob(erin.participant_id or "", b"two")
    await erin.wait_for(lambda e: isinstance(e, sig.E2eeBlobReceived), timeout=5)
    await carol.ping()
    await dave.ping()  # any stray blob would have arrived before these answers
    assert blob_events(carol) == [] and blob_events(dave) == []
    # after bob leaves, he is nobody's target any more
    await bob.leave()
    await expect_error("not_found", alice.relay_e2ee_blob(bob.participant_id or "", b"x"))


async def test_blobs_only_in_e2ee_meetings_and_only_members(connect: ClientFactory) -> None:
    alice, bob, carol = await people(connect, "alice", "bob", "carol")
    await expect_error("not_in_meeting", alice.relay_e2ee_blob(bob.participant_id or "", b"x"))
    plain = await alice.create_meeting("Plain")
    await bob.join(plain.meeting.id)
    await expect_error("not_e2ee", alice.relay_e2ee_blob(bob.participant_id or "", b"x"))
    await expect_error("not_in_meeting", carol.relay_e2ee_blob(bob.participant_id or "", b"x"))


async def test_blob_size_and_shape_are_bounded(server: ServerProcess,
                                               connect: ClientFactory) -> None:
    alice, bob = await people(connect, "alice", "bob")
    created = await alice.create_meeting("Sizes", e2ee=True)
    await bob.join(created.meeting.id)
    target = bob.participant_id or ""
    await alice.relay_e2ee_blob(target, bytes(sig.MAX_E2EE_BLOB_BYTES))  # the largest
    await expect_error("invalid_field",
                       alice.relay_e2ee_blob(target, bytes(sig.MAX_E2EE_BLOB_BYTES + 3)))
    async with aiohttp.ClientSession() as http, http.ws_connect(server.url) as ws:
        await ws.send_str(json.dumps({"type": "hello", "id": 1, "version": 1, "name": "raw"}))
        await ws.receive_json()
        await ws.send_str(json.dumps({"type": "join_meeting", "id": 2,
                                      "meeting_id": created.meeting.id}))
        while (await ws.receive_json()).get("id") != 2:
            pass
        for request_id, blob in ((3, "not base64!"), (4, ""), (5, {"x": 1})):
            await ws.send_str(json.dumps({"type": "e2ee_blob", "id": request_id,
                                          "to": target, "blob": blob}))
            while (reply := await ws.receive_json()).get("id") != request_id:
                pass
            assert reply["type"] == "error" and reply["code"] == "invalid_field", reply
    received = [e for e in blob_events(bob)]
    assert [len(base64.b64decode(e.blob)) for e in received] == [sig.MAX_E2EE_BLOB_BYTES]


async def test_a_blob_flood_is_rate_limited(connect: ClientFactory) -> None:
    alice, bob = await people(connect, "alice", "bob")
    created = await alice.create_meeting("Flood", e2ee=True)
    await bob.join(created.meeting.id)
    target = bob.participant_id or ""
    results = await asyncio.gather(
        *(alice.relay_e2ee_blob(target, bytes([i % 256]) * 8) for i in range(200)),
        return_exceptions=True,
    )
    limited = [r for r in results if isinstance(r, RequestError) and r.code == "rate_limited"]
    delivered = [r for r in results if r is None]
    assert limited and len(delivered) < 100  # bursts of 40 at 20 per second
    await bob.ping()
    assert len(blob_events(bob)) == len(delivered)


async def test_the_e2ee_option_survives_a_server_restart(
    server_factory: Any, tmp_path: Any
) -> None:
    data = tmp_path / "restart"
    first = server_factory(data_dir=data)
    alice, carol = Client(first.url, "alice"), Client(first.url, "carol")
    await alice.connect()
    await carol.connect()
    secret = (await alice.create_meeting("Secret", e2ee=True)).meeting.id
    plain = (await carol.create_meeting("Plain")).meeting.id
    first.stop()  # the meetings stay open in the store, waiting for their people
    await alice.close()
    await carol.close()
    second = server_factory(data_dir=data)
    bob = Client(second.url, "bob")
    await bob.connect()
    try:
        listed = {m.id: m.e2ee for m in await bob.list_meetings()}
        assert listed == {secret: True, plain: False}
        assert (await bob.join(secret)).meeting.e2ee
    finally:
        await bob.close()
