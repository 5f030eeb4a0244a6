"""VP8 over PyAV, the synthetic camera, and the machine-readable frame stamp.

The synthetic camera paints each participant in its own colours with their initials and
a moving dot (so the encoder has motion to code), and a stripe of black/white blocks at
the top that carries the capture time (64 bits, microseconds since the Unix epoch) and
an identity (CRC-32 of the display name). A receiver reads the stripe back from the
*decoded* frame: proof of whose video it shows and how old it is, through the real codec.
"""

from __future__ import annotations

import zlib
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import numpy.typing as npt

from confero.media.glyphs import render_text
from confero.protocol.profile import VIDEO_CLOCK

if TYPE_CHECKING:
    from confero.media.vpx import CfgLayout, VideoEncoder

STAMP_BITS = 96  # 64 bits of capture time + 32 bits of identity
_HIGH, _LOW = 235, 16

Plane = npt.NDArray[np.uint8]


def identity_code(name: str) -> int:
    return zlib.crc32(name.encode())


def _block_size(width: int) -> int:
    return max(8, (width // 40) & ~1)


def stamp_height(width: int) -> int:
    block = _block_size(width)
    per_row = width // block
    return block * -(-STAMP_BITS // per_row)


def write_stamp(luma: Plane, capture_us: int, identity: int) -> None:
    """Paint the stripe into a Y plane (in place)."""
    width = luma.shape[1]
    block = _block_size(width)
    per_row = width // block
    value = (capture_us & ((1 << 64) - 1)) << 32 | (identity & 0xFFFFFFFF)
    for bit in range(STAMP_BITS):
        row, col = divmod(bit, per_row)
        on = (value >> (STAMP_BITS - 1 - bit)) & 1
        luma[row * block : (row + 1) * block, col * block : (col + 1) * block] = (
            _HIGH if on else _LOW
        )


def read_stamp(luma: Plane) -> tuple[int, int]:
    """(capture time in microseconds, identity) from a decoded Y plane."""
    value, _ = _read_bits(luma)
    return value >> 32, value & 0xFFFFFFFF


def _read_bits(luma: Plane) -> tuple[int, float]:
    """The stripe's bits, and how clearly they read (the blocks' mean distance from mid
    grey: ~100 for a stripe read in its own layout, far less in another one)."""
    width = luma.shape[1]
    block = _block_size(width)
    per_row = width // block
    q = block // 4
    value = 0
    margin = 0.0
    for bit in range(STAMP_BITS):
        row, col = divmod(bit, per_row)
        y0, x0 = row * block + q, col * block + q
        level = float(luma[y0 : y0 + 2 * q, x0 : x0 + 2 * q].mean())
        value = (value << 1) | int(level > 128)
        margin += abs(level - 128)
    return value, margin / STAMP_BITS


def read_stamp_any(luma: Plane) -> tuple[int, int]:
    """:func:`read_stamp` of a picture that may be a camera's half-size copy (simulcast,
    issue 9): the stripe's blocks are never painted under 8 pixels, so a copy of a camera
    under 640 wide holds a stripe laid out for twice its width. Under 320 wide, a stripe
    that does not read clearly in its own layout (blocks ~15 from mid grey on average,
    against ~100 in the right one) is read in the other."""
    value, margin = _read_bits(luma)
    if luma.shape[1] < 320 and margin < 60:
        doubled, doubled_margin = _read_bits(luma.repeat(2, axis=0).repeat(2, axis=1))
        if doubled_margin > margin:
            value = doubled
    return value >> 32, value & 0xFFFFFFFF


def _initials(name: str) -> str:
    parts = [p for p in name.replace("_", " ").replace("-", " ").split() if p]
    if not parts:
        return "?"
    return (parts[0][0] + parts[-1][0]) if len(parts) > 1 else parts[0][:2]


class SyntheticCamera:
    """A pleasant test picture: a soft gradient in the participant's colours, their
    initials in a disc, the name below, a dot circling the disc, and the stamp strip.

    A fine grain scrolls over the picture every frame, so the encoder spends about what a
    real camera costs it (several packets per frame at 640x480) instead of coding a flat
    picture in one small packet; its amplitude is small, so the picture stays soft. Each
    frame is slices and copies of planes computed once: cheap for the bots.
    """

    def __init__(self, name: str, width: int = 640, height: int = 480) -> None:
        if width % 2 or height % 2:
            raise ValueError("width and height must be even")
        self.width, self.height = width, height
        self.identity = identity_code(name)
        hue = self.identity
        self._y = 70 + hue % 60
        self._count = 0
        rng = np.random.default_rng(hue)
        w, h = width, height
        rows = np.linspace(1.0, -1.0, h, dtype=np.float32)[:, None]
        gradient = self._y + 28 * rows  # lighter at the top, darker at the bottom
        grain = rng.integers(-6, 7, (h // 4 + 1, w // 2 + 1), dtype=np.int16)
        grain = np.repeat(np.repeat(grain, 4, axis=0), 4, axis=1)[:h, : 2 * w]
        self._wide = np.clip(gradient + grain, 0, 255).astype(np.uint8)  # (h, 2w)
        # the disc with the initials, and the name, painted once over a plain gradient
        plain = np.broadcast_to(gradient, (h, w)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        top = stamp_height(w)
        self._centre = (top + (h - top) * 0.42, w / 2)
        self._radius = min(w, h - top) * 0.24
        distance = np.hypot(yy - self._centre[0], xx - self._centre[1])
        disc = np.clip((self._radius - distance) / 3.0, 0.0, 1.0)  # anti-aliased edge
        picture = plain + disc * 70
        letters = render_text(_initials(name), max(2, int(self._radius / 8)))
        self._stamp_mask(picture, letters, self._centre, 250)
        scale = max(2, min(w // (6 * max(8, len(name)) + 6), h // 96))
        label = render_text(name[:24], scale)[:, : w - 2 * scale]
        below = self._centre[0] + self._radius + 6 * scale
        self._stamp_mask(picture, label, (min(below, h - label.shape[0]), w / 2), 235)
        self._fixed = np.clip(picture, 0, 255).astype(np.uint8)
        band = slice(int(self._centre[0] - self._radius - 24),
                     int(min(h, below + label.shape[0] + 8)))
        self._fixed_rows = band  # rows with the disc and the name: not scrolled
        # chroma: the participant's hue, drifting gently across the picture
        u0, v0 = 96 + (hue >> 8) % 64, 96 + (hue >> 16) % 64
        ramp = np.linspace(-14, 14, w // 2, dtype=np.float32)[None, :]
        self._u = np.clip(u0 + ramp + np.zeros((h // 2, 1)), 0, 255).astype(np.uint8)
        self._v = np.clip(v0 - ramp + np.zeros((h // 2, 1)), 0, 255).astype(np.uint8)
        dot = np.hypot(*np.mgrid[-8:9, -8:9].astype(np.float32))
        self._dot = np.clip((8 - dot) / 2, 0, 1) * 90

    @staticmethod
    def _stamp_mask(picture: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_],
                    centre: tuple[float, float], value: int) -> None:
        mh, mw = mask.shape
        top = int(max(0, min(picture.shape[0] - mh, centre[0] - mh / 2)))
        left = int(max(0, min(picture.shape[1] - mw, centre[1] - mw / 2)))
        picture[top : top + mh, left : left + mw][mask] = value

    def frame(self, capture_us: int) -> av.VideoFrame:
        w, h = self.width, self.height
        image = np.empty((h * 3 // 2, w), dtype=np.uint8)
        luma = image[:h]
        offset = (self._count * 4) % w
        luma[:] = self._wide[:, offset : offset + w]
        rows = self._fixed_rows
        luma[rows] = self._fixed[rows]
        angle = self._count * 0.08
        cy = int(self._centre[0] + (self._radius + 14) * np.sin(angle))
        cx = int(self._centre[1] + (self._radius + 14) * np.cos(angle))
        if 8 <= cy < h - 9 and 8 <= cx < w - 9:
            patch = luma[cy - 8 : cy + 9, cx - 8 : cx + 9]
            patch[:] = np.minimum(255, patch + self._dot).astype(np.uint8)
        write_stamp(luma, capture_us, self.identity)
        chroma = image[h:].reshape(-1)
        quarter = (w // 2) * (h // 2)
        chroma[:quarter] = self._u.reshape(-1)
        chroma[quarter:] = self._v.reshape(-1)
        self._count += 1
        return av.VideoFrame.from_ndarray(image, format="yuv420p")


class Vp8Encoder:
    """Realtime VP8: no lookahead, error resilient, keyframes only when asked (PLI)."""

    def __init__(self, width: int, height: int, fps: int = 30, bitrate: int = 1_200_000) -> None:
        self._codec: Any = av.CodecContext.create("libvpx", "w")
        self._codec.width = width
        self._codec.height = height
        self._codec.pix_fmt = "yuv420p"
        self._codec.time_base = Fraction(1, VIDEO_CLOCK)
        self._codec.framerate = Fraction(fps, 1)
        self._codec.bit_rate = bitrate
        self._codec.gop_size = 10 * fps  # a periodic keyframe as a last resort
        self._codec.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "error-resilient": "1",
            "auto-alt-ref": "0",
            "max-intra-rate": "300",
            "threads": "1",
        }
        self._codec.open()

    def encode(self, frame: av.VideoFrame, pts: int, keyframe: bool = False) -> list[bytes]:
        frame.pts = pts
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        return [bytes(packet) for packet in self._codec.encode(frame)]


class Vp8Decoder:
    def __init__(self) -> None:
        self._codec: Any = av.CodecContext.create("vp8", "r")
        self._codec.thread_count = 1
        self.errors = 0

    def decode(self, data: bytes) -> av.VideoFrame | None:
        """The decoded frame, or None when the data could not be decoded (ask for a PLI)."""
        try:
            frames = self._codec.decode(av.Packet(data))
        except (av.FFmpegError, ValueError):
            self.errors += 1
            return None
        return frames[-1] if frames else None


def luma_plane(frame: av.VideoFrame) -> Plane:
    """The Y plane of a decoded frame as a (height, width) array."""
    array = frame.to_ndarray(format="yuv420p")[: frame.height]
    return np.asarray(array, dtype=np.uint8)


def make_video_encoder(
    width: int,
    height: int,
    fps: int = 30,
    bitrate: int = 1_200_000,
    temporal_layers: int = 1,
    *,
    prefer_libvpx: bool = True,
    layout: CfgLayout | None = None,
) -> VideoEncoder:
    """A :class:`confero.media.vpx.VideoEncoder`: libvpx through ctypes (live bitrate
    changes, temporal layers) when its ABI checks out, else PyAV re-opened on each change
    (one layer only)."""
    from confero.media import vpx

    if prefer_libvpx:
        try:
            return vpx.VpxVp8Encoder(width, height, fps, bitrate, temporal_layers,
                                     layout=layout or vpx.LIBVPX_1_16)
        except vpx.VpxUnavailable:
            pass
    return vpx.ReopeningVp8Encoder(width, height, fps, bitrate)
