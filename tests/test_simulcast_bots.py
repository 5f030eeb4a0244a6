"""Simulcast end to end, the client side (issue 9): the real server process, bot processes,
real UDP, SRTP and VP8. The sender publishes its camera and a low-resolution copy on its
granted ``low_ssrc``; the server accepts the copy as one of its video streams; the
receiver shows the sender's camera under the sender's name, one entry, every picture
stamped as the sender's, whichever of the two streams the server forwards it."""

from __future__ import annotations

import urllib.request
from typing import Any

from tests.bots import BotProcess, start_bot
from tests.conftest import ServerProcess


def media_event(server: ServerProcess, event: str) -> float:
    """A ``confero_media_events_total{event=...}`` counter of the server (0 if absent)."""
    with urllib.request.urlopen(server.http + "metrics", timeout=10) as reply:
        text = reply.read().decode()
    prefix = f'confero_media_events_total{{event="{event}"}} '
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith(prefix)), 0.0)


def shown(stats: dict[str, Any], name: str) -> int:
    video = stats["video"].get(name)
    return int(video["frames_decoded"]) if video else 0


def test_the_server_receives_the_copy_and_the_receiver_shows_the_sender(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    alice = start_bot(bots, server.url, "alice", "--create", "simulcast", "--mode", "server")
    meeting = alice.expect("joined")["meeting_id"]
    bob = start_bot(bots, server.url, "bob", "--join", meeting, "--video", "none",
                    "--check-stamps")
    bob.expect("stats", lambda e: shown(e, "alice") >= 60, timeout=45)
    # alice sends the copy: 160x120 from her 320x240 camera, every second frame
    sent = alice.expect("stats", lambda e: e["sent"]["low_frames_sent"] >= 30)["sent"]
    assert sent["low_keyframes_sent"] >= 1 and sent["low_packets_sent"] >= 30
    # ... and the server takes every packet of it: bob sends nothing, so what the server
    # received from the meeting is alice's, and covers her copy's packets too (packets
    # on an SSRC not granted would be refused before this count; a granted SSRC that is
    # not one of her video streams would be counted as a wrong stream)
    alice.send("media")
    received = alice.expect("media")["received_packets"]
    assert received >= sent["sent_packets"] - 5, (received, sent)
    assert received >= sent["sent_packets"] - sent["low_packets_sent"] // 2
    assert media_event(server, "dropped_wrong_stream") == 0
    assert media_event(server, "dropped_unknown_ssrc") == 0

    for bot in bots:
        bot.send("leave")
    done = bob.finish()
    alice.finish()
    # one entry for alice, her camera; every picture shown carried her stamp (the copy's
    # too: it is read at twice its size); what the server forwards is its choice
    assert list(done["video"]) == ["alice"], done["video"]
    camera = done["video"]["alice"]
    assert camera["kind"] == "camera" and camera["frames"] >= 60
    assert camera["stamps"] == {"match": camera["frames"]}, camera["stamps"]
    assert camera["max_gap_ms"] < 1000  # no tile flapping between the streams' gaps
