"""What the app shows of the media path (issue 10) and of end-to-end encryption (issue 11).

The end-to-end tests drive the window with clicks and keys against the real server and
real bots, and read what a person (or a screen reader) would: the header's badges, the
tiles' accessible names, the lobby's lock, the People panel's safety codes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QInputDialog, QLineEdit
from pytestqt.qtbot import QtBot

from confero.app.header import HANDOVER, MeetingHeader, RelayMeter, byte_text
from confero.app.lobby_page import LobbyPage
from confero.app.tiles import VideoTile
from confero.app.window import MainWindow
from tests.bots import BotProcess, start_bot
from tests.conftest import ServerProcess
from tests.test_app import click, connect, lobby_row, through_device_check, window

__all__ = ["window"]

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
LONG = 90_000  # ms: ICE and the E2EE pairing (pure-Python SPAKE2) on a busy machine
PASSPHRASE = "correct horse battery"
BOT_VIDEO = ("--video", "synthetic", "--fps", "10", "--width", "160", "--height", "120")


def p2p_counters(**values: int) -> dict[str, Any]:
    return {"mode": "p2p", "received_bytes": 0, "forwarded_bytes": 0, "mixed_bytes": 0,
            **values}


# ---------------------------------------------------------------- widgets alone


def test_relay_meter_counts_from_the_switch_to_direct() -> None:
    """The server's counters are the meeting's totals: in P2P the app shows what moved
    since the switch (after the hand-over), so a server relaying anything would show."""
    meter = RelayMeter()
    through = meter.update({"mode": "server", "received_bytes": 5000,
                            "forwarded_bytes": 4000, "mixed_bytes": 1500}, 10.0)
    assert through.text == "Server relayed 5.5 kB"
    meter.mode_changed("p2p", 20.0)
    early = meter.update(p2p_counters(received_bytes=9000, forwarded_bytes=7000), 20.2)
    assert early.text == "Server relayed: measuring…"
    settled = p2p_counters(received_bytes=9100, forwarded_bytes=7300, mixed_bytes=1600)
    assert meter.update(settled, 20.0 + HANDOVER).text == "Server relayed 0 B since direct"
    assert meter.update(settled, 25.0).text == "Server relayed 0 B since direct"
    leak = meter.update(p2p_counters(received_bytes=9200, forwarded_bytes=7420,
                                     mixed_bytes=1600), 27.0)
    assert leak.text == "Server relayed 120 B since direct"
    assert "received 100 B" in leak.detail
    # a counter reply that already says p2p before the event came starts the count too
    other = RelayMeter()
    assert other.update(p2p_counters(forwarded_bytes=50), 1.0).text.endswith("measuring…")
    assert byte_text(999) == "999 B" and byte_text(2_500_000) == "2.5 MB"


def test_header_badges_say_it_in_words(qtbot: QtBot) -> None:
    header = MeetingHeader()
    qtbot.addWidget(header)
    header.show_meeting("Review", "abc123")
    header.show_mode("server", "participant_joined")
    assert header.mode_badge.text() == "Through the server"
    assert header.mode_badge.accessibleName() == (
        "Media path: Through the server. Why: a third person joined")
    header.show_server_media({"mode": "server", "forwarded_bytes": 2048, "mixed_bytes": 0})
    assert header.relayed.text() == "Server relayed 2.0 kB"
    header.show_e2ee("no passphrase")
    assert header.e2ee.isVisibleTo(header)
    assert header.e2ee.text() == "Cannot decrypt: no passphrase"
    assert header.e2ee.accessibleName().startswith("Cannot decrypt: no passphrase.")
    assert not header.transport.isVisibleTo(header)  # UDP, the normal case: nothing said
    header.show_transport("tcp", "udp_timeout")
    assert header.transport.isVisibleTo(header) and header.transport.text() == "Media over TCP"
    assert "blocks UDP" in header.transport.accessibleName()
    header.show_transport("udp", "udp_recovered")
    assert not header.transport.isVisibleTo(header)
    header.show_transport("tcp", "forced")
    header.stop()
    assert not header.e2ee.isVisibleTo(header) and header.mode_badge.text() == ""
    assert not header.transport.isVisibleTo(header)


def test_tile_never_shows_a_picture_it_cannot_decrypt(qtbot: QtBot) -> None:
    from PySide6.QtGui import QImage

    tile = VideoTile("p1", "Ada")
    qtbot.addWidget(tile)
    tile.set_state(camera=True)
    tile.set_image(QImage(32, 24, QImage.Format.Format_RGB888), 1)
    tile.set_e2ee("verified")
    assert tile.shows_video() and "media verified" in tile.accessibleName()
    tile.set_e2ee("cannot decrypt")
    assert not tile.shows_video() and "cannot decrypt their media" in tile.accessibleName()
    tile.grab()  # paints the "Cannot decrypt" text instead of the picture, without failing


def test_create_form_asks_for_a_passphrase_for_an_encrypted_meeting(qtbot: QtBot) -> None:
    lobby = LobbyPage()
    qtbot.addWidget(lobby)
    lobby.show()
    created: list[tuple[str, str, bool, str]] = []
    lobby.create_wanted.connect(lambda *args: created.append(args))
    assert not lobby.passphrase.isEnabled()
    qtbot.keyClicks(lobby.title, "Board meeting")
    click(qtbot, lobby.e2ee)
    assert lobby.e2ee.isChecked() and lobby.passphrase.isEnabled()
    click(qtbot, lobby.create_button)
    assert created == [] and "needs a passphrase" in lobby.message.text()
    qtbot.keyClicks(lobby.passphrase, PASSPHRASE)
    qtbot.keyClick(lobby.passphrase, Qt.Key.Key_Return)
    assert created == [("Board meeting", "", True, PASSPHRASE)]
    assert lobby.passphrase.text() == ""  # not kept in the form


def test_engine_e2ee_states_become_tile_badges_and_people_lines(
    qtbot: QtBot, window: MainWindow
) -> None:
    """The engine's dicts (engine.py ``e2ee_state``) as the page shows them, in order:
    a peer verified, one who could not be, then the once-a-second status."""
    from confero.protocol.signaling import JoinResult, MeetingInfo, ParticipantInfo

    meeting = MeetingInfo("m1", "Secret", "Ada", 3, False, 0.0, e2ee=True)
    people = [ParticipantInfo("a1", "Ada", 0.0, camera=True),
              ParticipantInfo("b1", "Bob", 0.0, camera=True)]
    engine = window.engine
    engine.joined.emit(JoinResult(meeting, people, [], True, False))
    page = window.meeting
    qtbot.waitUntil(window.in_meeting, timeout=5000)
    assert page.header.e2ee.text() == "End-to-end encrypted"
    assert page.header.mode_badge.text() == "Through the server"
    code = "12345 67890 13579 24680 11223 34455"
    engine.e2ee_state.emit({"peer": "a1", "state": "verified", "safety_code": code})
    engine.e2ee_state.emit({"peer": "b1", "state": "cannot verify",
                            "reason": "cannot verify: wrong passphrase or tampered key "
                                      "exchange"})
    lines = [page.people.item(i).text() for i in range(page.people.count())]
    assert f"Ada - muted, camera on\nSafety code {code} (verified)" in lines
    assert any(line.startswith("Bob") and "(cannot verify: wrong passphrase" in line
               for line in lines), lines
    engine.e2ee_state.emit({"status": {
        "Ada": {"participant_id": "a1", "verified": True, "safety_code": code,
                "state": "decrypting"},
        "Bob": {"participant_id": "b1", "verified": False, "safety_code": None,
                "state": "cannot decrypt"}}})
    tiles = page.stage.tiles
    assert tiles["a1"].e2ee == "verified" and "media verified" in tiles["a1"].accessibleName()
    assert tiles["b1"].e2ee == "cannot decrypt"
    page.stage.add_screen("a1:screen", "Ada's screen")  # a shared screen: its sharer's state
    engine.e2ee_state.emit({"status": {"Ada": {"participant_id": "a1", "verified": True,
                                               "safety_code": code, "state": "decrypting"}}})
    assert tiles["a1:screen"].e2ee == "verified"
    # no passphrase: nothing can be decrypted, whoever it is from
    engine.e2ee_state.emit({"state": "cannot decrypt", "reason": "no passphrase"})
    assert page.header.e2ee.text() == "Cannot decrypt: no passphrase"
    assert {t.e2ee for t in tiles.values()} == {"cannot decrypt"}
    engine.mode_changed.emit("p2p", "ice_connected")
    assert page.header.mode_badge.text() == "Direct (peer-to-peer)"
    engine.server_media.emit(p2p_counters(forwarded_bytes=10))
    assert page.header.relayed.text() == "Server relayed: measuring…"


# ---------------------------------------------------------------- end to end


def tile_of(window: MainWindow, name: str) -> VideoTile | None:
    return next((t for t in window.meeting.stage.tiles.values() if t.name == name), None)


def shows_video(window: MainWindow, name: str) -> bool:
    tile = tile_of(window, name)
    return tile is not None and tile.shows_video()


def frames_shown(window: MainWindow, name: str) -> int:
    tile = tile_of(window, name)
    return tile.serial if tile is not None else -1


def e2ee_of(window: MainWindow, name: str) -> str | None:
    tile = tile_of(window, name)
    return tile.e2ee if tile is not None else None


def join_from_lobby(qtbot: QtBot, window: MainWindow, title: str) -> None:
    qtbot.waitUntil(lambda: lobby_row(window, title) >= 0, timeout=LONG)
    window.lobby.table.selectRow(lobby_row(window, title))
    click(qtbot, window.lobby.join_selected)


def answer_passphrase(qtbot: QtBot, text: str, asked: list[str]) -> None:
    """Type into the passphrase dialog once it is open (it runs its own event loop)."""

    def attempt() -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, QInputDialog) and dialog.objectName() == "secret_dialog":
            asked.append(dialog.labelText())
            edit = dialog.findChild(QLineEdit)
            assert edit is not None
            qtbot.keyClicks(edit, text)
            qtbot.keyClick(edit, Qt.Key.Key_Return)
        else:
            QTimer.singleShot(50, attempt)

    QTimer.singleShot(0, attempt)


def recorder(signal: Any) -> list[Any]:
    seen: list[Any] = []
    signal.connect(seen.append)
    return seen


def test_two_go_peer_to_peer_the_badge_says_direct_and_the_server_relays_nothing(
    qtbot: QtBot, window: MainWindow, server_factory: Callable[..., ServerProcess],
    bots: list[BotProcess],
) -> None:
    server = server_factory("--heartbeat", "2")
    connect(qtbot, window, server, "Katherine")
    ada = start_bot(bots, server.url, "Ada", "--create", "Direct line", *BOT_VIDEO)
    ada.expect("joined", timeout=60)
    join_from_lobby(qtbot, window, "Direct line")
    through_device_check(qtbot, window)
    header = window.meeting.header
    counters = recorder(window.engine.server_media)

    def direct_and_nothing_relayed() -> bool:
        return (header.mode_badge.text() == "Direct (peer-to-peer)"
                and header.relayed.text() == "Server relayed 0 B since direct")

    qtbot.waitUntil(direct_and_nothing_relayed, timeout=LONG)
    assert header.mode_badge.accessibleName() == (
        "Media path: Direct (peer-to-peer). Why: the two of you reached each other directly")
    assert header.relayed.accessibleName().startswith("Server relayed 0 B since direct.")
    # media keeps flowing on the direct path while the server's count stays at zero
    # (tiles are looked up by name each time: a reconnect gives Ada a new tile)
    qtbot.waitUntil(lambda: shows_video(window, "Ada"), timeout=LONG)
    painted, asked = frames_shown(window, "Ada"), len(counters)
    qtbot.waitUntil(lambda: len(counters) >= asked + 2
                    and frames_shown(window, "Ada") > painted + 5, timeout=LONG)
    if header.mode_badge.text() == "Direct (peer-to-peer)":  # consent can drop on a busy box
        assert counters[-1]["mode"] == "p2p"
        assert header.relayed.text() == "Server relayed 0 B since direct"

    # a third person: back through the server, the reason said, the count moving again
    start_bot(bots, server.url, "Grace", "--join", str(window.meeting.header.meeting_id),
              "--video", "none")
    qtbot.waitUntil(lambda: header.mode_badge.accessibleName() == (
        "Media path: Through the server. Why: a third person joined"), timeout=LONG)
    qtbot.waitUntil(lambda: header.relayed.text().startswith("Server relayed ")
                    and header.relayed.text() != "Server relayed 0 B"
                    and "since direct" not in header.relayed.text(), timeout=LONG)


def test_encrypted_meeting_lock_passphrase_verified_tile_safety_code_and_cannot_decrypt(
    qtbot: QtBot, window: MainWindow, server_factory: Callable[..., ServerProcess],
    bots: list[BotProcess],
) -> None:
    server = server_factory("--heartbeat", "2")
    connect(qtbot, window, server, "Katherine")
    ada = start_bot(bots, server.url, "Ada", "--create", "Secret plans", "--e2ee",
                    "--passphrase", PASSPHRASE, "--mode", "server", *BOT_VIDEO)
    ada.expect("joined", timeout=60)
    qtbot.waitUntil(lambda: lobby_row(window, "Secret plans") >= 0, timeout=LONG)
    lock = window.lobby.table.item(lobby_row(window, "Secret plans"), 4)
    assert lock is not None and lock.text() == "End-to-end" and not lock.icon().isNull()
    assert lock.data(Qt.ItemDataRole.AccessibleTextRole) == "End-to-end encrypted"

    # joining asks for the passphrase; with it, Ada's tile is verified and decodes
    asked: list[str] = []
    answer_passphrase(qtbot, PASSPHRASE, asked)
    join_from_lobby(qtbot, window, "Secret plans")
    through_device_check(qtbot, window)
    assert asked and "end-to-end encrypted" in asked[0]
    header = window.meeting.header
    assert header.e2ee.text() == "End-to-end encrypted"
    assert header.e2ee.accessibleName().startswith("End-to-end encrypted.")
    qtbot.waitUntil(lambda: e2ee_of(window, "Ada") == "verified"
                    and shows_video(window, "Ada"), timeout=LONG)
    tile = tile_of(window, "Ada")
    assert tile is not None and "media verified" in tile.accessibleName()

    # People: Ada's safety code, the same one Ada's side shows for Katherine
    seen = ada.expect("stats", lambda e: (e.get("e2ee") or {}).get("Katherine", {})
                      .get("verified") is True, timeout=LONG)
    code = seen["e2ee"]["Katherine"]["safety_code"]
    assert code and len(code.split()) == 6
    qtbot.keyClick(window.meeting.stage, Qt.Key.Key_P)  # the People panel, by its key
    people = window.meeting.side.people
    qtbot.waitUntil(lambda: window.meeting.people_visible(), timeout=LONG)
    qtbot.waitUntil(lambda: any(f"Safety code {code} (verified)" in people.item(i).text()
                                for i in range(people.count())), timeout=LONG)

    # leave, and join again without the passphrase: "cannot decrypt", never a picture
    click(qtbot, window.meeting.leave_button)
    qtbot.waitUntil(lambda: window.pages.currentWidget() is window.lobby, timeout=LONG)
    statuses = recorder(window.engine.e2ee_state)
    answer_passphrase(qtbot, "", asked)
    join_from_lobby(qtbot, window, "Secret plans")
    through_device_check(qtbot, window)
    qtbot.waitUntil(lambda: header.e2ee.text() == "Cannot decrypt: no passphrase",
                    timeout=LONG)

    def undecryptable() -> bool:
        status = next((s["status"].get("Ada") for s in reversed(statuses)
                       if "status" in s), None)
        return bool(status and status["video_undecryptable"] > 0)

    qtbot.waitUntil(undecryptable, timeout=LONG)
    qtbot.waitUntil(lambda: e2ee_of(window, "Ada") == "cannot decrypt", timeout=LONG)
    blind = tile_of(window, "Ada")
    assert blind is not None and "cannot decrypt their media" in blind.accessibleName()
    assert not blind.shows_video()
    assert window.engine.frames.get(blind.participant_id) is None  # nothing decoded


def test_the_camera_button_follows_the_engine_after_a_stale_report(window: MainWindow) -> None:
    """A report the engine queued before a click can arrive after it (M then V on a busy
    machine: the report of M says the camera is off). The engine's next report, that the
    camera now sends, must turn the button back on (it stayed "off" while the camera
    sent: seen in a CI run under load)."""
    controller = window.call
    bar = window.meeting.bar
    controller.local_media(camera=True, microphone=True)
    assert bar.camera_button.toolTip() == "Turn the camera off (V)"
    controller.local_media(camera=False, microphone=True)  # the stale report
    assert bar.camera_button.toolTip() == "Turn the camera on (V)"
    controller.local_media(camera=True, microphone=True)  # what the engine now sends
    assert bar.camera_button.toolTip() == "Turn the camera off (V)"
    assert window.meeting.self_view.camera
