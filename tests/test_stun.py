"""The server's STUN binding responder (RFC 8489) on the media port."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections import Counter

from aioice import stun

from confero.server.stun import StunResponder, is_stun
from tests.conftest import ServerProcess


def _request() -> stun.Message:
    return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)


def test_binding_request_is_answered_with_the_source_address() -> None:
    responder = StunResponder()
    request = _request()
    answer = responder.handle(bytes(request), ("203.0.113.7", 40123))
    assert answer is not None and is_stun(answer)
    response = stun.parse_message(answer)  # checks FINGERPRINT when present
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("203.0.113.7", 40123)
    assert "FINGERPRINT" in response.attributes
    # the address travels XOR-ed, not in the clear (RFC 8489 14.2)
    assert socket.inet_aton("203.0.113.7") not in answer
    assert responder.counters["stun_answered"] == 1


def test_fingerprint_is_checked_by_a_strict_parser() -> None:
    answer = StunResponder().handle(bytes(_request()), ("192.0.2.1", 1))
    assert answer is not None
    broken = bytearray(answer)
    broken[-1] ^= 0xFF
    try:
        stun.parse_message(bytes(broken))
    except ValueError:
        pass
    else:
        raise AssertionError("a corrupted FINGERPRINT must not parse")


def test_garbage_and_non_requests_are_dropped_and_counted() -> None:
    counters: Counter[str] = Counter()
    responder = StunResponder(counters)
    assert responder.handle(b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"\x00" * 12, ("h", 1)) is None
    indication = stun.Message(message_method=stun.Method.BINDING,
                              message_class=stun.Class.INDICATION)
    assert responder.handle(bytes(indication), ("192.0.2.1", 1)) is None
    assert responder.handle(b"\x00" * 2000, ("192.0.2.1", 1)) is None
    assert counters["stun_dropped_malformed"] == 1
    assert counters["stun_ignored"] == 1
    assert counters["stun_dropped_oversize"] == 1


def test_rtp_is_not_taken_for_stun() -> None:
    assert not is_stun(b"\x80" + b"\x00" * 30)
    assert is_stun(bytes(_request()))


async def test_real_server_answers_stun_on_the_media_port(server: ServerProcess) -> None:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[tuple[bytes, tuple[str, int]]] = loop.create_future()

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not answered.done():
                answered.set_result((data, addr))

    transport, _ = await loop.create_datagram_endpoint(
        Probe, local_addr=("127.0.0.1", 0))
    try:
        request = _request()
        transport.sendto(bytes(request), ("127.0.0.1", server.media_port))
        data, _ = await asyncio.wait_for(answered, 5)
        response = stun.parse_message(data)
        assert response.transaction_id == request.transaction_id
        assert response.attributes["XOR-MAPPED-ADDRESS"] == transport.get_extra_info(
            "sockname")[:2]
    finally:
        transport.close()
    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(server.http + "metrics", timeout=5).read().decode())
    assert 'confero_media_events_total{event="stun_answered"} 1.0' in metrics


async def test_status_page_and_metrics_show_media_per_meeting(server: ServerProcess) -> None:
    from confero.client import Client

    alice = Client(server.url, "alice")
    bob = Client(server.url, "bob")
    alice.p2p = bob.p2p = True
    await alice.connect()
    await bob.connect()
    try:
        created = await alice.create_meeting("proof", mode="server")
        assert created.mode_setting == "server" and created.mode == "server"
        await bob.join(created.meeting.id)
        media = await bob.meeting_media()
        assert media.meeting_id == created.meeting.id and media.mode == "server"
        assert media.forwarded_bytes == 0 and media.received_bytes == 0

        def fetch(path: str) -> str:
            with urllib.request.urlopen(server.http + path, timeout=5) as response:
                return str(response.read().decode())

        page = await asyncio.to_thread(fetch, "")
        assert "Media per meeting" in page and created.meeting.id in page
        metrics = await asyncio.to_thread(fetch, "metrics")
        line = f'confero_meeting_media_received_bytes{{meeting="{created.meeting.id}"}} 0.0'
        assert line in metrics
        # the server's congestion control per subscriber, summarised per meeting
        estimate = (f'confero_meeting_downlink_estimate_bps{{meeting="{created.meeting.id}",'
                    'stat="min"}')
        assert estimate in metrics
    finally:
        await alice.close()
        await bob.close()
