"""Short notices over the meeting (joined, left, hand raised) and the chimes that go with
them. Notices are not chat lines: the chat log stays what people wrote."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import numpy.typing as npt
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QVBoxLayout, QWidget

from confero.app.plain import clip, plain_label

SHOW_FOR_MS = 4000
MAX_SHOWN = 3
QUIET_ABOVE = 12  # people: no chimes in a large meeting


class Toasts(QWidget):
    """A column of up to three notices, centred under the header."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("toasts")
        self.history: deque[str] = deque(maxlen=100)  # what was shown, newest last
        self._column = QVBoxLayout(self)
        self._column.setContentsMargins(0, 0, 0, 0)
        self._column.setSpacing(6)
        self.hide()

    def show_text(self, text: str) -> None:
        text = clip(text, 160)
        self.history.append(text)
        card = QFrame()
        card.setObjectName("toast")
        row = QHBoxLayout(card)
        row.setContentsMargins(12, 8, 12, 8)
        row.addWidget(plain_label(text, "toast_text"))
        self._column.addWidget(card)
        while self._column.count() > MAX_SHOWN:
            item = self._column.takeAt(0)
            old = item.widget() if item is not None else None
            if old is not None:
                old.deleteLater()
        QTimer.singleShot(SHOW_FOR_MS, card, card.deleteLater)
        QTimer.singleShot(SHOW_FOR_MS + 50, self, self._fit)
        self._fit()

    def texts(self) -> list[str]:
        return list(self.history)

    def _fit(self) -> None:
        parent = self.parentWidget()
        items = [self._column.itemAt(i) for i in range(self._column.count())]
        if not any(i is not None and i.widget() is not None for i in items) or parent is None:
            self.hide()
            return
        self._column.activate()
        self.resize(self._column.sizeHint())
        self.move((parent.width() - self.width()) // 2, 56)
        self.show()
        self.raise_()


def _chime_samples(rising: bool) -> npt.NDArray[np.float32]:
    """Two soft notes, rising for "came", falling for "went"."""
    rate = 48_000
    notes = (660.0, 880.0) if rising else (880.0, 660.0)
    parts = []
    for frequency in notes:
        t = np.arange(int(rate * 0.12)) / rate
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * 18)
        parts.append(0.25 * envelope * np.sin(2 * np.pi * frequency * t))
    return np.concatenate(parts).astype(np.float32)


class Chimes:
    """Plays a chime on the default output, off the GUI thread; can be turned off.

    ``played`` counts what was asked to play (whether a device took it or not), so tests
    see the decision without needing a sound card."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.played: list[str] = []

    def people_changed(self, kind: str, *, mine: bool, reconnect: bool, people: int) -> None:
        if not self.enabled or mine or reconnect or people > QUIET_ABOVE:
            return
        self.played.append(kind)
        threading.Thread(target=self._play, args=(kind != "left",), daemon=True).start()

    def test(self, device: str | None) -> None:
        """The test sound of the Mic menu: plays even with chimes turned off."""
        self.played.append("test")
        threading.Thread(target=self._play, args=(True, device), daemon=True).start()

    @staticmethod
    def _play(rising: bool, device: str | None = None) -> None:
        try:
            import sounddevice

            sounddevice.play(_chime_samples(rising), 48_000, device=device or None,
                             blocking=True)
        except Exception:  # no device, no server: a chime is not worth an error
            return
