"""The P2P pieces of the client core on a fake clock: the peer path beside the server
path (make-before-break both ways, duplicates dropped, no keyframe needed), per-sender
audio streams, local mixing and the crossfade."""

from __future__ import annotations

import numpy as np

from confero.client.audio_mix import Crossfade, LocalMixer
from confero.client.endpoint import EndpointConfig, VideoFrameReady
from confero.client.p2p_switch import PathSwitch
from confero.media.audio import FRAME_SAMPLES, OpusEncoder, SineSource
from confero.protocol.audio_jitter import LOST
from confero.protocol.audio_streams import AudioStreams
from confero.protocol.srtp import new_master_key
from tests.memnet import Client, MemoryNetwork


class Pair:
    """Two clients of one meeting on the memory network, plus a direct in-memory path."""

    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.alice, self.bob = self.net.join("alice"), self.net.join("bob")
        self.switch = {c.name: PathSwitch(give_up=2.0) for c in (self.alice, self.bob)}
        self.direct_open = True
        self.direct_sent = 0
        self.next_frame = 0.0
        self.encoder = OpusEncoder()
        self.tone = SineSource(440)

    def open_peer_path(self) -> None:
        ka, kb = new_master_key(), new_master_key()  # each side's own fresh key
        self.alice.endpoint.start_peer(ka, kb)
        self.bob.endpoint.start_peer(kb, ka)

    def step(self, now: float) -> None:
        if now >= self.next_frame:
            self.next_frame += 1 / 30
            self.alice.send_frame(now, 2500)
        if round(now * 1000) % 20 == 0:
            self.alice.endpoint.send_audio_frame(self.encoder.encode(self.tone.next_frame()),
                                                 level=30, capture_us=0, now=now)
        for a, b in ((self.alice, self.bob), (self.bob, self.alice)):
            for data in a.endpoint.peer_datagrams_to_send():
                if self.direct_open:
                    self.direct_sent += 1
                    b.endpoint.receive_peer_datagram(data, now)
            self.switch[a.name].poll(a.endpoint, now)

    def run(self, until: float) -> None:
        self.net.run(until, each=self.step)

    def received(self) -> int:
        return self.net.router.meeting_media()["m1"]["received_packets"]


def _frames(client: Client, sender: Client) -> list[VideoFrameReady]:
    return [e for e in client.events if isinstance(e, VideoFrameReady)
            and e.ssrc == sender.endpoint.config.video_ssrc]


def test_switch_to_p2p_and_back_loses_no_frame_and_needs_no_keyframe() -> None:
    pair = Pair()
    alice, bob = pair.alice, pair.bob
    pair.run(1.0)
    keyframes = alice.endpoint.counters["keyframes_sent"]
    pair.open_peer_path()
    pair.switch["alice"].to_p2p(alice.endpoint, pair.net.now)
    pair.run(1.3)  # bob hears of the switch later: alice sends both ways meanwhile
    assert alice.endpoint.send_to_server
    pair.switch["bob"].to_p2p(bob.endpoint, pair.net.now)
    bob.endpoint.nudge_keepalive(pair.net.now)  # bob sends no media: RTCP says it is there
    pair.run(1.45)
    assert alice.endpoint.send_to_server  # heard directly, both paths still carry (linger)
    pair.run(1.7)
    # the switch finished: alice no longer sends media to the server
    assert not alice.endpoint.send_to_server and alice.endpoint.send_to_peer
    assert pair.switch["alice"].history[-1].completed is not None
    assert not pair.switch["alice"].history[-1].by_timeout
    received = pair.received()
    pair.run(3.0)
    assert pair.received() == received  # 1.5 s of P2P: the server got no media at all
    assert bob.endpoint.peer_counters["received_packets"] > 100
    assert bob.endpoint.peer_counters["duplicates"] > 0  # the overlap came both ways
    # ... and back through the server
    for client in (alice, bob):
        pair.switch[client.name].to_server(client.endpoint, pair.net.now)
    pair.run(3.5)
    # bob sees alice's media come back through the server and leaves the direct path;
    # alice (nothing comes from bob) keeps both until give_up
    assert bob.endpoint.send_to_server and not bob.endpoint.send_to_peer
    assert not pair.switch["bob"].history[-1].by_timeout
    assert alice.endpoint.send_to_server and alice.endpoint.send_to_peer
    pair.run(5.5)
    assert not alice.endpoint.send_to_peer and pair.switch["alice"].history[-1].by_timeout
    pair.direct_open = False
    for client in (alice, bob):
        client.endpoint.stop_peer()
    pair.run(6.0)
    assert pair.received() > received
    frames = _frames(bob, alice)
    ids = [f.frame.timestamp for f in frames]
    assert len(ids) == len(set(ids))  # no frame delivered twice
    assert len(frames) >= 6.0 * 30 - 6  # none lost at either switch
    assert alice.endpoint.counters["keyframes_sent"] == keyframes  # none needed
    assert bob.endpoint.stats()["video"][alice.endpoint.config.video_ssrc]["lost"] == 0
    # alice's own audio stream reached bob directly during P2P
    assert alice.endpoint.config.audio_ssrc in bob.endpoint.peer_audio.ssrcs()


def test_switch_to_p2p_gives_up_waiting_and_says_so() -> None:
    pair = Pair()
    pair.run(0.5)
    pair.open_peer_path()
    pair.direct_open = False  # the peer is never heard directly
    pair.switch["alice"].to_p2p(pair.alice.endpoint, pair.net.now)
    pair.run(2.0)
    assert pair.alice.endpoint.send_to_server  # still on the server while unproven
    pair.run(3.0)
    record = pair.switch["alice"].history[-1]
    assert record.by_timeout and not pair.alice.endpoint.send_to_server


