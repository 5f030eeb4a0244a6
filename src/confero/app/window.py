"""The main window: start, lobby, device check and meeting pages, and the connection.

UI only; the engine does the work. What happens inside a meeting is ``meeting``'s job.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QStackedWidget,
    QWidget,
)

from confero.app import theme
from confero.app.engine import DeviceChoice, Engine
from confero.app.lobby_page import LobbyPage
from confero.app.meeting import MeetingController
from confero.app.meeting_page import MeetingPage
from confero.app.passphrase import ask_passphrase
from confero.app.plain import clip, plain_label
from confero.app.prejoin import DeviceCheckPage
from confero.app.settings import DEFAULT_SERVER, Continuity
from confero.app.shortcuts import InputFilter
from confero.app.start_page import StartPage
from confero.app.theme import COLOURS
from confero.protocol.signaling import MeetingInfo

log = logging.getLogger(__name__)

_STATE_LEVEL = {"connected": "good", "connecting": "fair", "reconnecting": "fair",
                "failed": "poor", "closed": "unknown", "disconnected": "unknown"}


class MainWindow(QMainWindow):
    def __init__(self, engine: Engine | None = None, settings: QSettings | None = None) -> None:
        super().__init__()
        app = QApplication.instance()
        if isinstance(app, QApplication):
            theme.apply(app)
        self.setWindowTitle("confero")
        self.resize(1180, 760)
        self.settings = settings or QSettings("confero", "confero")
        self.continuity = Continuity(self.settings)
        self.engine = engine or Engine()
        self.name = ""
        self.state = "disconnected"
        self.server_url = ""
        self.join_choices: tuple[DeviceChoice | None, DeviceChoice | None,
                                 DeviceChoice | None] = (None, None, None)
        self._pending: tuple[str, str, str | None] | None = None  # (action, target, password)
        self._pending_e2ee: tuple[bool, str | None] = (False, None)  # (create E2EE, passphrase)
        self._joining = False  # a join was sent and its answer has not come
        self._join_retries = 0
        self.start = StartPage(self.continuity)
        self.lobby = LobbyPage()
        self.device_check = DeviceCheckPage(self.continuity)
        self.meeting = MeetingPage()
        self.pages = QStackedWidget()
        for page in (self.start, self.lobby, self.device_check, self.meeting):
            self.pages.addWidget(page)
        self.setCentralWidget(self.pages)
        self.call = MeetingController(self, self.meeting, self.engine, self.continuity)
        status = QWidget()
        row = QHBoxLayout(status)
        row.setContentsMargins(0, 0, 0, 0)
        self.status_dot = QLabel("●")
        self.status = plain_label("", "connection_status")
        row.addWidget(self.status_dot)
        row.addWidget(self.status, 1)
        self.statusBar().addPermanentWidget(status, 1)
        self._set_state("disconnected", "")
        self._build_menus()
        self._wire()
        self.input_filter = InputFilter(self, self.call.keys_active, self.call.shortcut_actions(),
                                        self.call.space, self.call.activity)
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self.input_filter)
        self.lobby.show_recent(self.continuity.recent())
        self.repaint_timer = QTimer(self)
        self.repaint_timer.setInterval(33)  # ~30 Hz: pictures are pulled at display rate
        self.repaint_timer.timeout.connect(self._pull_frames)
        self.repaint_timer.start()

    # ------------------------------------------------------------------ setup

    def _build_menus(self) -> None:
        meeting_menu = self.menuBar().addMenu("&Meeting")
        for text, slot in self.call.meeting_menu_actions():
            action = QAction(text, self)
            action.triggered.connect(slot)
            meeting_menu.addAction(action)
        meeting_menu.addSeparator()
        leave = QAction("Leave", self)
        leave.setShortcut(QKeySequence("Ctrl+W"))
        leave.triggered.connect(self.call.leave)
        meeting_menu.addAction(leave)
        disconnect = QAction("Disconnect", self)
        disconnect.triggered.connect(self._disconnect)
        meeting_menu.addAction(disconnect)

    def _wire(self) -> None:
        engine = self.engine
        engine.state_changed.connect(self._set_state)
        engine.meetings_changed.connect(self.lobby.show_meetings)
        engine.left.connect(self._left)
        engine.error.connect(self.show_error)
        engine.notice.connect(self._notice)
        engine.resume_token.connect(self._remember_token)
        engine.hand_changed.connect(self.call.hand_changed)
        self.start.connect_button.clicked.connect(self.connect_to_server)
        self.start.name.returnPressed.connect(self.connect_to_server)
        self.start.server.returnPressed.connect(self.connect_to_server)
        self.lobby.join_wanted.connect(self.join_meeting)
        self.lobby.create_wanted.connect(self._create)
        self.lobby.end_wanted.connect(self._end_recent)
        self.device_check.join_requested.connect(self._go)
        self.device_check.back_requested.connect(
            lambda: self.pages.setCurrentWidget(self.lobby))

    def in_meeting(self) -> bool:
        return self.pages.currentWidget() is self.meeting

    def show_meeting_page(self) -> None:
        self.device_check.close_check()
        self.pages.setCurrentWidget(self.meeting)

    # ------------------------------------------------------------------ connection

    def connect_to_server(self) -> None:
        server = self.start.server.text().strip() or DEFAULT_SERVER
        name = self.start.name.text().strip()
        if not name:
            self.start.message.setText("Please enter your name.")
            return
        if not server.startswith(("ws://", "wss://")):
            server = "ws://" + server.removeprefix("http://")
        if server.count("/") < 3:
            server += "/ws"
        self.name, self.server_url = name, server
        memory = self.continuity
        memory.set("server", server)
        memory.set("name", name)
        memory.set("cafile", self.start.cafile.text().strip())
        self.start.message.setText("")
        self._set_state("connecting", "")
        self.engine.connect_to(server, name, self.start.cafile.text().strip() or None,
                               resume_token=memory.resume_token(server, name))

    def _remember_token(self, token: str) -> None:
        if self.server_url and self.name:
            self.continuity.remember_token(self.server_url, self.name, token)

    def _set_state(self, state: str, reason: str) -> None:
        self.state = state
        server = self.server_url or self.continuity.text("server", DEFAULT_SERVER)
        text = {
            "connected": f"Connected to {server} as {self.name}",
            "connecting": f"Connecting to {server}…",
            "reconnecting": "Reconnecting…",
            "failed": "Connection failed",
            "closed": "Disconnected",
            "disconnected": "Not connected",
        }.get(state, state)
        if reason and state != "connected":
            text += f": {reason}"
        colour = COLOURS[_STATE_LEVEL.get(state, "unknown")]
        self.status_dot.setStyleSheet(f"color: {colour}")
        self.status.setText(clip(text, 300))
        self.call.connection_state(state)
        if state == "connected" and self.pages.currentWidget() is self.start:
            self.pages.setCurrentWidget(self.lobby)
        if state == "failed":
            self.start.message.setText(reason or "connection failed")
            self.pages.setCurrentWidget(self.start)

    def _disconnect(self) -> None:
        self.engine.disconnect_from_server()
        self.device_check.close_check()
        self.meeting.reset()
        self.pages.setCurrentWidget(self.start)
        self._set_state("disconnected", "")

    # ------------------------------------------------------------------ lobby

    def join_meeting(self, meeting: MeetingInfo | None, meeting_id: str | None = None) -> None:
        target = meeting.id if meeting is not None else meeting_id
        if not target:
            return
        password = None
        if meeting is not None and meeting.has_password:
            password = self._ask_password(meeting.title)
            if password is None:
                return
        passphrase = None
        if meeting is not None and meeting.e2ee:
            passphrase = ask_passphrase(self, meeting.title)
            if passphrase is None:
                return
        self._pending = ("join", target, password)
        self._pending_e2ee = (False, passphrase or None)
        self._check_devices(meeting.title if meeting is not None else target)

    def _ask_password(self, title: str) -> str | None:
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Password")
        dialog.setTextEchoMode(QLineEdit.EchoMode.Password)
        dialog.setLabelText(f"Password for “{clip(title, 80)}”:")
        for label in dialog.findChildren(QLabel):
            label.setTextFormat(Qt.TextFormat.PlainText)  # the title is someone else's text
        if not dialog.exec():
            return None
        return dialog.textValue()

    def _create(self, title: str, password: str, e2ee: bool = False,
                passphrase: str = "") -> None:
        self._pending = ("create", title, password or None)
        self._pending_e2ee = (e2ee, passphrase or None)
        self._check_devices(title)

    def _check_devices(self, title: str) -> None:
        self.lobby.message.setText("")
        self.pages.setCurrentWidget(self.device_check)
        self.device_check.open_for(title, self.name)

    def _go(self, with_audio: bool) -> None:
        """Join (or create) with what the device check chose."""
        if self._pending is None:
            return
        camera, mic, speaker = self.device_check.choices()
        self.join_choices = (None if self.device_check.camera_off.isChecked() else camera,
                             None if self.device_check.muted.isChecked() else mic, speaker)
        self.call.with_audio = with_audio
        self._joining, self._join_retries = True, 0
        self._send_join()
        self.pages.setCurrentWidget(self.lobby)
        self.lobby.message.setText("Joining…")

    def _send_join(self) -> None:
        if self._pending is None:
            return
        action, target, password = self._pending
        e2ee, passphrase = self._pending_e2ee
        if action == "create":
            self.engine.create_meeting(target, password, e2ee=e2ee, passphrase=passphrase)
        else:
            self.engine.join_meeting(target, password, passphrase)

    def join_done(self) -> None:
        self._joining = False

    def _join_hiccup(self, text: str) -> bool:
        """A join that met a reconnect is sent again once connected (a few times)."""
        if not self._joining or "not connected" not in text or self._join_retries >= 20:
            return False
        self._join_retries += 1
        self.lobby.message.setText("The connection stumbled: trying again…")

        def retry() -> None:
            if not self._joining:
                return
            if self.state == "connected":
                self._send_join()
            elif not self._join_hiccup("not connected"):
                self.lobby.message.setText("Could not join: not connected to the server.")

        QTimer.singleShot(500, self, retry)
        return True

    def _end_recent(self, meeting_id: str) -> None:
        self.engine.end_meeting(meeting_id)

    def _left(self, why: str) -> None:
        self._joining = False
        self.call.left()
        self.pages.setCurrentWidget(self.lobby)
        self.setWindowTitle("confero")
        self.statusBar().showMessage(why, 10_000)
        self.lobby.show_recent(self.continuity.recent())
        self.engine.refresh_meetings()

    def _pull_frames(self) -> None:
        if self.in_meeting():
            self.call.pull_frames()

    # ------------------------------------------------------------------ messages

    def show_error(self, text: str) -> None:
        """Errors never open a modal box: they show where the person is looking."""
        if self._join_hiccup(text):
            return
        if self._joining and not self.in_meeting():
            self._joining = False
        self.statusBar().showMessage(clip(text, 300), 15_000)
        page = self.pages.currentWidget()
        if page is self.start:
            self.start.message.setText(text)
        elif page is self.meeting:
            self.meeting.header.say(text)
            self.meeting.toasts.show_text(text)
        else:
            self.lobby.message.setText(text)

    def _notice(self, text: str) -> None:
        if self.in_meeting():
            self.meeting.header.say(text)
        else:
            self.statusBar().showMessage(clip(text, 300), 10_000)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.repaint_timer.stop()
        self.device_check.close_check()
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self.input_filter)
        try:
            self.engine.shutdown()
        except Exception:  # a socket that broke while saying goodbye: the window still closes
            log.warning("the engine did not shut down cleanly", exc_info=True)
        event.accept()
