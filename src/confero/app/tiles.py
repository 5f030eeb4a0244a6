"""One participant's tile: picture or initials, name, mic/camera state, and badges.

Painted with QPainter (text drawn by the painter is never interpreted as markup). The
connection indicator, the raised hand and "Joining..." are drawn here too, so a tile's
state costs no extra widgets and the painting stays one pass per frame.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, QSize, QSizeF, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QImage,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from confero.app import icons
from confero.app.plain import tooltip
from confero.app.quality import ConnectionQuality
from confero.app.theme import COLOURS

_BACKGROUND = QColor(48, 49, 52)
_WINDOW = QColor(COLOURS["window"])
_SPEAKING = QColor(COLOURS["good"])
_OFF = QColor(COLOURS["off"])
_HAND = QColor(COLOURS["fair"])
#: what a tile says while we receive no video (More > "Receive no video")
VIDEO_HELD = "Video off to save bandwidth"
#: End-to-end encryption of one person's media, said in words on the tile.
E2EE_BADGES = {"verified": ("Verified", QColor(COLOURS["good"])),
               "not verified": ("Not verified", QColor(COLOURS["fair"])),
               "cannot decrypt": ("Cannot decrypt", QColor(COLOURS["poor"]))}
E2EE_WORDS = {"verified": "media verified", "not verified": "media not verified",
              "cannot decrypt": "cannot decrypt their media"}


def initials(name: str) -> str:
    name = name.removesuffix(" (you)")
    parts = [p for p in name.replace("_", " ").replace("-", " ").split() if p]
    if not parts:
        return "?"
    if len(parts) == 1:
        return parts[0][:2].upper()
    return (parts[0][0] + parts[-1][0]).upper()


def _colour_for(name: str) -> QColor:
    hue = sum(ord(c) * 31 for c in name) % 360
    return QColor.fromHsv(hue, 110, 150)


class VideoTile(QWidget):
    """Aspect kept, initials when the camera is off, a green frame while they talk; state is
    always said in words or shapes too (slashed icons, a hand, a text), never colour alone."""

    def __init__(self, participant_id: str, name: str, *, small: bool = False) -> None:
        super().__init__()
        self.participant_id = participant_id
        self.camera = False
        self.microphone = False
        self.speaking = False
        self.hand = False
        self.pinned = False
        self.shared_screen = False  # a shared screen's tile: no microphone or camera of its own
        self.status = ""  # "Joining...", "Reconnecting..."
        #: we asked the server for no video (More menu): say so rather than freeze
        self.video_held = False
        #: "" (not an E2EE meeting), "verified", "not verified" or "cannot decrypt"
        self.e2ee = ""
        self.quality: ConnectionQuality | None = None
        self.quality_level = "unknown"
        self.quality_shown = False
        self.image: QImage | None = None
        self.serial = -1
        self.painted_frames = 0
        #: the name strip, drawn once per (text, state, width) instead of on every picture
        self._label_cache: tuple[tuple[object, ...], QPixmap] | None = None
        #: the rounded corners, as a path to fill over the picture (clipping every
        #: picture to a rounded path cost more than the picture's copy)
        self._corners: tuple[QRectF, QPainterPath] | None = None
        self.on_double_click: Callable[[str], None] | None = None
        self._small = small
        self.name = ""
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(QSize(96, 72) if small else QSize(120, 90))
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.set_name(name)

    def set_name(self, name: str) -> None:
        self.name = name
        self._describe()

    def _describe(self) -> None:
        words = [self.name, "microphone on" if self.microphone else "muted",
                 "camera on" if self.camera else "camera off"]
        if self.shared_screen:
            words = [self.name, "shared screen"]
        if self.hand:
            words.append("hand raised")
        if self.pinned:
            words.append("pinned")
        if self.status:
            words.append(self.status)
        if self._held_shown():
            words.append(VIDEO_HELD.lower())
        if self.e2ee:
            words.append(E2EE_WORDS.get(self.e2ee, self.e2ee))
        self.setAccessibleName(", ".join(words))
        details = self.quality.details() if self.quality is not None else ""
        self.setToolTip(tooltip(self.name + (f"\n{details}" if details else "")))

    def set_image(self, image: QImage | None, serial: int) -> None:
        if self.video_held:
            return
        if serial != self.serial:
            self.image, self.serial = image, serial
            self.update()

    def set_state(self, *, camera: bool | None = None, microphone: bool | None = None,
                  speaking: bool | None = None, hand: bool | None = None,
                  pinned: bool | None = None, status: str | None = None) -> None:
        changed = False
        for attribute, value in (("camera", camera), ("microphone", microphone),
                                 ("speaking", speaking), ("hand", hand), ("pinned", pinned),
                                 ("status", status)):
            if value is not None and getattr(self, attribute) != value:
                setattr(self, attribute, value)
                changed = True
        if not self.camera and self.image is not None:
            self.image, self.serial = None, -1
            changed = True
        if changed:
            self._describe()
            self.update()

    def set_video_held(self, held: bool) -> None:
        """No video is being received (we asked for none): no stale picture, a text."""
        if held == self.video_held:
            return
        self.video_held = held
        if held:
            self.image, self.serial = None, -1
        self._describe()
        self.update()

    def _held_shown(self) -> bool:
        return self.video_held and (self.camera or self.shared_screen)

    def set_e2ee(self, state: str) -> None:
        """A frame that cannot be decrypted is never shown: the tile says so instead."""
        if state != self.e2ee:
            self.e2ee = state
            self._describe()
            self.update()

    def set_quality(self, quality: ConnectionQuality, now: float) -> None:
        level, shown = quality.level(now), quality.visible(now)
        self.quality = quality
        if (level, shown) != (self.quality_level, self.quality_shown):
            self.quality_level, self.quality_shown = level, shown
            self.update()
        self._describe()

    def shows_video(self) -> bool:
        return self.image is not None and self.e2ee != "cannot decrypt"

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self.on_double_click is not None:
            self.on_double_click(self.participant_id)

    def picture_size(self) -> tuple[int, int]:
        """The largest picture the tile shows, in device pixels: the decoder thread
        converts to this, so painting copies the picture instead of scaling it."""
        ratio = self.devicePixelRatioF()
        return (max(2, round((self.width() - 4) * ratio)),
                max(2, round((self.height() - 4) * ratio)))

    def _corner_path(self, rect: QRectF) -> QPainterPath:
        if self._corners is None or self._corners[0] != rect:
            outside = QPainterPath()
            outside.addRect(rect)
            rounded = QPainterPath()
            rounded.addRoundedRect(rect, 8, 8)
            self._corners = (QRectF(rect), outside.subtracted(rounded))
        return self._corners[1]

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(2, 2, -2, -2)
        if self.image is not None and self.e2ee != "cannot decrypt":
            ratio = self.devicePixelRatioF()
            natural = QSizeF(self.image.width() / ratio, self.image.height() / ratio)
            shown = natural.scaled(rect.size(), Qt.AspectRatioMode.KeepAspectRatio)
            # A picture converted for this tile's size is copied. Others are resampled:
            # the tile just changed size, or the picture is smaller than the tile (the
            # low-resolution copy, a small camera, a picture from before the tile's size
            # was known).
            exact = abs(shown.width() - natural.width()) < 1.5 and abs(
                shown.height() - natural.height()) < 1.5
            if exact:
                shown = natural
            else:
                painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            target = QRectF(QPointF(0, 0), shown)
            target.moveCenter(rect.center())
            if target != rect:
                painter.fillRect(rect, _BACKGROUND)  # the letterbox
            # on whole pixels, a picture the size of its place is copied, not resampled
            painter.drawImage(target.toRect() if exact else target, self.image)
            self.painted_frames += 1
            parent = self.parentWidget()
            behind = parent.palette().window() if parent is not None else _WINDOW
            painter.fillPath(self._corner_path(rect), behind)
        else:
            path = QPainterPath()
            path.addRoundedRect(rect, 8, 8)
            painter.fillPath(path, _BACKGROUND)
            self._paint_initials(painter, rect)
        self._paint_label(painter, rect)
        if self.hand:
            self._paint_badge(painter, rect, "✋ hand", _HAND)
        if self.e2ee in E2EE_BADGES:
            text, colour = E2EE_BADGES[self.e2ee]
            self._paint_badge(painter, rect, text, colour, top=36 if self.hand else 8,
                              lock=self.e2ee == "verified")
        if self.e2ee == "cannot decrypt":
            self._paint_status(painter, rect, "Cannot decrypt")
        elif self.status:
            self._paint_status(painter, rect, self.status)
        elif self._held_shown():
            self._paint_status(painter, rect, VIDEO_HELD)
        if self.quality_shown:
            self._paint_quality(painter, rect)
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
        ratio = self.devicePixelRatioF()
        state = (self.name, self.pinned, self.shared_screen, self.microphone, self.camera,
                 int(rect.width()), self._small, ratio, self.font().key())
        if self._label_cache is None or self._label_cache[0] != state:
            self._label_cache = (state, self._draw_label(int(rect.width()), ratio))
        painter.drawPixmap(QPointF(rect.left() + 6, rect.bottom() - 26), self._label_cache[1])

    def _draw_label(self, room_width: int, ratio: float) -> QPixmap:
        """The name strip (mic and camera state, then the name) on a transparent pixmap."""
        font = QFont(self.font())
        font.setPixelSize(11 if self._small else 13)
        metrics = QFontMetrics(font)
        room = room_width - 70
        name = ("📌 " if self.pinned else "") + self.name
        label = metrics.elidedText(name, Qt.TextElideMode.ElideRight, room)
        width = metrics.horizontalAdvance(label) + 56
        pixmap = QPixmap(max(1, round(width * ratio)), round(20 * ratio))
        pixmap.setDevicePixelRatio(ratio)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setFont(font)
        box = QRectF(0, 0, width, 20)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(box, 4, 4)
        if not self.shared_screen:
            self._paint_mic(painter, QPointF(box.left() + 12, box.center().y()),
                            self.microphone)
            self._paint_camera(painter, QPointF(box.left() + 30, box.center().y()),
                               self.camera)
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(box.adjusted(44, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter, label)
        painter.end()
        return pixmap

    def _paint_badge(self, painter: QPainter, rect: QRectF, text: str, colour: QColor,
                     top: float = 8, lock: bool = False) -> None:
        font = QFont(self.font())
        font.setPixelSize(12)
        font.setBold(True)
        painter.setFont(font)
        room = 16 if lock else 0
        width = painter.fontMetrics().horizontalAdvance(text) + 14 + room
        box = QRectF(rect.left() + 8, rect.top() + top, width, 22)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawRoundedRect(box, 11, 11)
        if lock:
            painter.drawPixmap(QPointF(box.left() + 7, box.top() + 4),
                               icons.pixmap("lock", "#202124", size=14))
        painter.setPen(QColor(32, 33, 36))
        painter.drawText(box.adjusted(room, 0, 0, 0), Qt.AlignmentFlag.AlignCenter, text)

    def _paint_status(self, painter: QPainter, rect: QRectF, text: str) -> None:
        font = QFont(self.font())
        font.setPixelSize(13)
        painter.setFont(font)
        box = QRectF(rect.left(), rect.center().y() + min(rect.height() * 0.28, 60),
                     rect.width(), 20)
        painter.setPen(QColor(COLOURS["text"]))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _paint_quality(self, painter: QPainter, rect: QRectF) -> None:
        """Four bars, filled up to the score: the count of bars says it without colour."""
        score = self.quality.score if self.quality is not None else None
        filled = 0 if score is None else 1 + int(score >= 30) + int(score >= 70) + int(
            score >= 100)
        colour = QColor(COLOURS[self.quality_level])
        base = QPointF(rect.right() - 36, rect.top() + 26)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 150))
        painter.drawRoundedRect(QRectF(base.x() - 6, base.y() - 20, 36, 26), 4, 4)
        for index in range(4):
            height = 5 + index * 4
            painter.setBrush(colour if index < filled else QColor(255, 255, 255, 60))
            painter.drawRect(QRectF(base.x() + index * 6, base.y() - height, 4, height))

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
