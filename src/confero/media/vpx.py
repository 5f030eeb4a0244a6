"""Realtime VP8 through PyAV's bundled libvpx, driven directly with ctypes.

Why not PyAV's encoder: setting ``bit_rate`` on an open libvpx encoder has no effect, so
following a bandwidth estimate would mean re-opening it (a keyframe each time). libvpx itself
changes the target in place with ``vpx_codec_enc_config_set``, and lets us choose each
frame's references, which temporal layers need. PyAV's wheel already ships libvpx, so this
adds no dependency.

The ``vpx_codec_enc_cfg_t`` layout is ABI-specific. We write only fields whose offsets were
taken from libvpx v1.16's headers, and before using them we check that the library's own
defaults sit at those offsets; any mismatch raises :class:`VpxAbiError` so the caller falls
back to the PyAV encoder (see :func:`confero.media.video.make_video_encoder`).

Temporal layers (3): the pattern 0,2,1,2 with TL0 referencing and updating LAST, TL1
updating GOLDEN, TL2 updating ALTREF. No frame above TL0 references a buffer written before
the latest TL0 frame, so a forwarder may switch a subscriber up at any TL0 frame, and every
TL1/TL2 frame that references only LAST is flagged as a layer-sync frame.
"""

from __future__ import annotations

import ctypes
import glob
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt

from confero.protocol.profile import VIDEO_CLOCK

Plane = npt.NDArray[np.uint8]
FrameInput = av.VideoFrame | tuple[Plane, Plane, Plane]


class VpxUnavailable(RuntimeError):
    """libvpx cannot be driven through ctypes here: use the PyAV fallback."""


class VpxAbiError(VpxUnavailable):
    """The library's config struct does not look like the layout we were built for."""


class VpxError(RuntimeError):
    """libvpx refused a call on a working encoder."""


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes
    keyframe: bool
    temporal_id: int = 0
    #: True when the frame references only TL0 data: a forwarder may switch up here.
    layer_sync: bool = False


