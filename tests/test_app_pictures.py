"""Pictures converted to their tile's size on the decoder thread, and the tile's painting
of them (issue 12: the app's CPU per painted frame)."""

from __future__ import annotations

import gc
import os

import av
import numpy as np
import pytest
from PySide6.QtGui import QColor, QImage
from pytestqt.qtbot import QtBot

from confero.app.pictures import (
    DEFAULT_MAX_WIDTH,
    LARGEST_WIDTH,
    PictureSizes,
    fitted_size,
    frame_to_image,
)
from confero.app.theme import COLOURS
from confero.app.tiles import VideoTile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

RED, BLUE = (230, 30, 40), (20, 40, 220)


def halves(width: int = 640, height: int = 480) -> av.VideoFrame:
    """A decoded-like YUV 4:2:0 frame: red on the left half, blue on the right."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, : width // 2] = RED
    rgb[:, width // 2:] = BLUE
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def close_to(colour: QColor, rgb: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance
               for a, b in zip((colour.red(), colour.green(), colour.blue()), rgb,
                                   strict=True))


@pytest.mark.parametrize(("size", "box", "expected"), [
    ((640, 480), (348, 260), (346, 260)),  # height-bound, aspect kept, even
    ((640, 480), (400, 600), (400, 300)),  # width-bound
    ((640, 480), (1280, 960), (640, 480)),  # never scaled up: painting does that
    ((320, 240), (0, 0), (320, 240)),  # no box: as it is
    ((3840, 2160), (0, 0), (LARGEST_WIDTH, 1080)),  # nor ever wider than the cap
    ((640, 480), (1, 1), (2, 2)),  # a collapsed tile still gets a picture
    ((161, 121), (0, 0), (161, 121)),  # not scaled: as it is, odd or not
])
def test_fitted_size(size: tuple[int, int], box: tuple[int, int],
                     expected: tuple[int, int]) -> None:
    assert fitted_size(*size, *box) == expected


def test_a_stream_is_converted_to_its_tiles_size_once_it_is_bound() -> None:
    sizes = PictureSizes()
    # unknown stream: the default cap only
    assert sizes.size_for(7, 1280, 720) == (DEFAULT_MAX_WIDTH, 360)
    sizes.show_at("p1", 400, 300)
    assert sizes.size_for(7, 1280, 720) == (DEFAULT_MAX_WIDTH, 360)  # not bound yet
    sizes.bind(7, "p1")
    sizes.bind(8, "p1")  # the same person's low-resolution copy
    assert sizes.size_for(7, 1280, 720) == (400, 224)
    assert sizes.size_for(8, 320, 240) == (320, 240)  # the copy is not scaled up
    image = sizes.convert(7, halves(1280, 720))
    assert (image.width(), image.height()) == (400, 224)
    sizes.forget("p1")  # they left: nothing of theirs is kept
    assert sizes.size_for(7, 1280, 720) == (DEFAULT_MAX_WIDTH, 360)
    assert sizes.size_for(8, 320, 240) == (320, 240)


@pytest.mark.parametrize("size", [(640, 480), (347, 260), (161, 121)])
def test_conversion_keeps_colours_and_places(size: tuple[int, int]) -> None:
    image = frame_to_image(halves(), *size)
    gc.collect()  # the frame and the scaler's output are gone: the image keeps its pixels
    width, height = size
    assert (image.width(), image.height()) == size
    assert image.format() == QImage.Format.Format_RGB32
    assert close_to(image.pixelColor(width // 4, height // 2), RED)
    assert close_to(image.pixelColor(3 * width // 4, height // 2), BLUE)


def solid(width: int, height: int, rgb: tuple[int, int, int]) -> QImage:
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(QColor(*rgb))
    return image


def test_tile_copies_a_fitted_picture_and_keeps_rounded_corners(qtbot: QtBot) -> None:
    tile = VideoTile("p1", "Ada")
    qtbot.addWidget(tile)
    tile.resize(404, 304)
    tile.set_state(camera=True, microphone=True)
    assert tile.picture_size() == (400, 300)
    tile.set_image(solid(400, 300, RED), 1)
    shot = tile.grab().toImage()
    assert close_to(shot.pixelColor(200, 150), RED, 2)
    assert close_to(shot.pixelColor(3, 150), RED, 2)  # the picture reaches the edge
    # the corner outside the rounding is the window's colour, not the picture
    corner = shot.pixelColor(2, 2)
    assert not close_to(corner, RED, 60)
    assert close_to(corner, QColor(COLOURS["window"]).getRgb()[:3], 40)


def test_tile_scales_up_a_smaller_picture_to_fill_it(qtbot: QtBot) -> None:
    """The low-resolution copy (simulcast) or a picture from before the tile's size was
    known still fills the tile (a regression: it showed at its own size, centred)."""
    tile = VideoTile("p1", "Ada")
    qtbot.addWidget(tile)
    tile.resize(404, 304)
    tile.set_state(camera=True)
    tile.set_image(solid(160, 120, BLUE), 1)
    shot = tile.grab().toImage()
    assert close_to(shot.pixelColor(12, 150), BLUE, 2)
    assert close_to(shot.pixelColor(390, 150), BLUE, 2)


def test_tile_label_follows_the_microphone(qtbot: QtBot) -> None:
    """The name strip is drawn once and kept: a change of state must redraw it."""
    tile = VideoTile("p1", "Ada")
    qtbot.addWidget(tile)
    tile.resize(404, 304)
    tile.set_state(camera=True, microphone=True)
    tile.set_image(solid(400, 300, BLUE), 1)
    strip = (8, 278, 60, 20)  # where the microphone icon is drawn
    before = tile.grab().toImage().copy(*strip)
    tile.set_state(microphone=False)
    after = tile.grab().toImage().copy(*strip)
    assert before != after
    tile.set_state(microphone=True)
    assert tile.grab().toImage().copy(*strip) == before
