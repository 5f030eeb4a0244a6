"""Screen share as its own stream (issue 12 item 7): the router, the endpoint, the signaling."""

from __future__ import annotations

import pytest

from confero.app.layout_policy import LayoutPolicy
from confero.client.endpoint import EndpointConfig, KeyframeNeeded, MediaEndpoint
from confero.protocol import consent, rtcp
from confero.protocol import signaling as sig
from confero.protocol.rtp import RtpPacket
from confero.protocol.srtp import SrtpContext, decode_key
from confero.protocol.vp8 import packetize
from confero.server.core import CoreSettings, SignalingCore
from confero.server.media_router import MediaRouter
from confero.server.registry import MeetingRegistry
from tests.test_core import Harness

Out = list[tuple[bytes, tuple[str, int]]]


class Peer:
    """A participant's side of the SRTP keys, to craft and read packets."""

    def __init__(self, router: MediaRouter, pid: str, meeting: str, port: int) -> None:
        self.pid = pid
        router.reserve(pid)
        self.grant = router.admit(pid, meeting)
        self.srtp = SrtpContext(tx_key=decode_key(self.grant.key_up),
                                rx_key=decode_key(self.grant.key_down))
        self.address = ("127.0.0.1", port)
        self.seqs: dict[int, int] = {}

    def video(self, ssrc: int, body: bytes = b"v" * 50) -> bytes:
        seq = self.seqs[ssrc] = self.seqs.get(ssrc, 0) + 1
        payload = packetize(b"\x01" + body, seq)[0]
        packet = RtpPacket(96, seq, 3000 * seq, ssrc, payload, True)
        return self.srtp.protect_rtp(packet.serialize())

    def rtcp(self, packet: rtcp.RtcpPacket) -> bytes:
        return self.srtp.protect_rtcp(packet.pack())  # type: ignore[union-attr]

    def read(self, data: bytes) -> RtpPacket:
        return RtpPacket.parse(self.srtp.unprotect_rtp(data))

    def bind(self, router: MediaRouter, now: float = 0.0) -> None:
        out = router.handle_datagram(self.rtcp(rtcp.ReceiverReport(self.grant.video_ssrc)),
                                     self.address, now)
        for data, address in out:
            if address == self.address and data[1] == consent.APP:
                [challenge] = rtcp.parse_compound(self.srtp.unprotect_rtcp(data))
                echo = consent.answer(challenge, self.grant.video_ssrc)
                assert echo is not None
                router.handle_datagram(self.srtp.protect_rtcp(echo), self.address, now)
        assert router._peers[self.pid].address == self.address


@pytest.fixture
def router() -> MediaRouter:
    return MediaRouter(5000, pli_interval=0.5)


def test_every_participant_is_granted_a_distinct_screen_ssrc(router: MediaRouter) -> None:
    audio, video, screen, _low = router.reserve("alice")
    grant = router.admit("alice", "m")
    assert grant.screen_ssrc == screen and len({audio, video, screen, grant.mix_ssrc}) == 4
    other = router.reserve("bob")[2]
    assert other != screen
    assert router.rekey("alice") is not None
    assert router.rekey("alice").screen_ssrc == screen  # type: ignore[union-attr]


def test_a_screen_reaches_the_others_of_its_meeting_and_never_another(
    router: MediaRouter,
) -> None:
    alice, bob, carol = (Peer(router, n, "m1", p) for n, p in
                         (("alice", 1), ("bob", 2), ("carol", 3)))
    stranger = Peer(router, "stranger", "m2", 4)
    for peer in (alice, bob, carol, stranger):
        peer.bind(router)
    camera = router.handle_datagram(alice.video(alice.grant.video_ssrc, b"c" * 40),
                                    alice.address, 1.0)
    screen = router.handle_datagram(alice.video(alice.grant.screen_ssrc, b"s" * 40),
                                    alice.address, 1.0)
    assert sorted(addr for _, addr in screen) == [bob.address, carol.address]
    for data, address in screen:
        receiver = bob if address == bob.address else carol
        packet = receiver.read(data)
        assert packet.ssrc == alice.grant.screen_ssrc  # its own stream, not the camera's
        assert packet.payload.endswith(b"s" * 40)
    assert {bob.read(d).ssrc for d, a in camera if a == bob.address} == {alice.grant.video_ssrc}
    assert router.counters["screen_packets"] == 1
    # the stranger's own screen stays in its meeting
    assert router.handle_datagram(stranger.video(stranger.grant.screen_ssrc),
                                  stranger.address, 1.1) == []


def test_a_client_cannot_publish_on_an_ssrc_not_granted_to_it(router: MediaRouter) -> None:
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    alice.bind(router)
    bob.bind(router)
    # on bob's screen SSRC under alice's key: not bob's key, refused
    assert router.handle_datagram(alice.video(bob.grant.screen_ssrc), alice.address, 1.0) == []
    assert router.counters["dropped_auth"] == 1
    # on an SSRC nobody was granted
    assert router.handle_datagram(alice.video(0x1234567), alice.address, 1.0) == []
    assert router.counters["dropped_unknown_ssrc"] == 1
    # video on her own audio SSRC is not a video stream
    assert router.handle_datagram(alice.video(alice.grant.audio_ssrc), alice.address, 1.0) == []
    assert router.counters["dropped_wrong_stream"] == 1
    assert router.counters["screen_packets"] == 0


