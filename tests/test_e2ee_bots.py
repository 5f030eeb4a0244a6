"""E2EE end to end: bot processes, real UDP/WebSocket, and what the server could read.

The server here runs in the test process (its own thread and event loop: the same aiohttp
app and media router ``confero server`` runs), with the router's plaintext view (after SRTP,
exactly what it handles) recorded, so the test can try to decode what the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web

from confero.media.audio import OpusDecoder
from confero.media.video import identity_code, luma_plane, read_stamp
from confero.protocol.profile import AUDIO_PAYLOAD_TYPE, VIDEO_PAYLOAD_TYPE
from confero.protocol.rtp import RtpPacket
from confero.protocol.vp8 import parse_descriptor
from confero.server.app import ServerConfig, build_server
from confero.server.media_app import MediaServer
from confero.server.media_router import Datagram, MediaRouter
from tests.bots import BotProcess, absent, levels_of, video_identities
from tests.conftest import ServerProcess
from tests.test_media import TONES_A, TONES_B

PASSPHRASE = "tangerine moon"


class TappedRouter(MediaRouter):
    """The real router, keeping a copy of every RTP packet it handles (bounded)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.seen: list[RtpPacket] = []

    def _on_rtp(self, peer: Any, plain: bytes, now: float,
                arrival: float) -> list[Datagram]:
        if len(self.seen) < 200_000:
            self.seen.append(RtpPacket.parse(plain))
        return super()._on_rtp(peer, plain, now, arrival)


