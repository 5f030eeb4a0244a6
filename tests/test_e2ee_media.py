"""E2EE media in memory: SFrame through the endpoint and the router, top-3 audio forwarding.

Keys here come from real E2EE sessions exchanging blobs (``tests.test_e2ee_keys.Relay``), so
the ciphers hold exactly what the key exchange gives them. The router's view is tapped where
it handles plaintext RTP (after SRTP): what an honest-but-curious server could read.
"""

from __future__ import annotations

import contextlib
import os

import av
import pytest

from confero.client.endpoint import VideoFrameReady
from confero.client.frame_cipher import SFrameCipher
from confero.media.audio import FRAME_SAMPLES, OpusDecoder, OpusEncoder, SineSource, level_dbov
from confero.media.video import (
    SyntheticCamera,
    Vp8Encoder,
    identity_code,
    luma_plane,
    read_stamp,
)
from confero.protocol.profile import AUDIO_PAYLOAD_TYPE, VIDEO_PAYLOAD_TYPE
from confero.protocol.rtp import RtpPacket
from confero.protocol.vp8 import parse_descriptor
from confero.server.speakers import SpeakerSelector
from tests.memnet import Client, MemoryNetwork
from tests.test_e2ee_keys import Relay


def keyed_ciphers(names: list[str], passphrases: dict[str, str] | None = None
                  ) -> dict[str, SFrameCipher]:
    relay = Relay()
    members = {n: relay.join(n, (passphrases or {}).get(n, "pass phrase")) for n in names}
    ciphers = {}
    for name, member in members.items():
        cipher = SFrameCipher()
        cipher.set_send_key(*member.session.send_key())
        cipher.set_receive_keys(member.session.receive_keys())
        ciphers[name] = cipher
    return ciphers


def tap(net: MemoryNetwork) -> list[RtpPacket]:
    """Every RTP packet the router handles, as it sees it (SRTP removed)."""
    seen: list[RtpPacket] = []
    original = net.router._on_rtp

    def recording(peer, plain, now, arrival):  # type: ignore[no-untyped-def]
        seen.append(RtpPacket.parse(plain))
        return original(peer, plain, now, arrival)

    net.router._on_rtp = recording  # type: ignore[method-assign]
    return seen


def real_vp8(frames: int) -> list[bytes]:
    encoder = Vp8Encoder(160, 120, 30)
    camera = SyntheticCamera("alice", 160, 120)
    out: list[bytes] = []
    for i in range(frames):
        out += encoder.encode(camera.frame(i * 33_000), i * 3000, i == 0)
    return out


def frames_from(client: Client, sender: Client) -> list[VideoFrameReady]:
    return [e for e in client.events if isinstance(e, VideoFrameReady)
            and e.ssrc == sender.endpoint.config.video_ssrc]


def test_video_is_readable_by_members_only_and_the_router_sees_ciphertext() -> None:
    ciphers = keyed_ciphers(["alice", "bob"])
    stranger = SFrameCipher()  # in the meeting, but without the passphrase: no keys
    net = MemoryNetwork()
    seen = tap(net)
    alice = net.join("alice", e2ee=True, cipher=ciphers["alice"])
    bob = net.join("bob", e2ee=True, cipher=ciphers["bob"])
    eve = net.join("eve", e2ee=True, cipher=stranger)
    encoded = real_vp8(30)
    sent = iter(encoded)

    def each(now: float) -> None:
        if round(now * 1000) % 33 == 0:
            data = next(sent, None)
            if data is not None:
                alice.endpoint.send_video_frame(data, keyframe=not data[0] & 1,
                                                capture_us=0, captured_at=now)

    net.run(1.5, each=each)
    received = [f.frame.data for f in frames_from(bob, alice)]
    assert len(received) >= 25 and set(received) <= set(encoded)
    assert received[0] == encoded[0]  # the keyframe, decrypted bit for bit
    # eve: every frame counted as undecryptable, none handed to a decoder
    assert frames_from(eve, alice) == []
    counts = eve.endpoint.stats()["e2ee"][alice.endpoint.config.video_ssrc]
    assert counts["decrypted"] == 0 and counts["undecryptable"] >= 25
    # the router's view: reassembled per frame, nothing decodes, nothing equals a frame
    video = [p for p in seen if p.payload_type == VIDEO_PAYLOAD_TYPE]
    assert video
    frames: dict[int, bytes] = {}
    for packet in video:
        body = packet.payload[parse_descriptor(packet.payload).header_size:]
        frames[packet.timestamp] = frames.get(packet.timestamp, b"") + body
    assert len(frames) >= 25
    decoder = av.CodecContext.create("vp8", "r")
    for data in frames.values():
        assert data not in encoded
        assert data[:3] in {e[:3] for e in encoded}  # the frame tag stays clear
        with contextlib.suppress(av.FFmpegError):
            # a lenient decoder may make noise of a keyframe, never alice's picture
            for picture in decoder.decode(av.Packet(data)):
                assert read_stamp(luma_plane(picture))[1] != identity_code("alice")
    # the same check passes on the plaintext: it can tell alice's picture
    clear = av.CodecContext.create("vp8", "r")
    [picture] = clear.decode(av.Packet(encoded[0]))
    assert read_stamp(luma_plane(picture))[1] == identity_code("alice")


