"""A participant that wants no video (``set_media`` ``receive_video: false``): the router
forwards it none and ignores its video feedback; turned back on, each stream resumes from a
keyframe asked of the publisher. Router (fake clock) and signaling core."""

from __future__ import annotations

import pytest

from confero.protocol import rtcp
from confero.protocol import signaling as sig
from confero.protocol.rtp import RtpPacket, is_rtcp
from confero.protocol.vp8 import is_keyframe, packetize, parse_descriptor
from confero.server.core import CoreSettings, SignalingCore
from confero.server.media_router import MediaRouter
from confero.server.registry import MeetingRegistry
from tests.test_core import Harness
from tests.test_media_core import Peer, bind
from tests.test_media_limits import vp8_keyframe

Datagrams = list[tuple[bytes, tuple[str, int]]]


def send_frame(router: MediaRouter, peer: Peer, index: int, now: float, *,
               keyframe: bool = False) -> Datagrams:
    """One VP8 frame of three packets from ``peer`` (PictureID ``index``)."""
    data = vp8_keyframe(320, 240, 3000) if keyframe else b"\x01" + b"v" * 3000
    payloads = packetize(data, index, 1200)
    out: Datagrams = []
    for i, payload in enumerate(payloads):
        peer.seq += 1
        packet = RtpPacket(96, peer.seq, 3000 * index, peer.grant.video_ssrc, payload,
                           i == len(payloads) - 1)
        out += router.handle_datagram(peer.srtp.protect_rtp(packet.serialize()),
                                      peer.address, now)
    return out


def video_to(out: Datagrams, peer: Peer) -> list[RtpPacket]:
    return [peer.read(data) for data, address in out
            if address == peer.address and not is_rtcp(data)]


def plis_to(out: Datagrams, peer: Peer) -> list[rtcp.Pli]:
    found = []
    for data, address in out:
        if address == peer.address and is_rtcp(data):
            found += [p for p in rtcp.parse_compound(peer.srtp.unprotect_rtcp(data))
                      if isinstance(p, rtcp.Pli)]
    return found


def test_a_receiver_that_wants_no_video_gets_none_and_resumes_at_a_keyframe() -> None:
    router = MediaRouter(5000, pli_interval=0.5)
    alice, bob, carol = (Peer(router, n, "m", p) for n, p in
                         (("alice", 1), ("bob", 2), ("carol", 3)))
    bind(router, alice, bob, carol)
    now, index = 0.0, 0
    carol_seqs: list[int] = []
    out = send_frame(router, alice, index, now, keyframe=True)
    carol_seqs += [p.sequence_number for p in video_to(out, carol)]
    assert len(carol_seqs) == 3  # both get video while carol wants it

    router.set_receive_video("carol", False)
    bob_got = carol_got = 0
    asked: list[rtcp.Pli] = []
    for index in range(1, 31):  # a second of video, with ticks and a keyframe
        now = index / 30
        out = send_frame(router, alice, index, now, keyframe=index == 15)
        out += router.tick(now)
        bob_got += len(video_to(out, bob))
        carol_got += len(video_to(out, carol))
        asked += plis_to(out, alice)
    assert bob_got == 90 and carol_got == 0
    assert asked == []  # nor is alice asked for keyframes on carol's behalf
    assert router.counters["video_not_wanted"] == 90
    # her NACKs and PLIs for video are not answered (no retransmission, no PLI to alice)
    before = router.counters["pli_forwarded"]
    out = router.handle_datagram(carol.rtcp(rtcp.Nack(carol.grant.video_ssrc,
                                                      alice.grant.video_ssrc, [1, 2])),
                                 carol.address, now)
    out += router.handle_datagram(carol.rtcp(rtcp.Pli(carol.grant.video_ssrc,
                                                      alice.grant.video_ssrc)),
                                  carol.address, now)
    assert out == [] and router.counters["video_feedback_not_wanted"] == 2
    assert router.counters["pli_forwarded"] == before and router.counters["retransmitted"] == 0

    # back on: the publisher is asked for a keyframe, and carol gets nothing before it
    router.set_receive_video("carol", True)
    plis: list[rtcp.Pli] = []
    resumed: list[RtpPacket] = []
    for index in range(31, 41):  # a third of a second: the layer choice runs in it
        now = index / 30
        out = router.tick(now) + send_frame(router, alice, index, now)
        plis += plis_to(out, alice)
        resumed += video_to(out, carol)
    assert [p.media_ssrc for p in plis] == [alice.grant.video_ssrc]
    assert router.counters["pli_for_resume"] >= 1
    assert resumed == []  # delta frames would not decode: none is sent
    now = 41 / 30
    resumed = video_to(send_frame(router, alice, 41, now, keyframe=True), carol)
    assert len(resumed) == 3
    first = resumed[0]
    assert is_keyframe(first.payload, parse_descriptor(first.payload))
    # her numbering simply goes on: no hole for her to NACK
    assert [p.sequence_number for p in resumed] == [carol_seqs[-1] + i for i in (1, 2, 3)]
    after = video_to(send_frame(router, alice, 42, now + 1 / 30), carol)
    assert len(after) == 3  # and the frames after the keyframe flow again