class InProcessServer:
    def __init__(self, data_dir: Path) -> None:
        self.router = TappedRouter()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(data_dir), self.loop).result(20)

    async def _start(self, data_dir: Path) -> str:
        self.media = await MediaServer.start(self.router, "127.0.0.1", 0)
        config = ServerConfig(port=0, data_dir=data_dir, heartbeat=0.5, empty_grace=3)
        self.runner = web.AppRunner(build_server(config, media=self.router).app,
                                    access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        port = self.runner.addresses[0][1]
        return f"ws://127.0.0.1:{port}/ws"

    def stop(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()
            await self.media.stop()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_bot(bots: list[BotProcess], url: str, name: str, *args: str) -> BotProcess:
    """A bot reporting stats twice a second that dumps its threads if killed by SIGABRT.
    Media stays on the server path (``--no-p2p``): what is tested is what the server sees
    and forwards (peer-to-peer E2EE runs the same frame cipher on the direct path)."""
    bot = BotProcess(url, name, "--stats-interval", "0.5", "--no-p2p", *args,
                     env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    bots.append(bot)
    return bot


def finish_all(bots: list[BotProcess]) -> dict[str, dict[str, Any]]:
    """Each bot's ``done``; one that hangs is made to show where (its stacks)."""
    done = {}
    for bot in bots:
        try:
            done[bot.name] = bot.finish()
        except AssertionError as exc:
            bot.proc.send_signal(signal.SIGUSR1)  # its asyncio tasks' stacks
            time.sleep(1)
            bot.proc.send_signal(signal.SIGABRT)  # its threads' stacks
            with contextlib.suppress(subprocess.TimeoutExpired):
                bot.proc.wait(5)
            time.sleep(0.5)  # let the stderr reader catch up
            raise AssertionError(f"{exc}\n{''.join(bot.stderr)[-6000:]}") from None
    return done


def seen_or_expect(bot: BotProcess, kind: str, predicate: Any, timeout: float = 60.0
                   ) -> dict[str, Any]:
    """Like ``expect``, but an event already consumed while waiting for another counts."""
    for event in bot.history:
        if event["event"] == kind and predicate(event):
            return event
    return bot.expect(kind, predicate, timeout=timeout)


def decoded(bot: BotProcess, name: str, frames: int) -> Any:
    """Video frames decoded, and about 3 s of audio and video decrypted, from ``name``."""
    return lambda e: (e["video"].get(name, {}).get("frames_decoded", 0) >= frames
                      and e["e2ee"].get(name, {}).get("decrypted", 0) >= 250)


def test_the_server_sees_nothing_decodable_and_the_wrong_passphrase_decodes_nothing(
    bots: list[BotProcess], tmp_path: Path
) -> None:
    server = InProcessServer(tmp_path / "data")
    try:
        alice = start_bot(bots, server.url, "alice", "--create", "Secret", "--e2ee",
                          "--passphrase", PASSPHRASE, "--audio", "sine:440",
                          "--record", str(tmp_path / "alice"), "--check-stamps")
        meeting = alice.expect("joined")["meeting_id"]
        bob = start_bot(bots, server.url, "bob", "--join", meeting, "--passphrase", PASSPHRASE,
                        "--audio", "sine:660", "--record", str(tmp_path / "bob"),
                        "--check-stamps")
        eve = start_bot(bots, server.url, "eve", "--join", meeting, "--passphrase", "guess",
                        "--audio", "sine:880", "--record", str(tmp_path / "eve"))
        for bot, other in ((alice, "bob"), (bob, "alice")):
            seen_or_expect(bot, "e2ee", lambda e, o=other: e == {  # type: ignore[misc]
                **e, "state": "verified", "name": o})
            seen_or_expect(bot, "e2ee", lambda e: e == {**e, "state": "cannot verify",
                                                        "name": "eve"})
        for other in ("alice", "bob"):
            seen_or_expect(eve, "e2ee", lambda e, o=other: e == {  # type: ignore[misc]
                **e, "state": "cannot verify", "name": o})
        alice.expect("stats", decoded(alice, "bob", 30), timeout=40)
        bob.expect("stats", decoded(bob, "alice", 30), timeout=40)
        report = eve.expect("stats", lambda e: all(
            e["e2ee"].get(n, {}).get("undecryptable", 0) >= 30 for n in ("alice", "bob")),
            timeout=40)
        for name in ("alice", "bob"):
            assert report["e2ee"][name]["state"] == "cannot decrypt"
            assert report["e2ee"][name]["decrypted"] == 0
        mixed = [m.stats.encoded for m in server.router.mixers().values()]
        for bot in bots:
            bot.send("leave")
        done = finish_all(bots)
    finally:
        server.stop()

    # eve: nothing decoded, nothing recorded, silence played
    assert done["eve"]["video"] == {}
    assert not list((tmp_path / "eve").glob("video-*.webm"))
    with wave.open(str(tmp_path / "eve" / "audio.wav")) as wav:
        heard = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    assert heard.size == 0 or np.abs(heard).max() == 0
    # the members: everything decoded was the right person's, and each heard the other
    for name, other in (("alice", "bob"), ("bob", "alice")):
        seen = done[name]["video"][other]
        assert seen["frames"] >= 30 and seen["stamps"] == {"match": seen["frames"]}
        levels = levels_of(tmp_path / name / "audio.wav", [440.0, 660.0, 880.0])
        tones = {"alice": 440.0, "bob": 660.0}
        assert levels[tones[other]] > -15 and absent(levels, 880.0), (name, levels)
        # one stream reached the local mix: the other member's (eve's never decrypted; a
        # stray packet of a stream that ended may start a buffer that never plays)
        streams = done[name]["stats"]["sender_audio"].values()
        assert len([s for s in streams if s["played"] > 5]) == 1

    # the server's view: reassemble every video frame it forwarded and try to decode it
    plaintext: set[bytes] = set()
    for path in (tmp_path / "bob").glob("video-*.webm"):
        with av.open(str(path)) as container:
            plaintext |= {bytes(p) for p in container.demux(video=0) if p.size}
    assert len(plaintext) >= 30
    frames: dict[tuple[int, int], bytes] = {}
    for packet in server.router.seen:
        if packet.payload_type == VIDEO_PAYLOAD_TYPE:
            body = packet.payload[parse_descriptor(packet.payload).header_size:]
            key = (packet.ssrc, packet.timestamp)
            frames[key] = frames.get(key, b"") + body
    assert len(frames) >= 60
    assert not set(frames.values()) & plaintext
    # With the frame header in the clear a lenient decoder (FFmpeg's) may still turn a
    # keyframe into a picture, but only of noise: no picture carries anybody's stamp.
    identities = {identity_code(n) for n in ("alice", "bob", "eve")}
    pictures = 0
    for ssrc in {s for s, _ in frames}:
        decoder = av.CodecContext.create("vp8", "r")
        for (s, _), data in sorted(frames.items()):
            if s == ssrc:
                with contextlib.suppress(av.FFmpegError):
                    for picture in decoder.decode(av.Packet(data)):
                        pictures += 1
                        assert read_stamp(luma_plane(picture))[1] not in identities
    assert pictures < len(frames) // 10  # at most the keyframes come out, as noise
    # and its audio: Opus-decoding what it holds gives no tone of anybody
    audio = [p for p in server.router.seen if p.payload_type == AUDIO_PAYLOAD_TYPE]
    assert len(audio) >= 200
    assert server.router.counters["e2ee_audio_forwarded"] > 0
    assert mixed == [0]  # the meeting's mixer never encoded anything
    by_sender: dict[int, list[bytes]] = {}
    for packet in audio:
        by_sender.setdefault(packet.ssrc, []).append(packet.payload)
    for payloads in by_sender.values():
        decoder = OpusDecoder()  # mono 48 kHz, as the clients decode
        samples = np.concatenate([decoder.decode(p) for p in payloads]).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(samples))
        freqs = np.fft.rfftfreq(len(samples), 1 / 48_000)
        for tone in (440.0, 660.0, 880.0):  # a tone stands 100x over its neighbourhood
            band = spectrum[(freqs > tone - 3) & (freqs < tone + 3)]
            around = spectrum[(np.abs(freqs - tone) > 20) & (np.abs(freqs - tone) < 200)]
            assert band.max() < 10 * np.median(around) + 1e-9, tone  # a real one: ~2000x


def test_two_e2ee_meetings_each_hear_and_see_only_their_others(
    server_factory: Any, bots: list[BotProcess], tmp_path: Path
) -> None:
    """The two-meeting FFT test of ``test_media``, with E2EE: the server forwards the
    loudest three's audio and each client mixes. Heartbeats every 2 s (the default), not
    the fixtures' 0.5 s: five bots on a shared machine otherwise keep reconnecting, and
    every rejoin is a new identity to pair, which is not what this test is about."""
    server = server_factory("--heartbeat", "2")
    def launch(name: str, tone: float, target: list[str], passphrase: str) -> BotProcess:
        return start_bot(bots, server.url, name, *target, "--audio", f"sine:{tone:g}",
                         "--record", str(tmp_path / name), "--check-stamps",
                         "--passphrase", passphrase)

    first_a = launch("a440", 440, ["--create", "A", "--e2ee"], "alpha")
    first_b = launch("b550", 550, ["--create", "B", "--e2ee"], "bravo")
    meeting_a = first_a.expect("joined")["meeting_id"]
    meeting_b = first_b.expect("joined")["meeting_id"]
    launch("a660", 660, ["--join", meeting_a], "alpha")
    launch("a880", 880, ["--join", meeting_a], "alpha")
    launch("b990", 990, ["--join", meeting_b], "bravo")
    groups = {**dict.fromkeys(TONES_A, TONES_A), **dict.fromkeys(TONES_B, TONES_B)}
    for bot in bots:
        others = [n for n in groups[bot.name] if n != bot.name]
        bot.expect("stats", lambda e, o=others: all(  # type: ignore[misc]
            e["video"].get(n, {}).get("frames_decoded", 0) >= 30
            and e["e2ee"].get(n, {}).get("decrypted", 0) >= 250 for n in o), timeout=60)
    for bot in bots:
        bot.send("leave")
    done = finish_all(bots)
    by_name = {bot.name: bot for bot in bots}

    all_tones = {**TONES_A, **TONES_B}
    for name, summary in done.items():
        members = groups[name]
        others = sorted(n for n in members if n != name)
        assert sorted(summary["video"]) == others, (name, summary["video"])
        for other in others:
            seen = summary["video"][other]
            assert seen["frames"] >= 30 and seen["stamps"] == {"match": seen["frames"]}
        # one file per stream: a sender that reconnected (a loaded machine misses
        # heartbeats) comes back with new SSRCs, so count per sender
        per_sender: dict[str, tuple[int, set[int]]] = {}
        for path in sorted((tmp_path / name).glob("video-*.webm")):
            frames, identities = video_identities(path)
            sender = path.name.split("-")[1]
            total, seen_ids = per_sender.get(sender, (0, set()))
            per_sender[sender] = (total + frames, seen_ids | identities)
        assert sorted(per_sender) == others
        for sender, (frames, identities) in per_sender.items():
            assert frames >= 30 and identities == {identity_code(sender)}, (name, sender)
        levels = levels_of(tmp_path / name / "audio.wav", list(all_tones.values()))
        for other in others:
            assert levels[all_tones[other]] > -15, (name, "should hear", other, levels)
        assert absent(levels, all_tones[name]), (name, "hears itself", levels)
        for stranger in set(all_tones) - set(members):
            assert absent(levels, all_tones[stranger]), (name, "hears", stranger, levels)
        streams = summary["stats"]["sender_audio"].values()  # mixed here, per sender
        # A bot that rejoined (missed heartbeats on a loaded machine) reports the counts
        # of its last media session only, which may have begun just before "leave"; the
        # tones in its recording above prove it heard the others all the same. (This
        # failed once in ~17 runs beside busy loops; the message says what it saw.)
        history = [e["event"] for e in by_name[name].history]
        if "rejoined" not in history:
            assert len([s for s in streams if s["played"] > 5]) == len(others), (
                name, summary["stats"]["sender_audio"], summary["e2ee"], history)


def test_e2ee_holds_on_the_peer_to_peer_path_too(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    """Two people go peer to peer; the same frame cipher runs on the direct path."""
    def launch(name: str, *args: str) -> BotProcess:
        bot = BotProcess(server.url, name, "--stats-interval", "0.5", "--check-stamps",
                         "--passphrase", PASSPHRASE, *args)
        bots.append(bot)
        return bot

    alice = launch("alice", "--create", "Direct", "--e2ee")
    meeting = alice.expect("joined")["meeting_id"]
    bob = launch("bob", "--join", meeting)
    status = {}
    for bot, other in ((alice, "bob"), (bob, "alice")):
        seen_or_expect(bot, "mode", lambda e: e["mode"] == "p2p")
        status[bot.name] = seen_or_expect(bot, "stats", lambda e, o=other: (  # type: ignore[misc]
            e["mode"] == "p2p" and e["e2ee"].get(o, {}).get("decrypted", 0) >= 150
            and e["video"].get(o, {}).get("frames_decoded", 0) >= 30))["e2ee"][other]
    for bot in bots:
        bot.send("leave")
    done = finish_all(bots)
    for name, other in (("alice", "bob"), ("bob", "alice")):
        assert status[name]["verified"] and status[name]["state"] == "decrypting"
        seen = done[name]["video"][other]
        assert seen["stamps"] == {"match": seen["frames"]}


def test_a_leave_rotates_keys_without_a_lost_frame_for_those_who_stay(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    alice = start_bot(bots, server.url, "alice", "--create", "Rotate", "--e2ee",
                      "--passphrase", PASSPHRASE, "--audio", "sine:440")
    meeting = alice.expect("joined")["meeting_id"]
    bob = start_bot(bots, server.url, "bob", "--join", meeting, "--passphrase", PASSPHRASE,
                    "--audio", "sine:660")
    carol = start_bot(bots, server.url, "carol", "--join", meeting,
                      "--passphrase", PASSPHRASE, "--audio", "sine:880")
    stayers = {alice: "carol", carol: "alice"}
    before = {}
    for bot, other in stayers.items():
        before[bot.name] = seen_or_expect(bot, "stats", lambda e, o=other: all(  # type: ignore[misc]
            e["e2ee"].get(n, {}).get("decrypted", 0) >= 100 for n in (o, "bob")))["e2ee"]
    for bot in stayers:  # everything printed so far, read: the epoch in use now
        while not bot.events.empty():
            bot.history.append(bot.events.get_nowait())
    epochs = {b.name: max((e["epoch"] for e in b.history if e["event"] == "e2ee_key"),
                          default=0) for b in stayers}
    bob.send("leave")
    bob.finish()
    after = {}
    for bot, other in stayers.items():
        # a fresh key (not a ratchet of one bob knew) is in use ...
        seen_or_expect(bot, "e2ee_key", lambda e, n=bot.name: e["epoch"] > epochs[n])
        # ... and a further 3 s of the other's audio and video decrypted
        target = before[bot.name][other]["decrypted"] + 250
        after[bot.name] = bot.expect("stats", lambda e, o=other, t=target: (
            e["e2ee"].get(o, {}).get("decrypted", 0) >= t), timeout=60)["e2ee"]
    for bot, other in stayers.items():
        # not one frame of the other was undecryptable across the rotation
        assert (after[bot.name][other]["undecryptable"]
                == before[bot.name][other]["undecryptable"]), (bot.name, before, after)
    for bot in stayers:
        bot.send("leave")
    finish_all(list(stayers))
