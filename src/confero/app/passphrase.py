"""Asking for a secret before joining: the E2EE passphrase of an encrypted meeting.

The passphrase never goes to the server (it feeds the participants' key agreement), so
the app cannot check it before joining; a wrong or missing one shows as "cannot decrypt"
in the meeting, and the person can leave and join again with the right one.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QInputDialog, QLabel, QLineEdit, QWidget

from confero.app.plain import clip


def secret_dialog(parent: QWidget, window_title: str, label: str) -> QInputDialog:
    dialog = QInputDialog(parent)
    dialog.setObjectName("secret_dialog")
    dialog.setWindowTitle(window_title)
    dialog.setTextEchoMode(QLineEdit.EchoMode.Password)
    dialog.setLabelText(label)
    for child in dialog.findChildren(QLabel):
        child.setTextFormat(Qt.TextFormat.PlainText)  # the label carries someone's title
    return dialog


def ask_passphrase(parent: QWidget, title: str) -> str | None:
    """None when the person cancelled; "" joins without it (nothing can be decrypted)."""
    dialog = secret_dialog(
        parent, "End-to-end encrypted meeting",
        f"“{clip(title, 80)}” is end-to-end encrypted.\n"
        "Its passphrase (from whoever invited you; it never goes to the server):")
    dialog.setAccessibleName("End-to-end encryption passphrase")
    if not dialog.exec():
        return None
    return dialog.textValue()
