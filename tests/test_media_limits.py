"""The media plane's limits without sockets (fake clock): consent before media goes to a new
address, retransmission budgets, coalesced upstream NACKs, decoder-bomb keyframes."""

from __future__ import annotations

import itertools

import pytest

from confero.protocol import consent, rtcp
from confero.protocol.rtp import RtpPacket, is_rtcp
from confero.protocol.token_bucket import TokenBucket
from confero.protocol.vp8 import keyframe_dimensions, packetize
from confero.server.downlink import Downlink
from confero.server.media_limits import RateMeter, UpstreamNacks
from confero.server.media_router import (
    CONSENT_REFRESH,
    CONSENT_RETRY,
    HISTORY_PACKETS,
    MAX_RETRANSMIT_PER_NACK,
    RETRANSMIT_DOWNLINK_SHARE,
    MediaRouter,
)
from tests.test_media_core import Peer, bind

Datagrams = list[tuple[bytes, tuple[str, int]]]
VICTIM = ("192.0.2.7", 4444)


def vp8_keyframe(width: int, height: int, size: int = 37) -> bytes:
    """An encoded VP8 keyframe header (RFC 6386 9.1) declaring ``width`` x ``height``."""
    tag = bytes([0x10, 0x02, 0x00])  # P=0 (key), version 0, show_frame, partition size
    header = tag + b"\x9d\x01\x2a" + width.to_bytes(2, "little") + height.to_bytes(2, "little")
    return header + b"\x00" * (size - len(header))


def send_video(router: MediaRouter, peer: Peer, frame: bytes, now: float,
               size: int | None = None) -> Datagrams:
    """One frame from ``peer``: every packet of it, what the router sent."""
    out: Datagrams = []
    payloads = packetize(frame, peer.seq, size or 1200)
    for index, payload in enumerate(payloads):
        peer.seq += 1
        packet = RtpPacket(96, peer.seq, 3000 * peer.seq, peer.grant.video_ssrc, payload,
                           index == len(payloads) - 1)
        out += router.handle_datagram(peer.srtp.protect_rtp(packet.serialize()), peer.address,
                                      now)
    return out


def nack(receiver: Peer, publisher: Peer, lost: list[int]) -> bytes:
    return receiver.rtcp(rtcp.Nack(receiver.grant.video_ssrc, publisher.grant.video_ssrc, lost))


def to(out: Datagrams, address: tuple[str, int]) -> list[bytes]:
    return [data for data, where in out if where == address]


def nacks_to(out: Datagrams, peer: Peer) -> list[rtcp.Nack]:
    """The NACKs among what was sent to ``peer`` (not its consent checks)."""
    found = []
    for data in to(out, peer.address):
        for packet in rtcp.parse_compound(peer.srtp.unprotect_rtcp(data)):
            if isinstance(packet, rtcp.Nack):
                found.append(packet)
    return found


# ---------------------------------------------------------------------------- VP8 header


def test_keyframe_dimensions_read_from_a_real_encoder() -> None:
    from confero.media.video import SyntheticCamera, Vp8Encoder

    camera = SyntheticCamera("x", 320, 240)
    encoder = Vp8Encoder(320, 240, 30)
    frames: list[bytes] = []
    for i in range(4):
        frames += encoder.encode(camera.frame(i * 33_000), i * 3000, i == 0)
    key, inter = frames[0], frames[1]
    first, *rest = packetize(key, 7, 200)
    assert keyframe_dimensions(first) == (320, 240)
    assert rest and all(keyframe_dimensions(p) is None for p in rest)  # not a frame start
    assert keyframe_dimensions(packetize(inter, 8)[0]) is None


def test_keyframe_dimensions_of_crafted_and_broken_headers() -> None:
    [bomb] = packetize(vp8_keyframe(12000, 12000), 1)
    assert keyframe_dimensions(bomb) == (12000, 12000)
    scaled = bytearray(packetize(vp8_keyframe(640, 480), 1)[0])
    scaled[4 + 7] |= 0xC0  # scaling bits (the top two of each 16-bit field) are not size
    scaled[4 + 9] |= 0x40
    assert keyframe_dimensions(bytes(scaled)) == (640, 480)
    assert keyframe_dimensions(bomb[:12]) is None  # truncated header
    assert keyframe_dimensions(b"") is None
    assert keyframe_dimensions(b"\x90\x80") is None  # descriptor only
    wrong = bytearray(bomb)
    wrong[4 + 3] = 0x00  # bad start code
    assert keyframe_dimensions(bytes(wrong)) is None


