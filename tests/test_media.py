"""Real media end to end: server process, bot processes, UDP, SRTP, VP8 and Opus.

Each bot sends a synthetic camera (its identity stamped into every frame) and a tone; the
assertions read what the bots decoded and recorded: whose frames arrived (stamps read
from independently decoded recordings) and which tones each one heard (FFT).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import aiohttp

from confero.client import Client
from confero.media.video import identity_code
from confero.protocol.rtp import RtpPacket
from confero.protocol.srtp import SrtpContext, decode_key, new_master_key
from tests.bots import BotProcess, absent, levels_of, start_bot, video_identities
from tests.conftest import ServerProcess


def received(stats: dict[str, Any], name: str) -> int:
    video = stats["video"].get(name)
    return int(video["frames_decoded"]) if video else 0


def wait_until_receiving(bot: BotProcess, names: list[str], frames: int = 20,
                         audio_packets: int = 0, timeout: float = 30.0) -> dict[str, Any]:
    """The first stats event where ``bot`` decoded ``frames`` from each of ``names``."""
    try:
        return bot.expect(
            "stats",
            lambda e: all(received(e, n) >= frames for n in names)
            and e["audio"]["packets"] >= audio_packets,
            timeout=timeout,
        )
    except AssertionError:
        last = next((e for e in reversed(bot.history) if e["event"] == "stats"), None)
        if last is None:
            raise
        progress = {n: received(last, n) for n in names}
        raise AssertionError(f"{bot.name} received {progress} frames (wanted {frames}) and "
                             f"{last['audio']['packets']} audio packets (wanted "
                             f"{audio_packets}) within {timeout}s; last stats: {last}"
                             ) from None


TONES_A = {"a440": 440.0, "a660": 660.0, "a880": 880.0}
TONES_B = {"b550": 550.0, "b990": 990.0}


def test_two_meetings_each_hear_and_see_only_their_others(
    server: ServerProcess, bots: list[BotProcess], tmp_path: Path
) -> None:
    def launch(name: str, tone: float, target: list[str]) -> BotProcess:
        return start_bot(bots, server.url, name, *target, "--audio", f"sine:{tone:g}",
                         "--record", str(tmp_path / name), "--check-stamps")

    # --mode server: these tests are about the server's media path (two people would
    # otherwise talk peer-to-peer, tests/test_p2p.py)
    first_a = launch("a440", 440, ["--create", "A", "--mode", "server"])
    first_b = launch("b550", 550, ["--create", "B", "--mode", "server"])
    meeting_a = first_a.expect("joined")["meeting_id"]
    meeting_b = first_b.expect("joined")["meeting_id"]
    launch("a660", 660, ["--join", meeting_a])
    launch("a880", 880, ["--join", meeting_a])
    launch("b990", 990, ["--join", meeting_b])
    groups = {**dict.fromkeys(TONES_A, TONES_A), **dict.fromkeys(TONES_B, TONES_B)}

    for bot in bots:
        others = [n for n in groups[bot.name] if n != bot.name]
        # 2.5 s of mixed audio with everyone present, and video from every other member
        wait_until_receiving(bot, others, frames=30, audio_packets=150)
    for bot in bots:
        bot.send("leave")
    done = {bot.name: bot.finish() for bot in bots}

    all_tones = {**TONES_A, **TONES_B}
    for name, summary in done.items():
        members = groups[name]
        others = sorted(n for n in members if n != name)
        assert sorted(summary["video"]) == others, (name, summary["video"])
        for other in others:
            seen = summary["video"][other]
            assert seen["frames"] >= 30
            assert seen["stamps"] == {"match": seen["frames"]}  # every frame was theirs

        # one file per stream: a sender who reconnected (new SSRCs) starts a second file
        recordings = sorted((tmp_path / name).glob("video-*.webm"))
        recorded: dict[str, int] = {}
        for path in recordings:
            frames, identities = video_identities(path)
            sender = path.name.split("-")[1]
            assert identities <= {identity_code(sender)}, path  # only ever that sender
            recorded[sender] = recorded.get(sender, 0) + frames
        assert sorted(recorded) == others, (name, recordings)
        assert all(frames >= 30 for frames in recorded.values()), recorded

        levels = levels_of(tmp_path / name / "audio.wav", list(all_tones.values()))
        for other in others:
            assert levels[all_tones[other]] > -15, (name, "should hear", other, levels)
        # absent: below -40 dB, or no narrow peak above the splatter a starved process's
        # glitches spread around (a leaked tone is a peak near 0 dB, tests/bots.py)
        assert absent(levels, all_tones[name]), (name, "hears itself", levels)
        for stranger in set(all_tones) - set(members):
            assert absent(levels, all_tones[stranger]), (name, "hears", stranger, levels)


def test_camera_and_microphone_off_and_on_mid_call(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    alice = start_bot(bots, server.url, "alice", "--create", "toggles", "--mode", "server",
                      "--audio", "sine:440")
    meeting = alice.expect("joined")["meeting_id"]
    bob = start_bot(bots, server.url, "bob", "--join", meeting, "--video", "none")
    wait_until_receiving(bob, ["alice"], frames=10, audio_packets=20)

    alice.send("camera off")
    bob.expect("media_changed", lambda e: e["name"] == "alice" and e["camera"] is False)
    # the stream stops: two consecutive reports a second apart show no new frame
    before = bob.expect("stats")
    bob.expect("stats")
    after = bob.expect("stats")
    assert received(after, "alice") == received(before, "alice")

    alice.send("camera on")
    bob.expect("media_changed", lambda e: e["name"] == "alice" and e["camera"] is True)
    bob.expect("video_started", lambda e: e["name"] == "alice")
    wait_until_receiving(bob, ["alice"], frames=10)

    alice.send("mic off")
    bob.expect("media_changed", lambda e: e["microphone"] is False)
    before = bob.expect("stats")
    bob.expect("stats")
    after = bob.expect("stats")
    assert after["audio"]["packets"] == before["audio"]["packets"]

    alice.send("mic on")
    bob.expect("media_changed", lambda e: e["microphone"] is True)
    resumed = after["audio"]["packets"] + 25
    bob.expect("stats", lambda e: e["audio"]["packets"] >= resumed)
    for bot in bots:
        bot.send("leave")
        bot.finish()


def test_late_joiner_gets_a_keyframe_and_a_killed_bot_disturbs_nobody(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    alice = start_bot(bots, server.url, "alice", "--create", "late", "--mode", "server",
                      "--audio", "sine:440")
    meeting = alice.expect("joined")["meeting_id"]
    bob = start_bot(bots, server.url, "bob", "--join", meeting, "--audio", "sine:660")
    wait_until_receiving(alice, ["bob"])
    wait_until_receiving(bob, ["alice"])

    carol = start_bot(bots, server.url, "carol", "--join", meeting)
    carol.expect("joined")
    started = {carol.expect("video_started")["name"], carol.expect("video_started")["name"]}
    assert started == {"alice", "bob"}
    # Keyframes come only on request (PLI) or every 10 s; carol asked, and the server
    # forwarded the request to alice, who answered with a keyframe.
    stats = alice.expect("stats", lambda e: e["sent"]["plis_received"] >= 1)
    assert stats["sent"]["keyframes_sent"] >= 2

    bob.kill()
    for survivor in (alice, carol):
        left = survivor.expect("participant_left", lambda e: e["name"] == "bob")
        assert left["reason"] == "disconnected"
    now_alice = received(alice.expect("stats"), "carol")
    now_carol = received(carol.expect("stats"), "alice")
    alice.expect("stats", lambda e: received(e, "carol") >= now_alice + 20)
    carol.expect("stats", lambda e: received(e, "alice") >= now_carol + 20)
    for bot in (alice, carol):
        bot.send("leave")
        bot.finish()


async def media_metrics(server: ServerProcess) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(server.http + "metrics") as response:
        text = await response.text()
    values = {}
    for line in text.splitlines():
        if line.startswith("confero_media_events_total{"):
            key, value = line.rsplit(" ", 1)
            values[key.split('"')[1]] = float(value)
    return values


async def test_garbage_foreign_and_replayed_packets_are_dropped_and_counted(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    alice = start_bot(bots, server.url, "alice", "--create", "attacked", "--mode", "server",
                      "--audio", "sine:440")
    meeting = alice.expect("joined")["meeting_id"]
    bob = start_bot(bots, server.url, "bob", "--join", meeting, "--audio", "sine:660")
    wait_until_receiving(bob, ["alice"])

    # A participant of the same meeting, so it holds real keys to replay with.
    async with Client(server.url, "mallory") as mallory:
        grant = (await mallory.join(meeting)).media
        assert grant is not None
        keys = SrtpContext(tx_key=decode_key(grant.key_up), rx_key=new_master_key())
        foreign = SrtpContext(tx_key=new_master_key(), rx_key=new_master_key())
        genuine = keys.protect_rtp(
            RtpPacket(111, 1, 960, grant.audio_ssrc, b"\xfc" + b"\x00" * 40).serialize()
        )
        target = ("127.0.0.1", server.media_port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(genuine, target)
            for _ in range(20):
                udp.sendto(genuine, target)  # replays
            for size in (0, 1, 5, 11, 2000):
                udp.sendto(b"\x80" * size, target)  # truncated / oversized
            udp.sendto(b"hello, is this thing on?", target)
            for seq in range(20):  # the right SSRC, the wrong key
                forged = RtpPacket(111, seq, 960 * seq, grant.audio_ssrc, b"x" * 40).serialize()
                udp.sendto(foreign.protect_rtp(forged), target)
            for seq in range(20):  # nobody's SSRC
                udp.sendto(struct.pack("!BBHII", 0x80, 111, seq, 0, 0xDEAD0000 + seq)
                           + b"\x00" * 50, target)
            udp.sendto(genuine[:20], target)  # truncated SRTP

        counted = await _wait_for_counts(server, {"dropped_auth": 41, "dropped_malformed": 6,
                                                   "dropped_unknown_ssrc": 20})
        assert counted["dropped_auth"] >= 41

    # and the meeting's media kept flowing
    now = received(bob.expect("stats"), "alice")
    bob.expect("stats", lambda e: received(e, "alice") >= now + 20)
    for bot in (alice, bob):
        bot.send("leave")
        bot.finish()


async def _wait_for_counts(server: ServerProcess, wanted: dict[str, int]) -> dict[str, float]:
    import asyncio

    async with asyncio.timeout(10):
        while True:
            values = await media_metrics(server)
            if all(values.get(k, 0) >= v for k, v in wanted.items()):
                return values
            await asyncio.sleep(0.1)  # polling an HTTP endpoint: there is no event to await


def open_recordings(pid: int) -> list[str]:
    """The video files a process holds open."""
    fd_dir = Path(f"/proc/{pid}/fd")
    names = []
    for fd in fd_dir.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed meanwhile
        if target.endswith(".webm"):
            names.append(target)
    return names


def test_a_recording_closes_each_senders_file_when_they_leave(
    server: ServerProcess, bots: list[BotProcess], tmp_path: Path
) -> None:
    """Issue 7 item 15: a peer that rejoined 80 times left 80 open descriptors."""
    alice = start_bot(bots, server.url, "alice", "--create", "recorded", "--mode", "server",
                      "--video", "none", "--record", str(tmp_path / "alice"))
    meeting = alice.expect("joined")["meeting_id"]
    for round_ in range(3):
        bob = start_bot(bots, server.url, "bob", "--join", meeting, "--audio", "none")
        bob.expect("joined")
        alice.expect("video_started", lambda e: e["name"] == "bob")
        wait_until_receiving(alice, ["bob"], frames=10)
        assert len(open_recordings(alice.proc.pid)) == 1, round_
        bob.send("leave")
        bob.finish()
        alice.expect("participant_left", lambda e: e["name"] == "bob")
        alice.send("stats")  # a round trip through alice's loop: the leave was handled
        alice.expect("stats")
        assert open_recordings(alice.proc.pid) == [], round_
    assert len(list((tmp_path / "alice").glob("video-bob-*.webm"))) == 3
    alice.send("leave")
    alice.finish()
