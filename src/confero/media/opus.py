"""libopus through ctypes: the parts PyAV does not expose.

PyAV's ``libopus`` encoder and ``opus`` decoder cannot conceal a lost packet with Opus' own
PLC, cannot recover it from the next packet's in-band FEC (LBRR), and cannot change the
bitrate or expected loss of an open encoder. libopus itself can, so this module calls it
directly, on the copy PyAV already ships (``av.libs/libopus-*.so*`` next to the ``av``
package), with the system's ``libopus.so.0`` as a fallback. Using PyAV's copy means no new
dependency and the same libopus version on every machine the wheel runs on; ``opuslib``
would be one more unmaintained package doing the same ctypes calls.

The states are allocated here (``opus_*_get_size`` + ``opus_*_init``) as flat buffers:
libopus keeps no pointers into its own state (only to static mode tables), so a state can
be copied byte for byte. The server uses that to fork a listener's encoder from the shared
one without a jump in what that listener's decoder sees.

Frames are 20 ms of 48 kHz mono int16 (960 samples). ctypes releases the GIL during the
foreign call, so encoding and decoding can run on worker threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48_000
CHANNELS = 1
FRAME_SAMPLES = 960  # 20 ms
#: RFC 6716: at most 1275 bytes per frame, up to 120 ms per packet; far more than a
#: 20 ms frame needs, and below any datagram we accept.
MAX_PACKET_BYTES = 1500
_MAX_DECODED = 5760  # 120 ms at 48 kHz: what a legal packet may hold

APPLICATION_VOIP = 2048
APPLICATION_AUDIO = 2049
_SET_BITRATE = 4002
_GET_BITRATE = 4003
_SET_COMPLEXITY = 4010
_SET_INBAND_FEC = 4012
_GET_INBAND_FEC = 4013
_SET_PACKET_LOSS_PERC = 4014
_GET_PACKET_LOSS_PERC = 4015
_SET_SIGNAL = 4024
_RESET_STATE = 4028
_GET_LOOKAHEAD = 4027
_SIGNAL_VOICE = 3001

Samples = npt.NDArray[np.int16]


class OpusError(Exception):
    """libopus refused: bad packet, bad argument, or the library is missing."""


def _find_library() -> str:
    import av  # the wheel's own copy, next to the package

    here = os.path.dirname(av.__file__)
    for pattern in ("av.libs/libopus*.so*", "../av.libs/libopus*.so*", ".dylibs/libopus*"):
        found = sorted(glob.glob(os.path.join(here, pattern)))
        if found:
            return found[0]
    system = ctypes.util.find_library("opus")
    if system is None:
        raise OpusError("libopus not found (neither in PyAV's wheel nor on the system)")
    return system


def _load() -> Any:
    lib = ctypes.CDLL(_find_library())
    c_int, c_void_p, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
    short_p = ctypes.POINTER(ctypes.c_int16)
    lib.opus_encoder_get_size.argtypes = [c_int]
    lib.opus_encoder_get_size.restype = c_int
    lib.opus_encoder_init.argtypes = [c_void_p, ctypes.c_int32, c_int, c_int]
    lib.opus_encoder_init.restype = c_int
    lib.opus_encode.argtypes = [c_void_p, short_p, c_int, c_char_p, ctypes.c_int32]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_encoder_ctl.restype = c_int  # variadic: arguments typed per call
    lib.opus_decoder_get_size.argtypes = [c_int]
    lib.opus_decoder_get_size.restype = c_int
    lib.opus_decoder_init.argtypes = [c_void_p, ctypes.c_int32, c_int]
    lib.opus_decoder_init.restype = c_int
    lib.opus_decode.argtypes = [c_void_p, c_char_p, ctypes.c_int32, short_p, c_int, c_int]
    lib.opus_decode.restype = c_int
    lib.opus_decoder_ctl.restype = c_int
    lib.opus_strerror.argtypes = [c_int]
    lib.opus_strerror.restype = c_char_p
    lib.opus_get_version_string.argtypes = []
    lib.opus_get_version_string.restype = c_char_p
    return lib


_lib: Any = None


def _opus() -> Any:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def version() -> str:
    return str(_opus().opus_get_version_string().decode())


def _check(code: int, what: str) -> int:
    if code < 0:
        message = _opus().opus_strerror(code).decode()
        raise OpusError(f"{what}: {message} ({code})")
    return code


def _as_frame(samples: Samples) -> Samples:
    frame = np.ascontiguousarray(samples, dtype=np.int16).reshape(-1)
    if frame.shape != (FRAME_SAMPLES,):
        raise ValueError(f"an Opus frame here is {FRAME_SAMPLES} samples, not {frame.size}")
    return frame


class Encoder:
    """20 ms mono frames in, one Opus packet per frame out.

    VoIP application, in-band FEC on (the next packet carries a low-rate copy of this
    one when the expected loss is above zero), DTX off so every frame yields a packet.
    """

    def __init__(
        self,
        bitrate: int = 32_000,
        *,
        packet_loss_perc: int = 10,
        fec: bool = True,
        complexity: int = 10,
        application: int = APPLICATION_VOIP,
        voice: bool = True,
    ) -> None:
        lib = _opus()
        self._state = ctypes.create_string_buffer(lib.opus_encoder_get_size(CHANNELS))
        _check(lib.opus_encoder_init(self._state, SAMPLE_RATE, CHANNELS, application),
               "opus_encoder_init")
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        if voice:  # keeps libopus in the speech modes (SILK, hybrid), where FEC exists
            self._ctl(_SET_SIGNAL, _SIGNAL_VOICE)
        if not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity out of range: {complexity}")
        self._ctl(_SET_COMPLEXITY, complexity)
        self.set_bitrate(bitrate)
        self.set_fec(fec)
        self.set_packet_loss_perc(packet_loss_perc)

    def _ctl(self, request: int, value: int) -> None:
        _check(_opus().opus_encoder_ctl(self._state, ctypes.c_int(request),
                                        ctypes.c_int32(value)), f"opus_encoder_ctl({request})")

    def _get(self, request: int) -> int:
        value = ctypes.c_int32()
        _check(_opus().opus_encoder_ctl(self._state, ctypes.c_int(request),
                                        ctypes.byref(value)), f"opus_encoder_ctl({request})")
        return value.value

    def set_bitrate(self, bitrate: int) -> None:
        """Bits per second, 6 kbit/s to 510 kbit/s; takes effect at the next frame."""
        if not 6_000 <= bitrate <= 510_000:
            raise ValueError(f"Opus bitrate out of range: {bitrate}")
        self._ctl(_SET_BITRATE, bitrate)

    def set_packet_loss_perc(self, percent: int) -> None:
        """The loss the receiver is expected to see: libopus spends that much more on the
        FEC copy (and stays in a mode that has one). 0 turns the FEC copy off in effect."""
        if not 0 <= percent <= 100:
            raise ValueError(f"packet loss percentage out of range: {percent}")
        self._ctl(_SET_PACKET_LOSS_PERC, percent)

    def set_fec(self, on: bool) -> None:
        self._ctl(_SET_INBAND_FEC, 1 if on else 0)

    @property
    def bitrate(self) -> int:
        return self._get(_GET_BITRATE)

    @property
    def packet_loss_perc(self) -> int:
        return self._get(_GET_PACKET_LOSS_PERC)

    @property
    def fec(self) -> bool:
        return self._get(_GET_INBAND_FEC) != 0

    @property
    def lookahead(self) -> int:
        """Samples of algorithmic delay the encoder adds."""
        return self._get(_GET_LOOKAHEAD)

    def encode(self, samples: Samples) -> bytes:
        frame = _as_frame(samples)
        pcm = frame.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
        size = _check(_opus().opus_encode(self._state, pcm, FRAME_SAMPLES, self._out,
                                          MAX_PACKET_BYTES), "opus_encode")
        return self._out.raw[:size]

    def copy_state_from(self, other: Encoder) -> None:
        """Continue exactly where ``other`` is: the next packet this encoder makes decodes
        seamlessly after ``other``'s last one (same settings, same history)."""
        ctypes.memmove(self._state, other._state, len(self._state))

    def clone(self) -> Encoder:
        twin = Encoder.__new__(Encoder)
        twin._state = ctypes.create_string_buffer(len(self._state))
        twin._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        twin.copy_state_from(self)
        return twin

    def reset(self) -> None:
        _check(_opus().opus_encoder_ctl(self._state, ctypes.c_int(_RESET_STATE)),
               "opus_encoder_ctl(RESET)")


