"""The desktop app, driven by clicks and keys against the real server and real bots.

Qt runs offscreen here (one test reruns the main flow under Xvfb with a real X server).
Assertions are on what the window shows: pages, tiles, names, pictures, chat lines.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QImage, QPainter
from PySide6.QtWidgets import QMessageBox, QWidget
from pytestqt.qtbot import QtBot

from confero.app.engine import DeviceChoice
from confero.app.window import MainWindow
from confero.media.video import identity_code, read_stamp
from tests.bots import BotProcess, start_bot, tone_levels
from tests.conftest import ServerProcess
from tests.sound import playing_tone, record_sink, write_wav
from tests.test_resilience import free_port

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# CI keeps them as artifacts in docs/screenshots/ (committed when they change
# meaningfully); a developer's run writes them to a temporary folder unless asked.
_KEEP = os.environ.get("CI") == "true" or os.environ.get("CONFERO_SCREENSHOTS") == "1"
SCREENSHOTS = (Path(__file__).resolve().parent.parent / "docs" / "screenshots" if _KEEP
               else Path(tempfile.gettempdir()) / "confero-screenshots")
WAIT = 20_000  # ms


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MainWindow]:
    monkeypatch.setenv("CONFERO_RECORD_DIR", str(tmp_path / "recordings"))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.resize(1180, 760)
    win.show()
    yield win
    win.close()


def click(qtbot: QtBot, widget: QWidget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def connect(qtbot: QtBot, window: MainWindow, server: ServerProcess, name: str) -> None:
    window.start.server.clear()
    qtbot.keyClicks(window.start.server, server.url)
    qtbot.keyClicks(window.start.name, name)
    click(qtbot, window.start.connect_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.lobby, timeout=WAIT)
    assert "Connected to" in window.status.text() and name in window.status.text()


def lobby_row(window: MainWindow, title: str) -> int:
    table = window.lobby.table
    for row in range(table.rowCount()):
        item = table.item(row, 0)
        if item is not None and item.text() == title:
            return row
    return -1


def through_device_check(qtbot: QtBot, window: MainWindow, *, audio: bool = True) -> None:
    """The device check opens before every join: accept it as a person would."""
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.device_check, timeout=WAIT)
    click(qtbot, window.device_check.join_button if audio else window.device_check.join_no_audio)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.meeting, timeout=WAIT)


def image_array(image: QImage) -> np.ndarray:  # type: ignore[type-arg]
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    data = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=rgb.sizeInBytes())
    return data.reshape(rgb.height(), rgb.bytesPerLine())[:, : rgb.width() * 3].reshape(
        rgb.height(), rgb.width(), 3)


def shown_identity(image: QImage) -> int:
    """The identity stamped into the synthetic camera's picture, read from the tile."""
    rgb = image_array(image).astype(np.float32)
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8)
    return read_stamp(luma)[1]


