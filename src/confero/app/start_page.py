"""The first page: which server, and the name others will see."""

from __future__ import annotations

from PySide6.QtWidgets import QFormLayout, QGroupBox, QLineEdit, QPushButton, QVBoxLayout, QWidget

from confero.app.plain import plain_label
from confero.app.settings import DEFAULT_SERVER, Continuity


class StartPage(QWidget):
    def __init__(self, continuity: Continuity) -> None:
        super().__init__()
        self.server = QLineEdit(continuity.text("server", DEFAULT_SERVER))
        self.server.setObjectName("server")
        self.server.setAccessibleName("Server address")
        self.name = QLineEdit(continuity.text("name"))
        self.name.setObjectName("name")
        self.name.setAccessibleName("Your name")
        self.name.setPlaceholderText("how others will see you")
        self.name.setMaxLength(64)
        self.cafile = QLineEdit(continuity.text("cafile"))
        self.cafile.setAccessibleName("Trusted certificate file")
        self.cafile.setPlaceholderText("only for a server with a self-signed certificate")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setObjectName("connect")
        self.connect_button.setDefault(True)
        self.message = plain_label("", "start_message")
        self.message.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Server", self.server)
        form.addRow("Your name", self.name)
        form.addRow("Trusted certificate", self.cafile)
        box = QGroupBox("Join a confero server")
        box.setLayout(form)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(120, 24, 120, 24)
        layout.addStretch(1)
        layout.addWidget(box)
        layout.addWidget(self.connect_button)
        layout.addWidget(self.message)
        layout.addStretch(2)
