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
from PySide6.QtCore import QPoint, QSettings, Qt, QTimer
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtWidgets import QApplication, QLabel, QMessageBox, QWidget
from pytestqt.qtbot import QtBot

from confero.app.controls import ORDER as CONTROL_ORDER
from confero.app.engine import DeviceChoice
from confero.app.meeting_page import MeetingPage
from confero.app.window import MainWindow
from confero.media.video import identity_code, read_stamp_any
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
    """The image's pixels as an (height, width, 3) array of its own: a view into the
    converted QImage would outlive it (freed on return; read back as garbage, or a
    segfault once the picture is large enough to be unmapped)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    data = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=rgb.sizeInBytes())
    return data.reshape(rgb.height(), rgb.bytesPerLine())[:, : rgb.width() * 3].reshape(
        rgb.height(), rgb.width(), 3).copy()


def shown_identity(image: QImage) -> int:
    """The identity stamped into the synthetic camera's picture, read from the tile."""
    rgb = image_array(image).astype(np.float32)
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8)
    return read_stamp_any(luma)[1]  # (a simulcast copy is half size)


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


def test_four_person_meeting_pictures_and_grid(
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


@pytest.mark.skipif(os.environ.get("CONFERO_UNDER_XVFB") == "1", reason="already under Xvfb")
def test_the_main_flow_under_a_real_x_server() -> None:
    """Once under Xvfb with the xcb platform, as a person's desktop would run it."""
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "CONFERO_UNDER_XVFB": "1"}
    result = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, "-m", "pytest", "-q",
         "-p", "no:cacheprovider", f"{__file__}::test_start_lobby_join_see_chat_toggle_and_leave",
         f"{__file__}::test_platform_is_xcb_under_xvfb",
         f"{__file__}::test_screenshots_of_every_view"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 passed" in result.stdout


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
            ada = start_bot(bots, server.url, "Ada", "--create", "Sound check",
                            "--mode", "server", "--audio",
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
    tile = next(iter(page.grid.tiles.values()))
    states: list[str] = []
    window.engine.state_changed.connect(lambda state, _reason: states.append(state))

    server.stop(signal.SIGKILL)
    qtbot.waitUntil(lambda: "reconnecting" in states, timeout=WAIT)
    assert "Reconnecting" in window.status.text()
    assert tile.status == "Reconnecting…"  # said on the tile too
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


# ---------------------------------------------------------------- issue 7.2: plain text

HOSTILE_NAME = "<img src=/dev/zero>"
HOSTILE_OTHER = "<b>x</b>"
HOSTILE_TITLE = "<b>big</b><img src=/dev/zero>"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def responsive(qtbot: QtBot) -> None:
    """The event loop turns: a zero-delay timer fires (it would not in a frozen app)."""
    fired: list[bool] = []
    QTimer.singleShot(0, lambda: fired.append(True))
    qtbot.waitUntil(lambda: bool(fired), timeout=WAIT)


def shown_as_rich_text(window: MainWindow) -> list[str]:
    """Labels that would interpret markup, and tooltips that carry a raw tag."""
    wrong = []
    for label in window.findChildren(QLabel):
        text = label.text()
        if "<" in text and label.textFormat() != Qt.TextFormat.PlainText:
            wrong.append(f"label {label.objectName()!r}: {text!r}")
    for widget in window.findChildren(QWidget):
        if "<img" in widget.toolTip() or "<b>x" in widget.toolTip():
            wrong.append(f"tooltip of {widget.objectName()!r}: {widget.toolTip()!r}")
    return wrong


def test_hostile_names_titles_and_chat_are_shown_literally_and_the_app_stays_responsive(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess]
) -> None:
    """Issue 7.2: a name `<img src=/dev/zero>` rendered as rich text froze the app."""
    before = rss_mib()
    connect(qtbot, window, server, "Viewer")
    host = start_bot(bots, server.url, HOSTILE_NAME, "--create", HOSTILE_TITLE,
                     "--video", "none")
    host.expect("joined")
    qtbot.waitUntil(lambda: lobby_row(window, HOSTILE_TITLE) >= 0, timeout=WAIT)
    row = lobby_row(window, HOSTILE_TITLE)
    assert window.lobby.table.item(row, 1).text() == HOSTILE_NAME
    window.lobby.table.selectRow(row)
    click(qtbot, window.lobby.join_selected)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.device_check, timeout=WAIT)
    assert HOSTILE_TITLE in window.device_check.heading.text()
    assert window.grab().save(str(Path(tempfile.gettempdir()) / "hostile-check.png"))
    responsive(qtbot)
    click(qtbot, window.device_check.join_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.meeting, timeout=WAIT)
    page = window.meeting
    other = start_bot(bots, server.url, HOSTILE_OTHER, "--join", page.header.meeting_id,
                      "--video", "none")
    other.expect("joined")
    qtbot.waitUntil(lambda: len(page.grid.tiles) == 2, timeout=WAIT)
    other.send(f"chat {HOSTILE_NAME} says <a href='x'>hi</a>")
    qtbot.waitUntil(lambda: "says" in page.chat_view.toPlainText(), timeout=WAIT)
    host.send("leave")
    qtbot.waitUntil(lambda: len(page.grid.tiles) == 1, timeout=WAIT)

    assert page.title.text() == HOSTILE_TITLE
    assert window.windowTitle() == f"{HOSTILE_TITLE} - confero"
    assert [t.name for t in page.grid.tiles.values()] == [HOSTILE_OTHER]
    assert f"{HOSTILE_OTHER} joined" in page.toasts.texts()
    assert f"{HOSTILE_NAME} left" in page.toasts.texts()
    chat = page.chat_view.toPlainText()
    assert HOSTILE_OTHER in chat and f"{HOSTILE_NAME} says <a href='x'>hi</a>" in chat
    people = [page.people.item(i).text() for i in range(page.people.count())]
    assert any(p.startswith(HOSTILE_OTHER) for p in people), people
    tile = next(iter(page.grid.tiles.values()))
    assert "&lt;b&gt;x&lt;/b&gt;" in tile.toolTip()
    assert window.grab().save(str(Path(tempfile.gettempdir()) / "hostile-meeting.png"))
    responsive(qtbot)
    assert shown_as_rich_text(window) == []
    assert rss_mib() - before < 300  # the attack took 1.5 GB in 1.5 s


