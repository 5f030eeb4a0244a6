"""The main window: start, lobby and meeting pages. UI only; the engine does the work."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

import msgspec
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from confero.app.engine import SELF, DeviceChoice, Engine
from confero.app.widgets import LiveGraph, VideoGrid, VideoTile
from confero.protocol.signaling import (
    ChatMessage,
    JoinResult,
    MediaChanged,
    MeetingInfo,
    ParticipantInfo,
    ParticipantLeft,
)

DEFAULT_SERVER = "ws://127.0.0.1:8750/ws"
_STATE_COLOURS = {"connected": "#34c759", "connecting": "#ff9f0a", "reconnecting": "#ff9f0a",
                  "failed": "#ea4335", "closed": "#8e8e93", "disconnected": "#8e8e93"}


def _html(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\n", "<br>"))


def sound_devices(kind: str) -> list[DeviceChoice]:
    """Input ("mic") or output ("speaker") devices PortAudio can open; [] without sound."""
    try:
        import sounddevice
        devices = sounddevice.query_devices()
    except Exception:  # no PortAudio, no server, no devices: the caller says so
        return []
    channel_key = "max_input_channels" if kind == "mic" else "max_output_channels"
    return [DeviceChoice(str(d["name"]), kind, str(d["name"]))
            for d in devices if d[channel_key] > 0]


def video_devices() -> list[DeviceChoice]:
    choices = [DeviceChoice(f"Camera {Path(p).name}", "camera", p)
               for p in sorted(glob.glob("/dev/video*"))]
    display = os.environ.get("DISPLAY")
    if display:
        choices.append(DeviceChoice(f"Screen {display}", "screen", display))
    return choices


class StartPage(QWidget):
    def __init__(self, window: MainWindow) -> None:
        super().__init__()
        settings = window.settings
        self.server = QLineEdit(str(settings.value("server", DEFAULT_SERVER)))
        self.server.setObjectName("server")
        self.name = QLineEdit(str(settings.value("name", "")))
        self.name.setObjectName("name")
        self.name.setPlaceholderText("how others will see you")
        self.cafile = QLineEdit(str(settings.value("cafile", "")))
        self.cafile.setPlaceholderText("only for a server with a self-signed certificate")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setObjectName("connect")
        self.connect_button.setDefault(True)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Server", self.server)
        form.addRow("Your name", self.name)
        form.addRow("Trusted certificate", self.cafile)
        box = QGroupBox("Join a confero server")
        box.setLayout(form)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(box)
        layout.addWidget(self.connect_button)
        layout.addWidget(self.message)
        layout.addStretch(2)
        self.connect_button.clicked.connect(window.connect_to_server)
        self.name.returnPressed.connect(window.connect_to_server)
        self.server.returnPressed.connect(window.connect_to_server)


class LobbyPage(QWidget):
    def __init__(self, window: MainWindow) -> None:
        super().__init__()
        self.table = QTableWidget(0, 4)
        self.table.setObjectName("meetings")
        self.table.setHorizontalHeaderLabels(["Title", "Creator", "People", "Password"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.empty = QLabel("No open meetings yet. Create one below.")
        self.message = QLabel("")
        self.message.setObjectName("lobby_message")
        self.message.setStyleSheet("color: #c5221f")
        self.message.setWordWrap(True)
        self.join_selected = QPushButton("Join selected")
        self.join_selected.setObjectName("join_selected")
        self.meeting_id = QLineEdit()
        self.meeting_id.setObjectName("meeting_id")
        self.meeting_id.setPlaceholderText("paste a meeting id")
        self.join_by_id = QPushButton("Join")
        self.join_by_id.setObjectName("join_by_id")
        self.title = QLineEdit()
        self.title.setObjectName("title")
        self.title.setPlaceholderText("meeting title")
        self.password = QLineEdit()
        self.password.setPlaceholderText("password (optional)")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.create_button = QPushButton("Create and join")
        self.create_button.setObjectName("create")
        join_row = QHBoxLayout()
        join_row.addWidget(self.meeting_id, 1)
        join_row.addWidget(self.join_by_id)
        create_row = QHBoxLayout()
        create_row.addWidget(self.title, 2)
        create_row.addWidget(self.password, 1)
        create_row.addWidget(self.create_button)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Open meetings</b> (double-click to join)"))
        layout.addWidget(self.table, 1)
        layout.addWidget(self.empty)
        layout.addWidget(self.join_selected)
        layout.addLayout(join_row)
        layout.addWidget(QLabel("<b>New meeting</b>"))
        layout.addLayout(create_row)
        layout.addWidget(self.message)
        self._meetings: list[MeetingInfo] = []
        self._window = window
        self.table.cellDoubleClicked.connect(lambda row, _c: self._join_row(row))
        self.join_selected.clicked.connect(self._join_current)
        self.join_by_id.clicked.connect(self._join_typed)
        self.meeting_id.returnPressed.connect(self._join_typed)
        self.create_button.clicked.connect(self._create)
        self.title.returnPressed.connect(self._create)

    def show_meetings(self, meetings: list[MeetingInfo]) -> None:
        selected = self.selected_id()
        self._meetings = list(meetings)
        self.table.setRowCount(len(meetings))
        for row, meeting in enumerate(meetings):
            values = [meeting.title, meeting.creator, str(meeting.participant_count),
                      "yes" if meeting.has_password else ""]
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setData(Qt.ItemDataRole.UserRole, meeting.id)
                item.setToolTip(f"meeting id {meeting.id}")
                self.table.setItem(row, column, item)
            if meeting.id == selected:
                self.table.selectRow(row)
        self.empty.setVisible(not meetings)

    def selected_id(self) -> str | None:
        row = self.table.currentRow()
        if 0 <= row < len(self._meetings):
            return self._meetings[row].id
        return None

    def _join_row(self, row: int) -> None:
        if 0 <= row < len(self._meetings):
            self._window.join_meeting(self._meetings[row])

    def _join_current(self) -> None:
        self._join_row(self.table.currentRow())

    def _join_typed(self) -> None:
        text = self.meeting_id.text().strip()
        if text:
            known = next((m for m in self._meetings if m.id == text), None)
            self._window.join_meeting(known, meeting_id=text)

    def _create(self) -> None:
        title = self.title.text().strip()
        if not title:
            self._window.show_error("Give the meeting a title.")
            return
        self._window.engine.create_meeting(title, self.password.text() or None)
        self.password.clear()


class MeetingPage(QWidget):
    def __init__(self, window: MainWindow) -> None:
        super().__init__()
        self._window = window
        self.title = QLabel("")
        self.title.setObjectName("meeting_title")
        self.notice = QLabel("")
        self.notice.setObjectName("notice")
        self.notice.setStyleSheet("color: #555")
        self.grid = VideoGrid()
        self.self_view = VideoTile(SELF, "You", small=True)
        self.grid.set_self_view(self.self_view)

        self.chat_view = QTextBrowser()
        self.chat_view.setObjectName("chat_view")
        self.chat_input = QLineEdit()
        self.chat_input.setObjectName("chat_input")
        self.chat_input.setPlaceholderText("Message everyone (Enter to send)")
        self.people = QListWidget()
        self.people.setObjectName("people")
        self.stats_table = QTableWidget(0, 6)
        self.stats_table.setHorizontalHeaderLabels(
            ["From", "Resolution", "fps", "kbit/s", "Lost", "Delay ms"])
        self.stats_table.verticalHeader().hide()
        self.stats_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.fps_graph = LiveGraph("Frames per second", "fps")
        self.bitrate_graph = LiveGraph("Bitrate", "kbit/s")
        chat = QWidget()
        chat_layout = QVBoxLayout(chat)
        chat_layout.setContentsMargins(0, 0, 0, 0)
        chat_layout.addWidget(self.chat_view, 1)
        chat_layout.addWidget(self.chat_input)
        stats = QWidget()
        stats_layout = QVBoxLayout(stats)
        stats_layout.setContentsMargins(0, 0, 0, 0)
        stats_layout.addWidget(self.stats_table, 1)
        stats_layout.addWidget(self.fps_graph)
        stats_layout.addWidget(self.bitrate_graph)
        self.side = QTabWidget()
        self.side.setObjectName("side_panel")
        self.side.addTab(chat, "Chat")
        self.side.addTab(self.people, "People")
        self.side.addTab(stats, "Statistics")
        self.side.setMinimumWidth(280)

        self.mic_button = self._toggle("Microphone", "mic_button")
        self.camera_button = self._toggle("Camera", "camera_button")
        self.screen_button = self._toggle("Share screen", "screen_button")
        self.record_button = self._toggle("Record", "record_button")
        self.panel_button = self._toggle("Chat", "panel_button")
        self.panel_button.setChecked(True)
        self.leave_button = QPushButton("Leave")
        self.leave_button.setObjectName("leave_button")
        self.end_button = QPushButton("End meeting for all")
        self.end_button.setObjectName("end_button")
        self.end_button.setStyleSheet("color: #c5221f")
        self.camera_picker = QComboBox()
        self.camera_picker.setObjectName("camera_picker")
        self.mic_picker = QComboBox()
        self.mic_picker.setObjectName("mic_picker")
        self.speaker_picker = QComboBox()
        self.speaker_picker.setObjectName("speaker_picker")
        controls = QHBoxLayout()
        left: list[QWidget] = [self.mic_button, self.mic_picker, self.camera_button,
                               self.camera_picker, self.screen_button, self.speaker_picker,
                               self.record_button]
        right: list[QWidget] = [self.panel_button, self.end_button, self.leave_button]
        for widget in left:
            controls.addWidget(widget)
        controls.addStretch(1)
        for widget in right:
            controls.addWidget(widget)
        splitter = QSplitter()
        splitter.addWidget(self.grid)
        splitter.addWidget(self.side)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([820, 340])
        header = QHBoxLayout()
        header.addWidget(self.title)
        header.addStretch(1)
        header.addWidget(self.notice)
        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(splitter, 1)
        layout.addLayout(controls)

        self.unread = 0
        self.chat_input.returnPressed.connect(self._send_chat)
        self.panel_button.toggled.connect(self._toggle_panel)
        self.side.currentChanged.connect(lambda _i: self._mark_read())

    @staticmethod
    def _toggle(text: str, name: str) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setCheckable(True)
        button.setObjectName(name)
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        return button

    def chat_visible(self) -> bool:
        return self.side.isVisible() and self.side.currentIndex() == 0

    def add_chat(self, message: ChatMessage) -> None:
        stamp = time.strftime("%H:%M", time.localtime(message.ts))
        self.chat_view.append(
            f"<p><b>{_html(message.sender)}</b> <span style='color:#888'>{stamp}</span><br>"
            f"{_html(message.text)}</p>"
        )
        if not self.chat_visible():
            self.unread += 1
            self._show_unread()

    def add_notice(self, text: str) -> None:
        self.notice.setText(text)
        self.chat_view.append(f"<p style='color:#888'><i>{_html(text)}</i></p>")

    def _show_unread(self) -> None:
        suffix = f" ({self.unread})" if self.unread else ""
        self.side.setTabText(0, "Chat" + suffix)
        self.panel_button.setText("Chat" + suffix)

    def _mark_read(self) -> None:
        if self.chat_visible():
            self.unread = 0
            self._show_unread()

    def _toggle_panel(self, shown: bool) -> None:
        self.side.setVisible(shown)
        self._mark_read()

    def _send_chat(self) -> None:
        text = self.chat_input.text().strip()
        if text:
            self._window.engine.send_chat(text)
            self.chat_input.clear()

    def reset(self) -> None:
        self.grid.clear()
        self.chat_view.clear()
        self.people.clear()
        self.stats_table.setRowCount(0)
        self.notice.setText("")
        self.unread = 0
        self._show_unread()


class MainWindow(QMainWindow):
    def __init__(self, engine: Engine | None = None, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setWindowTitle("confero")
        self.resize(1180, 760)
        self.settings = settings or QSettings("confero", "confero")
        self.engine = engine or Engine()
        self.name = ""
        self.is_creator = False
        self.participants: dict[str, ParticipantInfo] = {}
        self.state = "disconnected"
        self.start = StartPage(self)
        self.lobby = LobbyPage(self)
        self.meeting = MeetingPage(self)
        self.pages = QStackedWidget()
        for page in (self.start, self.lobby, self.meeting):
            self.pages.addWidget(page)
        self.setCentralWidget(self.pages)
        self.status = QLabel()
        self.status.setObjectName("connection_status")
        self.statusBar().addPermanentWidget(self.status, 1)
        self._set_state("disconnected", "")
        self._build_menus()
        self._wire_engine()
        self._wire_meeting_controls()
        self.repaint_timer = QTimer(self)
        self.repaint_timer.setInterval(33)  # ~30 Hz: pictures are pulled at display rate
        self.repaint_timer.timeout.connect(self._pull_frames)
        self.repaint_timer.start()

    # ------------------------------------------------------------------ setup

    def _build_menus(self) -> None:
        meeting_menu = self.menuBar().addMenu("&Meeting")
        leave = QAction("Leave", self)
        leave.setShortcut(QKeySequence("Ctrl+W"))
        leave.triggered.connect(self._leave)
        meeting_menu.addAction(leave)
        disconnect = QAction("Disconnect", self)
        disconnect.triggered.connect(self._disconnect)
        meeting_menu.addAction(disconnect)
        developer = self.menuBar().addMenu("&Developer")
        self.synthetic_camera = QAction("Use synthetic camera", self)
        self.synthetic_camera.triggered.connect(lambda: self._use_camera(
            DeviceChoice("Synthetic camera", "synthetic")))
        developer.addAction(self.synthetic_camera)
        self.synthetic_mic = QAction("Use synthetic microphone (440 Hz)", self)
        self.synthetic_mic.triggered.connect(lambda: self._use_mic(
            DeviceChoice("Synthetic 440 Hz tone", "sine", "440")))
        developer.addAction(self.synthetic_mic)

    def _wire_engine(self) -> None:
        engine = self.engine
        engine.state_changed.connect(self._set_state)
        engine.meetings_changed.connect(self.lobby.show_meetings)
        engine.joined.connect(self._joined)
        engine.rejoined.connect(self._rejoined)
        engine.left.connect(self._left)
        engine.participant_joined.connect(self._participant_joined)
        engine.participant_left.connect(self._participant_left)
        engine.media_changed.connect(self._media_changed)
        engine.chat.connect(self.meeting.add_chat)
        engine.error.connect(self.show_error)
        engine.notice.connect(self._notice)
        engine.stats.connect(self._show_stats)
        engine.speaking.connect(self._speaking)
        engine.local_media.connect(self._local_media)
        engine.recording.connect(self._recording)

    def _wire_meeting_controls(self) -> None:
        page = self.meeting
        page.mic_button.clicked.connect(self._mic_clicked)
        page.camera_button.clicked.connect(self._camera_clicked)
        page.screen_button.clicked.connect(self._screen_clicked)
        page.record_button.clicked.connect(self._record_clicked)
        page.leave_button.clicked.connect(self._leave)
        page.end_button.clicked.connect(self._end_for_all)
        page.speaker_picker.activated.connect(self._speaker_chosen)
        page.mic_picker.activated.connect(lambda _i: self._mic_clicked(True))
        page.camera_picker.activated.connect(lambda _i: self._camera_clicked(True))

    def _fill_pickers(self) -> None:
        page = self.meeting
        page.camera_picker.clear()
        cameras = [c for c in video_devices() if c.kind == "camera"]
        for choice in [*cameras, DeviceChoice("Synthetic camera", "synthetic")]:
            page.camera_picker.addItem(choice.label, choice)
        page.mic_picker.clear()
        mics = sound_devices("mic")
        for choice in [*mics, DeviceChoice("Synthetic 440 Hz tone", "sine", "440")]:
            page.mic_picker.addItem(choice.label, choice)
        page.speaker_picker.clear()
        speakers = sound_devices("speaker")
        for choice in [*speakers, DeviceChoice("No sound", "none")]:
            page.speaker_picker.addItem(choice.label, choice)
        missing = [what for what, found in (("camera", cameras), ("microphone", mics),
                                            ("speaker", speakers)) if not found]
        if missing:
            self._notice(f"No {' or '.join(missing)} found: you can still join, watch and chat; "
                         "synthetic sources are in the pickers and the Developer menu.")

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
        self.name = name
        self.settings.setValue("server", server)
        self.settings.setValue("name", name)
        self.settings.setValue("cafile", self.start.cafile.text().strip())
        self.start.message.setText("")
        self._set_state("connecting", "")
        self.engine.connect_to(server, name, self.start.cafile.text().strip() or None)

    def _set_state(self, state: str, reason: str) -> None:
        self.state = state
        server = self.settings.value("server", DEFAULT_SERVER)
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
        colour = _STATE_COLOURS.get(state, "#8e8e93")
        self.status.setText(f"<span style='color:{colour}'>●</span> {_html(text)}")
        if state == "connected" and self.pages.currentWidget() is self.start:
            self.pages.setCurrentWidget(self.lobby)
        if state == "failed":
            self.start.message.setText(_html(reason or "connection failed"))
            self.pages.setCurrentWidget(self.start)

    def _disconnect(self) -> None:
        self.engine.disconnect_from_server()
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
            password, ok = QInputDialog.getText(self, "Password",
                                                f"Password for “{meeting.title}”:",
                                                QLineEdit.EchoMode.Password)
            if not ok:
                return
        self.engine.join_meeting(target, password)

    # ------------------------------------------------------------------ meeting

    def _joined(self, result: JoinResult) -> None:
        page = self.meeting
        page.reset()
        self.is_creator = result.is_creator
        self.participants = {p.id: p for p in result.participants}
        page.title.setText(f"<b>{_html(result.meeting.title)}</b> "
                           f"<span style='color:#888'>id {result.meeting.id}</span>")
        page.end_button.setVisible(result.is_creator)
        page.self_view.name = f"{self.name} (you)"
        for participant in result.participants:
            if participant.id != self.engine.participant_id:
                self._add_tile(participant)
        for message in result.history:
            page.add_chat(message)
        page.unread = 0
        page._show_unread()
        self._refresh_people()
        self._fill_pickers()
        self.pages.setCurrentWidget(page)
        self.setWindowTitle(f"{result.meeting.title} - confero")

    def _rejoined(self, participants: list[ParticipantInfo]) -> None:
        """After a reconnect: who left or came meanwhile, and everyone's new streams."""
        me = self.engine.participant_id
        current = {p.id: p for p in participants if p.id != me}
        for participant_id in set(self.meeting.grid.tiles) - set(current):
            self.meeting.grid.remove(participant_id)
        for participant in current.values():
            self._add_tile(participant)
        self.participants = {p.id: p for p in participants}
        self._refresh_people()

    def _add_tile(self, participant: ParticipantInfo) -> None:
        tile = self.meeting.grid.add(participant.id, participant.name)
        tile.set_state(camera=participant.camera, microphone=participant.microphone)

    def _left(self, why: str) -> None:
        self.meeting.reset()
        self.participants = {}
        self.pages.setCurrentWidget(self.lobby)
        self.setWindowTitle("confero")
        self.statusBar().showMessage(why, 10_000)
        self.engine.refresh_meetings()
        self.meeting.mic_button.setChecked(False)
        self.meeting.camera_button.setChecked(False)
        self.meeting.screen_button.setChecked(False)

    def _participant_joined(self, participant: ParticipantInfo) -> None:
        self.participants[participant.id] = participant
        self._add_tile(participant)
        self._refresh_people()
        self.meeting.add_notice(f"{participant.name} joined")

    def _participant_left(self, event: ParticipantLeft) -> None:
        self.participants.pop(event.participant_id, None)
        self.meeting.grid.remove(event.participant_id)
        self._refresh_people()
        how = {"left": "left", "disconnected": "lost their connection",
               "replaced": "reconnected"}.get(event.reason, event.reason)
        self.meeting.add_notice(f"{event.name} {how}")

    def _media_changed(self, event: MediaChanged) -> None:
        tile = self.meeting.grid.tiles.get(event.participant_id)
        if tile is not None:
            tile.set_state(camera=event.camera, microphone=event.microphone)
        known = self.participants.get(event.participant_id)
        if known is not None:
            self.participants[event.participant_id] = msgspec.structs.replace(
                known, camera=event.camera, microphone=event.microphone)
        self._refresh_people()

    def _refresh_people(self) -> None:
        people = self.meeting.people
        people.clear()
        people.addItem(f"{self.name} (you){' - host' if self.is_creator else ''}")
        for participant in self.participants.values():
            if participant.id == self.engine.participant_id:
                continue
            state = ", ".join(s for s, on in (("mic on", participant.microphone),
                                              ("camera on", participant.camera)) if on)
            people.addItem(f"{participant.name}" + (f" - {state}" if state else ""))
        self.meeting.side.setTabText(1, f"People ({len(self.participants)})")

    def _pull_frames(self) -> None:
        if self.pages.currentWidget() is not self.meeting:
            return
        for participant_id, tile in self.meeting.grid.tiles.items():
            latest = self.engine.frames.get(participant_id)
            if latest is not None and tile.camera:
                tile.set_image(*latest)
        own = self.engine.frames.get(SELF)
        view = self.meeting.self_view
        if own is not None and view.camera:
            view.set_image(*own)

    def _speaking(self, talking: set[str]) -> None:
        for participant_id, tile in self.meeting.grid.tiles.items():
            tile.set_state(speaking=participant_id in talking)
        self.meeting.self_view.set_state(speaking=SELF in talking)

    def _local_media(self, camera: bool, microphone: bool) -> None:
        page = self.meeting
        page.self_view.set_state(camera=camera, microphone=microphone)
        page.mic_button.setChecked(microphone)
        if not camera:
            page.camera_button.setChecked(False)
            page.screen_button.setChecked(False)

    def _mic_clicked(self, on: bool) -> None:
        choice = self.meeting.mic_picker.currentData()
        self._use_mic(choice if on and choice is not None else None)

    def _use_mic(self, choice: DeviceChoice | None) -> None:
        self.meeting.mic_button.setChecked(choice is not None)
        self.engine.set_microphone(choice)

    def _camera_clicked(self, on: bool) -> None:
        choice = self.meeting.camera_picker.currentData()
        self._use_camera(choice if on and choice is not None else None)

    def _screen_clicked(self, on: bool) -> None:
        display = os.environ.get("DISPLAY")
        if on and not display:
            self.show_error("There is no X11 display to share (DISPLAY is not set).")
            self.meeting.screen_button.setChecked(False)
            return
        self._use_camera(DeviceChoice(f"Screen {display}", "screen", display or "")
                         if on else None)
        self.meeting.screen_button.setChecked(on)

    def _use_camera(self, choice: DeviceChoice | None) -> None:
        page = self.meeting
        page.camera_button.setChecked(choice is not None and choice.kind != "screen")
        page.screen_button.setChecked(choice is not None and choice.kind == "screen")
        self.engine.set_camera(choice, self.name)

    def _speaker_chosen(self, _index: int) -> None:
        choice = self.meeting.speaker_picker.currentData()
        if choice is not None:
            self.engine.choose_speaker(choice)

    def recordings_directory(self) -> Path:
        """Where recordings go: $CONFERO_RECORD_DIR, or the remembered folder (default
        ~/confero-recordings), one timestamped folder per recording."""
        base = os.environ.get("CONFERO_RECORD_DIR") or str(
            self.settings.value("recordings", Path.home() / "confero-recordings"))
        return Path(base) / time.strftime("%Y%m%d-%H%M%S")

    def _record_clicked(self, on: bool) -> None:
        if on:
            self.engine.start_recording(str(self.recordings_directory()))
        else:
            self.engine.stop_recording()

    def _recording(self, on: bool, directory: str) -> None:
        self.meeting.record_button.setChecked(on)
        self.meeting.add_notice(f"Recording into {directory}" if on
                                else f"Recording saved in {directory}")

    def _leave(self) -> None:
        if self.pages.currentWidget() is self.meeting:
            self.engine.leave_meeting()

    def _end_for_all(self) -> None:
        answer = QMessageBox.question(
            self, "End meeting for all",
            "End this meeting for everyone? Nobody will be able to join it again.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.engine.end_meeting_for_all()

    def _show_stats(self, stats: dict[str, Any]) -> None:
        page = self.meeting
        video = stats.get("video", {})
        page.stats_table.setRowCount(len(video))
        for row, (name, values) in enumerate(sorted(video.items())):
            delay = values.get("delay_ms")
            cells = [name, f"{values['width']}x{values['height']}", f"{values['fps']:.0f}",
                     f"{values['bitrate_bps'] / 1000:.0f}", str(values["lost"]),
                     f"{delay:.0f}" if delay is not None else "-"]
            for column, value in enumerate(cells):
                page.stats_table.setItem(row, column, QTableWidgetItem(value))
            page.fps_graph.add(name, float(values["fps"]))
            page.bitrate_graph.add(name, float(values["bitrate_bps"]) / 1000)
        page.fps_graph.keep_only(set(video))
        page.bitrate_graph.keep_only(set(video))

    # ------------------------------------------------------------------ messages

    def show_error(self, text: str) -> None:
        """Errors never open a modal box: they show where the person is looking."""
        self.statusBar().showMessage(text, 15_000)
        page = self.pages.currentWidget()
        if page is self.start:
            self.start.message.setText(_html(text))
        elif page is self.meeting:
            self.meeting.add_notice(text)
        else:
            self.lobby.message.setText(_html(text))

    def _notice(self, text: str) -> None:
        if self.pages.currentWidget() is self.meeting:
            self.meeting.add_notice(text)
        else:
            self.statusBar().showMessage(text, 10_000)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.repaint_timer.stop()
        self.engine.shutdown()
        event.accept()