def test_start_lobby_join_see_chat_toggle_and_leave(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess]
) -> None:
    connect(qtbot, window, server, "Katherine")
    ada = start_bot(bots, server.url, "Ada", "--create", "Standup", "--audio", "sine:440")
    ada.expect("joined")

    qtbot.waitUntil(lambda: lobby_row(window, "Standup") >= 0, timeout=WAIT)  # live update
    row = lobby_row(window, "Standup")
    table = window.lobby.table
    assert table.item(row, 1).text() == "Ada" and table.item(row, 2).text() == "1"
    cell = table.visualItemRect(table.item(row, 0)).center()
    # a person's double-click: press/release, then the double-click event
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=cell)
    qtbot.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=cell)
    through_device_check(qtbot, window)
    ada.expect("participant_joined", lambda e: e["name"] == "Katherine")

    grid = window.meeting.grid
    assert list(t.name for t in grid.tiles.values()) == ["Ada"]
    tile = grid.tiles[next(iter(grid.tiles))]
    qtbot.waitUntil(tile.shows_video, timeout=WAIT)
    assert tile.image is not None
    assert image_array(tile.image).mean() > 20  # not black
    assert shown_identity(tile.image) == identity_code("Ada")  # Ada's own picture
    assert tile.camera and tile.microphone
    qtbot.waitUntil(lambda: tile.speaking, timeout=WAIT)  # her 440 Hz tone is in the mix

    # chat, both ways, with sender and HH:MM
    page = window.meeting
    click(qtbot, page.chat_input)
    qtbot.keyClicks(page.chat_input, "Morning, everyone")
    qtbot.keyClick(page.chat_input, Qt.Key.Key_Return)
    ada.expect("chat", lambda e: e["sender"] == "Katherine" and e["text"] == "Morning, everyone")
    ada.send("chat Welcome, Katherine")
    qtbot.waitUntil(lambda: "Welcome, Katherine" in page.chat_view.toPlainText(), timeout=WAIT)
    text = page.chat_view.toPlainText()
    assert re.search(r"Katherine \d\d:\d\d\s+Morning, everyone", text), text
    assert re.search(r"Ada \d\d:\d\d\s+Welcome, Katherine", text), text

    # camera and microphone on and off, as the others see it
    click(qtbot, page.camera_button)
    ada.expect("media_changed", lambda e: e["name"] == "Katherine" and e["camera"])
    ada.expect("video_started", lambda e: e["name"] == "Katherine")
    qtbot.waitUntil(page.self_view.shows_video, timeout=WAIT)
    click(qtbot, page.mic_button)
    ada.expect("media_changed", lambda e: e["name"] == "Katherine" and e["microphone"])
    click(qtbot, page.camera_button)
    ada.expect("media_changed", lambda e: e["name"] == "Katherine" and not e["camera"])
    click(qtbot, page.mic_button)
    ada.expect("media_changed", lambda e: e["name"] == "Katherine" and not e["microphone"])
    qtbot.waitUntil(lambda: not page.self_view.shows_video(), timeout=WAIT)

    ada.send("mic off")
    qtbot.waitUntil(lambda: not tile.microphone, timeout=WAIT)

    click(qtbot, page.leave_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.lobby, timeout=WAIT)
    ada.expect("participant_left", lambda e: e["name"] == "Katherine" and e["reason"] == "left")


def test_create_and_end_the_meeting_for_all(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connect(qtbot, window, server, "Grace")
    qtbot.keyClicks(window.lobby.title, "Retro")
    click(qtbot, window.lobby.create_button)
    through_device_check(qtbot, window)
    page = window.meeting
    assert page.bar.end_action.isVisible()
    assert page.bar.end_action in page.bar.more_menu.actions()
    bob = start_bot(bots, server.url, "Bob", "--join", page.header.meeting_id, "--video", "none")
    bob.expect("joined")
    qtbot.waitUntil(lambda: len(page.grid.tiles) == 1, timeout=WAIT)
    assert "Bob joined" in page.toasts.texts()
    assert "Bob joined" not in page.chat_view.toPlainText()  # notices are not chat
    tile = next(iter(page.grid.tiles.values()))
    assert not tile.shows_video() and not tile.camera  # initials, not a black box

    asked: list[str] = []

    def confirm(*args: object) -> QMessageBox.StandardButton:
        asked.append(str(args[2]))
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", confirm)
    page.bar.end_action.trigger()  # More menu > End the meeting for everyone
    assert asked and "everyone" in asked[0]
    ended = bob.expect("meeting_ended")
    assert ended["reason"] == "cancelled"
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.lobby, timeout=WAIT)
    assert "ended for everyone" in window.statusBar().currentMessage()


