"""The meeting header: title, the copyable meeting id, elapsed time, recording, notices."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFrame, QHBoxLayout, QPushButton, QToolButton, QWidget

from confero.app import icons
from confero.app.plain import clip, plain_label


def elapsed_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else (
        f"{rest // 60:02d}:{rest % 60:02d}")


def copy_to_clipboard(text: str) -> None:
    clipboard = QGuiApplication.clipboard()
    if clipboard is not None:
        clipboard.setText(text)


class MeetingHeader(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.meeting_id = ""
        self.started = time.monotonic()
        self.title = plain_label("", "meeting_title")
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        self.id_label = plain_label("", "meeting_id_label")
        self.id_label.setProperty("class", "hint")
        self.copy_button = QToolButton()
        self.copy_button.setObjectName("copy_id")
        self.copy_button.setIcon(icons.icon("copy"))
        self.copy_button.setToolTip("Copy the meeting id")
        self.copy_button.setAccessibleName("Copy the meeting id")
        self.elapsed = plain_label("00:00", "elapsed")
        self.elapsed.setAccessibleName("Time in the meeting")
        self.recording = plain_label("● Recording", "recording_dot")
        self.recording.setStyleSheet("color: #ea4335; font-weight: bold")
        self.recording.hide()
        self.notice = plain_label("", "notice")
        self.notice.setObjectName("notice")
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 6, 12, 2)
        row.addWidget(self.title)
        row.addWidget(self.id_label)
        row.addWidget(self.copy_button)
        row.addSpacing(12)
        row.addWidget(self.recording)
        row.addStretch(1)
        row.addWidget(self.notice)
        row.addSpacing(12)
        row.addWidget(self.elapsed)
        self.copy_button.clicked.connect(self.copy_id)
        self._notice_timer = QTimer(self)
        self._notice_timer.setSingleShot(True)
        self._notice_timer.setInterval(12_000)
        self._notice_timer.timeout.connect(lambda: self.notice.setText(""))
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self.tick)

    def show_meeting(self, title: str, meeting_id: str) -> None:
        self.meeting_id = meeting_id
        self.title.setText(clip(title, 80))
        self.title.setToolTip("")
        self.id_label.setText(f"id {meeting_id}")
        self.started = time.monotonic()
        self.tick()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self.recording.hide()
        self.notice.setText("")

    def tick(self) -> None:
        self.elapsed.setText(elapsed_text(time.monotonic() - self.started))

    def say(self, text: str) -> None:
        """A passing notice: it clears itself after a while."""
        self.notice.setText(clip(text, 200))
        self._notice_timer.start()

    def copy_id(self) -> None:
        copy_to_clipboard(self.meeting_id)
        self.say("Meeting id copied")


class WaitingCard(QFrame):
    """"Waiting for others..." while you are alone, with a Copy button for the id."""

    def __init__(self, header: MeetingHeader) -> None:
        super().__init__()
        self.setObjectName("toast")
        self.label = plain_label("Waiting for others to join…", "waiting_text")
        self.copy_button = QPushButton("Copy meeting id")
        self.copy_button.setObjectName("waiting_copy")
        row = QHBoxLayout(self)
        row.setContentsMargins(14, 8, 8, 8)
        row.addWidget(self.label)
        row.addWidget(self.copy_button)
        self.copy_button.clicked.connect(header.copy_id)
        self.hide()
