"""The app's screen share (issue 12 item 7): clicking Share adds a second tile for the
shared screen (the camera stays on), the screen takes the stage, and stopping brings the
previous layout back; a remote participant's screen does the same. Offscreen Qt, the real
server and a real bot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings
from pytestqt.qtbot import QtBot

from confero.app.engine import SELF, DeviceChoice, screen_key
from confero.app.window import MainWindow
from confero.media.screen_pattern import screen_identity
from confero.media.video import identity_code
from tests.bots import BotProcess, start_bot
from tests.conftest import ServerProcess
from tests.test_app import (
    SCREENSHOTS,
    WAIT,
    click,
    connect,
    image_array,
    lobby_row,
    shown_identity,
    through_device_check,
)


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.resize(1180, 760)
    win.show()
    yield win
    win.close()


def slide_like(tile_image: object) -> bool:
    """Mostly light page: the synthetic screen, not a camera picture."""
    return float(np.asarray(image_array(tile_image)).mean()) > 170  # type: ignore[arg-type]


def test_share_adds_a_screen_tile_on_the_stage_and_stopping_restores_the_layout(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONFERO_SCREEN", "synthetic")
    connect(qtbot, window, server, "Presenter")
    ada = start_bot(bots, server.url, "Ada", "--create", "Slides", "--mode", "server",
                    "--fps", "15", "--screen-size", "640x360")
    ada.expect("joined")
    qtbot.waitUntil(lambda: lobby_row(window, "Slides") >= 0, timeout=WAIT)
    window.lobby.table.selectRow(lobby_row(window, "Slides"))
    click(qtbot, window.lobby.join_selected)
    through_device_check(qtbot, window)
    page, controller = window.meeting, window.call
    stage = page.stage
    window.engine.set_camera(DeviceChoice("Synthetic camera", "synthetic"), "Presenter")
    qtbot.waitUntil(lambda: len(stage.tiles) == 1 and page.self_view.shows_video(),
                    timeout=WAIT)
    page.bar.layout_actions["grid"].trigger()  # the layout to come back to
    assert stage.arrangement.kind == "grid"

    # --- our own share: a second tile, on the stage, the camera still on
    click(qtbot, page.bar.screen_button)
    own = screen_key(SELF)
    assert own in stage.tiles and controller.sharing
    assert page.bar.screen_button.toolTip() == "Stop sharing (D)"
    assert stage.arrangement.kind == "speaker" and stage.arrangement.stage == own
    screen_tile = stage.tiles[own]
    assert screen_tile.width() > 2 * stage.tiles[next(k for k in stage.tiles if k != own)].width()
    qtbot.waitUntil(lambda: screen_tile.image is not None, timeout=WAIT)
    assert slide_like(screen_tile.image)
    assert shown_identity(screen_tile.image) == identity_code(screen_identity("Presenter"))
    assert page.self_view.camera and window.engine.call is not None
    assert window.engine.call.camera_on and window.engine.call.screen_on
    # the others receive it as a stream of its own
    started = ada.expect("video_started", lambda e: e["kind"] == "screen", timeout=30)
    assert started["name"] == "Presenter (screen)"

    click(qtbot, page.bar.screen_button)  # stop
    assert own not in stage.tiles and not controller.sharing
    assert stage.policy.mode == "grid" and stage.arrangement.kind == "grid"
    qtbot.waitUntil(lambda: window.engine.call is not None
                    and not window.engine.call.screen_on, timeout=WAIT)
    ada.expect("screen_ended", lambda e: e["name"] == "Presenter (screen)", timeout=WAIT)
    assert window.engine.call.camera_on  # the camera never stopped

    # --- a remote share: its tile takes the stage, and leaves it when sharing stops
    ada.send("screen on")
    qtbot.waitUntil(lambda: len(stage.tiles) == 2, timeout=WAIT)
    [remote] = [k for k in stage.tiles if k.endswith(":screen")]
    assert stage.tiles[remote].name == "Ada (screen)"
    assert stage.arrangement.kind == "speaker" and stage.arrangement.stage == remote
    tile = stage.tiles[remote]
    qtbot.waitUntil(lambda: tile.image is not None and slide_like(tile.image), timeout=WAIT)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)  # the speaker view with a shared screen
    assert window.grab().save(str(SCREENSHOTS / "screen-share.png"))
    ada.send("screen off")
    qtbot.waitUntil(lambda: remote not in stage.tiles, timeout=WAIT)
    assert stage.arrangement.kind == "grid"
    ada.send("leave")
    ada.finish()
