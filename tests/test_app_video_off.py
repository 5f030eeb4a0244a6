"""The app's "Receive no video (saves bandwidth)" (More menu): toggling it asks the server
for no video (it then forwards none: its /metrics count it), the tiles say so instead of
showing a frozen picture, and toggling it back brings the pictures back. Offscreen Qt, the
real server and a real bot."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings
from pytestqt.qtbot import QtBot

from confero.app.tiles import VIDEO_HELD
from confero.app.window import MainWindow
from tests.bots import BotProcess, start_bot
from tests.conftest import ServerProcess
from tests.test_app import WAIT, click, connect, lobby_row, through_device_check


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.resize(1000, 700)
    win.show()
    yield win
    win.close()


def metric(server: ServerProcess, line_start: str, missing: float | None = None) -> float:
    with urllib.request.urlopen(server.http + "metrics", timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line[len(line_start) + 1:])
    if missing is None:
        raise AssertionError(f"{line_start} not in /metrics")
    return missing


def media_event(server: ServerProcess, event: str) -> float:
    """A router counter; one not counted yet is not exported yet."""
    return metric(server, f'confero_media_events_total{{event="{event}"}}', missing=0.0)


FORWARDED = "confero_media_forwarded_packets_total"


def video_packets(window: MainWindow, name: str) -> int:
    call = window.engine.call
    assert call is not None
    stream = call.named_stats()["video"].get(name)
    return int(stream["packets"]) if stream else 0


def test_receive_no_video_from_the_more_menu_and_back(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess]
) -> None:
    connect(qtbot, window, server, "Traveller")
    ada = start_bot(bots, server.url, "Ada", "--create", "Trains", "--mode", "server",
                    "--fps", "15")
    ada.expect("joined")
    qtbot.waitUntil(lambda: lobby_row(window, "Trains") >= 0, timeout=WAIT)
    window.lobby.table.selectRow(lobby_row(window, "Trains"))
    click(qtbot, window.lobby.join_selected)
    through_device_check(qtbot, window, audio=False)
    stage, controller = window.meeting.stage, window.call
    qtbot.waitUntil(lambda: len(stage.tiles) == 1, timeout=WAIT)
    tile = next(iter(stage.tiles.values()))
    qtbot.waitUntil(tile.shows_video, timeout=WAIT)

    action = controller.no_video_action
    assert action in window.meeting.bar.more_menu.actions() and action.isCheckable()
    assert "Receive no video" in action.text()
    action.trigger()  # More > Receive no video
    assert action.isChecked()
    # the tile says why there is no picture, at once (no frozen last frame)
    assert tile.video_held and not tile.shows_video() and tile.image is None
    assert VIDEO_HELD.lower() in tile.accessibleName()
    # the request reached the server, which stops forwarding to us
    qtbot.waitUntil(lambda: media_event(server, "video_not_wanted") > 0, timeout=WAIT)
    forwarded, skipped = metric(server, FORWARDED), media_event(server, "video_not_wanted")
    qtbot.waitUntil(lambda: media_event(server, "video_not_wanted") >= skipped + 45,
                    timeout=WAIT)
    assert metric(server, FORWARDED) == forwarded  # not one more video packet went out
    assert not tile.shows_video()
    before = video_packets(window, "Ada")

    action.trigger()  # video again: from a keyframe the server asks Ada for
    assert not action.isChecked() and not tile.video_held
    qtbot.waitUntil(tile.shows_video, timeout=WAIT)  # a new picture, not one from before
    assert video_packets(window, "Ada") > before
    assert media_event(server, "pli_for_resume") > 0
    assert VIDEO_HELD.lower() not in tile.accessibleName()