def test_peer_path_refuses_foreign_keys() -> None:
    pair = Pair()
    pair.alice.endpoint.start_peer(new_master_key(), new_master_key())
    pair.bob.endpoint.start_peer(new_master_key(), new_master_key())  # keys do not match
    for client in (pair.alice, pair.bob):
        pair.switch[client.name].to_p2p(client.endpoint, 0.0)
    pair.run(1.0)
    assert pair.bob.endpoint.peer_counters["dropped_auth"] > 10
    assert pair.bob.endpoint.peer_counters["received_packets"] == 0


def test_audio_streams_keep_one_buffer_per_sender_and_forget_the_silent() -> None:
    streams = AudioStreams(max_streams=2, idle_forget=1.0)
    for i in range(4):
        streams.push(1, i * 960, b"a%d" % i, i * 0.02)
        streams.push(2, 5000 + i * 960, b"b%d" % i, i * 0.02)
    streams.push(3, 0, b"c", 0.0)
    assert streams.dropped_too_many == 1 and sorted(streams.ssrcs()) == [1, 2]
    first = streams.pop(0.1)
    assert first == {1: b"a0", 2: b"b0"}
    for _ in range(10):
        streams.pop(0.5)
    streams.pop(2.0)
    assert streams.ssrcs() == []


def test_local_mixer_sums_decoded_streams_and_conceals_losses() -> None:
    mixer = LocalMixer()
    enc_a, enc_b = OpusEncoder(), OpusEncoder()
    tone_a, tone_b = SineSource(440, 6000), SineSource(880, 6000)
    out = None
    for _ in range(10):
        out = mixer.mix({1: enc_a.encode(tone_a.next_frame()),
                         2: enc_b.encode(tone_b.next_frame())})
    assert out is not None
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    freqs = np.fft.rfftfreq(FRAME_SAMPLES, 1 / 48_000)
    top = {round(freqs[i]) for i in np.argsort(spectrum)[-4:]}
    assert any(abs(f - 440) <= 50 for f in top) and any(abs(f - 880) <= 50 for f in top)
    concealed = mixer.mix({1: LOST})
    assert concealed is not None and mixer.concealed == 1
    assert mixer.mix({}) is None


def test_crossfade_ramps_over_two_frames_and_follows_the_source_that_plays() -> None:
    fade = Crossfade(ramp_frames=2)
    a = np.full(FRAME_SAMPLES, 1000, dtype=np.int16)
    b = np.full(FRAME_SAMPLES, -1000, dtype=np.int16)
    assert (fade.step(a, b, prefer_b=False) == a).all()
    first = fade.step(a, b, prefer_b=True)
    assert first is not None and first[0] == 1000 and -1000 < first[-1] < 1000
    second = fade.step(a, b, prefer_b=True)
    assert second is not None and second[0] <= 0 and second[-1] > -1000
    assert (fade.step(a, b, prefer_b=True) == b).all()
    # the preferred source went quiet: play the other rather than silence
    out = fade.step(a, None, prefer_b=True)
    assert out is not None and fade.weight_b < 1.0
    assert fade.step(None, None, prefer_b=True) is None


def test_server_path_rekey_after_p2p_replaces_both_ends_keys() -> None:
    """Back from P2P the server hands out fresh server-path keys: the client's old-key
    packets are refused, new-key packets flow, and video reaches the other side."""
    pair = Pair()
    alice, bob = pair.alice, pair.bob
    pair.run(0.5)
    for client in (alice, bob):
        grant = pair.net.router.rekey(client.name)
        assert grant is not None
        assert grant.audio_ssrc == client.endpoint.config.audio_ssrc  # same SSRCs
        config = EndpointConfig.from_grant(grant)
        client.endpoint.rekey_server(config.tx_key, config.rx_key)
    before = len(_frames(bob, alice))
    pair.run(1.5)
    assert len(_frames(bob, alice)) >= before + 25
    assert pair.net.router.counters["rekeyed"] == 2


def test_playout_counts_as_heard_only_the_concealment_of_a_source_in_the_output() -> None:
    """After a switch to P2P the server's mix runs dry under its fade-out: its buffer's
    concealment is counted (mix_concealed) but not as heard; a hole in the direct stream
    while it plays is heard."""
    import numpy as np

    from confero.client.media import STEADY_FRAMES, MediaSession
    from confero.protocol.audio_jitter import LOST
    from confero.server.media_router import MediaRouter

    router = MediaRouter(5000)
    router.reserve("alice")
    session = MediaSession(router.admit("alice", "m"), "127.0.0.1")
    session.switch.mode = "p2p"
    tone = np.full(960, 1000, dtype=np.int16)
    direct = {1234: b"frame"}
    for _ in range(STEADY_FRAMES + 3):  # both sources steady, then the fade to direct
        session._blend(b"mix", tone, direct)
    assert session._crossfade.weight_b == 1.0
    counters = session.playout_counters
    for _ in range(2):  # the mix path goes quiet: its buffer conceals, unheard
        session._blend(LOST, tone, direct)
    assert counters["mix_concealed"] == 2 and counters["heard_concealed"] == 0
    session._blend(None, tone, {1234: LOST})  # a hole in what is playing
    assert counters["heard_concealed"] == 1
