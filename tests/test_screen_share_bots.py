"""Screen share end to end (issue 12 item 7): server process, bot processes, real UDP,
SRTP and VP8. One bot shares a synthetic screen beside its camera; another decodes both as
two streams, tells them apart by what the pictures show, and sees the screen end."""

from __future__ import annotations

from typing import Any

from tests.bots import BotProcess, start_bot
from tests.conftest import ServerProcess


def decoded(stats: dict[str, Any], name: str) -> int:
    video = stats["video"].get(name)
    return int(video["frames_decoded"]) if video else 0


def test_a_shared_screen_is_a_second_stream_beside_the_camera_and_ends_cleanly(
    server: ServerProcess, bots: list[BotProcess]
) -> None:
    alice = start_bot(bots, server.url, "alice", "--create", "slides", "--mode", "server",
                      "--screen", "--screen-size", "640x360")
    meeting = alice.expect("joined")["meeting_id"]
    bob = start_bot(bots, server.url, "bob", "--join", meeting, "--video", "none",
                    "--check-stamps")
    started = {bob.expect("video_started", lambda e: e["name"].startswith("alice"))["kind"]
               for _ in range(2)}
    assert started == {"camera", "screen"}
    both = bob.expect("stats", lambda e: decoded(e, "alice") >= 15
                      and decoded(e, "alice (screen)") >= 10, timeout=45)
    # two streams with their own SSRCs, each decoded on its own
    assert both["video"]["alice"]["ssrc"] != both["video"]["alice (screen)"]["ssrc"]

    alice.send("screen off")
    alice.expect("screen", lambda e: e["on"] is False)
    ended = bob.expect("screen_ended", timeout=15)
    changed = bob.expect("media_changed", lambda e: e["name"] == "alice")
    assert changed["screen"] is False and changed["camera"] is True
    # the screen's pictures were the slides, stamped as alice's screen; never the camera
    assert ended["name"] == "alice (screen)" and ended["frames"] >= 10
    assert ended["slide_frames"] >= ended["frames"] - 2
    assert ended["stamps"].get("match", 0) >= ended["frames"] - 2

    # the screen stream stops; the camera carries on
    before = bob.expect("stats")
    bob.expect("stats")
    after = bob.expect("stats", lambda e: decoded(e, "alice") > decoded(before, "alice") + 5)
    assert "alice (screen)" not in after["video"]

    # sharing again starts a new screen stream (a keyframe first, so it decodes at once)
    alice.send("screen on")
    assert bob.expect("video_started", lambda e: e["kind"] == "screen")["name"] == \
        "alice (screen)"
    for bot in bots:
        bot.send("leave")
    done = bob.finish()
    alice.finish()
    camera = done["video"]["alice"]
    assert camera["kind"] == "camera" and camera["slide_frames"] == 0
    assert camera["stamps"].get("match", 0) >= camera["frames"] - 2