# ---------------------------------------------------------------- the control bar and keys


def create_alone(qtbot: QtBot, window: MainWindow, server: ServerProcess, name: str,
                 title: str) -> MeetingPage:
    connect(qtbot, window, server, name)
    qtbot.keyClicks(window.lobby.title, title)
    click(qtbot, window.lobby.create_button)
    through_device_check(qtbot, window)
    return window.meeting


def colour_at_left(button: QWidget) -> tuple[int, int, int]:
    image = button.grab().toImage()
    colour = image.pixelColor(max(2, image.width() // 8), image.height() // 2)
    return colour.red(), colour.green(), colour.blue()


def press(qtbot: QtBot, window: MainWindow, key: Qt.Key, text: str = "") -> None:
    """A key pressed with the focus in the video area (not in a text field)."""
    stage = window.meeting.stage
    if QApplication.focusWidget() is not stage:
        click(qtbot, stage)
    qtbot.keyClick(stage, key)


def test_control_bar_order_states_shortcuts_and_the_muted_banner(
    qtbot: QtBot, window: MainWindow, server: ServerProcess
) -> None:
    page = create_alone(qtbot, window, server, "Keys", "Shortcuts")
    bar = page.bar
    # the order a person sees, left to right, Leave last
    by_x = sorted(bar.buttons(), key=lambda b: b.mapTo(bar, b.rect().topLeft()).x())
    assert [b.objectName() for b in by_x] == list(CONTROL_ORDER)
    # alone: "Waiting for others..." with a Copy button
    assert page.waiting.isVisible()
    click(qtbot, page.waiting.copy_button)
    assert QGuiApplication.clipboard().text() == page.header.meeting_id
    # muted: red, slashed, and said in words
    mic = bar.mic_button
    assert mic.property("off") is True and mic.toolTip() == "Unmute (M)"
    assert "muted" in mic.accessibleName()
    red, green, _ = colour_at_left(mic)
    assert red > 180 and green < 110, (red, green)

    press(qtbot, window, Qt.Key.Key_M)
    qtbot.waitUntil(lambda: page.self_view.microphone, timeout=WAIT)  # the engine opened it
    assert mic.toolTip() == "Mute (M)" and mic.property("off") is False
    red, green, _ = colour_at_left(mic)
    assert not (red > 180 and green < 110)
    # letters typed into the chat are text, not commands
    click(qtbot, page.chat_input)
    qtbot.keyClicks(page.chat_input, "mvcrw")
    assert page.chat_input.text() == "mvcrw"
    assert window.call.microphone and not window.call.camera and not window.call.hand
    page.chat_input.clear()

    press(qtbot, window, Qt.Key.Key_V)
    qtbot.waitUntil(page.self_view.shows_video, timeout=WAIT)
    assert bar.camera_button.toolTip() == "Turn the camera off (V)"
    assert page.side.isVisible()
    press(qtbot, window, Qt.Key.Key_C)
    assert not page.side.isVisible() and bar.panel_button.accessibleName().startswith(
        "Chat closed")
    press(qtbot, window, Qt.Key.Key_P)
    assert page.people_visible() and bar.people_button.isChecked()
    modes = []
    for _ in range(3):
        press(qtbot, window, Qt.Key.Key_W)
        modes.append(page.stage.policy.mode)
    assert modes == ["grid", "speaker", "auto"]
    press(qtbot, window, Qt.Key.Key_R)
    assert bar.hand_button.isChecked() and page.self_view.hand
    assert bar.hand_button.accessibleName() == "Hand raised"
    press(qtbot, window, Qt.Key.Key_R)
    assert not page.self_view.hand
    press(qtbot, window, Qt.Key.Key_Question)
    assert window.call.help.isVisible() and window.call.help.table.rowCount() >= 10
    window.call.help.close()

    # hold Space to talk while muted
    press(qtbot, window, Qt.Key.Key_M)
    qtbot.waitUntil(lambda: not page.self_view.microphone, timeout=WAIT)
    qtbot.keyPress(page.stage, Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: page.self_view.microphone, timeout=WAIT)
    qtbot.keyRelease(page.stage, Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: not page.self_view.microphone, timeout=WAIT)

    # talking while muted: the (synthetic, 440 Hz) microphone keeps capturing while muted,
    # the engine reports its level, and the banner comes, once per mute, with an Unmute
    frames: list[int] = []
    window.engine.muted_level.connect(lambda level: frames.append(level))
    qtbot.waitUntil(lambda: len(frames) > 10, timeout=WAIT)
    assert min(frames) < 40  # a loud tone, measured while nothing is sent
    qtbot.waitUntil(page.banner.isVisible, timeout=WAIT)
    click(qtbot, page.banner.unmute_button)
    assert window.call.microphone and not page.banner.isVisible()
    qtbot.waitUntil(lambda: page.self_view.microphone, timeout=WAIT)
    press(qtbot, window, Qt.Key.Key_M)  # a new mute: the hint may come again
    qtbot.waitUntil(page.banner.isVisible, timeout=WAIT)
    click(qtbot, page.banner.dismiss_button)
    seen = len(frames)
    qtbot.waitUntil(lambda: len(frames) > seen + 100, timeout=WAIT)  # 2 s more of talking
    assert not page.banner.isVisible()  # at most once per mute

    # Tab walks the bar in order
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=WAIT)
    bar.mic_button.setFocus()
    qtbot.waitUntil(bar.mic_button.hasFocus, timeout=WAIT)
    for expected in CONTROL_ORDER[1:]:
        qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        assert QApplication.focusWidget().objectName() == expected
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Backtab)
    assert QApplication.focusWidget().objectName() == CONTROL_ORDER[-2]


