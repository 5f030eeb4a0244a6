"""The lobby: open meetings, join by id, create one, and your recent meetings (a meeting
you created can be ended from here, even after the app restarted)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from confero.app import icons
from confero.app.plain import clip, plain_label, tooltip
from confero.app.settings import RecentMeeting
from confero.protocol.signaling import MeetingInfo


def _heading(text: str) -> QWidget:
    label = plain_label(text)
    font = label.font()
    font.setBold(True)
    label.setFont(font)
    return label


class LobbyPage(QWidget):
    join_wanted = Signal(object, str)  # MeetingInfo | None, meeting id
    create_wanted = Signal(str, str, bool, str)  # title, password, e2ee, e2ee passphrase
    end_wanted = Signal(str)  # meeting id

    def __init__(self) -> None:
        super().__init__()
        self.table = QTableWidget(0, 5)
        self.table.setObjectName("meetings")
        self.table.setAccessibleName("Open meetings")
        self.table.setHorizontalHeaderLabels(["Title", "Creator", "People", "Password",
                                              "Encryption"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.empty = plain_label("No open meetings yet. Create one below.")
        self.message = plain_label("", "lobby_message")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #f28b82")
        self.join_selected = QPushButton("Join selected")
        self.join_selected.setObjectName("join_selected")
        self.meeting_id = QLineEdit()
        self.meeting_id.setObjectName("meeting_id")
        self.meeting_id.setPlaceholderText("paste a meeting id")
        self.meeting_id.setAccessibleName("Meeting id")
        self.join_by_id = QPushButton("Join")
        self.join_by_id.setObjectName("join_by_id")
        self.title = QLineEdit()
        self.title.setObjectName("title")
        self.title.setPlaceholderText("meeting title")
        self.title.setAccessibleName("New meeting title")
        self.title.setMaxLength(120)
        self.password = QLineEdit()
        self.password.setPlaceholderText("password (optional)")
        self.password.setAccessibleName("New meeting password")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.e2ee = QCheckBox("End-to-end encrypted")
        self.e2ee.setObjectName("e2ee")
        self.e2ee.setToolTip("Only the participants can read the media; everyone needs the "
                             "passphrase, which you share with them yourself.")
        self.passphrase = QLineEdit()
        self.passphrase.setObjectName("e2ee_passphrase")
        self.passphrase.setPlaceholderText("E2EE passphrase (never sent to the server)")
        self.passphrase.setAccessibleName("End-to-end encryption passphrase")
        self.passphrase.setEchoMode(QLineEdit.EchoMode.Password)
        self.passphrase.setMaxLength(256)
        self.passphrase.setEnabled(False)
        self.create_button = QPushButton("Create and join")
        self.create_button.setObjectName("create")
        self.recent = QListWidget()
        self.recent.setObjectName("recent_meetings")
        self.recent.setAccessibleName("Recent meetings")
        self.recent.setMaximumHeight(120)
        self.end_recent = QPushButton("End this meeting for everyone")
        self.end_recent.setObjectName("end_recent")
        self.end_recent.setEnabled(False)
        join_row = QHBoxLayout()
        join_row.addWidget(self.meeting_id, 1)
        join_row.addWidget(self.join_by_id)
        create_row = QHBoxLayout()
        create_row.addWidget(self.title, 2)
        create_row.addWidget(self.password, 1)
        create_row.addWidget(self.create_button)
        e2ee_row = QHBoxLayout()
        e2ee_row.addWidget(self.e2ee)
        e2ee_row.addWidget(self.passphrase, 1)
        recent_row = QHBoxLayout()
        recent_row.addWidget(self.recent, 1)
        recent_row.addWidget(self.end_recent, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 16, 24, 16)
        layout.addWidget(_heading("Open meetings (double-click to join)"))
        layout.addWidget(self.table, 1)
        layout.addWidget(self.empty)
        layout.addWidget(self.join_selected)
        layout.addLayout(join_row)
        layout.addWidget(_heading("New meeting"))
        layout.addLayout(create_row)
        layout.addLayout(e2ee_row)
        layout.addWidget(_heading("Your recent meetings"))
        layout.addLayout(recent_row)
        layout.addWidget(self.message)
        self._meetings: list[MeetingInfo] = []
        self.table.cellDoubleClicked.connect(lambda row, _c: self._join_row(row))
        self.join_selected.clicked.connect(self._join_current)
        self.join_by_id.clicked.connect(self._join_typed)
        self.meeting_id.returnPressed.connect(self._join_typed)
        self.create_button.clicked.connect(self._create)
        self.title.returnPressed.connect(self._create)
        self.passphrase.returnPressed.connect(self._create)
        self.e2ee.toggled.connect(self.passphrase.setEnabled)
        self.recent.itemDoubleClicked.connect(self._join_recent)
        self.recent.currentItemChanged.connect(lambda item, _old: self._recent_chosen(item))
        self.end_recent.clicked.connect(self._end_recent)

    def show_meetings(self, meetings: list[MeetingInfo]) -> None:
        selected = self.selected_id()
        self._meetings = list(meetings)
        self.table.setRowCount(len(meetings))
        for row, meeting in enumerate(meetings):
            values = [clip(meeting.title, 120), clip(meeting.creator, 64),
                      str(meeting.participant_count), "yes" if meeting.has_password else "",
                      "End-to-end" if meeting.e2ee else ""]
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)  # item text is plain
                item.setData(Qt.ItemDataRole.UserRole, meeting.id)
                item.setToolTip(tooltip(f"{meeting.title}\nmeeting id {meeting.id}" + (
                    "\nend-to-end encrypted: joining asks for its passphrase"
                    if meeting.e2ee else "")))
                self.table.setItem(row, column, item)
            lock = self.table.item(row, 4)
            if lock is not None and meeting.e2ee:
                lock.setIcon(icons.icon("lock"))
                lock.setData(Qt.ItemDataRole.AccessibleTextRole, "End-to-end encrypted")
            if meeting.id == selected:
                self.table.selectRow(row)
        self.empty.setVisible(not meetings)

    def show_recent(self, recent: list[RecentMeeting]) -> None:
        self.recent.clear()
        for meeting in recent:
            item = QListWidgetItem(clip(meeting.title or meeting.id, 80)
                                   + (" (created by you)" if meeting.created else ""))
            item.setData(Qt.ItemDataRole.UserRole, meeting)
            item.setToolTip(tooltip(f"{meeting.title}\nmeeting id {meeting.id}"))
            self.recent.addItem(item)

    def selected_id(self) -> str | None:
        row = self.table.currentRow()
        if 0 <= row < len(self._meetings):
            return self._meetings[row].id
        return None

    def _join_row(self, row: int) -> None:
        if 0 <= row < len(self._meetings):
            self.join_wanted.emit(self._meetings[row], self._meetings[row].id)

    def _join_current(self) -> None:
        self._join_row(self.table.currentRow())

    def _join_typed(self) -> None:
        text = self.meeting_id.text().strip()
        if text:
            known = next((m for m in self._meetings if m.id == text), None)
            self.join_wanted.emit(known, text)

    def _join_recent(self, item: QListWidgetItem) -> None:
        meeting: RecentMeeting = item.data(Qt.ItemDataRole.UserRole)
        known = next((m for m in self._meetings if m.id == meeting.id), None)
        self.join_wanted.emit(known, meeting.id)

    def _recent_chosen(self, item: QListWidgetItem | None) -> None:
        meeting = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        self.end_recent.setEnabled(bool(meeting is not None and meeting.created))

    def _end_recent(self) -> None:
        item = self.recent.currentItem()
        if item is not None:
            self.end_wanted.emit(item.data(Qt.ItemDataRole.UserRole).id)

    def _create(self) -> None:
        title = self.title.text().strip()
        if not title:
            self.message.setText("Give the meeting a title.")
            return
        e2ee = self.e2ee.isChecked()
        if e2ee and not self.passphrase.text():
            self.message.setText("An end-to-end encrypted meeting needs a passphrase: "
                                 "choose one and tell it to the others yourself.")
            self.passphrase.setFocus()
            return
        self.create_wanted.emit(title, self.password.text(), e2ee,
                                self.passphrase.text() if e2ee else "")
        self.password.clear()
        self.passphrase.clear()
