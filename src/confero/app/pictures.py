"""Decoded frames into ``QImage``s the size their tile shows them, on the decoder thread.

Painting a 640x480 RGB888 picture into a 400-pixel tile made the GUI thread convert the
format and scale it on every paint (about 0.6 ms per picture, 9 tiles at 30 fps: 16 % of a
core), after the decoder thread had spent 0.45 ms making that RGB888 copy. Here the decoder
thread converts YUV straight to the tile's size in the raster engine's own 32-bit format
(libswscale: scaled in YUV, then converted, with scalers kept per size instead of rebuilt
per frame), so painting is a plain copy (0.04 ms). The GUI says how large each tile is
(:meth:`PictureSizes.show_at`); a stream is tied to its tile's key when its first picture
arrives (:meth:`PictureSizes.bind`), and until then it is converted at its own size up to
``default_max_width``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import av
from av.video.reformatter import VideoReformatter
from PySide6.QtGui import QImage

#: A picture nobody said the size of (its tile is not known yet) is scaled down to this
#: width before it crosses to the GUI.
DEFAULT_MAX_WIDTH = 640
#: Nor is any picture converted wider than this, whatever the tile (a shared screen on a
#: very large stage): the conversion's cost grows with the pixels.
LARGEST_WIDTH = 1920
#: Scalers kept per thread, one per (source size, target size): a resize makes new ones.
_SCALERS_KEPT = 32


def fitted_size(width: int, height: int, box_width: int, box_height: int,
                max_width: int = LARGEST_WIDTH) -> tuple[int, int]:
    """The picture's size scaled down (never up) to fit the box, aspect kept."""
    if width <= 0 or height <= 0:
        return max(1, width), max(1, height)
    scale = min(1.0, max_width / width)
    if box_width > 0 and box_height > 0:
        scale = min(scale, box_width / width, box_height / height)
    if scale >= 1.0:
        return width, height
    # even, and never past the box: YUV 4:2:0 is scaled before it is converted
    return (max(2, int(width * scale + 1e-6) // 2 * 2),
            max(2, int(height * scale + 1e-6) // 2 * 2))


class _Scalers(threading.local):
    def __init__(self) -> None:
        self.kept: OrderedDict[tuple[int, int, str, int, int],
                               tuple[VideoReformatter, VideoReformatter]] = OrderedDict()


_scalers = _Scalers()


def _scaler(key: tuple[int, int, str, int, int]) -> tuple[VideoReformatter, VideoReformatter]:
    kept = _scalers.kept
    pair = kept.get(key)
    if pair is None:
        pair = kept[key] = (VideoReformatter(), VideoReformatter())
        while len(kept) > _SCALERS_KEPT:
            kept.popitem(last=False)
    else:
        kept.move_to_end(key)
    return pair


def frame_to_image(frame: av.VideoFrame, width: int, height: int) -> QImage:
    """``frame`` as a ``width`` x ``height`` RGB32 image (what the raster engine paints by
    copying). The image keeps its pixels alive: it may outlive ``frame``."""
    scaler, converter = _scaler((frame.width, frame.height, frame.format.name, width, height))
    if (width, height) != (frame.width, frame.height):
        # Scaled in YUV first, then converted at the small size: libswscale's scaled
        # YUV-to-RGB path cost 4x as much (1.2 against 0.3 ms at 640x480 -> 347x260).
        frame = scaler.reformat(frame, width=width, height=height,
                                interpolation="BILINEAR", threads=1)
    # One thread: libswscale's own pool (one per core) cost more in hand-overs than it
    # saved on pictures this small, and the decoder thread has nothing else to do meanwhile.
    converted = converter.reformat(frame, format="bgra", threads=1)
    plane = converted.planes[0]
    # No copy: the QImage keeps the memoryview (so the new frame's buffer) alive, and the
    # converter writes each picture into a new frame. RGB32 is B, G, R, 0xff in memory.
    return QImage(memoryview(plane), width, height, plane.line_size,
                  QImage.Format.Format_RGB32)


class PictureSizes:
    """Which tile each stream is shown in, and how large each tile is (in device pixels).

    Written by the GUI thread (:meth:`show_at`) and the engine's thread (:meth:`bind`),
    read by the decoder thread (:meth:`convert`): single dictionary reads and writes,
    which are atomic, so no lock is taken per frame.
    """

    def __init__(self, default_max_width: int = DEFAULT_MAX_WIDTH) -> None:
        self.default_max_width = default_max_width
        self._keys: dict[int, str] = {}
        self._sizes: dict[str, tuple[int, int]] = {}

    def show_at(self, key: str, width: int, height: int) -> None:
        self._sizes[key] = (width, height)

    def bind(self, ssrc: int, key: str) -> None:
        self._keys[ssrc] = key

    def forget(self, key: str) -> None:
        self._sizes.pop(key, None)
        for ssrc in [s for s, k in list(self._keys.items()) if k == key]:
            self._keys.pop(ssrc, None)

    def size_for(self, ssrc: int, width: int, height: int) -> tuple[int, int]:
        key = self._keys.get(ssrc)
        box = self._sizes.get(key) if key is not None else None
        if box is None:
            return fitted_size(width, height, 0, 0, self.default_max_width)
        return fitted_size(width, height, box[0], box[1])

    def convert(self, ssrc: int, frame: av.VideoFrame) -> QImage:
        """On the decoder thread."""
        width, height = self.size_for(ssrc, frame.width, frame.height)
        return frame_to_image(frame, width, height)
