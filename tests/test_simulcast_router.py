"""Simulcast at the server (issue 9), sans-I/O: each subscriber gets a publisher's camera
or its low copy, whichever its downlink estimate carries, switched at keyframes with no
gap and no moment where both reach it."""

from __future__ import annotations

from confero.protocol import rtcp
from confero.protocol.rtp import RtpPacket, is_rtcp
from confero.protocol.vp8 import is_keyframe, packetize, parse_descriptor
from confero.server.media_router import MediaRouter
from tests.test_media_core import Peer, bind
from tests.test_media_limits import _FixedDownlink, vp8_keyframe

Datagrams = list[tuple[bytes, tuple[str, int]]]


class Publisher:
    """Alice: a camera of ~1.2 Mbit/s and a low copy of ~150 kbit/s, three temporal layers
    each, answering a PLI on either stream with a keyframe of that stream."""

    def __init__(self, router: MediaRouter, peer: Peer) -> None:
        self.router, self.peer = router, peer
        self.seq = {peer.grant.video_ssrc: 0, peer.grant.low_ssrc: 5000}
        self.pid = {peer.grant.video_ssrc: 0, peer.grant.low_ssrc: 300}
        self.want_key = {peer.grant.video_ssrc: True, peer.grant.low_ssrc: True}
        self.keyframes = {peer.grant.video_ssrc: 0, peer.grant.low_ssrc: 0}
        self.index = 0
        #: a PLI is answered this many frames later (the round trip and the encoder)
        self.delay = 5
        self._asked: dict[int, int] = {}

    def heard(self, out: Datagrams) -> None:
        for data, address in out:
            if address == self.peer.address and is_rtcp(data):
                for packet in rtcp.parse_compound(self.peer.srtp.unprotect_rtcp(data)):
                    if isinstance(packet, rtcp.Pli) and packet.media_ssrc in self.want_key:
                        self._asked.setdefault(packet.media_ssrc, self.index + self.delay)

    def frame(self, ssrc: int, index: int, size: int, now: float) -> Datagrams:
        if self._asked.get(ssrc, self.index + 1) <= self.index:
            del self._asked[ssrc]
            self.want_key[ssrc] = True
        tid = (0, 2, 1, 2)[index % 4]
        key = self.want_key[ssrc]
        if key:
            self.want_key[ssrc] = False
            self.keyframes[ssrc] += 1
            tid = 0
        data = vp8_keyframe(640, 480, size * 3) if key else b"\x01" + b"v" * size
        self.pid[ssrc] += 1
        out: Datagrams = []
        payloads = packetize(data, self.pid[ssrc], temporal=(tid, False, index // 4))
        for i, payload in enumerate(payloads):
            self.seq[ssrc] += 1
            packet = RtpPacket(96, self.seq[ssrc] & 0xFFFF, 3000 * index, ssrc, payload,
                               i == len(payloads) - 1)
            out += self.router.handle_datagram(
                self.peer.srtp.protect_rtp(packet.serialize()), self.peer.address, now)
        return out

    def both(self, index: int, now: float) -> Datagrams:
        self.index = index  # the clock PLIs are answered by (the copy counts its own frames)
        out = self.frame(self.peer.grant.video_ssrc, index, 5000, now)
        if index % 2 == 0:  # the copy at 15 fps
            out += self.frame(self.peer.grant.low_ssrc, index // 2, 1200, now)
        return out


def video_to(peer: Peer, out: Datagrams) -> list[RtpPacket]:
    return [packet for data, address in out if address == peer.address
            and not is_rtcp(data) and (packet := peer.read(data)).payload_type == 96]


def setup() -> tuple[MediaRouter, Publisher, Peer, Peer, _FixedDownlink]:
    router = MediaRouter(5000)
    alice, bob, carol = (Peer(router, n, "m", p) for n, p in
                         (("alice", 1), ("bob", 2), ("carol", 3)))
    bind(router, alice, bob, carol)
    fast = _FixedDownlink()
    fast.bps = 5_000_000
    router._peers["bob"].downlink = fast
    slow = _FixedDownlink()
    slow.bps = 500_000
    router._peers["carol"].downlink = slow
    return router, Publisher(router, alice), bob, carol, slow


def test_a_slow_subscriber_gets_the_low_copy_and_a_fast_one_the_camera() -> None:
    router, alice, bob, carol, _ = setup()
    camera, low = alice.peer.grant.video_ssrc, alice.peer.grant.low_ssrc
    got: dict[str, dict[int, int]] = {"bob": {}, "carol": {}}
    for index in range(150):  # 5 s at 30 fps
        now = index / 30
        out = alice.both(index, now) + router.tick(now)
        alice.heard(out)
        if index >= 90:  # after the first choices settled
            for name, peer in (("bob", bob), ("carol", carol)):
                for packet in video_to(peer, out):
                    got[name][packet.ssrc] = got[name].get(packet.ssrc, 0) + 1
    assert set(got["bob"]) == {camera}  # the full camera, never the copy
    assert set(got["carol"]) == {low}  # only the copy fits 500 kbit/s
    assert got["carol"][low] >= 50  # every frame of the copy (60 in 2 s)
    assert router.counters["simulcast_switches"] >= 1


def test_switching_up_keeps_the_copy_until_the_cameras_keyframe_is_out() -> None:
    """Carol's link grows: the camera resumes from a keyframe the server asks for; until
    that keyframe goes out she keeps getting the copy, and after it only the camera."""
    router, alice, _bob, carol, slow = setup()
    camera, low = alice.peer.grant.video_ssrc, alice.peer.grant.low_ssrc
    for index in range(90):
        now = index / 30
        alice.heard(alice.both(index, now) + router.tick(now))
    slow.bps = 5_000_000
    sequence: list[tuple[int, bool, int]] = []  # (ssrc, keyframe, frame index) of each
    # new picture carol gets, in order
    for index in range(90, 180):
        now = index / 30
        out = alice.both(index, now) + router.tick(now)
        alice.heard(out)
        for packet in video_to(carol, out):
            descriptor = parse_descriptor(packet.payload)
            if descriptor.starts_frame:
                sequence.append((packet.ssrc, is_keyframe(packet.payload, descriptor), index))
    first_camera = next(i for i, (ssrc, *_) in enumerate(sequence) if ssrc == camera)
    assert sequence[first_camera][1]  # the camera came back with a keyframe
    last_copy = max(index for ssrc, _, index in sequence[:first_camera] if ssrc == low)
    assert sequence[first_camera][2] - last_copy <= 2  # the copy flowed up to it (15 fps)
    assert all(ssrc == camera for ssrc, *_ in sequence[first_camera + 1:])  # copy stopped


def test_without_a_copy_the_camera_is_forwarded_as_before() -> None:
    """A publisher that sends no copy (P2P-capable old client, E2EE, a tiny uplink): every
    subscriber gets the camera, the slow one its base layer."""
    router, alice, bob, carol, _ = setup()
    camera = alice.peer.grant.video_ssrc
    got: dict[int, int] = {}
    for index in range(150):
        now = index / 30
        alice.index = index
        out = alice.frame(camera, index, 1500, now) + router.tick(now)
        alice.heard(out)
        if index >= 90:
            for packet in video_to(carol, out):
                got[packet.ssrc] = got.get(packet.ssrc, 0) + 1
            assert video_to(bob, out) or index % 4  # bob gets every picture
    assert set(got) == {camera}


def test_a_keyframe_leaves_for_a_slow_subscriber_paced_not_as_one_burst() -> None:
    """A 60 kB keyframe arrives at once; carol's link is estimated at 500 kbit/s: the server
    sends her at most 2.5x that (plus a 25 ms burst), spread over its ticks, every packet
    in order and none dropped; bob's fast link gets most of it at once."""
    router, alice, bob, carol, _ = setup()
    camera = alice.peer.grant.video_ssrc
    out = alice.frame(camera, 0, 20_000, 0.0)  # a keyframe: 3 x 20 kB
    sent = alice.seq[camera]  # packets of the keyframe
    assert len(video_to(bob, out)) >= 30  # a fast link: most of it at once
    first = video_to(carol, out)
    got = [p.sequence_number for p in first]
    size = sum(len(p.payload) + 60 for p in first)  # with headers and the wire's
    assert sent >= 30 and len(got) < sent / 3
    now = 0.0
    while len(got) < sent and now < 1.0:
        now = round(now + 0.02, 3)
        released = video_to(carol, router.tick(now))
        got += [p.sequence_number for p in released]
        size += sum(len(p.payload) + 60 for p in released)
        assert size * 8 <= 2.5 * 500_000 * (now + 0.025) + 8 * 2000  # paced
    assert len(got) == sent  # nothing dropped
    assert got == sorted(got)  # in order
    assert now >= 0.3  # 60 kB at 1.25 Mbit/s takes ~0.4 s


def test_a_link_flapping_at_the_boundary_does_not_flap_the_picture() -> None:
    """Carol's estimate swings between too little and plenty every half second: after
    each move down the server waits longer before trying the camera again (2, 4, 8 s...),
    so 20 s of it cost a handful of switches (each a keyframe), not forty."""
    router, alice, _bob, _carol, slow = setup()
    for index in range(600):  # 20 s
        now = index / 30
        slow.bps = 500_000 if (index // 15) % 2 == 0 else 5_000_000
        alice.heard(alice.both(index, now) + router.tick(now))
    assert 2 <= router.counters["simulcast_switches"] <= 10


def test_a_pli_for_the_form_a_subscriber_no_longer_gets_is_not_forwarded() -> None:
    """Carol gets the copy; her client still asks for a keyframe of the camera (its last
    frame there never completed). The publisher is not made to send keyframes nobody
    receives; a PLI for the copy she gets still goes through."""
    router, alice, _bob, carol, _ = setup()
    camera, low = alice.peer.grant.video_ssrc, alice.peer.grant.low_ssrc
    for index in range(90):
        now = index / 30
        alice.heard(alice.both(index, now) + router.tick(now))
    now = 3.0 + router.pli_interval  # past any throttle
    out = router.handle_datagram(carol.rtcp(rtcp.Pli(carol.grant.video_ssrc, camera)),
                                 carol.address, now)
    assert out == [] and router.counters["pli_for_paused_ignored"] == 1
    out = router.handle_datagram(carol.rtcp(rtcp.Pli(carol.grant.video_ssrc, low)),
                                 carol.address, now)
    alice.heard(out)
    assert alice._asked.get(low) is not None  # forwarded to the publisher