def test_nack_and_pli_of_the_screen_go_to_the_screen_stream(router: MediaRouter) -> None:
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    alice.bind(router)
    bob.bind(router)
    screen = alice.grant.screen_ssrc
    for _ in range(3):
        router.handle_datagram(alice.video(alice.grant.video_ssrc, b"c" * 30), alice.address, 1.0)
        router.handle_datagram(alice.video(screen, b"s" * 30), alice.address, 1.0)
    out = router.handle_datagram(bob.rtcp(rtcp.Nack(bob.grant.video_ssrc, screen, [2])),
                                 bob.address, 1.1)
    [(data, address)] = out
    resent = bob.read(data)
    assert address == bob.address and resent.ssrc == screen
    assert resent.payload.endswith(b"s" * 30)
    # a PLI on the screen asks the publisher for a screen keyframe, throttled per stream
    out = router.handle_datagram(bob.rtcp(rtcp.Pli(bob.grant.video_ssrc, screen)),
                                 bob.address, 2.0)
    [(data, address)] = out
    [pli] = rtcp.parse_compound(alice.srtp.unprotect_rtcp(data))
    assert address == alice.address and isinstance(pli, rtcp.Pli) and pli.media_ssrc == screen
    camera_pli = rtcp.Pli(bob.grant.video_ssrc, alice.grant.video_ssrc)
    assert len(router.handle_datagram(bob.rtcp(camera_pli), bob.address, 2.1)) == 1
    # a hole in the screen the server never got is asked of the publisher, for the screen
    alice.seqs[screen] += 1
    router.handle_datagram(alice.video(screen), alice.address, 3.0)
    out = router.handle_datagram(bob.rtcp(rtcp.Nack(bob.grant.video_ssrc, screen, [4])),
                                 bob.address, 3.1)
    [(data, address)] = out
    [nack] = rtcp.parse_compound(alice.srtp.unprotect_rtcp(data))
    assert isinstance(nack, rtcp.Nack) and nack.media_ssrc == screen and nack.lost == [4]


def test_leaving_frees_the_screen_ssrc(router: MediaRouter) -> None:
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    alice.bind(router)
    bob.bind(router)
    router.handle_datagram(alice.video(alice.grant.screen_ssrc), alice.address, 1.0)
    assert router._peers["bob"].forwarders.keys() == {alice.grant.screen_ssrc}
    router.release("alice")
    assert router._peers["bob"].forwarders == {}
    assert router.handle_datagram(alice.video(alice.grant.screen_ssrc), alice.address, 2.0) == []
    assert router.counters["dropped_unknown_ssrc"] == 1


# ---------------------------------------------------------------------------- endpoint


def endpoint_pair() -> tuple[MediaEndpoint, SrtpContext, EndpointConfig]:
    key_up, key_down = b"u" * 30, b"d" * 30
    config = EndpointConfig(audio_ssrc=11, video_ssrc=22, mix_ssrc=33, tx_key=key_up,
                            rx_key=key_down, screen_ssrc=44)
    server = SrtpContext(tx_key=key_down, rx_key=key_up)
    return MediaEndpoint(config, 0.0), server, config


def sent(endpoint: MediaEndpoint, server: SrtpContext) -> list[RtpPacket]:
    packets = []
    for data in endpoint.datagrams_to_send():
        if data[1] in (200, 201, 204, 205, 206):  # RTCP
            continue
        packets.append(RtpPacket.parse(server.unprotect_rtp(data)))
    return packets


def test_the_endpoint_sends_the_screen_on_its_own_ssrc_with_its_own_numbering() -> None:
    endpoint, server, config = endpoint_pair()
    frame = b"\x00" + b"f" * 200
    endpoint.send_video_frame(frame, keyframe=False, capture_us=1, captured_at=0.1, now=0.1)
    endpoint.send_video_frame(frame, keyframe=False, capture_us=1, captured_at=0.1, now=0.1,
                              stream="screen")
    endpoint.handle_timer(0.2)
    packets = sent(endpoint, server)
    by_ssrc = {p.ssrc for p in packets}
    assert by_ssrc == {config.video_ssrc, config.screen_ssrc}
    # a NACK of the screen is answered from the screen's own history
    screen_seq = next(p.sequence_number for p in packets if p.ssrc == config.screen_ssrc)
    nack = rtcp.Nack(99, config.screen_ssrc, [screen_seq])
    endpoint.receive_datagram(server.protect_rtcp(nack.pack()), 0.3)
    endpoint.handle_timer(0.31)
    # (the same packet again: SRTP would call it a replay, its header is in the clear)
    resent = [(int.from_bytes(d[8:12], "big"), int.from_bytes(d[2:4], "big"))
              for d in endpoint.datagrams_to_send() if d[1] not in (200, 201, 204, 205, 206)]
    assert resent == [(config.screen_ssrc, screen_seq)]
    # a PLI names the stream that needs a keyframe
    endpoint.receive_datagram(server.protect_rtcp(rtcp.Pli(99, config.screen_ssrc).pack()), 0.4)
    events = []
    while (event := endpoint.next_event()) is not None:
        events.append(event)
    assert KeyframeNeeded(stream="screen") in events
    assert KeyframeNeeded(stream="camera") not in events


