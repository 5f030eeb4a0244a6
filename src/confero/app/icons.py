"""The app's icons: small SVGs drawn for confero, rendered with QtSvg.

They live in this module (nothing is fetched at run time) and are drawn with a single
colour placeholder, so the same shape serves the normal, the off (white on red) and the
disabled state.
"""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

_HEAD = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' "
         "stroke='COLOUR' stroke-width='2' stroke-linecap='round' stroke-linejoin='round'>")
_SLASH = "<line x1='3' y1='3' x2='21' y2='21'/>"

_SHAPES: dict[str, str] = {
    "mic": "<rect x='9' y='2' width='6' height='12' rx='3'/>"
           "<path d='M5 11a7 7 0 0 0 14 0'/><line x1='12' y1='18' x2='12' y2='22'/>",
    "camera": "<rect x='2' y='6' width='14' height='12' rx='2'/>"
              "<path d='M16 10l6-3v10l-6-3z'/>",
    "share": "<rect x='2' y='3' width='20' height='14' rx='2'/>"
             "<path d='M12 13V7M9 10l3-3 3 3'/><line x1='8' y1='21' x2='16' y2='21'/>",
    "hand": "<path d='M7 11V5a1.5 1.5 0 0 1 3 0v5M10 10V3.5a1.5 1.5 0 0 1 3 0V10'/>"
            "<path d='M13 10V5a1.5 1.5 0 0 1 3 0v6M16 9a1.5 1.5 0 0 1 3 0v5a8 8 0 0 1-8 8"
            "h-1a6 6 0 0 1-5-3l-2.5-4a1.5 1.5 0 0 1 2.5-1.5L7 15'/>",
    "chat": "<path d='M4 4h16a1 1 0 0 1 1 1v11a1 1 0 0 1-1 1H9l-5 4V5a1 1 0 0 1 1-1z'/>",
    "people": "<circle cx='9' cy='8' r='3.5'/><path d='M2 20a7 7 0 0 1 14 0'/>"
              "<circle cx='17' cy='9' r='2.5'/><path d='M17 14a5 5 0 0 1 5 5'/>",
    "grid": "<rect x='3' y='3' width='7' height='7' rx='1'/>"
            "<rect x='14' y='3' width='7' height='7' rx='1'/>"
            "<rect x='3' y='14' width='7' height='7' rx='1'/>"
            "<rect x='14' y='14' width='7' height='7' rx='1'/>",
    "speaker": "<rect x='3' y='3' width='18' height='12' rx='1'/>"
               "<rect x='3' y='18' width='5' height='3'/><rect x='9.5' y='18' width='5' "
               "height='3'/><rect x='16' y='18' width='5' height='3'/>",
    "more": "<circle cx='5' cy='12' r='1.2'/><circle cx='12' cy='12' r='1.2'/>"
            "<circle cx='19' cy='12' r='1.2'/>",
    "leave": "<path d='M3 14c5-5 13-5 18 0l-2.5 2.5-3-1.5v-3c-2.5-1-5-1-7.5 0v3l-3 1.5z'/>",
    "pin": "<path d='M9 3h6l-1 6 4 4H6l4-4zM12 13v8'/>",
    "copy": "<rect x='8' y='8' width='13' height='13' rx='2'/>"
            "<path d='M16 8V5a2 2 0 0 0-2-2H5a2 2 0 0 0-2 2v9a2 2 0 0 0 2 2h3'/>",
    "record": "<circle cx='12' cy='12' r='8'/><circle cx='12' cy='12' r='3.5' fill='COLOUR'/>",
    "lock": "<rect x='4' y='11' width='16' height='10' rx='2'/><path d='M8 11V7a4 4 0 0 1 8 0v4'/>",
    "fullscreen": "<path d='M3 8V3h5M21 8V3h-5M3 16v5h5M21 16v5h-5'/>",
}
NAMES = tuple(_SHAPES)


def svg(name: str, colour: str = "#e8eaed", slashed: bool = False) -> bytes:
    body = _SHAPES[name] + (_SLASH if slashed else "")
    return (_HEAD + body + "</svg>").replace("COLOUR", colour).encode()


@lru_cache(maxsize=128)
def pixmap(name: str, colour: str = "#e8eaed", slashed: bool = False,
           size: int = 24) -> QPixmap:
    renderer = QSvgRenderer(QByteArray(svg(name, colour, slashed)))
    image = QPixmap(size * 2, size * 2)  # drawn at twice the size: sharp on HiDPI
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    renderer.render(painter, QRectF(0, 0, size * 2, size * 2))
    painter.end()
    image.setDevicePixelRatio(2.0)
    return image


def icon(name: str, colour: str = "#e8eaed", slashed: bool = False) -> QIcon:
    return QIcon(pixmap(name, colour, slashed))