def test_layouts_paging_pin_full_window_and_the_bar_hiding(
    qtbot: QtBot, window: MainWindow, server: ServerProcess
) -> None:
    page = create_alone(qtbot, window, server, "Layouts", "Big room")
    stage = page.stage
    for index in range(30):  # tiles as 30 people would get them
        stage.add(f"p{index}", f"Person {index}")
    page.bar.layout_actions["grid"].trigger()
    assert len(stage.visible_tiles()) == 25 and stage.page_label.isVisible()
    assert stage.page_label.text() == "Page 1 of 2"
    click(qtbot, stage.next_page)
    assert [t.name for t in stage.visible_tiles()] == [f"Person {i}" for i in range(25, 30)]
    click(qtbot, stage.previous_page)
    # pin from the tile's menu: that person is large, whatever the layout says
    tile = stage.tiles["p7"]
    [pin] = [a for a in tile.actions() if a.objectName() == "pin_action"]
    pin.trigger()
    assert tile.pinned and stage.arrangement.stage == "p7"
    assert tile.width() > 2 * stage.tiles["p8"].width()
    pin.trigger()
    assert stage.arrangement.kind == "grid"
    # double-click: that tile alone in the window; Esc: back
    qtbot.mouseDClick(stage.tiles["p3"], Qt.MouseButton.LeftButton)
    assert stage.visible_tiles() == [stage.tiles["p3"]]
    assert stage.tiles["p3"].width() >= stage.width() - 20
    press(qtbot, window, Qt.Key.Key_Escape)
    assert len(stage.visible_tiles()) == 25
    # speaker view: the bar hides after 4 s without a mouse move, and comes back on one
    page.bar.layout_actions["speaker"].trigger()
    assert stage.arrangement.kind == "speaker"
    window.setFocus()
    page.bar_timer.timeout.emit()  # what 4 s without a move does
    assert not page.bar.isVisible()
    qtbot.mouseMove(stage, stage.rect().center())
    qtbot.mouseMove(stage, stage.rect().center() + QPoint(5, 5))
    qtbot.waitUntil(page.bar.isVisible, timeout=WAIT)
    page.bar_timer.timeout.emit()
    assert not page.bar.isVisible()
    qtbot.keyClick(stage, Qt.Key.Key_Tab)
    assert page.bar.isVisible()
    page.bar.layout_actions["grid"].trigger()
    page.bar_timer.timeout.emit()
    assert page.bar.isVisible()  # the grid keeps the bar