def test_keyframe_dimensions_walk_every_descriptor_layout() -> None:
    key = vp8_keyframe(800, 600)
    for descriptor in (b"\x10", b"\x90\x00", b"\x90\x80\x05", b"\x90\x80\x85\x01",
                       b"\x90\xe0\x85\x01\x07\x40", b"\x90\x10\x40"):
        assert keyframe_dimensions(descriptor + key) == (800, 600), descriptor
    assert keyframe_dimensions(b"\x80\x80\x85\x01" + key) is None  # not the start (S=0)
    assert keyframe_dimensions(b"\x11" + key) is None  # S=1, but of partition 1
    assert keyframe_dimensions(b"\x10" + b"\x01" + key[1:]) is None  # P=1: an interframe


# ---------------------------------------------------------------------------- consent


def test_consent_messages_round_trip_and_refuse_the_wrong_nonce() -> None:
    nonce = consent.new_nonce()
    [challenge] = rtcp.parse_compound(consent.make_challenge(0x1234, nonce))
    echo = consent.answer(challenge, 0xABCD)
    assert echo is not None
    [response] = rtcp.parse_compound(echo)
    assert consent.verify(response, nonce)
    assert consent.is_response(response)
    assert not consent.verify(response, consent.new_nonce())
    assert not consent.verify(challenge, nonce)  # a challenge is not its own answer
    assert consent.answer(response, 1) is None
    assert consent.answer(rtcp.Pli(1, 2), 1) is None
    with pytest.raises(ValueError):
        consent.make_challenge(1, b"short")


def test_a_new_address_gets_media_only_after_it_echoed_the_challenge() -> None:
    router = MediaRouter(5000)
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    bind(router, alice)
    keepalive = bob.rtcp(rtcp.ReceiverReport(bob.grant.video_ssrc))
    out = router.handle_datagram(keepalive, bob.address, 0.0)
    [(data, address)] = out
    assert address == bob.address and data[1] == consent.APP  # a challenge, nothing else
    assert send_video(router, alice, b"\x01" + b"v" * 50, 0.1) == []  # not yet consented
    # an echo from elsewhere, or with another nonce, binds nothing
    [challenge] = rtcp.parse_compound(bob.srtp.unprotect_rtcp(data))
    echo = consent.answer(challenge, bob.grant.video_ssrc)
    assert echo is not None
    router.handle_datagram(bob.srtp.protect_rtcp(echo), VICTIM, 0.2)
    forged = consent.answer(
        rtcp.parse_compound(consent.make_challenge(1, b"\x00" * 16))[0], bob.grant.video_ssrc)
    assert forged is not None
    router.handle_datagram(bob.srtp.protect_rtcp(forged), bob.address, 0.2)
    assert router.counters["consent_mismatch"] == 2
    assert send_video(router, alice, b"\x01" + b"v" * 50, 0.3) == []
    # the real echo from the challenged address
    router.handle_datagram(bob.srtp.protect_rtcp(echo), bob.address, 0.3)
    assert [a for _, a in send_video(router, alice, b"\x01" + b"v" * 50, 0.4)] == [bob.address]


def test_a_client_slower_to_answer_than_the_retry_interval_still_gets_consent() -> None:
    router = MediaRouter(5000)
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    bind(router, alice)
    keepalive = rtcp.ReceiverReport(bob.grant.video_ssrc)
    first = router.handle_datagram(bob.rtcp(keepalive), bob.address, 0.0)
    for i in range(1, 10):  # bob keeps sending; his echo takes 3 s (a loaded machine)
        router.handle_datagram(bob.rtcp(keepalive), bob.address, i / 3)
    assert router.counters["consent_challenges"] >= 4  # re-sent meanwhile
    assert bob.answer_consent(router, first, 3.0) == []  # the first one, answered late
    assert [a for _, a in send_video(router, alice, b"\x01" + b"v" * 50, 3.1)] == [bob.address]


def test_forged_source_nacks_send_the_victim_only_rare_small_challenges() -> None:
    """Issue 7 item 4: mallory holds her own keys and forges the victim's source address."""
    router = MediaRouter(5000)
    alice, mallory = Peer(router, "alice", "m", 1), Peer(router, "mallory", "m", 2)
    bind(router, alice, mallory)
    for i in range(300):
        send_video(router, alice, b"\x01" + b"v" * 1100, i / 30)
    to_victim = to_mallory = 0
    now = 10.0
    for i in range(1000):  # 100 NACKs a second for 10 s, each for 64 held packets
        now = 10.0 + i / 100
        lost = list(range(200 + i % 30, 264 + i % 30))
        out = router.handle_datagram(nack(mallory, alice, lost), VICTIM, now)
        to_victim += sum(len(d) for d in to(out, VICTIM))
        to_mallory += sum(len(d) for d in to(out, mallory.address))
    challenges = router.counters["consent_challenges"] - 2  # the two binds
    assert challenges <= 10 / CONSENT_RETRY + 1
    assert to_victim == challenges * 42  # RTCP APP + SRTCP: no media, ever
    assert router._peers["mallory"].address == mallory.address
    # what the NACKs cost goes to mallory's own address, within her budget: 2x alice's
    # ~36 kB/s (30 packets of ~1.1 kB a second, over the last second) plus 1 s of burst
    assert 0 < to_mallory <= 2 * 36_000 * 11 + 40_000
    assert router.counters["retransmit_over_budget"] > 0