def test_the_endpoint_refuses_a_screen_without_a_granted_ssrc() -> None:
    config = EndpointConfig(1, 2, 3, b"u" * 30, b"d" * 30)
    endpoint = MediaEndpoint(config, 0.0)
    endpoint.send_video_frame(b"\x00" * 50, keyframe=False, capture_us=1, captured_at=0.1,
                              stream="screen")
    assert endpoint.counters["screen_not_granted"] == 1


# ---------------------------------------------------------------------------- signaling


def test_set_media_carries_screen_and_old_clients_still_parse() -> None:
    request = sig.decode_request(b'{"type":"set_media","id":1,"camera":true,'
                                 b'"microphone":false,"screen":true}')
    assert isinstance(request, sig.SetMedia) and request.screen
    old = sig.decode_request(b'{"type":"set_media","id":2,"camera":true,"microphone":true}')
    assert isinstance(old, sig.SetMedia) and not old.screen
    with pytest.raises(sig.ProtocolError):
        sig.decode_request(b'{"type":"set_media","id":3,"camera":true,'
                           b'"microphone":true,"screen":"yes"}')
    event = sig.decode_server_message(
        b'{"type":"media_changed","meeting_id":"m","participant_id":"p","camera":false,'
        b'"microphone":false}')
    assert isinstance(event, sig.MediaChanged) and not event.screen


def test_the_core_grants_announces_and_validates_screen_sharing() -> None:
    h = Harness()
    h.core = SignalingCore(MeetingRegistry(empty_grace=5.0), h.store, CoreSettings(),
                           media=MediaRouter(5000))
    alice, bob = h.connect("alice"), h.connect("bob")
    created = h.request(alice, "create_meeting", title="slides", mode="server")["result"]
    grant = created["media"]
    assert grant["screen_ssrc"] not in (0, grant["audio_ssrc"], grant["video_ssrc"])
    joined = h.request(bob, "join_meeting", meeting_id=created["meeting"]["id"])["result"]
    [alice_info] = [p for p in joined["participants"] if p["name"] == "alice"]
    assert alice_info["screen_ssrc"] == grant["screen_ssrc"] and alice_info["screen"] is False
    reply = h.request(alice, "set_media", camera=True, microphone=False, screen=True)
    assert reply["type"] == "ok"
    [changed] = h.events(bob, "media_changed")
    assert changed["screen"] is True and changed["camera"] is True
    # an older client's set_media (no screen field) means "not sharing"
    h.request(alice, "set_media", camera=True, microphone=False)
    assert h.events(bob, "media_changed")[-1]["screen"] is False
    # a bad value is refused with a clear error
    reply = h.request(alice, "set_media", camera=True, microphone=False, screen="yes")
    assert reply["type"] == "error" and reply["code"] == "invalid_field"
    # without a media plane nobody holds a screen SSRC: sharing cannot be announced
    plain = Harness()
    carol, dave = plain.connect("carol"), plain.connect("dave")
    meeting = plain.request(carol, "create_meeting", title="chat only")["result"]
    plain.request(dave, "join_meeting", meeting_id=meeting["meeting"]["id"])
    plain.request(carol, "set_media", camera=True, microphone=False, screen=True)
    assert plain.events(dave, "media_changed")[-1]["screen"] is False


# ---------------------------------------------------------------------------- layout


def test_a_shared_screen_takes_the_stage_and_the_layout_before_it_returns() -> None:
    policy = LayoutPolicy(mode="grid")
    people = ["a", "b", "c"]
    assert policy.arrange(people, 0.0).kind == "grid"
    policy.screen_started("b:screen")
    arranged = policy.arrange([*people, "b:screen"], 1.0)
    assert arranged.kind == "speaker" and arranged.stage == "b:screen"
    policy.heard({"c"}, [*people, "b:screen"], 5.0)  # a talker does not take it from a screen
    assert policy.arrange([*people, "b:screen"], 5.0).stage == "b:screen"
    # a second screen takes over; when it stops the first is back; then the grid
    policy.screen_started("c:screen")
    assert policy.arrange([*people, "b:screen", "c:screen"], 6.0).stage == "c:screen"
    policy.screen_stopped("c:screen")
    assert policy.arrange([*people, "b:screen"], 7.0).stage == "b:screen"
    policy.screen_stopped("b:screen")
    assert policy.mode == "grid" and policy.arrange(people, 8.0).kind == "grid"
    # a pin wins over a screen
    policy.screen_started("a:screen")
    policy.pin("c")
    assert policy.arrange([*people, "a:screen"], 9.0).stage == "c"
    policy.pin("c")
    # an explicit choice during a share wins, and stays after it
    policy.set_mode("auto")
    policy.screen_stopped("a:screen")
    assert policy.mode == "auto"
