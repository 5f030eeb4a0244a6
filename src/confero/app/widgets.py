"""A small live graph for the statistics panel."""

from __future__ import annotations

import itertools
from collections import deque

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QWidget

from confero.app.theme import COLOURS


class LiveGraph(QWidget):
    """A small line graph of the last minute of one value per series."""

    def __init__(self, title: str, unit: str, points: int = 60) -> None:
        super().__init__()
        self.title, self.unit = title, unit
        self._series: dict[str, deque[float]] = {}
        self._points = points
        self.setMinimumHeight(110)

    def add(self, series: str, value: float) -> None:
        self._series.setdefault(series, deque(maxlen=self._points)).append(value)
        self.update()

    def keep_only(self, names: set[str]) -> None:
        for name in set(self._series) - names:
            del self._series[name]

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(COLOURS["base"]))
        area = QRectF(self.rect()).adjusted(8, 20, -8, -8)
        peak = max((max(v) for v in self._series.values() if v), default=1.0) or 1.0
        painter.setPen(QColor(COLOURS["muted_text"]))
        painter.drawText(QRectF(8, 2, self.width() - 16, 16), Qt.AlignmentFlag.AlignLeft,
                         f"{self.title} (max {peak:.0f} {self.unit})")
        painter.setPen(QPen(QColor(COLOURS["raised"]), 1))
        painter.drawRect(area)
        for index, (name, values) in enumerate(sorted(self._series.items())):
            colour = QColor.fromHsv((index * 67) % 360, 200, 200)
            painter.setPen(QPen(colour, 1.8))
            step = area.width() / max(1, self._points - 1)
            start = area.right() - step * (len(values) - 1)
            points = [QPointF(start + i * step, area.bottom() - area.height() * v / peak)
                      for i, v in enumerate(values)]
            for a, b in itertools.pairwise(points):
                painter.drawLine(a, b)
            painter.drawText(QRectF(area.left() + 4, area.top() + 2 + index * 14, 200, 14),
                             Qt.AlignmentFlag.AlignLeft, name)
        painter.end()