def test_unread_count_while_the_chat_is_hidden(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess]
) -> None:
    connect(qtbot, window, server, "Hedy")
    qtbot.keyClicks(window.lobby.title, "Quiet room")
    click(qtbot, window.lobby.create_button)
    through_device_check(qtbot, window)
    page = window.meeting
    click(qtbot, page.panel_button)  # hide the side panel
    assert not page.side.isVisible()
    bob = start_bot(bots, server.url, "Bob", "--join", page.header.meeting_id, "--video", "none")
    bob.expect("joined")
    bob.send("chat one")
    bob.send("chat two")
    qtbot.waitUntil(lambda: page.panel_button.text() == "Chat (2)", timeout=WAIT)
    click(qtbot, page.panel_button)
    assert page.panel_button.text() == "Chat" and page.unread == 0


def test_four_person_meeting_and_lobby_screenshots(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess]
) -> None:
    connect(qtbot, window, server, "Katherine Johnson")
    first = start_bot(bots, server.url, "Ada Lovelace", "--create", "Design review",
                      "--audio", "sine:440")
    meeting = first.expect("joined")["meeting_id"]
    start_bot(bots, server.url, "Grace Hopper", "--join", meeting, "--audio", "sine:660")
    start_bot(bots, server.url, "Alan Turing", "--join", meeting, "--video", "none")
    other = start_bot(bots, server.url, "Hedy Lamarr", "--create", "Weekly sync", "--video", "none",
                      "--password", "s3cret")
    other.expect("joined")
    qtbot.waitUntil(lambda: lobby_row(window, "Design review") >= 0
                    and window.lobby.table.item(lobby_row(window, "Design review"), 2).text()
                    == "3" and lobby_row(window, "Weekly sync") >= 0, timeout=WAIT)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SCREENSHOTS / "lobby.png"))

    window.lobby.table.selectRow(lobby_row(window, "Design review"))
    click(qtbot, window.lobby.join_selected)
    through_device_check(qtbot, window)
    page = window.meeting
    window.engine.set_camera(DeviceChoice("Synthetic camera", "synthetic"), "Katherine Johnson")
    grid = page.grid
    qtbot.waitUntil(lambda: len(grid.tiles) == 3, timeout=WAIT)
    assert sorted(t.name for t in grid.tiles.values()) == [
        "Ada Lovelace", "Alan Turing", "Grace Hopper"]
    with_video = [t for t in grid.tiles.values() if t.name != "Alan Turing"]
    qtbot.waitUntil(lambda: all(t.shows_video() for t in with_video), timeout=WAIT)
    qtbot.waitUntil(page.self_view.shows_video, timeout=WAIT)
    for tile in with_video:
        assert tile.image is not None and shown_identity(tile.image) == identity_code(tile.name)
    # three tiles laid out 2x2: two columns, two rows, all of one size (to a pixel)
    tiles = list(grid.tiles.values())
    assert len({t.x() for t in tiles}) == 2 and len({t.y() for t in tiles}) == 2
    assert max(t.width() for t in tiles) - min(t.width() for t in tiles) <= 1
    assert max(t.height() for t in tiles) - min(t.height() for t in tiles) <= 1
    qtbot.waitUntil(lambda: page.stats_table.rowCount() == 2, timeout=WAIT)
    assert window.grab().save(str(SCREENSHOTS / "meeting-4.png"))


@pytest.mark.skipif(os.environ.get("CONFERO_UNDER_XVFB") == "1", reason="already under Xvfb")
def test_the_main_flow_under_a_real_x_server() -> None:
    """Once under Xvfb with the xcb platform, as a person's desktop would run it."""
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "CONFERO_UNDER_XVFB": "1"}
    result = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, "-m", "pytest", "-q",
         "-p", "no:cacheprovider", f"{__file__}::test_start_lobby_join_see_chat_toggle_and_leave",
         f"{__file__}::test_platform_is_xcb_under_xvfb"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout


def test_platform_is_xcb_under_xvfb(qtbot: QtBot) -> None:
    from PySide6.QtGui import QGuiApplication

    expected = "xcb" if os.environ.get("CONFERO_UNDER_XVFB") == "1" else "offscreen"
    assert QGuiApplication.platformName() == expected


