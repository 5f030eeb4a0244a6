"""The "You are muted" banner, shown when the speech detector hears a muted person."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QPushButton

from confero.app.plain import plain_label


class MutedBanner(QFrame):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("banner")
        self.setAccessibleName("You are muted")
        self.label = plain_label("You are muted. Are you talking?", "muted_banner_text")
        self.unmute_button = QPushButton("Unmute")
        self.unmute_button.setObjectName("banner_unmute")
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.setObjectName("banner_dismiss")
        row = QHBoxLayout(self)
        row.setContentsMargins(14, 6, 8, 6)
        row.addWidget(self.label, 1)
        row.addWidget(self.unmute_button)
        row.addWidget(self.dismiss_button)
        self.dismiss_button.clicked.connect(self.hide)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.hide()
