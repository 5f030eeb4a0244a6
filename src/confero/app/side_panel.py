"""The side panel: chat, people and statistics. Everything another person wrote is
inserted as plain text (QTextCursor.insertText), never parsed as HTML."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from confero.app.plain import clip, tooltip
from confero.app.theme import COLOURS
from confero.app.widgets import LiveGraph
from confero.protocol.signaling import ChatMessage, ParticipantInfo

CHAT, PEOPLE, STATS = 0, 1, 2


class SidePanel(QTabWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("side_panel")
        self.chat_view = QTextBrowser()
        self.chat_view.setObjectName("chat_view")
        self.chat_view.setOpenLinks(False)
        self.chat_input = QLineEdit()
        self.chat_input.setObjectName("chat_input")
        self.chat_input.setPlaceholderText("Message everyone (Enter to send)")
        self.chat_input.setMaxLength(2000)
        self.people = QListWidget()
        self.people.setObjectName("people")
        self.people.setWordWrap(True)  # a safety code fits the panel on its own line
        self.stats_table = QTableWidget(0, 6)
        self.stats_table.setObjectName("stats_table")
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
        self.addTab(chat, "Chat")
        self.addTab(self.people, "People")
        self.addTab(stats, "Statistics")
        self.setMinimumWidth(280)
        #: E2EE meetings: participant id -> (verified, safety code or None), shown in People
        self.safety: dict[str, tuple[bool, str | None]] = {}
        #: why a participant could not be verified ("cannot verify: wrong passphrase...")
        self.safety_notes: dict[str, str] = {}

    def add_chat(self, message: ChatMessage) -> None:
        stamp = time.strftime("%H:%M", time.localtime(message.ts))
        cursor = self.chat_view.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        bold, grey, normal = QTextCharFormat(), QTextCharFormat(), QTextCharFormat()
        bold.setFontWeight(QFont.Weight.Bold)
        grey.setForeground(QColor(COLOURS["muted_text"]))
        if not self.chat_view.document().isEmpty():
            cursor.insertBlock()
            cursor.insertBlock()
        cursor.insertText(clip(message.sender, 80), bold)
        cursor.insertText(f" {stamp}", grey)
        cursor.insertBlock()
        cursor.insertText(message.text, normal)
        self.chat_view.setTextCursor(cursor)
        self.chat_view.ensureCursorVisible()

    def show_people(self, me: str, host: bool, others: list[ParticipantInfo],
                    hands: set[str]) -> None:
        """You first, then raised hands (in the order raised), then everyone else."""
        self.people.clear()
        mine = QListWidgetItem(f"{clip(me, 60)} (you){' - host' if host else ''}")
        self.people.addItem(mine)
        ordered = sorted(others, key=lambda p: p.id not in hands)
        for participant in ordered:
            words = ["hand raised"] if participant.id in hands else []
            words += ["mic on" if participant.microphone else "muted",
                      "camera on" if participant.camera else "camera off"]
            prefix = "✋ " if participant.id in hands else ""
            text = f"{prefix}{clip(participant.name, 60)} - {', '.join(words)}"
            hint = participant.name
            if participant.id in self.safety:
                verified, code = self.safety[participant.id]
                note = self.safety_notes.get(participant.id, "")
                state = "verified" if verified else clip(note, 80) or "not verified"
                text += (f"\nSafety code {code} ({state})" if code
                         else f"\nNo safety code yet ({state})")
                hint += ("\nCompare this code with the one their app shows for you: "
                         "the same code on both sides means nobody is in between.")
            item = QListWidgetItem(text)
            item.setToolTip(tooltip(hint))
            item.setData(Qt.ItemDataRole.AccessibleTextRole, text.replace("\n", ". "))
            self.people.addItem(item)
        self.setTabText(PEOPLE, f"People ({len(others) + 1})")

    def show_stats(self, stats: dict[str, Any]) -> None:
        video = stats.get("video", {})
        self.stats_table.setRowCount(len(video))
        for row, (name, values) in enumerate(sorted(video.items())):
            delay = values.get("delay_ms")
            cells = [clip(str(name), 60), f"{values['width']}x{values['height']}",
                     f"{values['fps']:.0f}", f"{values['bitrate_bps'] / 1000:.0f}",
                     str(values["lost"]), f"{delay:.0f}" if delay is not None else "-"]
            for column, value in enumerate(cells):
                self.stats_table.setItem(row, column, QTableWidgetItem(value))
            self.fps_graph.add(str(name), float(values["fps"]))
            self.bitrate_graph.add(str(name), float(values["bitrate_bps"]) / 1000)
        self.fps_graph.keep_only(set(video))
        self.bitrate_graph.keep_only(set(video))

    def clear_all(self) -> None:
        self.safety, self.safety_notes = {}, {}
        self.chat_view.clear()
        self.people.clear()
        self.stats_table.setRowCount(0)