def test_the_app_plays_and_captures_sound_through_pulseaudio(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess],
    pulse: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Ada (a bot) speaks 440 Hz: the app's speaker output, recorded from the null sink's
    monitor, carries it. The app's microphone hears 660 Hz played into another sink: Ada's
    recording carries that, and not her own tone."""
    import sounddevice

    for key in ("XDG_RUNTIME_DIR", "PULSE_SERVER"):
        monkeypatch.setenv(key, pulse[key])
    monkeypatch.setenv("PULSE_SINK", "speaker")
    monkeypatch.setenv("PULSE_SOURCE", "mic.monitor")
    sounddevice._terminate()  # PortAudio scans devices at start: rescan with this server
    sounddevice._initialize()
    try:
        with playing_tone(pulse, "mic", 660):
            connect(qtbot, window, server, "Katherine")
            ada = start_bot(bots, server.url, "Ada", "--create", "Sound check", "--audio",
                            "sine:440", "--video", "none", "--record", str(tmp_path / "ada"))
            ada.expect("joined")
            qtbot.waitUntil(lambda: lobby_row(window, "Sound check") >= 0, timeout=WAIT)
            window.lobby.table.selectRow(lobby_row(window, "Sound check"))
            click(qtbot, window.lobby.join_selected)
            through_device_check(qtbot, window)
            page = window.meeting
            # real devices were found, then the tone
            assert len(page.bar.mic_picker.choices()) > 1
            click(qtbot, page.mic_button)
            ada.expect("media_changed", lambda e: e["name"] == "Katherine" and e["microphone"])
            qtbot.waitUntil(lambda: any(t.speaking for t in page.grid.tiles.values()),
                            timeout=WAIT)
            heard = record_sink(pulse, "speaker", seconds=2.0)
            ada.expect("stats", lambda e: e["audio"]["packets"] >= 100)
            ada.send("leave")
            ada.finish()
    finally:
        monkeypatch.undo()
        sounddevice._terminate()
        sounddevice._initialize()
    write_wav(tmp_path / "app_speaker.wav", heard)
    levels = tone_levels(tmp_path / "app_speaker.wav", [440, 660])
    assert levels[440] > -6 and levels[660] < -40, levels
    levels = tone_levels(tmp_path / "ada" / "audio.wav", [440, 660])
    assert levels[660] > -6 and levels[440] < -40, levels


def test_the_qt_binding_keeps_none_alive(qtbot: QtBot) -> None:
    """PySide6 6.12.0 on Python 3.11 dropped a reference to None on every void method
    call, killing the app ("deallocating None") after a few thousand paints."""
    image = QImage(64, 64, QImage.Format.Format_RGB32)
    painter = QPainter(image)
    before = sys.getrefcount(None)
    for _ in range(1000):
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setClipping(False)
    after = sys.getrefcount(None)
    painter.end()
    assert after - before > -100, "the Qt binding leaks references to None: pin another one"


def test_failure_reason_paste_an_id_record_and_close_cleanly(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess],
    tmp_path: Path,
) -> None:
    # a server that is not there: the reason is shown, on the start page and in the status
    qtbot.keyClicks(window.start.name, "Mary")
    window.start.server.setText("ws://127.0.0.1:9/ws")
    click(qtbot, window.start.connect_button)
    qtbot.waitUntil(lambda: "failed" in window.status.text(), timeout=WAIT)
    assert "cannot connect to ws://127.0.0.1:9/ws" in window.status.text()
    assert "cannot connect" in window.start.message.text()

    window.start.server.setText(server.url)
    click(qtbot, window.start.connect_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.lobby, timeout=WAIT)
    ada = start_bot(bots, server.url, "Ada", "--create", "Paste me", "--audio", "sine:440")
    meeting = ada.expect("joined")["meeting_id"]
    qtbot.keyClicks(window.lobby.meeting_id, meeting)
    qtbot.keyClick(window.lobby.meeting_id, Qt.Key.Key_Return)
    through_device_check(qtbot, window)
    page = window.meeting
    tile = next(iter(page.grid.tiles.values()))
    qtbot.waitUntil(tile.shows_video, timeout=WAIT)

    window.call.record_action.trigger()  # More menu > Record the meeting
    qtbot.waitUntil(lambda: "Recording into" in page.notice.text(), timeout=WAIT)
    assert page.header.recording.isVisible()  # the red dot, with the word
    [folder] = (tmp_path / "recordings").iterdir()
    ada.send("chat for the record")
    qtbot.waitUntil(lambda: "for the record" in page.chat_view.toPlainText(), timeout=WAIT)
    # Ada's file opens at the keyframe the recording asked for; then ~1 s more of frames
    qtbot.waitUntil(lambda: any(folder.glob("video-Ada-*.webm")), timeout=WAIT)
    frames = tile.painted_frames
    qtbot.waitUntil(lambda: tile.painted_frames >= frames + 30, timeout=WAIT)
    window.call.record_action.trigger()
    qtbot.waitUntil(lambda: "Recording saved" in page.notice.text(), timeout=WAIT)
    assert (folder / "audio.wav").stat().st_size > 48_000  # > 0.5 s of mixed audio
    [video] = folder.glob("video-Ada-*.webm")
    with av.open(str(video)) as container:  # a playable file with Ada's pictures
        assert sum(1 for _ in container.decode(video=0)) >= 10
    assert "for the record" in (folder / "chat.jsonl").read_text()

    window.close()  # closing the window leaves the meeting cleanly
    left = ada.expect("participant_left", lambda e: e["name"] == "Mary")
    assert left["reason"] == "left"


def test_the_app_reconnects_and_the_meeting_comes_back_after_a_server_restart(
    qtbot: QtBot, window: MainWindow, server_factory: Callable[..., ServerProcess],
    bots: list[BotProcess],
) -> None:
    port = free_port()
    server = server_factory(port=port)
    connect(qtbot, window, server, "Margaret")
    ada = start_bot(bots, server.url, "Ada", "--create", "Durable", "--audio", "sine:440")
    ada.expect("joined")
    qtbot.waitUntil(lambda: lobby_row(window, "Durable") >= 0, timeout=WAIT)
    window.lobby.table.selectRow(lobby_row(window, "Durable"))
    click(qtbot, window.lobby.join_selected)
    through_device_check(qtbot, window)
    page = window.meeting
    qtbot.waitUntil(lambda: len(page.grid.tiles) == 1
                    and next(iter(page.grid.tiles.values())).shows_video(), timeout=WAIT)
    states: list[str] = []
    window.engine.state_changed.connect(lambda state, _reason: states.append(state))

    server.stop(signal.SIGKILL)
    qtbot.waitUntil(lambda: "reconnecting" in states, timeout=WAIT)
    assert "Reconnecting" in window.status.text()
    server_factory(port=port, data_dir=server.data_dir)
    qtbot.waitUntil(lambda: states[-1:] == ["connected"], timeout=WAIT)
    ada.expect("rejoined", timeout=30)

    qtbot.waitUntil(lambda: "Reconnected and back in the meeting" in page.notice.text(),
                    timeout=WAIT)
    assert window.pages.currentWidget() is page
    qtbot.waitUntil(lambda: [t.name for t in page.grid.tiles.values()] == ["Ada"],
                    timeout=WAIT)
    tile = next(iter(page.grid.tiles.values()))
    before = tile.painted_frames
    qtbot.waitUntil(lambda: tile.painted_frames > before + 15, timeout=WAIT)  # video is back
    people = [page.people.item(i).text() for i in range(page.people.count())]
    assert len(people) == 2 and people[0].startswith("Margaret (you)"), people
    ada.send("chat still here")
    qtbot.waitUntil(lambda: "still here" in page.chat_view.toPlainText(), timeout=WAIT)
