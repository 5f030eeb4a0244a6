"""Text from other people is shown as text, never interpreted.

A name such as ``<img src=/dev/zero>`` rendered as rich text made Qt read /dev/zero and
froze the app (issue 7). Every label that can carry someone else's words is made with
``plain_label`` (Qt.PlainText); tooltips are always rich-text-sniffed by Qt, so anything
put in one goes through ``tooltip``, which escapes it.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

MAX_SHOWN = 200  # characters of one name or title shown anywhere


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tooltip(text: str) -> str:
    """Escaped so the tooltip shows the characters themselves."""
    return "<p style='white-space:pre-wrap'>" + html.escape(clip(text, 1000)) + "</p>"


def plain_label(text: str = "", name: str = "") -> QLabel:
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    if name:
        label.setObjectName(name)
    return label
