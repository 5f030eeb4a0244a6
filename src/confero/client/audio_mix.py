"""Local mixing of per-sender audio streams, and the crossfade between two sources.

:class:`LocalMixer` decodes each sender's Opus frame (its own decoder, its own loss
concealment: Opus PLC) and sums them: what the server's mixer does, done at the receiver when the
server cannot (peer-to-peer; end-to-end encrypted audio). :class:`Crossfade` moves the
playout between the server's mix and the direct streams at a mode switch with a short
linear ramp instead of a click. Both run on the playout thread, one 20 ms frame a call.
"""

from __future__ import annotations

import numpy as np

from confero.media.audio import FRAME_SAMPLES, SILENCE, Samples, soft_limit
from confero.media.opus import Decoder, OpusError


class LocalMixer:
    def __init__(self) -> None:
        self._decoders: dict[int, Decoder] = {}
        self.decoded = 0
        self.concealed = 0

    def mix(self, frames: dict[int, bytes | object]) -> Samples | None:
        """One 20 ms step: SSRC -> Opus bytes or LOST. None when nobody plays."""
        if not frames:
            return None
        total = np.zeros(FRAME_SAMPLES, dtype=np.int32)
        for ssrc, item in frames.items():
            decoder = self._decoders.get(ssrc)
            if decoder is None:
                decoder = self._decoders[ssrc] = Decoder()
            samples: Samples | None = None
            if isinstance(item, bytes):
                try:
                    samples = decoder.decode(item)
                    self.decoded += 1
                except OpusError:
                    samples = None
            if samples is None:  # LOST (or undecodable): Opus' own concealment
                samples = decoder.conceal()
                self.concealed += 1
            total += samples.astype(np.int32)
        return soft_limit(total)

    def forget(self, ssrc: int) -> None:
        self._decoders.pop(ssrc, None)

    def forget_others(self, keep: set[int]) -> None:
        for ssrc in list(self._decoders):
            if ssrc not in keep:
                del self._decoders[ssrc]


class Crossfade:
    """Plays source A (the server's mix) or B (the direct streams), ramping between them
    over ``ramp_frames`` 20 ms frames when the preferred source changes."""

    def __init__(self, ramp_frames: int = 2) -> None:
        self.ramp_frames = max(1, ramp_frames)
        self.weight_b = 0.0  # 0: all A, 1: all B
        self.switches = 0

    def step(self, a: Samples | None, b: Samples | None, prefer_b: bool) -> Samples | None:
        # a source with nothing to play cannot be preferred: follow whichever has sound
        if prefer_b and b is None and a is not None:
            prefer_b = False
        elif not prefer_b and a is None and b is not None:
            prefer_b = True
        if a is None and b is None:
            return None
        target = 1.0 if prefer_b else 0.0
        start = self.weight_b
        step = 1.0 / self.ramp_frames
        end = min(target, start + step) if target > start else max(target, start - step)
        if end != start and start in (0.0, 1.0):
            self.switches += 1
        self.weight_b = end
        if start == end:
            chosen = b if end == 1.0 else a
            return chosen if chosen is not None else SILENCE
        ramp = np.linspace(start, end, FRAME_SAMPLES, endpoint=False, dtype=np.float32)
        fa = (a if a is not None else SILENCE).astype(np.float32)
        fb = (b if b is not None else SILENCE).astype(np.float32)
        mixed: Samples = (fa * (1.0 - ramp) + fb * ramp).astype(np.int16)
        return mixed