def test_raise_hand_both_ways_toasts_and_chimes(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess]
) -> None:
    page = create_alone(qtbot, window, server, "Hopper", "Hands")
    meeting = page.header.meeting_id
    ada = start_bot(bots, server.url, "Ada", "--join", meeting, "--video", "none")
    ada.expect("joined")
    qtbot.waitUntil(lambda: "Ada joined" in page.toasts.texts(), timeout=WAIT)
    assert window.call.chimes.played == ["joined"]  # none for ourselves
    assert not page.waiting.isVisible()
    bob = start_bot(bots, server.url, "Bob", "--join", meeting, "--video", "none")
    bob.expect("joined")
    qtbot.waitUntil(lambda: len(page.grid.tiles) == 2, timeout=WAIT)
    bob.send("hand up")
    qtbot.waitUntil(lambda: "Bob raised their hand" in page.toasts.texts(), timeout=WAIT)
    bob_tile = next(t for t in page.grid.tiles.values() if t.name == "Bob")
    assert bob_tile.hand and "hand raised" in bob_tile.accessibleName()
    people = [page.people.item(i).text() for i in range(page.people.count())]
    assert people[1].startswith("✋ Bob"), people  # raised hands first, after you
    click(qtbot, page.bar.hand_button)
    ada.expect("hand_changed", lambda e: e["name"] == "Hopper" and e["raised"])
    click(qtbot, page.bar.hand_button)
    ada.expect("hand_changed", lambda e: e["name"] == "Hopper" and not e["raised"])
    bob.send("hand down")
    qtbot.waitUntil(lambda: not bob_tile.hand, timeout=WAIT)
    # chimes can be turned off (More menu)
    window.call.chimes_action.trigger()
    ada.send("leave")
    qtbot.waitUntil(lambda: "Ada left" in page.toasts.texts(), timeout=WAIT)
    assert window.call.chimes.played == ["joined", "joined"]
    assert "Ada left" not in page.chat_view.toPlainText()


