"""Widgets of the meeting window: video tiles, their grid, and a small live graph."""

from __future__ import annotations

import itertools
import math
from collections import deque

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGridLayout, QSizePolicy, QWidget

_BACKGROUND = QColor(32, 33, 36)
_SPEAKING = QColor(52, 199, 89)
_OFF = QColor(234, 67, 53)


def initials(name: str) -> str:
    parts = [p for p in name.replace("_", " ").replace("-", " ").split() if p]
    if not parts:
        return "?"
    if len(parts) == 1:
        return parts[0][:2].upper()
    return (parts[0][0] + parts[-1][0]).upper()


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` tiles: 1, 1x2, 2x2, 2x3, 3x3, ... 4x4."""
    if count <= 0:
        return 0, 0
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return rows, columns


def _colour_for(name: str) -> QColor:
    hue = sum(ord(c) * 31 for c in name) % 360
    return QColor.fromHsv(hue, 110, 150)


class VideoTile(QWidget):
    """One participant: the picture (aspect kept), or initials when the camera is off; the
    name with microphone and camera state; a green frame while they talk."""

    def __init__(self, participant_id: str, name: str, *, small: bool = False) -> None:
        super().__init__()
        self.participant_id = participant_id
        self.name = name
        self.camera = False
        self.microphone = False
        self.speaking = False
        self.image: QImage | None = None
        self.serial = -1
        self.painted_frames = 0
        self._small = small
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(QSize(120, 90) if small else QSize(160, 120))
        self.setAccessibleName(f"video of {name}")

    def set_image(self, image: QImage | None, serial: int) -> None:
        if serial != self.serial:
            self.image, self.serial = image, serial
            self.update()

    def set_state(self, *, camera: bool | None = None, microphone: bool | None = None,
                  speaking: bool | None = None) -> None:
        changed = False
        for attribute, value in (("camera", camera), ("microphone", microphone),
                                 ("speaking", speaking)):
            if value is not None and getattr(self, attribute) != value:
                setattr(self, attribute, value)
                changed = True
        if not self.camera and self.image is not None:
            self.image, self.serial = None, -1
            changed = True
        if changed:
            self.update()

    def shows_video(self) -> bool:
        return self.image is not None

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(2, 2, -2, -2)
        path = QPainterPath()
        path.addRoundedRect(rect, 8, 8)
        painter.fillPath(path, _BACKGROUND)
        painter.setClipPath(path)
        if self.image is not None:
            scaled = self.image.size().scaled(rect.size().toSize(),
                                              Qt.AspectRatioMode.KeepAspectRatio)
            target = QRectF(0, 0, scaled.width(), scaled.height())
            target.moveCenter(rect.center())
            painter.drawImage(target, self.image)
            self.painted_frames += 1
        else:
            self._paint_initials(painter, rect)
        painter.setClipping(False)
        self._paint_label(painter, rect)
        if self.speaking:
            painter.setPen(QPen(_SPEAKING, 4))
            painter.setBrush(Qt.BrushStyle.NoBrush)  # a frame, not a fill
            painter.drawRoundedRect(rect.adjusted(2, 2, -2, -2), 8, 8)
        painter.end()

    def _paint_initials(self, painter: QPainter, rect: QRectF) -> None:
        diameter = min(rect.width(), rect.height()) * 0.45
        circle = QRectF(0, 0, diameter, diameter)
        circle.moveCenter(rect.center())
        painter.setBrush(_colour_for(self.name))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.drawEllipse(circle)
        font = QFont(self.font())
        font.setPixelSize(max(10, int(diameter * 0.38)))
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(circle, Qt.AlignmentFlag.AlignCenter, initials(self.name))

    def _paint_label(self, painter: QPainter, rect: QRectF) -> None:
        font = QFont(self.font())
        font.setPixelSize(11 if self._small else 13)
        painter.setFont(font)
        room = int(rect.width()) - 70
        label = painter.fontMetrics().elidedText(self.name, Qt.TextElideMode.ElideRight, room)
        width = painter.fontMetrics().horizontalAdvance(label) + 56
        box = QRectF(rect.left() + 6, rect.bottom() - 26, width, 20)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(box, 4, 4)
        self._paint_mic(painter, QPointF(box.left() + 12, box.center().y()), self.microphone)
        self._paint_camera(painter, QPointF(box.left() + 30, box.center().y()), self.camera)
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(box.adjusted(44, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter, label)

    @staticmethod
    def _paint_mic(painter: QPainter, centre: QPointF, on: bool) -> None:
        colour = QColor(Qt.GlobalColor.white) if on else _OFF
        painter.setPen(QPen(colour, 1.6))
        painter.setBrush(colour if on else Qt.BrushStyle.NoBrush)
        painter.drawRoundedRect(QRectF(centre.x() - 2.5, centre.y() - 7, 5, 9), 2.5, 2.5)
        painter.drawArc(QRectF(centre.x() - 5, centre.y() - 4, 10, 9), 180 * 16, 180 * 16)
        painter.drawLine(QPointF(centre.x(), centre.y() + 5), QPointF(centre.x(), centre.y() + 7))
        if not on:
            painter.drawLine(QPointF(centre.x() - 6, centre.y() - 7),
                             QPointF(centre.x() + 6, centre.y() + 7))

    @staticmethod
    def _paint_camera(painter: QPainter, centre: QPointF, on: bool) -> None:
        colour = QColor(Qt.GlobalColor.white) if on else _OFF
        painter.setPen(QPen(colour, 1.6))
        painter.setBrush(colour if on else Qt.BrushStyle.NoBrush)
        painter.drawRoundedRect(QRectF(centre.x() - 7, centre.y() - 4, 10, 8), 1.5, 1.5)
        path = QPainterPath(QPointF(centre.x() + 3, centre.y()))
        path.lineTo(centre.x() + 7, centre.y() - 3.5)
        path.lineTo(centre.x() + 7, centre.y() + 3.5)
        path.closeSubpath()
        painter.drawPath(path)
        if not on:
            painter.drawLine(QPointF(centre.x() - 8, centre.y() - 6),
                             QPointF(centre.x() + 8, centre.y() + 6))


class VideoGrid(QWidget):
    """Lays out up to 16 tiles in the most square grid; the self-view floats on top."""

    MAX_TILES = 16

    def __init__(self) -> None:
        super().__init__()
        self._layout = QGridLayout(self)
        self._layout.setContentsMargins(6, 6, 6, 6)
        self._layout.setSpacing(6)
        self.tiles: dict[str, VideoTile] = {}
        self.self_view: VideoTile | None = None
        self.setMinimumSize(480, 320)

    def add(self, participant_id: str, name: str) -> VideoTile:
        tile = self.tiles.get(participant_id)
        if tile is None:
            tile = VideoTile(participant_id, name)
            self.tiles[participant_id] = tile
            self._relayout()
        return tile

    def remove(self, participant_id: str) -> None:
        tile = self.tiles.pop(participant_id, None)
        if tile is not None:
            tile.setParent(None)
            tile.deleteLater()
            self._relayout()

    def clear(self) -> None:
        for participant_id in list(self.tiles):
            self.remove(participant_id)

    def set_self_view(self, tile: VideoTile) -> None:
        self.self_view = tile
        tile.setParent(self)
        tile.raise_()
        self._place_self_view()

    def visible_tiles(self) -> list[VideoTile]:
        return [t for t in self.tiles.values() if t.isVisible()]

    def _relayout(self) -> None:
        while self._layout.count():
            self._layout.takeAt(0)
        shown = list(self.tiles.values())[: self.MAX_TILES]
        rows, columns = grid_shape(len(shown))
        for index, tile in enumerate(shown):
            self._layout.addWidget(tile, index // columns, index % columns)
            tile.show()
        for tile in list(self.tiles.values())[self.MAX_TILES :]:
            tile.hide()
        for row in range(4):
            self._layout.setRowStretch(row, 1 if row < rows else 0)
        for column in range(4):
            self._layout.setColumnStretch(column, 1 if column < columns else 0)
        if self.self_view is not None:
            self.self_view.raise_()

    def resizeEvent(self, event: object) -> None:
        self._place_self_view()

    def _place_self_view(self) -> None:
        tile = self.self_view
        if tile is None:
            return
        width = max(160, self.width() // 5)
        height = width * 3 // 4
        tile.setGeometry(self.width() - width - 12, self.height() - height - 12, width, height)
        tile.raise_()


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
        painter.fillRect(self.rect(), QColor(250, 250, 250))
        area = QRectF(self.rect()).adjusted(8, 20, -8, -8)
        peak = max((max(v) for v in self._series.values() if v), default=1.0) or 1.0
        painter.setPen(QColor(90, 90, 90))
        painter.drawText(QRectF(8, 2, self.width() - 16, 16), Qt.AlignmentFlag.AlignLeft,
                         f"{self.title} (max {peak:.0f} {self.unit})")
        painter.setPen(QPen(QColor(220, 220, 220), 1))
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
