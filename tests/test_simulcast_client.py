"""Simulcast, the client side (issue 9): the camera's low-resolution copy on the granted
``low_ssrc`` (server path only, never under E2EE), its share of the uplink, and a receiver
that shows one of a sender's two camera streams in the sender's one tile."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import av

from confero.client import api
from confero.client.adaptation import (
    LOW_COPY_MAX_BPS,
    LOW_COPY_MIN_CAMERA_BPS,
    SimulcastSplit,
    low_copy_size,
)
from confero.client.call import Call, merge_camera_stats
from confero.client.endpoint import EndpointConfig, KeyframeNeeded, MediaEndpoint, keyframe_size
from confero.client.frame_cipher import SFrameCipher
from confero.client.media import DecodedVideo, MediaSession
from confero.client.simulcast import CameraPick
from confero.media.video import (
    SyntheticCamera,
    identity_code,
    luma_plane,
    make_video_encoder,
    read_stamp,
    read_stamp_any,
)
from confero.protocol import rtcp
from confero.protocol import signaling as sig
from confero.protocol.rtp import RtpPacket, is_rtcp
from confero.protocol.srtp import PROFILE, SrtpContext, encode_key
from confero.protocol.video_jitter import Frame
from confero.protocol.vp8 import parse_descriptor
from tests.memnet import fake_frame

KEY_UP, KEY_DOWN = b"u" * 30, b"d" * 30
AUDIO, CAMERA, MIX, SCREEN, LOW = 11, 22, 33, 44, 55


def endpoint(low_ssrc: int = LOW, **kwargs: object) -> tuple[MediaEndpoint, SrtpContext]:
    config = EndpointConfig(AUDIO, CAMERA, MIX, KEY_UP, KEY_DOWN, SCREEN, low_ssrc)
    server = SrtpContext(tx_key=KEY_DOWN, rx_key=KEY_UP)
    return MediaEndpoint(config, 0.0, **kwargs), server  # type: ignore[arg-type]


def rtp(datagrams: list[bytes], srtp: SrtpContext) -> list[RtpPacket]:
    return [RtpPacket.parse(srtp.unprotect_rtp(d)) for d in datagrams if not is_rtcp(d)]


def send_both(sender: MediaEndpoint, at: float, *, keyframe: bool = True) -> None:
    """One capture: the camera's frame (640x480) and the copy's (320x240)."""
    sender.send_video_frame(fake_frame(keyframe, 2500, 640, 480), keyframe=keyframe,
                            capture_us=int(at * 1e6), captured_at=at, now=at)
    sender.send_video_frame(fake_frame(keyframe, 1200, 320, 240), keyframe=keyframe,
                            capture_us=int(at * 1e6), captured_at=at, now=at,
                            stream="camera_low", temporal_id=0)


def drain(sender: MediaEndpoint, start: float, end: float) -> list[bytes]:
    """What the pacer lets out from ``start`` to ``end``, timer by timer."""
    out: list[bytes] = []
    now = start
    while now < end:
        sender.handle_timer(now)
        out += sender.datagrams_to_send()
        now = max(now + 0.001, min(end, sender.get_timer()))
    return out


def frame_size(packet: RtpPacket) -> tuple[int, int] | None:
    descriptor = parse_descriptor(packet.payload)
    return keyframe_size(packet.payload[descriptor.header_size:])


# ---------------------------------------------------------------------------- sender core


def test_the_copy_goes_on_low_ssrc_with_its_own_numbering_and_the_camera_clock() -> None:
    sender, server = endpoint()
    assert sender.sends_low_copy
    send_both(sender, 0.1)
    send_both(sender, 0.1 + 1 / 30, keyframe=False)
    packets = rtp(drain(sender, 0.2, 0.6), server)
    camera = [p for p in packets if p.ssrc == CAMERA]
    low = [p for p in packets if p.ssrc == LOW]
    assert camera and low
    assert frame_size(low[0]) == (320, 240) and frame_size(camera[0]) == (640, 480)
    # one capture instant, one RTP timestamp on both streams
    assert sorted({p.timestamp for p in low}) == sorted({p.timestamp for p in camera})
    # its own sequence numbers (consecutive, apart from the camera's) and PictureIDs
    seqs = [p.sequence_number for p in low]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    assert {parse_descriptor(p.payload).picture_id for p in low if p.marker} == {
        (parse_descriptor(low[0].payload).picture_id + i) & 0x7FFF for i in range(2)}
    assert sender.counters["low_frames_sent"] == 2 and sender.counters["low_keyframes_sent"] == 1
    assert sender.counters["keyframes_sent"] == 1  # the camera's own, as before
    assert sender.counters["low_packets_sent"] == len(low)


def test_the_copy_never_goes_to_the_peer() -> None:
    sender, server = endpoint()
    peer_rx = SrtpContext(tx_key=b"q" * 30, rx_key=b"p" * 30)
    sender.start_peer(b"p" * 30, b"q" * 30)
    sender.send_to_peer = True  # half-way through a switch: both paths
    assert not sender.sends_low_copy  # the shell stops encoding it
    send_both(sender, 0.1)  # (frames encoded just before the switch, still queued)
    to_server = drain(sender, 0.1, 1.5)  # past the keepalive: sender reports go out too
    to_peer = sender.peer_datagrams_to_send()
    assert {p.ssrc for p in rtp(to_peer, peer_rx)} == {CAMERA}
    assert {p.ssrc for p in rtp(to_server, server)} == {CAMERA, LOW}
    peer_reports = [r for d in to_peer if is_rtcp(d)
                    for r in rtcp.parse_compound(peer_rx.unprotect_rtcp(d))
                    if isinstance(r, rtcp.SenderReport)]
    server_reports = [r for d in to_server if is_rtcp(d)
                      for r in rtcp.parse_compound(server.unprotect_rtcp(d))
                      if isinstance(r, rtcp.SenderReport)]
    assert {r.ssrc for r in peer_reports} == {CAMERA}
    assert {r.ssrc for r in server_reports} == {CAMERA, LOW}
    # peer to peer only: the copy goes nowhere, and a retransmission of it neither
    sender.send_to_server = False
    send_both(sender, 2.0, keyframe=False)
    assert rtp(drain(sender, 2.0, 2.3), server) == []  # (RTCP keepalives only)
    assert {p.ssrc for p in rtp(sender.peer_datagrams_to_send(), peer_rx)} == {CAMERA}


def test_a_pli_on_the_copy_asks_for_a_keyframe_of_the_copy_and_a_nack_is_answered() -> None:
    sender, server = endpoint()
    send_both(sender, 0.1)
    low_seq = next(p.sequence_number for p in rtp(drain(sender, 0.1, 0.3), server)
                   if p.ssrc == LOW)
    sender.receive_datagram(server.protect_rtcp(rtcp.Pli(99, LOW).pack()), 0.3)
    events = []
    while (event := sender.next_event()) is not None:
        events.append(event)
    keyframes = [e for e in events if isinstance(e, KeyframeNeeded)]
    assert keyframes == [KeyframeNeeded(stream="camera_low")]
    sender.receive_datagram(server.protect_rtcp(rtcp.Nack(99, LOW, [low_seq]).pack()), 0.4)
    resent = [(int.from_bytes(d[8:12], "big"), int.from_bytes(d[2:4], "big"))
              for d in [*sender.datagrams_to_send(), *drain(sender, 0.4, 0.5)]
              if not is_rtcp(d)]
    assert resent == [(LOW, low_seq)]


def test_no_copy_without_a_granted_low_ssrc_or_in_an_e2ee_meeting() -> None:
    for sender, _ in (endpoint(low_ssrc=0), endpoint(cipher=SFrameCipher())):
        assert not sender.sends_low_copy
        sender.send_video_frame(fake_frame(True, 800, 320, 240), keyframe=True,
                                capture_us=1, captured_at=0.1, now=0.1, stream="camera_low")
        sender.handle_timer(0.2)
        assert not [d for d in sender.datagrams_to_send() if not is_rtcp(d)]
        assert sender.counters["camera_low_not_granted"] == 1
        assert sender.counters["low_frames_sent"] == 0


# ---------------------------------------------------------------------------- the rate rule


def test_the_copy_gets_a_quarter_up_to_its_cap_and_stops_on_a_small_budget() -> None:
    split = SimulcastSplit()
    assert split.split(1_200_000) == (1_200_000 - LOW_COPY_MAX_BPS, LOW_COPY_MAX_BPS)
    assert split.split(400_000) == (300_000, 100_000)
    assert split.split(LOW_COPY_MIN_CAMERA_BPS - 1) == (LOW_COPY_MIN_CAMERA_BPS - 1, 0)
    # hysteresis: no restart just above the threshold, a restart well above it
    assert split.split(LOW_COPY_MIN_CAMERA_BPS + 10_000)[1] == 0
    assert split.split(600_000) == (450_000, 150_000)
    assert low_copy_size(640, 480) == (320, 240)
    assert low_copy_size(1280, 720) == (640, 360)
    assert low_copy_size(320, 240) == (160, 120)
    assert low_copy_size(300, 200) is None  # half of it would be below 160x120


# ---------------------------------------------------------------------------- receiver


def test_one_of_a_senders_two_camera_streams_is_shown_without_flicker() -> None:
    pick = CameraPick()
    big, small = 640 * 480, 320 * 240

    def offer(ssrc: int, now: float, keyframe: bool = False) -> bool:
        return pick.offer(CAMERA, ssrc, keyframe=keyframe, timestamp=round(now * 90_000),
                          area=big if ssrc == CAMERA else small, now=now)

    # a server forwarding both (one without simulcast selection): the camera, not the
    # copy's frames between them; the keyframes both start with are one capture
    assert offer(CAMERA, 0.0, keyframe=True)
    assert not pick.offer(CAMERA, LOW, keyframe=True, timestamp=0, area=small, now=0.005)
    for i in range(1, 45):
        assert offer(CAMERA, i / 30)
        if i % 2 == 0:
            assert not offer(LOW, i / 30)
    assert pick.shown(CAMERA) == CAMERA and pick.switches == 0
    # the server switches this subscriber down (make-before-break): the copy's keyframe
    # is shown at once; camera frames still in our pipeline are not (no flicker back)
    assert offer(LOW, 1.5, keyframe=True) and pick.shown(CAMERA) == LOW
    assert not offer(CAMERA, 1.51) and not offer(CAMERA, 1.54)
    assert all(offer(LOW, 1.5 + i / 15) for i in range(1, 30))
    # back up at the camera's keyframe; the copy's stragglers are not shown
    assert offer(CAMERA, 3.5, keyframe=True) and not offer(LOW, 3.51)
    # a keyframe of the copy captured before the camera's (late): not newer, not shown
    assert not pick.offer(CAMERA, LOW, keyframe=True, timestamp=round(3.45 * 90_000),
                          area=small, now=3.52)
    # the camera stalls (its switching keyframe lost, say) while the copy still arrives:
    # the copy carries the tile once the camera has been quiet for three frame intervals
    assert not offer(LOW, 3.6) and offer(LOW, 3.75) and pick.shown(CAMERA) == LOW
    # a server forwarding both again: the camera is back without a keyframe, and takes
    # over once it has been steady for a second beside the copy
    frames = sorted([(3.75 + i / 15, LOW) for i in range(1, 40)]
                    + [(4.5 + i / 30, CAMERA) for i in range(30)])
    shown = {(at, ssrc): offer(ssrc, at) for at, ssrc in frames}
    assert all(v for (_, ssrc), v in shown.items() if ssrc == LOW)
    assert not any(v for (_, ssrc), v in shown.items() if ssrc == CAMERA)
    assert offer(CAMERA, 5.51) and pick.shown(CAMERA) == CAMERA
    assert not offer(LOW, 5.52)
    assert pick.switches == 4
    # a sender's other streams (a screen) are their own group
    assert pick.offer(SCREEN, SCREEN, keyframe=False, timestamp=0, area=big, now=5.6)
    pick.forget(CAMERA)  # camera off: the next frame of either starts afresh
    assert pick.shown(CAMERA) is None and pick.shown(SCREEN) == SCREEN


def test_a_low_copy_is_its_senders_camera_for_the_call() -> None:
    client = api.Client("ws://127.0.0.1:9/ws", "me")
    call = Call(client)
    alice = sig.ParticipantInfo("p-a", "alice", 0.0, audio_ssrc=1, video_ssrc=2,
                                screen_ssrc=3, low_ssrc=4)
    call.handle_event(sig.ParticipantJoined("m", alice))
    assert call.stream_of(4) == (alice, "camera") and call.name_of(4) == "alice"
    assert call.stream_of(3) == (alice, "screen") and call.name_of(3) == "alice (screen)"
    assert call.camera_ssrc_of(4) == 2 and call.camera_ssrc_of(2) == 2
    assert call.camera_ssrc_of(3) == 3 and call.camera_ssrc_of(99) == 99
    assert call.simulcast and not Call(client, simulcast=False).simulcast
    # statistics: one entry per person, frames shown from both streams added up
    camera = {"frames_decoded": 100, "fps": 0.0, "packets": 500, "width": 640, "height": 480,
              "delay_ms": 80.0}
    low = {"frames_decoded": 40, "fps": 15.0, "packets": 90, "width": 320, "height": 240,
           "delay_ms": 60.0}
    merged = merge_camera_stats(camera, low)
    assert merged["frames_decoded"] == 140 and merged["packets"] == 590
    assert (merged["width"], merged["delay_ms"]) == (320, 60.0)  # the one shown now
    assert merged["low"]["frames_decoded"] == 40
    assert merge_camera_stats(None, low)["frames_decoded"] == 40


# ---------------------------------------------------------------------------- the shell


@dataclass
class FakeServer(asyncio.DatagramProtocol):
    """Receives what a MediaSession sends, with the server's SRTP keys."""

    srtp: SrtpContext = field(default_factory=lambda: SrtpContext(tx_key=KEY_DOWN,
                                                                  rx_key=KEY_UP))
    packets: list[RtpPacket] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    address: tuple[str, int] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.address = addr
        if not is_rtcp(data):
            self.packets.append(RtpPacket.parse(self.srtp.unprotect_rtp(data)))
            self.changed.set()

    def send_rtcp(self, packet: bytes) -> None:
        assert self.transport is not None and self.address is not None
        self.transport.sendto(self.srtp.protect_rtcp(packet), self.address)

    def keyframes(self, ssrc: int) -> list[tuple[int, int]]:
        sizes = [frame_size(p) for p in self.packets if p.ssrc == ssrc]
        return [s for s in sizes if s is not None]

    async def wait_for(self, condition: object, timeout: float = 20.0) -> None:
        async def loop() -> None:
            while not condition():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)