def test_e2ee_audio_is_forwarded_per_sender_and_never_mixed() -> None:
    ciphers = keyed_ciphers(["alice", "bob"])
    net = MemoryNetwork()
    seen = tap(net)
    alice = net.join("alice", e2ee=True, cipher=ciphers["alice"])
    bob = net.join("bob", e2ee=True, cipher=ciphers["bob"])
    encoder, source = OpusEncoder(), SineSource(440)
    payloads: list[bytes] = []
    played: list[bytes] = []

    def each(now: float) -> None:
        if round(now * 1000) % 20 == 0:
            samples = source.next_frame()
            payloads.append(encoder.encode(samples))
            alice.endpoint.send_audio_frame(payloads[-1], level=level_dbov(samples),
                                            capture_us=0, now=now)
            for ssrc, item in bob.endpoint.pop_peer_audio(now).items():  # bob's playout
                assert ssrc == alice.endpoint.config.audio_ssrc
                if isinstance(item, bytes):
                    played.append(item)

    net.run(1.0, each=each)
    assert net.router.mixers()["m1"].stats.encoded == 0  # nothing mixed
    assert bob.endpoint.stats()["audio"]["packets"] == 0  # no mix stream
    assert len(played) >= 30 and set(played) <= set(payloads)
    audio = [p.payload for p in seen if p.payload_type == AUDIO_PAYLOAD_TYPE]
    assert len(audio) >= 40
    decoder = OpusDecoder()
    assert not set(audio) & set(payloads)
    for payload in audio:  # what the server holds does not decode to the tone
        samples = decoder.decode(payload)
        assert len(samples) == FRAME_SAMPLES


def test_only_the_three_loudest_speakers_reach_a_listener() -> None:
    names = ["s1", "s2", "s3", "s4", "listener"]
    ciphers = keyed_ciphers(names)
    net = MemoryNetwork()
    clients = {n: net.join(n, e2ee=True, cipher=ciphers[n]) for n in names}
    levels = {"s1": 10, "s2": 20, "s3": 30, "s4": 40}  # -dBov: s4 is the quietest
    payload = os.urandom(40)

    def each(now: float) -> None:
        if round(now * 1000) % 20 == 0:
            for name, level in levels.items():
                clients[name].endpoint.send_audio_frame(payload, level=level, capture_us=0,
                                                        now=now)

    net.run(1.0, each=each)
    streams = clients["listener"].endpoint.stats()["sender_audio"]
    heard = {n for n in levels if clients[n].endpoint.config.audio_ssrc in streams}
    assert len(heard) == 3  # whoever came first; the quietest one never displaced them
    assert net.router.counters["e2ee_audio_not_selected"] > 0


def test_speaker_selection_holds_then_follows_a_new_talker() -> None:
    selector = SpeakerSelector(slots=2, hold=1.0)
    t = 0.0
    for _ in range(50):  # a and b talk
        t += 0.02
        assert selector.offer("a", 20, t) and selector.offer("b", 20, t)
        assert not selector.offer("c", 25, t)  # a bit quieter: no slot, no flapping
    for _ in range(40):  # a stops; c talks; a's slot is held for a second
        t += 0.02
        selector.offer("a", 127, t)
        selector.offer("b", 20, t)
        assert not selector.offer("c", 25, t)
    forwarded = False
    for _ in range(20):
        t += 0.02
        selector.offer("a", 127, t)
        forwarded = selector.offer("c", 25, t) or forwarded
    assert forwarded and selector.selected == {"b", "c"}
    # A much louder newcomer displaces a held talker once the hold has passed.
    for _ in range(60):
        t += 0.02
        selector.offer("b", 60, t)
        selector.offer("c", 20, t)
        selector.offer("d", 5, t)
    assert "d" in selector.selected
    selector.remove("d")
    assert "d" not in selector.selected


@pytest.mark.parametrize("level", [None, -5, 300])
def test_speaker_selection_takes_odd_levels(level: int | None) -> None:
    selector = SpeakerSelector()
    assert selector.offer("x", level, 0.0) is (level == -5)
