"""Opus over PyAV, and the audio math: levels, mixing, soft limiting, concealment.

Audio inside confero is 48 kHz mono int16 in 20 ms frames of 960 samples.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from confero.media.opus import Decoder as PlcDecoder
from confero.media.opus import OpusError
from confero.protocol.audio_jitter import LOST, AudioJitterBuffer
from confero.protocol.profile import AUDIO_PAYLOAD_TYPE

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
OPUS_PAYLOAD_TYPE = AUDIO_PAYLOAD_TYPE

Samples = npt.NDArray[np.int16]
Mix = npt.NDArray[np.int32]

SILENCE: Samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_LIMIT_KNEE = 24_000.0
_LIMIT_CEILING = 32_767.0


class OpusEncoder:
    """20 ms mono frames in, Opus packets out (one per frame, libopus, VoIP mode)."""

    def __init__(self, bitrate: int = 32_000) -> None:
        self._codec: Any = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = SAMPLE_RATE
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.bit_rate = bitrate
        self._codec.time_base = Fraction(1, SAMPLE_RATE)
        self._codec.options = {"application": "voip", "frame_duration": "20"}
        self._codec.open()
        self._pts = 0

    def encode(self, samples: Samples) -> bytes:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))


class OpusDecoder:
    """Opus packets in, 20 ms int16 frames out; bad packets give silence, not exceptions."""

    def __init__(self) -> None:
        self._codec: Any = self._new_codec()
        self.errors = 0

    @staticmethod
    def _new_codec() -> Any:
        codec = av.CodecContext.create("opus", "r")
        codec.sample_rate = SAMPLE_RATE
        codec.layout = "mono"
        return codec

    def decode(self, payload: bytes) -> Samples:
        if not payload:
            # An empty packet would be a *flush* to FFmpeg and end the decoder for good.
            self.errors += 1
            return SILENCE
        try:
            frames = self._codec.decode(av.Packet(payload))
        except (av.FFmpegError, ValueError):
            self.errors += 1
            self._codec = self._new_codec()  # never stay stuck after a bad packet
            return SILENCE
        if not frames:
            return SILENCE
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        if pcm.dtype != np.int16:  # the decoder gives float planar
            pcm = np.clip(pcm * 32767.0, -32768, 32767).astype(np.int16)
        if len(pcm) != FRAME_SAMPLES:
            pcm = np.resize(pcm, FRAME_SAMPLES).astype(np.int16)
        return pcm


def level_dbov(samples: Samples) -> int:
    """RFC 6464 audio level: 0 (loudest) to 127 (silence), in -dBov."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms < 1.0:
        return 127
    return int(min(127, max(0, round(-20 * np.log10(rms / 32768.0)))))


def soft_limit(mix: Mix) -> Samples:
    """Clamp to int16 with a smooth knee above ``_LIMIT_KNEE`` instead of hard clipping."""
    as_float = mix.astype(np.float32)
    magnitude = np.abs(as_float)
    over = magnitude > _LIMIT_KNEE
    if over.any():
        room = _LIMIT_CEILING - _LIMIT_KNEE
        squashed = _LIMIT_KNEE + room * np.tanh((magnitude[over] - _LIMIT_KNEE) / room)
        as_float[over] = np.sign(as_float[over]) * squashed
    return as_float.astype(np.int16)


def play_next(buffer: AudioJitterBuffer, decoder: PlcDecoder) -> tuple[Samples | None, str]:
    """The frame due now from a jitter buffer, with Opus' own concealment: the packet
    decoded; a missing one rebuilt from the next packet's in-band FEC when that one is
    already queued, else by Opus PLC; ``None`` when the stream is idle (play silence, and
    keep the decoder: the stream's next packet continues its state). Also says which it
    was: "decoded", "fec", "plc", "error" (a bad packet, concealed) or "idle".
    One decoder per stream, fed every packet in order; never raises on bad packets."""
    item = buffer.pop()
    if item is None:
        return None, "idle"
    try:
        if item is LOST:
            upcoming = buffer.peek()
            if upcoming is not None:
                return decoder.decode_fec(upcoming), "fec"
            return decoder.conceal(), "plc"
        assert isinstance(item, bytes)
        return decoder.decode(item), "decoded"
    except OpusError:
        return decoder.conceal(), "error"


class SineSource:
    """A continuous sine, 20 ms at a time (phase carried across frames)."""

    def __init__(self, frequency: float, amplitude: float = 8000.0) -> None:
        self.frequency = frequency
        self.amplitude = amplitude
        self._sample = 0

    def next_frame(self) -> Samples:
        n = np.arange(self._sample, self._sample + FRAME_SAMPLES)
        self._sample += FRAME_SAMPLES
        wave = self.amplitude * np.sin(2 * np.pi * self.frequency * n / SAMPLE_RATE)
        return wave.astype(np.int16)
