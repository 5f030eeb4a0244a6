"""Keyboard shortcuts of the meeting, and the rule that keys never fire while typing.

One application-wide event filter sees keys (and mouse moves, which bring back a hidden
control bar) for our window only. A letter typed into the chat box or any other text field
is text, not a command; Ctrl/Alt combinations are left to the widgets (copy, paste).
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QDialog,
    QLineEdit,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("M", "Mute or unmute the microphone"),
    ("V", "Turn the camera on or off"),
    ("D", "Share your screen or stop sharing"),
    ("C", "Open or close the chat"),
    ("P", "Open or close the people list"),
    ("R", "Raise or lower your hand"),
    ("W", "Next layout (auto, grid, speaker)"),
    ("F11", "Full screen"),
    ("Space (hold)", "Talk while muted"),
    ("?", "This list"),
    ("Esc", "Back from a full-window tile or full screen"),
    ("Ctrl+W", "Leave the meeting"),
)

_KEYS = {Qt.Key.Key_M: "M", Qt.Key.Key_V: "V", Qt.Key.Key_D: "D", Qt.Key.Key_C: "C",
         Qt.Key.Key_P: "P", Qt.Key.Key_R: "R", Qt.Key.Key_W: "W", Qt.Key.Key_F11: "F11",
         Qt.Key.Key_Question: "?", Qt.Key.Key_Escape: "Esc"}


def typing_into(widget: QWidget | None) -> bool:
    """Whether keys now go into a text field (where they are text, not commands)."""
    if isinstance(widget, QLineEdit | QAbstractSpinBox):
        return True
    if isinstance(widget, QTextEdit | QPlainTextEdit):
        return not widget.isReadOnly()
    return isinstance(widget, QComboBox) and widget.isEditable()


class InputFilter(QObject):
    def __init__(self, window: QWidget, active: Callable[[], bool],
                 actions: dict[str, Callable[[], None]], space: Callable[[bool], None],
                 activity: Callable[[], None]) -> None:
        super().__init__(window)
        self._window = window
        self._active = active
        self._actions = actions
        self._space = space
        self._activity = activity

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind == QEvent.Type.MouseMove:
            if isinstance(watched, QWidget) and watched.window() is self._window:
                self._activity()
            return False
        if kind not in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            return False
        if not isinstance(watched, QWidget) or watched.window() is not self._window:
            return False
        if not self._active() or not isinstance(event, QKeyEvent):
            return False
        key = event.key()
        if key in (Qt.Key.Key_Tab, Qt.Key.Key_Backtab):
            self._activity()
            return False
        focus = QApplication.focusWidget()
        if typing_into(focus) or typing_into(watched):  # the key goes into a text field
            return False
        modifiers = event.modifiers() & ~(Qt.KeyboardModifier.ShiftModifier
                                          | Qt.KeyboardModifier.KeypadModifier)
        if modifiers != Qt.KeyboardModifier.NoModifier:
            return False
        if key == Qt.Key.Key_Space and not isinstance(focus, QAbstractButton):
            if not event.isAutoRepeat():
                self._space(kind == QEvent.Type.KeyPress)
            return True
        name = _KEYS.get(Qt.Key(key))
        if name is None or name not in self._actions:
            return False
        if kind == QEvent.Type.KeyPress and not event.isAutoRepeat():
            self._actions[name]()
        return True


class ShortcutHelp(QDialog):
    """The list `?` opens; not modal, so the meeting goes on behind it."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("shortcut_help")
        self.setWindowTitle("Keyboard shortcuts")
        table = QTableWidget(len(SHORTCUTS), 2, self)
        table.setHorizontalHeaderLabels(["Key", "What it does"])
        table.verticalHeader().hide()
        table.horizontalHeader().setStretchLastSection(True)
        for row, (key, what) in enumerate(SHORTCUTS):
            table.setItem(row, 0, QTableWidgetItem(key))
            table.setItem(row, 1, QTableWidgetItem(what))
        table.resizeColumnsToContents()
        layout = QVBoxLayout(self)
        layout.addWidget(table)
        self.table = table
        self.resize(440, 420)