def test_retransmissions_are_capped_per_nack_and_budgeted_per_receiver() -> None:
    router = MediaRouter(5000)
    alice, bob, carol = (Peer(router, n, "m", p) for n, p in
                         (("alice", 1), ("bob", 2), ("carol", 3)))
    bind(router, alice, bob, carol)
    for i in range(100):
        send_video(router, alice, b"\x01" + b"v" * 400, 1.0 + i / 100)  # ~43 kB/s
    out = router.handle_datagram(nack(bob, alice, list(range(1, 65))), bob.address, 2.0)
    assert len(out) == MAX_RETRANSMIT_PER_NACK
    assert {bob.read(d).sequence_number for d, _ in out} == set(range(1, 33))
    spent = sum(len(d) for d, _ in out)
    for i in range(1, 200):  # bob asks for everything, again and again, for 2 s
        out = router.handle_datagram(nack(bob, alice, list(range(1, 65))), bob.address,
                                     2.0 + i / 100)
        spent += sum(len(d) for d, _ in out)
    # at most 2x alice's rate per second plus a burst, and at most a fifth of bob's link
    # (its estimate: 1 Mbit/s at the start), plus a burst
    link = RETRANSMIT_DOWNLINK_SHARE * router.downlink_estimates()["bob"] / 8
    assert spent <= min(2 * 1.1 * 43_000, 1.1 * link) * (2 + 1)
    assert spent >= 2 * link * 0.9  # and he got real repair, not nothing
    # carol's budget is her own: bob's greed did not spend it
    out = router.handle_datagram(nack(carol, alice, [50]), carol.address, 4.0)
    assert [carol.read(d).sequence_number for d, _ in out] == [50]


# ---------------------------------------------------------------------------- upstream NACKs


def test_nacks_the_server_cannot_answer_are_dropped_or_coalesced_upstream() -> None:
    """Issue 7 item 5: only holes inside the history reach the publisher, at most one NACK
    per 50 ms, never a sequence number asked again within 0.2 s."""
    router = MediaRouter(5000)
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    bind(router, alice, bob)
    for i in range(HISTORY_PACKETS + 100):
        while alice.seq + 1 in (300, 301, 450):
            alice.seq += 1  # lost on the way to the server
        send_video(router, alice, b"\x01" + b"v" * 100, i / 30)
    now = 20.0
    asked: list[rtcp.Nack] = []
    for i in range(95):  # 95 NACKs in 95 ms: stale, never sent, and real holes
        lost = [5 + i, alice.seq + 1 + i, 300, 301, 450]
        now = 20.0 + i / 1000
        asked += nacks_to(router.handle_datagram(nack(bob, alice, lost), bob.address, now),
                          alice)
        asked += nacks_to(router.tick(now), alice)
    [first] = asked  # one NACK in 95 ms: the holes, once
    assert sorted(first.lost) == [300, 301, 450]
    assert router.counters["nack_dropped_stale"] == 95
    assert router.counters["nack_dropped_unknown"] == 95
    assert router.counters["nack_throttled"] > 0
    # later, still missing: asked again, coalesced with what waited for the interval
    [again] = nacks_to(router.handle_datagram(nack(bob, alice, [300]), bob.address, 20.3),
                       alice)
    assert again.lost == [300]
    router.handle_datagram(nack(bob, alice, [301]), bob.address, 20.31)  # waits its turn
    [waited] = nacks_to(router.tick(20.36), alice)
    assert waited.lost == [301]


