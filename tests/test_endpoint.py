"""The client media core and the server router paired in memory, with explicit time.

Each test chooses which datagrams a link drops, duplicates, delays or reorders, and proves
the repair (NACK, PLI, jitter buffer) deterministically, without sockets or the real clock.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from confero.client.endpoint import LOST, VideoFrameReady, keyframe_size
from confero.media.audio import OpusEncoder, SineSource, level_dbov
from confero.protocol import rtcp
from confero.protocol.profile import VIDEO_PAYLOAD_TYPE
from confero.protocol.srtp import SrtpContext
from tests.memnet import Client, Datagram, MemoryNetwork, fake_frame, rtp_of


def frames_of(client: Client, sender: Client | None = None) -> list[VideoFrameReady]:
    frames = [e for e in client.events if isinstance(e, VideoFrameReady)]
    if sender is not None:
        frames = [f for f in frames if f.ssrc == sender.endpoint.config.video_ssrc]
    return frames


def audio_sender(client: Client) -> Callable[[float], None]:
    """Each call: a 20 ms Opus frame of a 440 Hz tone from ``client`` when one is due."""
    encoder, tone = OpusEncoder(), SineSource(440.0)
    next_at = [0.0]

    def each(now: float) -> None:
        if now >= next_at[0]:
            next_at[0] += 0.02
            samples = tone.next_frame()
            client.endpoint.send_audio_frame(encoder.encode(samples),
                                             level=level_dbov(samples),
                                             capture_us=int(now * 1e6), now=now)

    return each


def video_sender(client: Client, fps: float = 30, size: int = 3000):  # type: ignore[no-untyped-def]
    next_at = [0.0]

    def each(now: float) -> None:
        if now >= next_at[0]:
            next_at[0] += 1 / fps
            client.send_frame(now, size)

    return each


def is_video_from(datagram: Datagram, client: Client) -> bool:
    packet = rtp_of(datagram)
    return (packet is not None and packet.payload_type == VIDEO_PAYLOAD_TYPE
            and packet.ssrc == client.endpoint.config.video_ssrc)


def test_video_reaches_the_other_participant_in_order() -> None:
    net = MemoryNetwork()
    alice, bob = net.join("alice"), net.join("bob")
    net.run(2.0, each=video_sender(alice))
    frames = frames_of(bob, alice)
    assert len(frames) >= 55  # 60 sent; the first ones go out before bob's address is known
    assert frames[0].frame.keyframe
    stamps = [f.frame.timestamp for f in frames]
    assert stamps == sorted(stamps)
    assert all(f.capture_us is not None for f in frames)
    assert bob.endpoint.stats()["video"][alice.endpoint.config.video_ssrc]["lost"] == 0


def test_a_late_joiner_asks_for_a_keyframe_and_gets_one() -> None:
    net = MemoryNetwork()
    alice = net.join("alice")
    send = video_sender(alice)
    net.run(1.0, each=send)
    keyframes_before = alice.endpoint.counters["keyframes_sent"]
    bob = net.join("bob")
    net.run(1.6, each=send)
    assert alice.endpoint.counters["plis_received"] >= 1
    assert alice.endpoint.counters["keyframes_sent"] > keyframes_before
    frames = frames_of(bob, alice)
    assert frames and frames[0].frame.keyframe
    # from the keyframe on, everything: ~15 frames in the 0.6 s minus the PLI round trip
    assert len(frames) >= 12


def test_nack_repairs_a_packet_lost_between_server_and_receiver() -> None:
    net = MemoryNetwork()
    alice, bob = net.join("alice"), net.join("bob")
    send = video_sender(alice)
    net.run(0.5, each=send)
    dropped: list[int] = []

    def lose_one(datagram: Datagram) -> list[float]:
        packet = rtp_of(datagram)
        if is_video_from(datagram, alice) and not dropped and net.now > 0.6:
            assert packet is not None
            dropped.append(packet.sequence_number)
            return []
        return [0.0]

    bob.downlink = lose_one
    before = len(frames_of(bob, alice))
    net.run(1.5, each=send)
    assert dropped
    stats = bob.endpoint.stats()["video"][alice.endpoint.config.video_ssrc]
    assert stats["nacks_sent"] >= 1
    assert stats["plis_sent"] <= 1  # the join's; the loss itself was repaired by NACK
    # every frame sent while the loss was repaired was released: none skipped
    assert len(frames_of(bob, alice)) - before >= 29
    assert net.router.counters["retransmitted"] >= 1
    assert alice.endpoint.counters["retransmitted"] == 0  # the server answered itself


def test_nack_reaches_the_publisher_when_the_server_never_got_the_packet() -> None:
    net = MemoryNetwork()
    alice, bob = net.join("alice"), net.join("bob")
    send = video_sender(alice)
    net.run(0.5, each=send)
    dropped: list[int] = []

    def lose_one(datagram: Datagram) -> list[float]:
        if is_video_from(datagram, alice) and not dropped and net.now > 0.6:
            dropped.append(1)
            return []
        return [0.0]

    alice.uplink = lose_one
    before = len(frames_of(bob, alice))
    net.run(1.5, each=send)
    assert dropped
    assert alice.endpoint.counters["nacks_received"] >= 1
    assert alice.endpoint.counters["retransmitted"] >= 1
    assert len(frames_of(bob, alice)) - before >= 29


def test_an_unrecoverable_loss_ends_in_a_pli_and_a_keyframe() -> None:
    net = MemoryNetwork()
    alice, bob = net.join("alice"), net.join("bob")
    send = video_sender(alice)
    net.run(0.5, each=send)
    victim: list[int] = []

    def lose_forever(datagram: Datagram) -> list[float]:
        packet = rtp_of(datagram)
        if is_video_from(datagram, alice) and packet is not None and net.now > 0.6:
            if not victim:
                victim.append(packet.sequence_number)
            if packet.sequence_number == victim[0]:
                return []  # the original and every retransmission
        return [0.0]

    alice.uplink = lose_forever
    keyframes_before = alice.endpoint.counters["keyframes_sent"]
    plis_before = bob.endpoint.stats()["video"][alice.endpoint.config.video_ssrc]["plis_sent"]
    net.run(2.0, each=send)
    stats = bob.endpoint.stats()["video"][alice.endpoint.config.video_ssrc]
    assert stats["plis_sent"] > plis_before
    assert alice.endpoint.counters["keyframes_sent"] > keyframes_before
    late = [f for f in frames_of(bob, alice) if f.frame.completed_at > 1.2]
    assert late, "video resumed after the keyframe"


def test_duplicated_datagrams_are_dropped_once_and_yield_no_duplicate_frames() -> None:
    net = MemoryNetwork()
    alice, bob = net.join("alice"), net.join("bob")
    bob.downlink = lambda d: [0.0, 0.002]
    net.run(1.0, each=video_sender(alice))
    frames = frames_of(bob, alice)
    ids = [f.frame.picture_id for f in frames]
    assert len(ids) == len(set(ids)) >= 25
    assert bob.endpoint.counters["dropped_auth"] > 0  # SRTP's replay check caught them


def test_reordering_within_the_measured_jitter_costs_no_nack() -> None:
    net = MemoryNetwork(seed=7)
    alice, bob = net.join("alice"), net.join("bob")
    rng = net.random
    bob.downlink = lambda d: [rng.uniform(0.0, 0.01)]  # 10 ms of jitter: reorders packets
    send = video_sender(alice, size=6000)
    net.run(2.0, each=send)
    stats = bob.endpoint.stats()["video"][alice.endpoint.config.video_ssrc]
    trained = stats["nacks_sent"]
    # the first seconds teach it the path's reordering (needless NACKs answered by
    # duplicates); after that, reordering is not loss
    net.run(6.0, each=send)
    stats = bob.endpoint.stats()["video"][alice.endpoint.config.video_ssrc]
    assert stats["lost"] == 0
    assert stats["nacks_sent"] - trained <= 2, (trained, stats["nacks_sent"])
    assert len(frames_of(bob, alice)) >= 170


def test_an_oversized_keyframe_is_dropped_before_any_decoder() -> None:
    net = MemoryNetwork()
    net.router.max_video_size = (20000, 20000)  # the server drops it too (harden-media):
    # let it through here, so that this tests the receiver's own check
    alice, bob = net.join("alice"), net.join("bob")
    net.run(0.2)
    bomb = fake_frame(True, size=40, width=12000, height=12000)
    assert keyframe_size(bomb) == (12000, 12000)
    alice.endpoint.send_video_frame(bomb, keyframe=True, capture_us=0, captured_at=net.now)
    net.run(0.5)
    assert frames_of(bob, alice) == []
    assert bob.endpoint.counters["dropped_oversize_frame"] == 1


def test_retransmissions_are_budgeted_against_a_nack_flood() -> None:
    net = MemoryNetwork()
    alice = net.join("alice")
    net.join("bob")
    net.run(1.0, each=video_sender(alice))
    seqs = list(range(alice.endpoint._video.seq - 60, alice.endpoint._video.seq))
    nack = rtcp.Nack(1, alice.endpoint.config.video_ssrc, [s & 0xFFFF for s in seqs]).pack()
    # a hostile server (or a bug) NACKs the same 60 packets 50 times within 0.1 s
    server_keys = net.router._peers["alice"].srtp
    assert server_keys is not None
    for _ in range(50):
        alice.endpoint.receive_datagram(server_keys.protect_rtcp(nack), net.now)
    sent = alice.endpoint.datagrams_to_send()
    assert alice.endpoint.counters["retransmit_over_budget"] > 0
    assert sum(len(d) for d in sent) < 200_000  # vs ~9 MB unbudgeted


@pytest.mark.parametrize("lost_in_a_row", [1, 2])
def test_mixed_audio_plays_in_order_and_a_lost_frame_has_its_successor_at_hand(
    lost_in_a_row: int,
) -> None:
    """One lost mix packet costs nothing: the next one carries the frame again (RFC 2198).
    Two in a row lose the first frame for good: it is concealed, with the next frame
    (its FEC) at hand."""
    net = MemoryNetwork()
    alice, bob = net.join("alice"), net.join("bob")
    talk = audio_sender(alice)

    dropped: list[int] = []

    def lose_one_mix(datagram: Datagram) -> list[float]:
        packet = rtp_of(datagram)
        if (packet is not None and packet.ssrc == bob.endpoint.config.mix_ssrc
                and net.now > 1.0 and len(dropped) < lost_in_a_row):
            dropped.append(packet.timestamp)
            return []
        return [0.0]

    bob.downlink = lose_one_mix
    played: list[object] = []
    peeked: list[bytes | None] = []
    next_pop = [0.0]

    def talk_and_play(now: float) -> None:
        talk(now)
        if now >= next_pop[0]:
            next_pop[0] += 0.02
            item = bob.endpoint.pop_audio()
            played.append(item)
            if item is LOST:
                peeked.append(bob.endpoint.peek_next_audio())

    net.run(2.0, each=talk_and_play)
    frames = [p for p in played if isinstance(p, bytes)]
    assert len(frames) >= 80
    assert len(dropped) == lost_in_a_row
    if lost_in_a_row == 1:
        assert played.count(LOST) == 0 and bob.endpoint.jitter.recovered == 1
    else:  # the first is concealed (once, or twice if the buffer waited for it first)
        assert 1 <= played.count(LOST) <= 2 and bob.endpoint.jitter.recovered == 1
        # by its last concealment the next frame (recovered) is at hand: its FEC rebuilds
        assert peeked and peeked[-1] is not None
    assert bob.endpoint.speaking(net.now)  # alice's level came in the mix's CSRC list
    assert alice.endpoint.config.audio_ssrc in bob.endpoint.speaking(net.now)


@pytest.mark.parametrize("redundant", [True, False])
def test_a_lost_uplink_audio_packet_is_rebuilt_at_the_mixer_from_the_next(
    redundant: bool,
) -> None:
    net = MemoryNetwork()
    alice, _bob = net.join("alice"), net.join("bob")
    alice.endpoint.redundant_audio = redundant
    talk = audio_sender(alice)

    dropped: list[int] = []

    def lose_every_tenth(datagram: Datagram) -> list[float]:
        packet = rtp_of(datagram)
        if (packet is not None and packet.ssrc == alice.endpoint.config.audio_ssrc
                and net.now > 0.5 and packet.sequence_number % 10 == 0):
            dropped.append(packet.sequence_number)
            return []
        return [0.0]

    alice.uplink = lose_every_tenth
    net.run(3.0, each=talk)
    [mixer] = net.router.mixers().values()
    assert len(dropped) >= 10
    if redundant:
        # every lost frame comes again in the next packet; only the first loss can find
        # the one-frame-deep buffer due before that packet (it then grows by a frame)
        assert mixer.stats.concealed <= 1
    else:
        assert mixer.stats.concealed >= len(dropped) - 1


def test_sender_reports_map_rtp_time_to_wall_time() -> None:
    net = MemoryNetwork()
    wall = 1_700_000_000.0
    alice = net.join("alice", wall_offset=wall)
    net.join("bob")
    net.run(2.5, each=video_sender(alice))
    # read alice's last RTCP as the server would, with a fresh context of her upstream key
    server_view = SrtpContext(tx_key=alice.endpoint.config.rx_key,
                              rx_key=alice.endpoint.config.tx_key)
    sent = [d for d in net.delivered if d.source == alice.address and d.is_rtcp]
    assert len(sent) >= 2
    packets = rtcp.parse_compound(server_view.unprotect_rtcp(sent[-1].data))
    srs = [p for p in packets if isinstance(p, rtcp.SenderReport)]
    assert srs and srs[0].ssrc == alice.endpoint.config.video_ssrc
    seconds = srs[0].ntp_timestamp / (1 << 32) - 2_208_988_800
    assert abs(seconds - (wall + 2.0)) < 1.0
    assert srs[0].packet_count > 50


def test_the_picture_steps_down_with_the_rate_and_back_up_with_a_margin() -> None:
    from confero.client.adaptation import ResolutionLadder, video_share

    ladder = ResolutionLadder(640, 480)
    assert ladder.choose(1_000_000) == (640, 480)
    assert ladder.choose(300_000) == (480, 360)
    assert ladder.choose(100_000) == (320, 240)
    assert ladder.choose(250_000) == (320, 240)  # 220k * 1.3 not reached: no flapping
    assert ladder.choose(300_000) == (480, 360)
    assert ladder.choose(500_000) == (480, 360)
    assert ladder.choose(600_000) == (640, 480)
    small = ResolutionLadder(320, 240)  # already the smallest size we send
    assert small.choose(50_000) == (320, 240)  # never below a legible height
    assert video_share(600_000, audio_on=True) < video_share(600_000, audio_on=False)
    assert video_share(10_000, audio_on=True) > 0


def test_arrival_time_is_the_kernels_not_when_the_loop_got_round_to_it() -> None:
    import socket
    import time

    from confero.netutil import arrival_time, enable_receive_timestamps

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as sender:
        receiver.bind(("127.0.0.1", 0))
        enable_receive_timestamps(receiver)
        ages = []
        for _ in range(3):
            sender.sendto(b"x", receiver.getsockname())
            sent = time.monotonic()
            receiver.settimeout(5)
            receiver.recvfrom(16)
            # a loop that was busy: it reads the datagram well after it arrived
            busy_until = sent + 0.15
            while time.monotonic() < busy_until:
                pass
            ages.append(time.monotonic() - arrival_time(receiver))
        # the first datagram may predate stamping; the later ones carry the kernel's time
        assert max(ages[1:]) >= 0.1, ages


def test_the_server_reports_each_subscribers_estimate_and_forwarded_layers() -> None:
    """What /metrics summarises per meeting (confero_meeting_downlink_estimate_bps,
    confero_meeting_forwarded_layer_streams): one entry per subscriber, its downlink
    estimate from transport feedback, and which layer of each publisher it gets."""
    net = MemoryNetwork()
    alice = net.join("alice")
    net.join("bob")
    net.join("carol", meeting="m2")  # another meeting: its own summary
    net.run(2.0, each=video_sender(alice))
    view = net.router.subscriber_view()
    assert sorted(view) == ["m1", "m2"]
    assert len(view["m1"]) == 2 and len(view["m2"]) == 1
    layers = [per_layer for _, per_layer in view["m1"]]
    assert {2: 1} in layers  # bob receives alice's stream, every layer (not limited)
    assert all(rate > 0 for rate, _ in view["m1"])
    assert view["m2"][0][1] == {}  # carol is sent nobody's video