class CountedCamera:
    def __init__(self, width: int, height: int) -> None:
        self.camera = SyntheticCamera("alice", width, height)
        self.width, self.height = width, height
        self.captures = 0

    def frame(self, capture_us: int) -> av.VideoFrame:
        self.captures += 1
        return self.camera.frame(capture_us)


async def session_with_server(**kwargs: object) -> tuple[MediaSession, FakeServer]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(FakeServer,
                                                            local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    grant = sig.MediaGrant(port, PROFILE, encode_key(KEY_UP), encode_key(KEY_DOWN), AUDIO,
                           CAMERA, MIX, host="127.0.0.1", screen_ssrc=SCREEN, low_ssrc=LOW)
    session = MediaSession(grant, "127.0.0.1", media_transport="udp", **kwargs)  # type: ignore[arg-type]
    await session.open()
    return session, server


async def test_the_session_encodes_a_half_size_copy_of_the_same_captures() -> None:
    session, server = await session_with_server()
    source = CountedCamera(640, 480)
    try:
        session.set_video_source(source)
        await server.wait_for(lambda: len(server.keyframes(LOW)) >= 1
                              and len({p.timestamp for p in server.packets
                                       if p.ssrc == LOW}) >= 10)
        assert set(server.keyframes(LOW)) == {(320, 240)}
        assert set(server.keyframes(CAMERA)) == {(640, 480)}
        low_frames = session.counters["low_frames_sent"]
        captures = source.captures
        # one capture per camera frame, the copy encoded from every second one
        assert captures // 2 - 3 <= low_frames <= captures // 2 + 1, (captures, low_frames)
        low_stamps = {p.timestamp for p in server.packets if p.ssrc == LOW}
        camera_stamps = {p.timestamp for p in server.packets if p.ssrc == CAMERA}
        assert len(low_stamps & camera_stamps) >= len(low_stamps) - 3  # the same clock
        # three temporal layers, as the camera's
        tids = {parse_descriptor(p.payload).tid for p in server.packets if p.ssrc == LOW}
        assert tids >= {0, 1}
        assert session.encode_seconds["camera_low"] > 0
        # a PLI for the copy: the copy's next frame is a keyframe
        before = len(server.keyframes(LOW))
        server.send_rtcp(rtcp.Pli(MIX, LOW).pack())
        await server.wait_for(lambda: len(server.keyframes(LOW)) > before)
    finally:
        session.set_video_source(None)
        await session.close()
        assert server.transport is not None
        server.transport.close()


async def test_the_session_sends_no_copy_when_simulcast_is_off() -> None:
    session, server = await session_with_server(simulcast=False)
    try:
        session.set_video_source(CountedCamera(320, 240))
        await server.wait_for(lambda: len({p.timestamp for p in server.packets
                                           if p.ssrc == CAMERA}) >= 10)
        assert LOW not in {p.ssrc for p in server.packets}
        assert session.counters["low_frames_sent"] == 0
    finally:
        session.set_video_source(None)
        await session.close()
        assert server.transport is not None
        server.transport.close()


def test_the_stamp_of_a_half_size_copy_is_read() -> None:
    now_us = 1_795_000_000_000_000
    full = SyntheticCamera("alice", 320, 240).frame(now_us)
    copy = luma_plane(full.reformat(width=160, height=120))
    assert read_stamp(copy)[1] != identity_code("alice")  # laid out for twice its width
    assert read_stamp_any(copy) == (now_us, identity_code("alice"))
    # a camera that is itself 160x120 still reads as painted
    small = luma_plane(SyntheticCamera("bob", 160, 120).frame(now_us))
    assert read_stamp_any(small) == (now_us, identity_code("bob"))
    big = luma_plane(SyntheticCamera("carol", 640, 480).frame(now_us).reformat(
        width=320, height=240))
    assert read_stamp_any(big) == (now_us, identity_code("carol"))


def test_a_recording_holds_what_is_shown_in_one_file_per_picture(tmp_path: Path) -> None:
    """The camera, then the copy (the server switched at the copy's keyframe), then a
    delta frame of the camera shown after a stall: the file goes on from the copy's
    keyframe, never from a delta frame of the other stream, in one file, one timeline."""
    client = api.Client("ws://127.0.0.1:9/ws", "me")
    call = Call(client)
    alice = sig.ParticipantInfo("p-a", "alice", 0.0, audio_ssrc=1, video_ssrc=CAMERA,
                                low_ssrc=LOW)
    call.handle_event(sig.ParticipantJoined("m", alice))
    call.start_recording(tmp_path)
    camera_source = SyntheticCamera("alice", 320, 240)
    encoders = {CAMERA: make_video_encoder(320, 240, 30), LOW: make_video_encoder(160, 120, 15)}
    now_us = 1_795_000_000_000_000

    def show(ssrc: int, index: int, *, shown: bool = True) -> None:
        picture = camera_source.frame(now_us + index * 33_333)
        if ssrc == LOW:
            picture = picture.reformat(width=160, height=120)
        [encoded] = encoders[ssrc].encode(picture, index * 3000, index == 0 or index == 30)
        frame = Frame(encoded.data, index * 3000, encoded.keyframe, index, 0, 1, 0.0, 0.0, {})
        call._video_decoded(DecodedVideo(ssrc, picture, None, 0.0, frame, shown=shown))

    for i in range(20):
        show(CAMERA, i)
        if i % 2 == 0:
            show(LOW, i, shown=False)  # decoded, not shown: not recorded
    for i in range(20, 30, 2):
        show(LOW, i)  # shown after a stall, but a delta frame: the file waits
    for i in range(30, 40, 2):
        show(LOW, i)  # index 30 is the copy's keyframe: the file goes on from it
    show(CAMERA, 40)  # the camera is shown again, a delta frame: not in the file
    for i in range(42, 46, 2):
        show(LOW, i)  # nor the copy after it: the file misses the frame between
    call.stop_recording()
    [path] = list(tmp_path.glob("video-alice-*.webm"))
    assert path.name == f"video-alice-{CAMERA:08x}.webm"
    with av.open(str(path)) as container:
        sizes = [(f.width, f.height) for f in container.decode(video=0)]
    assert sizes == [(320, 240)] * 20 + [(160, 120)] * 5