def test_consent_is_refreshed_and_expires_without_answers() -> None:
    """As RFC 7675: an address that stops answering stops getting media."""
    router = MediaRouter(5000)
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    bind(router, alice, bob)
    now = 0.0
    while now < 60:  # alice answers every check; bob, gone, answers none
        now += 0.02
        rest = alice.answer_consent(router, router.tick(now), now)
        assert all(address == bob.address for _, address in rest)
    assert router.counters["consent_refreshed"] >= 60 / CONSENT_REFRESH - 2
    assert router.counters["consent_expired"] == 1
    assert send_video(router, alice, b"\x01" + b"v" * 50, now) == []  # nothing for bob
    # bob is back: his next packet starts a check, his answer restores his media
    out = send_video(router, bob, b"\x01" + b"v" * 50, now)
    assert bob.answer_consent(router, out, now) == [(out[-1][0], alice.address)]
    assert [a for _, a in send_video(router, alice, b"\x01" + b"v" * 50, now)] == [bob.address]


def test_upstream_nacks_unit() -> None:
    nacks = UpstreamNacks(interval=0.05, max_seqs=3, retry=0.2)
    assert all(nacks.add(s, 0.0) for s in (1, 2, 3, 1))
    assert not nacks.add(4, 0.0)  # the list is full
    assert nacks.due(0.0) == [1, 2, 3]
    assert nacks.add(5, 0.01) and nacks.due(0.02) == []  # within the interval
    assert nacks.due(0.05) == [5]
    assert not nacks.add(1, 0.1)  # asked 0.1 s ago
    assert nacks.add(1, 0.25)


# ---------------------------------------------------------------------------- budgets


def test_rate_meter_and_token_bucket() -> None:
    meter = RateMeter(1.0)
    assert meter.rate(0.0) == 0.0
    for i in range(20):
        meter.add(1000, i / 10)  # 10 kB/s for 2 s
    assert meter.rate(2.0) == pytest.approx(10_000, rel=0.15)
    assert meter.rate(10.0) < 2000  # went quiet: fading out
    bucket = TokenBucket(rate=1000, burst=1500, now=0.0)
    assert bucket.allow(0.0, 1000)
    assert not bucket.allow(0.0, 1000)  # 500 left
    assert bucket.allow(0.5, 1000)  # refilled 500
    assert not bucket.allow(100.0, 2000)  # never above the burst
    assert bucket.allow(100.0, 1500)  # empty now
    bucket.rate = 4000  # a budget that follows the bitrate: refilled at the new rate
    assert not bucket.allow(100.3, 1500)  # 1200 so far
    assert bucket.allow(100.4, 1500)


# ---------------------------------------------------------------------------- decoder bombs


def test_keyframes_declaring_too_large_a_picture_are_dropped_with_what_follows() -> None:
    router = MediaRouter(5000, max_video_size=(1920, 1080))
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    bind(router, alice, bob)
    assert len(send_video(router, alice, vp8_keyframe(320, 240), 1.0)) == 1
    assert len(send_video(router, alice, b"\x01" + b"v" * 50, 1.1)) == 1
    for i in range(10):
        assert send_video(router, alice, vp8_keyframe(12000, 12000), 2.0 + i / 10) == []
    assert send_video(router, alice, vp8_keyframe(1921, 1080), 3.0) == []
    big = vp8_keyframe(4000, 4000, 3000)  # three packets, none forwarded
    assert send_video(router, alice, big, 3.1, size=1200) == []
    assert send_video(router, alice, b"\x01" + b"v" * 50, 3.2) == []  # predicts from it
    assert router.counters["dropped_video_too_large"] == 10 + 1 + 3 + 1
    # a portrait picture fits either way round; the stream resumes with it
    assert len(send_video(router, alice, vp8_keyframe(1080, 1920), 4.0)) == 1
    assert len(send_video(router, alice, b"\x01" + b"v" * 50, 4.1)) == 1
    smaller = MediaRouter(5000, max_video_size=(640, 480))
    carol, dave = Peer(smaller, "carol", "m", 3), Peer(smaller, "dave", "m", 4)
    bind(smaller, carol, dave)
    assert send_video(smaller, carol, vp8_keyframe(1280, 720), 1.0) == []
    assert len(send_video(smaller, carol, vp8_keyframe(640, 480), 1.1)) == 1


