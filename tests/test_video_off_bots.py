"""Receiving no video end to end: a ``confero bot --send-only`` tells the server, which then
forwards it none (real server process, real UDP, SRTP and VP8), while another receiver in
the same meeting still gets everyone's video."""

from __future__ import annotations

import urllib.request
from typing import Any

from tests.bots import BotProcess, start_bot
from tests.conftest import ServerProcess


def decoded(stats: dict[str, Any], name: str) -> int:
    video = stats["video"].get(name)
    return int(video["frames_decoded"]) if video else 0


def media_event(server: ServerProcess, event: str) -> float:
    with urllib.request.urlopen(server.http + "metrics", timeout=10) as reply:
        text = reply.read().decode()
    prefix = f'confero_media_events_total{{event="{event}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def test_a_send_only_bot_is_forwarded_no_video(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    alice = start_bot(bots, server.url, "alice", "--create", "quiet", "--mode", "server")
    meeting = alice.expect("joined")["meeting_id"]
    bob = start_bot(bots, server.url, "bob", "--join", meeting, "--send-only")
    carol = start_bot(bots, server.url, "carol", "--join", meeting, "--video", "none")
    # carol (who wants video) decodes both publishers
    carol.expect("stats", lambda e: decoded(e, "alice") >= 30 and decoded(e, "bob") >= 30,
                 timeout=45)
    # meanwhile alice gets bob's video, so bob's is flowing through the server ...
    alice.expect("stats", lambda e: decoded(e, "bob") >= 30, timeout=30)
    # ... and bob got not one video packet: the server held alice's back from the start
    stats = bob.expect("stats", lambda e: e["frames_sent"] >= 90, timeout=30)
    assert stats["sent"]["video_ignored"] == 0
    assert stats["video"] == {}
    assert media_event(server, "video_not_wanted") > 0
    for bot in bots:
        bot.send("leave")
    for bot in bots:
        bot.finish()