def test_a_receiver_that_never_wanted_video_waits_for_a_keyframe_too() -> None:
    """Video off before any arrived: the streams that start meanwhile are held back too."""
    router = MediaRouter(5000, pli_interval=0.5)
    alice, carol = Peer(router, "alice", "m", 1), Peer(router, "carol", "m", 3)
    bind(router, alice, carol)
    router.set_receive_video("carol", False)
    router.set_receive_video("nobody", False)  # unknown participants are ignored
    for index in range(10):
        out = send_frame(router, alice, index, index / 30, keyframe=index == 0)
        assert video_to(out, carol) == []
    router.set_receive_video("carol", True)
    out = router.tick(1.0) + send_frame(router, alice, 10, 1.0)
    assert len(plis_to(out, alice)) == 1 and video_to(out, carol) == []
    got = video_to(send_frame(router, alice, 11, 1.1, keyframe=True), carol)
    assert got and is_keyframe(got[0].payload, parse_descriptor(got[0].payload))


# ---------------------------------------------------------------------------- signaling


def test_set_media_receive_video_is_optional_and_typed() -> None:
    request = sig.decode_request(b'{"type":"set_media","id":1,"camera":true,'
                                 b'"microphone":false,"receive_video":false}')
    assert isinstance(request, sig.SetMedia) and request.receive_video is False
    old = sig.decode_request(b'{"type":"set_media","id":2,"camera":true,"microphone":true}')
    assert isinstance(old, sig.SetMedia) and old.receive_video is True
    with pytest.raises(sig.ProtocolError) as raised:
        sig.decode_request(b'{"type":"set_media","id":3,"camera":true,'
                           b'"microphone":true,"receive_video":"no"}')
    assert raised.value.code == sig.ErrorCode.INVALID_FIELD
    assert "receive_video" in str(raised.value)


def test_the_core_passes_receive_video_to_the_router_and_tells_nobody() -> None:
    h = Harness()
    router = MediaRouter(5000)
    h.core = SignalingCore(MeetingRegistry(empty_grace=5.0), h.store, CoreSettings(),
                           media=router)
    alice, bob = h.connect("alice"), h.connect("bob")
    created = h.request(alice, "create_meeting", title="quiet", mode="server")["result"]
    joined = h.request(bob, "join_meeting", meeting_id=created["meeting"]["id"])["result"]
    [alice_id] = [p["id"] for p in joined["participants"] if p["name"] == "alice"]
    assert router._peers[alice_id].receive_video is True
    h.request(alice, "set_media", camera=False, microphone=False)
    told = len(h.events(bob, "media_changed"))
    reply = h.request(alice, "set_media", camera=False, microphone=False,
                      receive_video=False)
    assert reply["type"] == "ok"
    assert router._peers[alice_id].receive_video is False
    # a receiving choice is nobody else's business
    assert len(h.events(bob, "media_changed")) == told
    # an older client's set_media (no field) means "send me video"
    h.request(alice, "set_media", camera=False, microphone=False)
    assert router._peers[alice_id].receive_video is True
    reply = h.request(alice, "set_media", camera=False, microphone=False,
                      receive_video="off")
    assert reply["type"] == "error" and reply["code"] == "invalid_field"
    assert "receive_video" in reply["message"]
    assert router._peers[alice_id].receive_video is True  # unchanged by the bad request