def test_a_creator_can_end_their_meeting_after_the_app_restarts(
    qtbot: QtBot, server: ServerProcess, bots: list[BotProcess], tmp_path: Path
) -> None:
    settings_path = str(tmp_path / "settings.ini")
    first = MainWindow(settings=QSettings(settings_path, QSettings.Format.IniFormat))
    qtbot.addWidget(first)
    first.show()
    page = create_alone(qtbot, first, server, "Founder", "Keep me")
    meeting = page.header.meeting_id
    guest = start_bot(bots, server.url, "Guest", "--join", meeting, "--video", "none")
    guest.expect("joined")
    click(qtbot, page.leave_button)
    qtbot.waitUntil(lambda: first.pages.currentWidget() is first.lobby, timeout=WAIT)
    first.close()  # the app quits; the meeting goes on with the guest

    again = MainWindow(settings=QSettings(settings_path, QSettings.Format.IniFormat))
    qtbot.addWidget(again)
    again.show()
    assert again.start.name.text() == "Founder"
    assert again.start.server.text() == server.url
    click(qtbot, again.start.connect_button)
    qtbot.waitUntil(lambda: again.pages.currentWidget() is again.lobby, timeout=WAIT)
    recent = again.lobby.recent
    assert recent.count() >= 1 and recent.item(0).text() == "Keep me (created by you)"
    recent.setCurrentRow(0)
    assert again.lobby.end_recent.isEnabled()
    click(qtbot, again.lobby.end_recent)
    ended = guest.expect("meeting_ended")
    assert ended["reason"] == "cancelled"
    qtbot.waitUntil(lambda: lobby_row(again, "Keep me") < 0, timeout=WAIT)
    again.close()


# ---------------------------------------------------------------- screenshots under Xvfb


@pytest.mark.skipif(os.environ.get("CONFERO_UNDER_XVFB") != "1",
                    reason="taken under Xvfb by test_the_main_flow_under_a_real_x_server")
def test_screenshots_of_every_view(
    qtbot: QtBot, window: MainWindow, server: ServerProcess, bots: list[BotProcess]
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    connect(qtbot, window, server, "Katherine Johnson")
    small = ("--width", "320", "--height", "240", "--fps", "15")
    first = start_bot(bots, server.url, "Ada Lovelace", "--create", "Design review",
                      "--audio", "sine:440", *small)
    meeting = first.expect("joined")["meeting_id"]
    start_bot(bots, server.url, "Hedy Lamarr", "--create", "Weekly sync", "--video", "none",
              "--password", "s3cret").expect("joined")
    others = [("Grace Hopper", small), ("Alan Turing", ("--video", "none")),
              ("Margaret Hamilton", small), ("Radia Perlman", small)]
    for name, args in others:
        start_bot(bots, server.url, name, "--join", meeting, *args)
    qtbot.waitUntil(lambda: lobby_row(window, "Design review") >= 0
                    and window.lobby.table.item(lobby_row(window, "Design review"), 2).text()
                    == "5" and lobby_row(window, "Weekly sync") >= 0, timeout=3 * WAIT)
    assert window.grab().save(str(SCREENSHOTS / "lobby.png"))
    window.lobby.table.selectRow(lobby_row(window, "Design review"))
    click(qtbot, window.lobby.join_selected)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.device_check, timeout=WAIT)
    check = window.device_check
    check.camera_off.setChecked(False)
    qtbot.waitUntil(lambda: check.preview.image is not None, timeout=WAIT)
    assert window.grab().save(str(SCREENSHOTS / "device-check.png"))
    click(qtbot, check.join_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.meeting, timeout=2 * WAIT)
    page = window.meeting
    grid = page.grid
    qtbot.waitUntil(lambda: len(grid.tiles) == 5, timeout=3 * WAIT)  # and you: a gallery of 6
    with_video = [t for t in grid.tiles.values() if t.name in (
        "Ada Lovelace", "Grace Hopper", "Margaret Hamilton", "Radia Perlman")]
    qtbot.waitUntil(lambda: all(t.shows_video() for t in with_video), timeout=3 * WAIT)
    qtbot.waitUntil(page.self_view.shows_video, timeout=WAIT)
    for tile in with_video:
        # the stamp reads back at the size it was sent; a loaded sender may step its
        # picture down (congestion control), and then only its presence is checked
        assert tile.image is not None and image_array(tile.image).mean() > 20
        if tile.image.width() == 320:
            assert shown_identity(tile.image) == identity_code(tile.name)
    # the connection indicator follows each stream's statistics
    qtbot.waitUntil(lambda: all(t.quality is not None and t.quality.score is not None
                                for t in with_video), timeout=WAIT)
    cells = [*grid.tiles.values(), page.self_view]
    assert len({t.y() for t in cells}) == 2 and len({t.x() for t in cells}) == 3  # 3x2
    first.send("chat Shall we start with the numbers?")
    qtbot.waitUntil(lambda: "numbers" in page.chat_view.toPlainText(), timeout=WAIT)
    click(qtbot, page.chat_input)
    qtbot.keyClicks(page.chat_input, "Yes, I have them here")
    qtbot.keyClick(page.chat_input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "have them here" in page.chat_view.toPlainText(), timeout=WAIT)
    press(qtbot, window, Qt.Key.Key_C)  # close the chat for the gallery
    assert window.grab().save(str(SCREENSHOTS / "gallery-6.png"))
    press(qtbot, window, Qt.Key.Key_C)
    assert window.grab().save(str(SCREENSHOTS / "chat.png"))
    page.bar.layout_actions["speaker"].trigger()
    stage_tile = grid.tiles[page.stage.arrangement.stage or ""]
    assert stage_tile.width() > 2 * max(t.width() for t in grid.tiles.values()
                                        if t is not stage_tile)
    press(qtbot, window, Qt.Key.Key_C)
    assert window.grab().save(str(SCREENSHOTS / "speaker.png"))
    page.bar.layout_actions["auto"].trigger()
    window.call.toggle_panel(2)  # Statistics, from the More menu
    qtbot.waitUntil(lambda: page.stats_table.rowCount() == 4, timeout=WAIT)
    assert window.grab().save(str(SCREENSHOTS / "statistics.png"))


