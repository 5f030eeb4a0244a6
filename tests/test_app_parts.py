"""The desktop app's pure parts, with fake clocks: the muted-speech detector, the
connection indicator's levels, the layout policy, what the app remembers, and the icons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtGui import QImage

from confero.app import icons
from confero.app.layout_policy import PAGE_SIZE, LayoutPolicy
from confero.app.plain import tooltip
from confero.app.quality import ConnectionQuality, level_for, loss_score
from confero.app.settings import Continuity
from confero.app.speech import MutedSpeechDetector

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

LOUD, QUIET = 20, 90  # -dBov: a voice, and a quiet room


def feed(detector: MutedSpeechDetector, levels: list[int], start: float) -> list[float]:
    """20 ms frames from ``start``; the times at which the detector fired."""
    return [start + i * 0.02 for i, level in enumerate(levels)
            if detector.feed(level, start + i * 0.02)]


# ---------------------------------------------------------------- muted speech


def test_speech_while_muted_fires_once_after_the_window() -> None:
    detector = MutedSpeechDetector()
    detector.mute()
    fired = feed(detector, [QUIET] * 10 + [LOUD] * 100, 0.0)
    assert len(fired) == 1
    assert 0.2 + 0.7 <= fired[0] <= 0.2 + 0.75  # when the ~700 ms window closes
    assert feed(detector, [LOUD] * 200, 5.0) == []  # at most once per mute
    detector.unmute()
    detector.mute()
    assert len(feed(detector, [LOUD] * 60, 10.0)) == 1  # a new mute may hint again


def test_a_cough_or_a_door_is_not_speech() -> None:
    detector = MutedSpeechDetector()
    detector.mute()
    cough = [LOUD] * 5 + [QUIET] * 45  # 100 ms loud, then quiet
    assert feed(detector, cough * 10, 0.0) == []


def test_nothing_fires_while_unmuted_or_when_quiet() -> None:
    detector = MutedSpeechDetector()
    assert feed(detector, [LOUD] * 200, 0.0) == []  # not muted
    detector.mute()
    assert feed(detector, [QUIET] * 200, 10.0) == []


def test_mostly_speech_with_pauses_still_counts() -> None:
    detector = MutedSpeechDetector()
    detector.mute()
    talk = ([LOUD] * 4 + [QUIET]) * 20  # 80 % loud: the pauses between words
    assert len(feed(detector, talk, 0.0)) == 1


# ---------------------------------------------------------------- connection indicator


@pytest.mark.parametrize(("loss", "score"), [
    (0.0, 100), (0.02, 100), (0.03, 70), (0.05, 50), (0.07, 30), (0.10, 10), (0.2, 0)])
def test_loss_levels_are_the_fixed_steps(loss: float, score: int) -> None:
    assert loss_score(loss) == score


def test_quality_falls_at_once_and_rises_two_points_a_second() -> None:
    quality = ConnectionQuality()
    packets = lost = 0
    now = 0.0

    def second(received: int, missing: int) -> None:
        nonlocal packets, lost, now
        packets, lost, now = packets + received, lost + missing, now + 1.0
        quality.update(packets=packets, lost=lost, fps=30, delay_ms=80, now=now)

    second(100, 0)
    second(100, 0)
    assert quality.score == 100 and quality.level(now) == "good"
    second(90, 10)  # 10 % loss
    assert quality.score == 10 and quality.level(now) == "poor"
    second(100, 0)
    assert quality.score == 12  # rising, slowly
    for _ in range(9):
        second(100, 0)
    assert quality.score == 30 and quality.level(now) == "fair"
    assert quality.visible(now)
    assert "loss 0.0 %" in quality.details()


def test_a_good_indicator_hides_after_five_seconds_and_stale_is_grey() -> None:
    quality = ConnectionQuality()
    for second in range(8):
        quality.update(packets=100 * second, lost=0, fps=30, delay_ms=50, now=float(second))
    assert quality.level(7.0) == "good"
    assert not quality.visible(7.0)
    assert quality.level(20.0) == "unknown" and quality.visible(20.0)
    assert level_for(None) == "unknown"


def test_long_delay_or_low_frame_rate_caps_the_score() -> None:
    quality = ConnectionQuality()
    quality.update(packets=0, lost=0, fps=30, delay_ms=600, now=0.0)
    quality.update(packets=100, lost=0, fps=30, delay_ms=600, now=1.0)
    assert quality.score == 30
    slow = ConnectionQuality()
    slow.update(packets=0, lost=0, fps=5, delay_ms=50, now=0.0)
    slow.update(packets=100, lost=0, fps=5, delay_ms=50, now=1.0)
    assert slow.score == 50


# ---------------------------------------------------------------- layouts


def test_auto_layout_two_people_large_three_a_grid() -> None:
    policy = LayoutPolicy()
    one = policy.arrange(["a"], 0.0)
    assert one.kind == "speaker" and one.stage == "a"
    assert policy.arrange(["a", "b"], 0.0).kind == "grid"


def test_the_speaker_holds_the_stage_two_seconds() -> None:
    policy = LayoutPolicy(mode="speaker")
    people = ["a", "b", "c"]
    policy.heard({"b"}, people, 0.0)
    assert policy.arrange(people, 0.0).stage == "b"
    policy.heard({"c"}, people, 1.0)  # too soon
    assert policy.arrange(people, 1.0).stage == "b"
    policy.heard({"c"}, people, 2.5)
    arrangement = policy.arrange(people, 2.5)
    assert arrangement.stage == "c" and arrangement.shown == ["a", "b"]


def test_a_pin_wins_over_the_speaker_and_the_grid() -> None:
    policy = LayoutPolicy(mode="grid")
    policy.pin("c")
    arrangement = policy.arrange(["a", "b", "c"], 0.0)
    assert arrangement.kind == "speaker" and arrangement.stage == "c"
    policy.heard({"a"}, ["a", "b", "c"], 10.0)
    assert policy.arrange(["a", "b", "c"], 10.0).stage == "c"
    policy.pin("c")  # again: unpinned
    assert policy.arrange(["a", "b", "c"], 10.0).kind == "grid"


def test_past_25_people_the_grid_pages_and_nobody_is_hidden() -> None:
    people = [f"p{i}" for i in range(30)]
    policy = LayoutPolicy(mode="grid")
    first = policy.arrange(people, 0.0)
    assert len(first.shown) == PAGE_SIZE and first.pages == 2
    policy.page = 1
    second = policy.arrange(people, 0.0)
    assert second.shown == people[25:]
    assert set(first.shown) | set(second.shown) == set(people)


# ---------------------------------------------------------------- continuity and text


def test_what_the_app_remembers(tmp_path: Path) -> None:
    path = str(tmp_path / "app.ini")
    memory = Continuity(QSettings(path, QSettings.Format.IniFormat))
    memory.remember_token("ws://h/ws", "Ada", "tok-1")
    for index in range(12):
        memory.add_recent(f"m{index}", f"Meeting {index}", created=index == 11)
    memory.set("join_muted", False)
    memory.settings.sync()
    again = Continuity(QSettings(path, QSettings.Format.IniFormat))
    assert again.resume_token("ws://h/ws", "Ada") == "tok-1"
    assert again.resume_token("ws://h/ws", "Bob") is None
    recent = again.recent()
    assert len(recent) == 8 and recent[0].id == "m11" and recent[0].created
    assert again.flag("join_muted", True) is False


def test_tooltips_escape_what_people_wrote() -> None:
    text = tooltip("<img src=/dev/zero> & <b>x</b>")
    assert "<img" not in text and "&lt;img src=/dev/zero&gt;" in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text


@pytest.mark.parametrize("name", icons.NAMES)
def test_every_icon_draws_something(name: str, qapp: object) -> None:
    image = icons.pixmap(name, "#ffffff", False).toImage().convertToFormat(
        QImage.Format.Format_ARGB32)
    drawn = sum(1 for y in range(0, image.height(), 2) for x in range(0, image.width(), 2)
                if image.pixelColor(x, y).alpha() > 0)
    assert drawn > 10, name