class Decoder:
    """Opus packets in, 20 ms int16 frames out, with Opus' own loss concealment.

    ``decode`` for a packet that arrived, ``decode_fec(next_payload)`` for a lost packet
    whose successor is here (the successor's FEC copy, or PLC when it has none; then call
    ``decode(next_payload)`` for the successor itself), ``conceal()`` for a lost packet
    with nothing after it. Bad packets raise :class:`OpusError`; the state stays usable.
    """

    def __init__(self) -> None:
        lib = _opus()
        self._state = ctypes.create_string_buffer(lib.opus_decoder_get_size(CHANNELS))
        _check(lib.opus_decoder_init(self._state, SAMPLE_RATE, CHANNELS), "opus_decoder_init")
        self._pcm = np.zeros(_MAX_DECODED, dtype=np.int16)
        self.decoded = 0
        self.concealed = 0
        self.recovered = 0

    def _run(self, payload: bytes | None, fec: int) -> Samples:
        if payload is not None:
            if not payload:
                raise OpusError("empty Opus packet")
            if len(payload) > MAX_PACKET_BYTES:
                raise OpusError(f"Opus packet too long: {len(payload)} bytes")
        pcm = self._pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
        # PLC and FEC decode exactly the duration asked for; a normal packet decodes what
        # it holds, which must then be one 20 ms frame.
        room = FRAME_SAMPLES if payload is None or fec else _MAX_DECODED
        count = _check(
            _opus().opus_decode(self._state, payload, len(payload) if payload else 0, pcm,
                                room, fec),
            "opus_decode",
        )
        if count != FRAME_SAMPLES:
            raise OpusError(f"Opus packet of {count} samples, not a 20 ms frame")
        return self._pcm[:FRAME_SAMPLES].copy()

    def decode(self, payload: bytes) -> Samples:
        frame = self._run(payload, 0)
        self.decoded += 1
        return frame

    def conceal(self) -> Samples:
        """The lost frame, extrapolated by Opus' PLC (fades out over repeated losses)."""
        frame = self._run(None, 0)
        self.concealed += 1
        return frame

    def decode_fec(self, next_payload: bytes) -> Samples:
        """The lost frame *before* ``next_payload``, from its in-band FEC copy."""
        frame = self._run(next_payload, 1)
        self.recovered += 1
        return frame

    def reset(self) -> None:
        _check(_opus().opus_decoder_ctl(self._state, ctypes.c_int(_RESET_STATE)),
               "opus_decoder_ctl(RESET)")
