"""The meeting page: header, the stage with the side panel, the muted banner, the bar.

Only widgets and their arrangement live here; what the controls do is in ``meeting``.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QSplitter, QVBoxLayout, QWidget

from confero.app.banner import MutedBanner
from confero.app.controls import ControlBar
from confero.app.engine import SELF
from confero.app.header import MeetingHeader, WaitingCard
from confero.app.side_panel import CHAT, PEOPLE, SidePanel
from confero.app.stage import Stage
from confero.app.tiles import VideoTile
from confero.app.toasts import Toasts

BAR_HIDES_AFTER_MS = 4000


class MeetingPage(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.header = MeetingHeader()
        self.title = self.header.title
        self.notice = self.header.notice
        self.stage = self.grid = Stage()
        self.self_view = VideoTile(SELF, "You", small=True)
        self.stage.set_self_view(self.self_view)
        self.side = SidePanel()
        self.chat_view = self.side.chat_view
        self.chat_input = self.side.chat_input
        self.people = self.side.people
        self.stats_table = self.side.stats_table
        self.banner = MutedBanner()
        self.bar = ControlBar()
        for name in ("mic_button", "camera_button", "screen_button", "hand_button",
                     "panel_button", "people_button", "layout_button", "more_button",
                     "leave_button"):
            setattr(self, name, getattr(self.bar, name))
        self.splitter = QSplitter()
        self.splitter.addWidget(self.stage)
        self.splitter.addWidget(self.side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([840, 320])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.header)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.banner)
        layout.addWidget(self.bar)
        self.waiting = WaitingCard(self.header)
        self.waiting.setParent(self.stage)
        self.toasts = Toasts(self)
        self.unread = 0
        self.bar_timer = QTimer(self)
        self.bar_timer.setSingleShot(True)
        self.bar_timer.setInterval(BAR_HIDES_AFTER_MS)
        self.side.currentChanged.connect(lambda _i: self.mark_read())

    # ------------------------------------------------------------------ side panel

    def chat_visible(self) -> bool:
        return self.side.isVisible() and self.side.currentIndex() == CHAT

    def people_visible(self) -> bool:
        return self.side.isVisible() and self.side.currentIndex() == PEOPLE

    def show_panel(self, index: int | None) -> None:
        """Open the side panel on this tab, or close it (None)."""
        if index is None:
            self.side.hide()
        else:
            self.side.setCurrentIndex(index)
            self.side.show()
        self.mark_read()

    def count_unread(self) -> None:
        if not self.chat_visible():
            self.unread += 1

    def mark_read(self) -> None:
        if self.chat_visible():
            self.unread = 0
        self.side.setTabText(CHAT, f"Chat ({self.unread})" if self.unread else "Chat")

    # ------------------------------------------------------------------ overlays

    def place_overlays(self) -> None:
        self.waiting.adjustSize()
        self.waiting.move((self.stage.width() - self.waiting.width()) // 2,
                          max(12, self.stage.height() // 2 - 120))
        self.waiting.raise_()
        if self.toasts.isVisible():
            self.toasts.raise_()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.place_overlays()

    def reset(self) -> None:
        self.stage.clear()
        self.side.clear_all()
        self.header.stop()
        self.banner.hide()
        self.waiting.hide()
        self.unread = 0
        self.mark_read()
        self.bar.show()
        self.self_view.set_state(camera=False, microphone=False, hand=False, speaking=False)
