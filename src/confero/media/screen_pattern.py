"""A synthetic shared screen: a slide, for bots and tests of screen share (issue 12).

It must look unlike the synthetic camera to a machine reading the *decoded* picture, so a
test can tell the two streams of one person apart through the real codec: a light page
(the camera is a mid-grey gradient), dark title bar and text lines, a slide number that
changes every two seconds (the encoder gets a little to code, as with a real screen), and
the same stamp strip as the camera, whose identity is that of ``"<name> (screen)"``.
"""

from __future__ import annotations

import av
import numpy as np

from confero.media.glyphs import render_text
from confero.media.video import Plane, identity_code, stamp_height, write_stamp

#: Mean luma of a page below the stamp strip: the slide is well above, the camera below.
SLIDE_LUMA_THRESHOLD = 170
_PAGE, _INK, _BAR = 232, 40, 70


def screen_identity(name: str) -> str:
    """The name a shared screen's stamp and its tile carry: the sender's, marked."""
    return f"{name} (screen)"


def looks_like_slide(luma: Plane) -> bool:
    """True when a decoded Y plane is mostly light page, as :class:`SyntheticScreen`
    paints it (the synthetic camera's picture is far darker)."""
    top = stamp_height(luma.shape[1])
    return float(luma[top:].mean()) > SLIDE_LUMA_THRESHOLD


class SyntheticScreen:
    """A slide deck: title bar, bullet lines, a page number; at ``fps`` it advances a
    page every ``page_seconds``."""

    def __init__(self, name: str, width: int = 1280, height: int = 720, *, fps: int = 15,
                 page_seconds: float = 2.0) -> None:
        if width % 2 or height % 2:
            raise ValueError("width and height must be even")
        self.width, self.height = width, height
        self.identity = identity_code(screen_identity(name))
        self._frames_per_page = max(1, round(fps * page_seconds))
        self._count = 0
        self._pages: dict[int, Plane] = {}
        self._name = name

    def _page(self, number: int) -> Plane:
        """The Y plane of page ``number`` (a few are cached: they repeat)."""
        cached = self._pages.get(number % 8)
        if cached is not None:
            return cached
        w, h = self.width, self.height
        luma = np.full((h, w), _PAGE, dtype=np.uint8)
        top = stamp_height(w)
        bar = max(24, h // 8)
        luma[top: top + bar] = _BAR
        scale = max(2, bar // 12)
        title = render_text(f"{self._name[:16]} slide {number % 8 + 1}", scale)
        title = title[:, : w - 4 * scale]
        y0, x0 = top + (bar - title.shape[0]) // 2, 2 * scale
        luma[y0: y0 + title.shape[0], x0: x0 + title.shape[1]][title] = _PAGE
        line_h = max(6, h // 40)
        gap = line_h * 3
        y = top + bar + gap
        rng = np.random.default_rng(number % 8)
        while y + line_h < h - gap:
            length = int(w * rng.uniform(0.3, 0.8))
            luma[y: y + line_h, w // 12: w // 12 + line_h] = _INK  # the bullet
            luma[y: y + line_h // 2, w // 12 + 2 * line_h: w // 12 + length] = _INK
            y += gap
        self._pages[number % 8] = luma
        return luma

    def frame(self, capture_us: int) -> av.VideoFrame:
        w, h = self.width, self.height
        image = np.empty((h * 3 // 2, w), dtype=np.uint8)
        image[:h] = self._page(self._count // self._frames_per_page)
        write_stamp(image[:h], capture_us, self.identity)
        image[h:] = 128  # no colour: a grey page
        self._count += 1
        return av.VideoFrame.from_ndarray(image, format="yuv420p")