def test_device_check_mirrored_preview_meter_test_sound_and_remembered_choices(
    qtbot: QtBot, window: MainWindow, server: ServerProcess
) -> None:
    connect(qtbot, window, server, "Mirror Test")
    qtbot.keyClicks(window.lobby.title, "Check first")
    click(qtbot, window.lobby.create_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.device_check, timeout=WAIT)
    check = window.device_check
    assert check.muted.isChecked() and check.camera_off.isChecked()  # the private default
    assert "Check first" in check.heading.text()
    # camera on (a click on the box itself): the preview starts
    qtbot.mouseClick(check.camera_off, Qt.MouseButton.LeftButton,
                     pos=QPoint(8, check.camera_off.height() // 2))
    assert not check.camera_off.isChecked()
    check.camera.setCurrentIndex(check.camera.findText("Synthetic camera"))
    check.mic.setCurrentIndex(check.mic.findText("Synthetic 440 Hz tone"))
    check.camera.activated.emit(check.camera.currentIndex())
    qtbot.waitUntil(lambda: check.preview.image is not None, timeout=WAIT)
    preview = check.preview.image
    assert preview is not None
    # mirrored, as a mirror shows you: the stamp reads right only when flipped back
    assert shown_identity(preview.flipped(Qt.Orientation.Horizontal)) == identity_code(
        "Mirror Test")
    assert shown_identity(preview) != identity_code("Mirror Test")
    qtbot.waitUntil(lambda: check.meter.value > 0.5, timeout=WAIT)  # the tone is loud
    speaker = check.speaker.findText("No sound")
    check.speaker.setCurrentIndex(speaker)
    click(qtbot, check.test_sound)
    assert "No speaker chosen" in check.status.text()
    click(qtbot, check.join_no_audio)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.meeting, timeout=WAIT)
    assert not window.call.with_audio
    qtbot.waitUntil(window.meeting.self_view.shows_video, timeout=WAIT)  # camera as chosen
    assert not window.call.microphone
    click(qtbot, window.meeting.leave_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.lobby, timeout=WAIT)
    # the next check starts from what was chosen
    qtbot.keyClicks(window.lobby.title, "Again")
    click(qtbot, window.lobby.create_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.device_check, timeout=WAIT)
    assert not check.camera_off.isChecked() and check.muted.isChecked()
    assert check.camera.currentText() == "Synthetic camera"
    click(qtbot, check.back_button)
    assert window.pages.currentWidget() is window.lobby