class VideoEncoder(Protocol):
    """What the media paths need from a VP8 encoder, whichever implementation backs it."""

    width: int
    height: int
    fps: int
    bitrate: int
    temporal_layers: int

    def encode(
        self, frame: FrameInput, pts: int, force_keyframe: bool = False
    ) -> list[EncodedFrame]: ...

    def set_bitrate(self, bps: int) -> None: ...

    def reconfigure(self, width: int, height: int, fps: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CfgLayout:
    """Byte offsets of the ``vpx_codec_enc_cfg_t`` fields we touch (all 32-bit unsigned)."""

    abi_version: int
    size: int
    offsets: Mapping[str, int]
    #: Defaults libvpx's VP8 encoder fills in, checked at these offsets before any use.
    defaults: Mapping[str, int] = field(default_factory=dict)


# From libvpx v1.16.0 headers on x86-64/aarch64 LP64 (offsetof, checked with a C compiler).
LIBVPX_1_16 = CfgLayout(
    abi_version=39,  # VPX_ENCODER_ABI_VERSION = 18 + (4 + 5) + (7 + 5)
    size=504,
    offsets={
        "g_usage": 0, "g_threads": 4, "g_profile": 8, "g_w": 12, "g_h": 16,
        "g_bit_depth": 20, "g_input_bit_depth": 24,
        "g_timebase_num": 28, "g_timebase_den": 32, "g_error_resilient": 36, "g_pass": 40,
        "g_lag_in_frames": 44, "rc_dropframe_thresh": 48, "rc_resize_allowed": 52,
        "rc_end_usage": 72, "rc_target_bitrate": 112, "rc_min_quantizer": 116,
        "rc_max_quantizer": 120, "rc_undershoot_pct": 124, "rc_overshoot_pct": 128,
        "rc_buf_sz": 132, "rc_buf_initial_sz": 136, "rc_buf_optimal_sz": 140,
        "kf_mode": 160, "kf_min_dist": 164, "kf_max_dist": 168,
        "ts_number_layers": 216, "ts_target_bitrate": 220, "ts_rate_decimator": 240,
        "ts_periodicity": 260, "ts_layer_id": 264,
    },
    defaults={
        "g_usage": 0, "g_w": 320, "g_h": 240, "g_bit_depth": 8, "g_input_bit_depth": 8,
        "g_timebase_num": 1, "g_timebase_den": 30, "g_pass": 0, "rc_end_usage": 0,
        "rc_target_bitrate": 256, "rc_min_quantizer": 4, "rc_max_quantizer": 63,
        "rc_undershoot_pct": 100, "rc_overshoot_pct": 100, "rc_buf_sz": 6000,
        "rc_buf_initial_sz": 4000, "rc_buf_optimal_sz": 5000, "kf_mode": 1,
        "kf_min_dist": 0, "kf_max_dist": 128, "ts_number_layers": 1, "ts_periodicity": 0,
    },
)

_CFG_BUFFER = 4096  # generous: a newer library may write a larger struct
_U32 = struct.Struct("=I")

# vpx_encoder.h / vp8cx.h / vpx_image.h constants
_VPX_CODEC_OK = 0
_VPX_CODEC_CX_FRAME_PKT = 0
_VPX_FRAME_IS_KEY = 0x1
_VPX_EFLAG_FORCE_KF = 1 << 0
_VPX_DL_REALTIME = 1
_VPX_IMG_FMT_I420 = 0x102
_VPX_CBR = 1
_VPX_KF_AUTO = 1
_VPX_ERROR_RESILIENT_DEFAULT = 1
_NO_REF_LAST, _NO_REF_GF, _NO_REF_ARF = 1 << 16, 1 << 17, 1 << 21
_NO_UPD_LAST, _NO_UPD_GF, _NO_UPD_ARF = 1 << 18, 1 << 22, 1 << 23
_NO_UPD_ENTROPY = 1 << 20
_VP8E_SET_CPUUSED = 13
_VP8E_SET_NOISE_SENSITIVITY = 15
_VP8E_SET_STATIC_THRESHOLD = 17
_VP8E_SET_MAX_INTRA_BITRATE_PCT = 26
_VP8E_SET_TEMPORAL_LAYER_ID = 30

#: Temporal pattern of 3 layers: layer of each frame in a period of 4.
PATTERN_3 = (0, 2, 1, 2)
#: Cumulative share of the total bitrate up to each layer.
LAYER_SHARES = (0.4, 0.6, 1.0)
MIN_BITRATE = 30_000
MAX_BITRATE = 20_000_000


class _CxFrame(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("buf", ctypes.c_void_p),
        ("sz", ctypes.c_size_t),
        ("pts", ctypes.c_int64),
        ("duration", ctypes.c_ulong),
        ("flags", ctypes.c_uint32),
        ("partition_id", ctypes.c_int),
    ]


def find_libvpx() -> str:
    """The libvpx shipped inside PyAV's wheel."""
    here = os.path.dirname(os.path.abspath(av.__file__))
    candidates = sorted(glob.glob(os.path.join(here, os.pardir, "av.libs", "libvpx-*.so*")))
    if not candidates:
        raise VpxUnavailable("PyAV's wheel ships no libvpx (av.libs/libvpx-*.so*)")
    return candidates[0]


_LIB: Any = None


def _load() -> Any:
    global _LIB
    if _LIB is not None:
        return _LIB
    try:
        lib = ctypes.CDLL(find_libvpx())
        lib.vpx_codec_vp8_cx.restype = ctypes.c_void_p
        lib.vpx_codec_vp8_cx.argtypes = []
        lib.vpx_codec_enc_config_default.restype = ctypes.c_int
        lib.vpx_codec_enc_config_default.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        lib.vpx_codec_enc_init_ver.restype = ctypes.c_int
        lib.vpx_codec_enc_init_ver.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
        lib.vpx_codec_enc_config_set.restype = ctypes.c_int
        lib.vpx_codec_enc_config_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.vpx_codec_control_.restype = ctypes.c_int
        lib.vpx_codec_encode.restype = ctypes.c_int
        lib.vpx_codec_encode.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_ulong,
            ctypes.c_long, ctypes.c_ulong]
        lib.vpx_codec_get_cx_data.restype = ctypes.POINTER(_CxFrame)
        lib.vpx_codec_get_cx_data.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.vpx_codec_destroy.restype = ctypes.c_int
        lib.vpx_codec_destroy.argtypes = [ctypes.c_void_p]
        lib.vpx_codec_error_detail.restype = ctypes.c_char_p
        lib.vpx_codec_error_detail.argtypes = [ctypes.c_void_p]
        lib.vpx_codec_err_to_string.restype = ctypes.c_char_p
        lib.vpx_codec_err_to_string.argtypes = [ctypes.c_int]
        lib.vpx_codec_version_str.restype = ctypes.c_char_p
        lib.vpx_img_wrap.restype = ctypes.c_void_p
        lib.vpx_img_wrap.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p]
    except (OSError, AttributeError) as exc:
        raise VpxUnavailable(f"cannot load libvpx: {exc}") from exc
    _LIB = lib
    return lib


def libvpx_version() -> str:
    return str(_load().vpx_codec_version_str().decode())


