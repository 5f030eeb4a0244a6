"""VP8 over PyAV, the synthetic camera, and the machine-readable frame stamp.

The synthetic camera paints each participant in its own colour with a moving bar (so the
encoder has motion to code) and a stripe of black/white blocks at the top that carries the
capture time (64 bits, microseconds since the Unix epoch) and an identity (CRC-32 of the
display name). A receiver reads the stripe back from the *decoded* frame: proof of whose
video it shows and how old it is, through the real codec.
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
    width = luma.shape[1]
    block = _block_size(width)
    per_row = width // block
    q = block // 4
    value = 0
    for bit in range(STAMP_BITS):
        row, col = divmod(bit, per_row)
        y0, x0 = row * block + q, col * block + q
        centre = luma[y0 : y0 + 2 * q, x0 : x0 + 2 * q]
        value = (value << 1) | int(centre.mean() > 128)
    return value >> 32, value & 0xFFFFFFFF


class SyntheticCamera:
    """Frames in the participant's colour with their name, a moving bar and the stamp.

    Below the stamp, a textured band scrolls every frame, so the encoder spends about what
    a real camera costs it (several packets per frame at 640x480) instead of coding a flat
    picture in one small packet.
    """

    def __init__(self, name: str, width: int = 640, height: int = 480) -> None:
        if width % 2 or height % 2:
            raise ValueError("width and height must be even")
        self.width, self.height = width, height
        self.identity = identity_code(name)
        hue = self.identity
        self._y = 60 + hue % 120
        self._u = 64 + (hue >> 8) % 128
        self._v = 64 + (hue >> 16) % 128
        self._count = 0
        rng = np.random.default_rng(hue)
        top = stamp_height(width) + 8
        self._band = slice(top, top + (height - top) // 2)
        # the name, large and light, in the lower part of the picture
        scale = max(2, min(width // (6 * max(8, len(name)) + 6), height // 40))
        mask = render_text(name[:24], scale)[:, : width - 2 * scale]
        self._name_mask = mask
        self._name_at = (height - mask.shape[0] - 3 * scale,
                         max(scale, (width - mask.shape[1]) // 2))
        band_height = self._band.stop - self._band.start
        noise = rng.integers(0, 256, (band_height // 4 + 1, width // 4 + 1), dtype=np.uint8)
        # 4x4 blocks of noise: texture the encoder must code, not just film grain
        self._texture = np.repeat(np.repeat(noise, 4, axis=0), 4, axis=1)[:band_height, :width]

    def frame(self, capture_us: int) -> av.VideoFrame:
        w, h = self.width, self.height
        image = np.empty((h * 3 // 2, w), dtype=np.uint8)
        luma = image[:h]
        luma.fill(self._y)
        luma[self._band] = np.roll(self._texture, self._count * 4, axis=1)
        top, left = self._name_at
        bar = (self._count * 8) % w
        luma[h // 3 : max(h // 3, top - 8), bar : bar + w // 16] = 250
        mask_h, mask_w = self._name_mask.shape
        luma[top : top + mask_h, left : left + mask_w][self._name_mask] = 235
        write_stamp(luma, capture_us, self.identity)
        chroma = image[h:].reshape(-1)
        quarter = (w // 2) * (h // 2)
        chroma[:quarter] = self._u
        chroma[quarter:] = self._v
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
