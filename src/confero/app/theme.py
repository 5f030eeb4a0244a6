"""The dark look: Fusion, a dark palette, and the few rules a palette cannot say.

Kept in one place so a widget never sets its own colours; tiles and meters paint with
QPainter and take their colours from ``COLOURS``.
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

COLOURS = {
    "window": "#202124",
    "base": "#2b2c30",
    "raised": "#3c4043",
    "text": "#e8eaed",
    "muted_text": "#9aa0a6",
    "accent": "#8ab4f8",
    "off": "#ea4335",
    "good": "#34c759",
    "fair": "#fbbc04",
    "poor": "#ea4335",
    "unknown": "#80868b",
}

STYLESHEET = """
QToolButton[bar="true"] { background: #3c4043; border: none; border-radius: 22px;
    min-width: 44px; min-height: 44px; padding: 0 6px; }
QToolButton[bar="true"]:hover { background: #4a4e52; }
QToolButton[bar="true"]:focus { border: 2px solid #8ab4f8; }
QToolButton[bar="true"][off="true"] { background: #ea4335; }
QToolButton[bar="true"][active="true"] { background: #8ab4f8; color: #202124; }
QToolButton[bar="true"]::menu-button { border: none; width: 14px;
    border-top-right-radius: 22px; border-bottom-right-radius: 22px; }
QToolButton#leave_button { background: #ea4335; border-radius: 22px; min-height: 44px;
    padding: 0 18px; color: white; font-weight: bold; }
QToolButton#leave_button:focus { border: 2px solid white; }
QToolButton#leave_button:hover { background: #d33426; }
QFrame#banner { background: #fbbc04; border-radius: 8px; }
QFrame#banner QLabel { color: #202124; font-weight: bold; }
QFrame#toast { background: #3c4043; border-radius: 8px; }
QLabel#hint { color: #9aa0a6; }
QLabel#error { color: #f28b82; }
QLabel[badge="true"] { background: #3c4043; border: 1px solid #5f6368; border-radius: 9px;
    padding: 1px 8px; }
QPushButton { background: #3c4043; border: 1px solid #5f6368; border-radius: 6px;
    padding: 6px 14px; }
QPushButton:hover { background: #4a4e52; }
QPushButton:default { background: #8ab4f8; color: #202124; border: none; }
QPushButton:focus { border: 2px solid #8ab4f8; }
"""


def dark_palette() -> QPalette:
    palette = QPalette()
    window, base, raised = (QColor(COLOURS[k]) for k in ("window", "base", "raised"))
    text = QColor(COLOURS["text"])
    for role, colour in (
        (QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, raised),
        (QPalette.ColorRole.ToolTipBase, raised), (QPalette.ColorRole.ToolTipText, text),
        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, raised),
        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.BrightText, QColor("white")),
        (QPalette.ColorRole.Highlight, QColor(COLOURS["accent"])),
        (QPalette.ColorRole.HighlightedText, window),
        (QPalette.ColorRole.Link, QColor(COLOURS["accent"])),
        (QPalette.ColorRole.PlaceholderText, QColor(COLOURS["muted_text"])),
    ):
        palette.setColor(role, colour)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText,
                 QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#5f6368"))
    return palette


def apply(app: QApplication) -> None:
    style = QStyleFactory.create("Fusion")
    if style is not None:
        app.setStyle(style)
    app.setPalette(dark_palette())
    app.setStyleSheet(STYLESHEET)