def test_max_video_size_option_parses_width_by_height() -> None:
    import argparse

    from confero.cli import _video_size

    assert _video_size("1280x720") == (1280, 720)
    assert _video_size("640X480") == (640, 480)
    for bad in ("1280", "x720", "0x10", "-5x5", "axb", "1280x720x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            _video_size(bad)


# ---------------------------------------------------------------------------- pausing streams


class _FixedDownlink(Downlink):
    """A subscriber whose estimated downlink is what the test says."""

    bps = 1_000_000

    @property
    def target_bps(self) -> int:
        return self.bps


def test_a_slow_subscriber_keeps_the_last_speakers_picture_and_pauses_the_rest() -> None:
    """Two publishers of ~580 kbit/s whose base layers are ~145 kbit/s each; carol's link
    carries 250 kbit/s (~200 for video): she gets the picture of whoever spoke last, as
    many of its layers as fit, and none of the other's (rather than both frozen behind a
    full queue); when her link grows, the other comes back from a keyframe the server
    asked for."""
    router = MediaRouter(5000)
    alice, bob, carol = (Peer(router, n, "m", p) for n, p in
                         (("alice", 1), ("bob", 2), ("carol", 3)))
    bind(router, alice, bob, carol)
    link = _FixedDownlink()
    link.bps = 250_000
    router._peers["carol"].downlink = link
    pids = {"alice": 0, "bob": 0}

    def frame(peer: Peer, name: str, index: int, now: float) -> Datagrams:
        tid = (0, 2, 1, 2)[index % 4]
        keyframe = index % 120 == 0
        data = (vp8_keyframe(320, 240, 2300) if keyframe else b"\x01" + b"v" * 2300)
        pids[name] += 1
        out: Datagrams = []
        payloads = packetize(data, pids[name], temporal=(tid, False, index // 4))
        for i, payload in enumerate(payloads):
            peer.seq += 1
            packet = RtpPacket(96, peer.seq, 3000 * index, peer.grant.video_ssrc, payload,
                               i == len(payloads) - 1)
            out += router.handle_datagram(peer.srtp.protect_rtp(packet.serialize()),
                                          peer.address, now)
        return out

    def speak(peer: Peer, level: int, now: float) -> None:
        packet = RtpPacket(111, 1, int(now * 48_000), peer.grant.audio_ssrc, b"\xf8\xff\xfe",
                           extensions={2: bytes([0x80 | level])})
        router.handle_datagram(peer.srtp.protect_rtp(packet.serialize()), peer.address, now)

    def video_to_carol(out: Datagrams) -> list[RtpPacket]:
        return [packet for data, address in out if address == carol.address
                and not is_rtcp(data) and (packet := carol.read(data)).payload_type == 96]

    received: dict[int, int] = {}
    now = 0.0
    for index in range(240):  # 8 s at 30 fps; bob talks, alice is quiet
        now = index / 30
        speak(bob, 20, now)
        speak(alice, 120, now)
        out = frame(alice, "alice", index, now) + frame(bob, "bob", index, now)
        out += router.tick(now)
        for packet in video_to_carol(out):
            if index >= 150:
                received[packet.ssrc] = received.get(packet.ssrc, 0) + 1
    assert received.get(bob.grant.video_ssrc, 0) >= 40  # his base layer: 7.5 fps
    assert alice.grant.video_ssrc not in received  # paused for carol
    link.bps = 2_000_000  # her link grows: alice resumes, from a keyframe asked for
    pli_before = router.counters["pli_for_resume"]
    resumed: list[RtpPacket] = []
    for index in range(240, 420):
        now = index / 30
        out = frame(alice, "alice", index, now) + frame(bob, "bob", index, now)
        out += router.tick(now)
        resumed += [p for p in video_to_carol(out) if p.ssrc == alice.grant.video_ssrc]
    assert router.counters["pli_for_resume"] > pli_before
    assert resumed and resumed[0].payload[1] & 0x01 == 0  # the first is a keyframe


def test_a_hole_is_asked_of_a_near_publisher_again_once_its_repair_is_overdue() -> None:
    """With the publisher's round trip known (50 ms, from its downlink's feedback), a hole
    the receivers keep asking for is asked of the publisher again after a little over
    that round trip (its NACK or its retransmission was lost), not only after 0.2 s."""
    router = MediaRouter(5000)
    alice, bob = Peer(router, "alice", "m", 1), Peer(router, "bob", "m", 2)
    bind(router, alice, bob)
    router._peers["alice"].downlink.bwe.on_rtt(0.05)
    for i in range(100):
        if alice.seq + 1 == 60:
            alice.seq += 1  # lost on the way to the server
        send_video(router, alice, b"\x01" + b"v" * 100, i / 30)
    upstream: list[float] = []
    now = 10.0
    while now < 10.3:  # bob asks every 20 ms, as a client's later tries do
        out = router.handle_datagram(nack(bob, alice, [60]), bob.address, now)
        out += router.tick(now)
        upstream += [now] * sum(60 in n.lost for n in nacks_to(out, alice))
        now = round(now + 0.02, 3)
    assert upstream[0] == 10.0
    gaps = [b - a for a, b in itertools.pairwise(upstream)]
    assert gaps and all(0.06 <= gap <= 0.1 for gap in gaps), upstream  # 1.2 x 50 ms + 10