def _put(buf: ctypes.Array[ctypes.c_char], layout: CfgLayout, name: str, value: int,
         index: int = 0) -> None:
    _U32.pack_into(buf, layout.offsets[name] + 4 * index, value)


def _get(buf: ctypes.Array[ctypes.c_char], layout: CfgLayout, name: str) -> int:
    return int(_U32.unpack_from(buf, layout.offsets[name])[0])


def check_layout(buf: ctypes.Array[ctypes.c_char], layout: CfgLayout) -> None:
    """Raise :class:`VpxAbiError` unless libvpx's defaults sit where ``layout`` says."""
    wrong = [
        f"{name}@{layout.offsets[name]}={_get(buf, layout, name)} (expected {expected})"
        for name, expected in layout.defaults.items()
        if _get(buf, layout, name) != expected
    ]
    if wrong:
        raise VpxAbiError(
            f"libvpx {libvpx_version()} config layout does not match: " + ", ".join(wrong))


class VpxVp8Encoder:
    """VP8 in realtime CBR with live bitrate changes and optional 3 temporal layers."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: int = 30,
        bitrate: int = 1_200_000,
        temporal_layers: int = 1,
        keyframe_interval_s: float = 20.0,
        layout: CfgLayout = LIBVPX_1_16,
    ) -> None:
        self._ctx: ctypes.Array[ctypes.c_char] | None = None
        if temporal_layers not in (1, 3):
            raise ValueError("temporal_layers must be 1 or 3")
        self._lib = _load()
        self._layout = layout
        self.temporal_layers = temporal_layers
        self.keyframe_interval_s = keyframe_interval_s
        self.bitrate = self._clamp(bitrate)
        self.width, self.height, self.fps = width, height, fps
        self.keyframes = 0
        self.dropped_frames = 0  # frames the rate control skipped
        self._open()

    # -- set-up --------------------------------------------------------------------------

    @staticmethod
    def _check_size(width: int, height: int, fps: int) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2 or not 0 < fps <= 240:
            raise ValueError(f"unusable video format {width}x{height}@{fps}")

    def _open(self) -> None:
        self._check_size(self.width, self.height, self.fps)
        lib, layout = self._lib, self._layout
        iface = lib.vpx_codec_vp8_cx()
        cfg = ctypes.create_string_buffer(_CFG_BUFFER)
        err = lib.vpx_codec_enc_config_default(iface, cfg, 0)
        if err != _VPX_CODEC_OK:
            raise VpxUnavailable(f"vpx_codec_enc_config_default: {self._err(err)}")
        check_layout(cfg, layout)
        for name, value in {
            "g_w": self.width, "g_h": self.height, "g_threads": 1,
            "g_timebase_num": 1, "g_timebase_den": VIDEO_CLOCK,
            "g_error_resilient": _VPX_ERROR_RESILIENT_DEFAULT, "g_lag_in_frames": 0,
            "rc_dropframe_thresh": 25, "rc_resize_allowed": 0, "rc_end_usage": _VPX_CBR,
            "rc_min_quantizer": 2, "rc_max_quantizer": 56,
            "rc_undershoot_pct": 100, "rc_overshoot_pct": 15,
            "rc_buf_sz": 1000, "rc_buf_initial_sz": 500, "rc_buf_optimal_sz": 600,
            "kf_mode": _VPX_KF_AUTO, "kf_min_dist": 0,
            "kf_max_dist": max(1, round(self.keyframe_interval_s * self.fps)),
        }.items():
            _put(cfg, layout, name, value)
        if self.temporal_layers == 3:
            _put(cfg, layout, "ts_number_layers", 3)
            _put(cfg, layout, "ts_periodicity", len(PATTERN_3))
            for i, decimator in enumerate((4, 2, 1)):
                _put(cfg, layout, "ts_rate_decimator", decimator, i)
            for i, tid in enumerate(PATTERN_3):
                _put(cfg, layout, "ts_layer_id", tid, i)
        self._cfg = cfg
        self._write_bitrate()
        ctx = ctypes.create_string_buffer(256)  # vpx_codec_ctx_t is 56 bytes
        err = lib.vpx_codec_enc_init_ver(ctx, iface, cfg, 0, layout.abi_version)
        if err != _VPX_CODEC_OK:
            raise VpxAbiError(f"vpx_codec_enc_init_ver: {self._err(err)}")
        self._ctx = ctx
        for ctrl, value in (
            (_VP8E_SET_CPUUSED, 8),
            (_VP8E_SET_NOISE_SENSITIVITY, 0),
            (_VP8E_SET_STATIC_THRESHOLD, 1),
            (_VP8E_SET_MAX_INTRA_BITRATE_PCT, 300),
        ):
            self._control(ctrl, value)
        self._image_data = np.zeros(self.width * self.height * 3 // 2, dtype=np.uint8)
        self._image = ctypes.create_string_buffer(512)  # vpx_image_t is 136 bytes
        if not lib.vpx_img_wrap(self._image, _VPX_IMG_FMT_I420, self.width, self.height, 1,
                                self._image_data.ctypes.data):
            raise VpxError("vpx_img_wrap failed")
        self._duration = max(1, VIDEO_CLOCK // max(1, self.fps))
        self._frame_index = 0  # position in the temporal pattern
        self._golden_fresh = self._altref_fresh = False

    def _err(self, code: int) -> str:
        text = self._lib.vpx_codec_err_to_string(code)
        return str(text.decode()) if text else f"error {code}"

    def _detail(self, code: int) -> str:
        detail = self._lib.vpx_codec_error_detail(self._ctx) if self._ctx else None
        return self._err(code) + (f" ({detail.decode()})" if detail else "")

    def _control(self, ctrl: int, value: int) -> None:
        err = self._lib.vpx_codec_control_(self._ctx, ctypes.c_int(ctrl), ctypes.c_int(value))
        if err != _VPX_CODEC_OK:
            raise VpxError(f"vpx_codec_control({ctrl}): {self._detail(err)}")

    @staticmethod
    def _clamp(bps: int) -> int:
        return max(MIN_BITRATE, min(MAX_BITRATE, int(bps)))

    def _write_bitrate(self) -> None:
        kbps = self.bitrate // 1000
        _put(self._cfg, self._layout, "rc_target_bitrate", kbps)
        if self.temporal_layers == 3:
            previous = 0
            for i, share in enumerate(LAYER_SHARES):
                layer = max(previous + 1, int(kbps * share))  # must strictly increase
                _put(self._cfg, self._layout, "ts_target_bitrate", layer, i)
                previous = layer

    # -- public API ------------------------------------------------------------------------

    def set_bitrate(self, bps: int) -> None:
        """Change the target on the live encoder: no keyframe, effective from the next frame."""
        bitrate = self._clamp(bps)
        if bitrate == self.bitrate:
            return
        self.bitrate = bitrate
        self._write_bitrate()
        err = self._lib.vpx_codec_enc_config_set(self._ctx, self._cfg)
        if err != _VPX_CODEC_OK:
            raise VpxError(f"vpx_codec_enc_config_set: {self._detail(err)}")

    def reconfigure(self, width: int, height: int, fps: int) -> None:
        """New size or frame rate: a fresh encoder (its first frame is a keyframe)."""
        if (width, height, fps) == (self.width, self.height, self.fps):
            return
        self._check_size(width, height, fps)
        self.close()
        self.width, self.height, self.fps = width, height, fps
        self._open()

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.vpx_codec_destroy(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self.close()

    def _load_picture(self, frame: FrameInput) -> None:
        w, h = self.width, self.height
        y_size, c_size = w * h, (w // 2) * (h // 2)
        data = self._image_data
        if isinstance(frame, av.VideoFrame):
            if (frame.width, frame.height) != (w, h):
                raise ValueError(f"frame is {frame.width}x{frame.height}, encoder {w}x{h}: "
                                 "call reconfigure() first")
            if frame.format.name != "yuv420p":
                frame = frame.reformat(format="yuv420p")
            data[:] = frame.to_ndarray().reshape(-1)
            return
        y, u, v = frame
        if y.shape != (h, w) or u.shape != (h // 2, w // 2) or v.shape != (h // 2, w // 2):
            raise ValueError("I420 planes do not match the encoder size")
        data[:y_size] = y.reshape(-1)
        data[y_size : y_size + c_size] = u.reshape(-1)
        data[y_size + c_size :] = v.reshape(-1)

    def _frame_flags(self, tid: int) -> tuple[int, bool]:
        """libvpx reference/update flags for the next frame of layer ``tid``, and sync."""
        no_ref_gf = 0 if self._golden_fresh else _NO_REF_GF
        if tid == 0:
            return _NO_REF_GF | _NO_REF_ARF | _NO_UPD_GF | _NO_UPD_ARF, False
        upper = _NO_UPD_LAST | _NO_UPD_ENTROPY
        if tid == 1:  # never references TL2 data; writes GOLDEN
            return upper | no_ref_gf | _NO_REF_ARF | _NO_UPD_ARF, not self._golden_fresh
        if self._altref_fresh:  # a second TL2 frame in the period: droppable
            flags = upper | no_ref_gf | _NO_UPD_GF | _NO_UPD_ARF
        else:  # the first TL2 frame of the period writes ALTREF
            flags = upper | no_ref_gf | _NO_REF_ARF | _NO_UPD_GF
        return flags, not (self._golden_fresh or self._altref_fresh)

    def encode(
        self, frame: FrameInput, pts: int, force_keyframe: bool = False
    ) -> list[EncodedFrame]:
        """Encode one picture; an empty list when the rate control drops it."""
        if self._ctx is None:
            raise VpxError("encoder is closed")
        self._load_picture(frame)
        flags, tid, sync = 0, 0, False
        if self.temporal_layers == 3:
            if force_keyframe:
                self._frame_index = 0
            tid = PATTERN_3[self._frame_index % len(PATTERN_3)]
            flags, sync = self._frame_flags(tid)
            self._control(_VP8E_SET_TEMPORAL_LAYER_ID, tid)
        if force_keyframe:
            flags = _VPX_EFLAG_FORCE_KF
        err = self._lib.vpx_codec_encode(
            self._ctx, self._image, pts, self._duration, flags, _VPX_DL_REALTIME)
        if err != _VPX_CODEC_OK:
            raise VpxError(f"vpx_codec_encode: {self._detail(err)}")
        out: list[EncodedFrame] = []
        iterator = ctypes.c_void_p(None)
        while True:
            pkt = self._lib.vpx_codec_get_cx_data(self._ctx, ctypes.byref(iterator))
            if not pkt:
                break
            p = pkt.contents
            if p.kind != _VPX_CODEC_CX_FRAME_PKT:
                continue
            key = bool(p.flags & _VPX_FRAME_IS_KEY)
            data = ctypes.string_at(p.buf, p.sz)
            out.append(EncodedFrame(data, key, 0 if key else tid, True if key else sync))
        self._advance(tid, out)
        return out

    def _advance(self, tid: int, out: list[EncodedFrame]) -> None:
        if not out:
            self.dropped_frames += 1
        if self.temporal_layers != 3:
            if any(f.keyframe for f in out):
                self.keyframes += 1
            return
        if any(f.keyframe for f in out):
            # a keyframe refreshes every buffer and counts as TL0: restart the period
            self.keyframes += 1
            self._frame_index = 1
            self._golden_fresh = self._altref_fresh = False
            return
        self._frame_index += 1
        if not out:
            return  # nothing was written; a dropped TL0 frame keeps the old period
        if tid == 0:
            self._golden_fresh = self._altref_fresh = False
        elif tid == 1:
            self._golden_fresh = True
        elif not self._altref_fresh:
            self._altref_fresh = True


class ReopeningVp8Encoder:
    """The fallback: PyAV's libvpx encoder, re-opened (a keyframe) on each bitrate change.

    Only one temporal layer: PyAV does not say which layer a packet belongs to.
    """

    def __init__(self, width: int, height: int, fps: int = 30, bitrate: int = 1_200_000,
                 temporal_layers: int = 1) -> None:
        from confero.media.video import Vp8Encoder

        self._factory = Vp8Encoder
        self.width, self.height, self.fps = width, height, fps
        self.bitrate = bitrate
        self.temporal_layers = 1
        self.reopens = 0
        self._encoder = Vp8Encoder(width, height, fps, bitrate)

    def set_bitrate(self, bps: int) -> None:
        bitrate = max(MIN_BITRATE, min(MAX_BITRATE, int(bps)))
        # re-opening costs a keyframe: ignore changes below 10 %
        if abs(bitrate - self.bitrate) < self.bitrate // 10:
            return
        self.bitrate = bitrate
        self._reopen()

    def reconfigure(self, width: int, height: int, fps: int) -> None:
        if (width, height, fps) != (self.width, self.height, self.fps):
            self.width, self.height, self.fps = width, height, fps
            self._reopen()

    def _reopen(self) -> None:
        self.reopens += 1
        self._encoder = self._factory(self.width, self.height, self.fps, self.bitrate)

    def close(self) -> None:
        pass

    def encode(
        self, frame: FrameInput, pts: int, force_keyframe: bool = False
    ) -> list[EncodedFrame]:
        if not isinstance(frame, av.VideoFrame):
            y, u, v = frame
            packed = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
            frame = av.VideoFrame.from_ndarray(
                packed.reshape(self.height * 3 // 2, self.width), format="yuv420p")
        return [EncodedFrame(data, not data[0] & 0x01, 0, True)
                for data in self._encoder.encode(frame, pts, force_keyframe)]

