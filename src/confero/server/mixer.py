"""Per-meeting audio mixing: jitter buffers, decoding, mix-minus, limiting, encoding.

Sans-I/O: ``push`` takes each speaker's Opus payload as it arrives, ``mix`` is called on
the 20 ms clock and returns what each listener should receive now. Costs follow who
talks, not who is present:

- muted participants send nothing; packets whose RFC 6464 level says "silence" are not
  even decoded;
- everyone who is not speaking hears the same mix (all speakers), encoded once and
  shared; only each active speaker needs a mix of its own (everyone but themselves);
- with nobody speaking, nothing is encoded or sent (clients play silence).

Sums are int32 (no int16 wrap-around); the result goes through a soft limiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from confero.media.audio import (
    Mix,
    OpusDecoder,
    OpusEncoder,
    Samples,
    conceal,
    level_dbov,
    soft_limit,
)
from confero.protocol.audio_jitter import LOST, AudioJitterBuffer

#: Frames at or below this level (-dBov, RFC 6464) are treated as silence.
SILENCE_LEVEL = 70


@dataclass
class _Member:
    buffer: AudioJitterBuffer
    decoder: OpusDecoder | None = None
    encoder: OpusEncoder | None = None  # own mix, created when first speaking
    last_frame: Samples | None = None
    concealed_in_a_row: int = 0


@dataclass
class MixerStats:
    ticks: int = 0
    decoded: int = 0
    encoded: int = 0
    skipped_silent: int = 0
    concealed: int = 0
    busy_seconds: float = 0.0


class MeetingMixer:
    def __init__(
        self,
        encoder_factory: Callable[[], OpusEncoder] = OpusEncoder,
        decoder_factory: Callable[[], OpusDecoder] = OpusDecoder,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._members: dict[str, _Member] = {}
        self._shared_encoder: OpusEncoder | None = None
        self._encoder_factory = encoder_factory
        self._decoder_factory = decoder_factory
        self._clock = clock  # only to measure our own CPU time for /metrics
        self.stats = MixerStats()
        #: Who was mixed in the last tick, with their level (-dBov, RFC 6464 scale):
        #: the router names them as CSRCs with RFC 6465 levels, for active-speaker display.
        self.levels: dict[str, int] = {}

    def add(self, participant_id: str) -> None:
        self._members.setdefault(
            participant_id, _Member(AudioJitterBuffer(target=1, max_target=4, capacity=25))
        )

    def remove(self, participant_id: str) -> None:
        self._members.pop(participant_id, None)

    @property
    def empty(self) -> bool:
        return not self._members

    def push(self, participant_id: str, timestamp: int, payload: bytes, level: int | None,
             now: float) -> None:
        member = self._members.get(participant_id)
        if member is None or not payload:
            return
        if level is not None and level >= SILENCE_LEVEL:
            self.stats.skipped_silent += 1  # silent: not worth a decode
            return
        member.buffer.push(timestamp, payload, now)

    def mix(self) -> dict[str, bytes]:
        """One 20 ms tick: listener id -> Opus payload (absent: send nothing)."""
        started = self._clock()
        self.stats.ticks += 1
        speaking: dict[str, Samples] = {}
        for pid, member in self._members.items():
            frame = self._next_frame(member)
            if frame is not None:
                speaking[pid] = frame
        out: dict[str, bytes] = {}
        self.levels = {pid: level_dbov(frame) for pid, frame in speaking.items()}
        if speaking:
            total: Mix = np.sum(
                np.stack(list(speaking.values())).astype(np.int32), axis=0, dtype=np.int32
            )
            shared: bytes | None = None
            for pid, member in self._members.items():
                own = speaking.get(pid)
                if own is None:
                    if shared is None:
                        if self._shared_encoder is None:
                            self._shared_encoder = self._encoder_factory()
                        shared = self._shared_encoder.encode(soft_limit(total))
                        self.stats.encoded += 1
                    out[pid] = shared
                elif len(speaking) > 1:  # alone speaking: nothing to hear but yourself
                    if member.encoder is None:
                        member.encoder = self._encoder_factory()
                    out[pid] = member.encoder.encode(soft_limit(total - own))
                    self.stats.encoded += 1
        self.stats.busy_seconds += self._clock() - started
        return out

    def _next_frame(self, member: _Member) -> Samples | None:
        item = member.buffer.pop()
        if item is None:
            member.last_frame = None
            member.concealed_in_a_row = 0
            return None
        if item is LOST:
            member.concealed_in_a_row += 1
            self.stats.concealed += 1
            return conceal(member.last_frame, member.concealed_in_a_row)
        assert isinstance(item, bytes)
        if member.decoder is None:
            member.decoder = self._decoder_factory()
        frame = member.decoder.decode(item)
        self.stats.decoded += 1
        member.last_frame = frame
        member.concealed_in_a_row = 0
        return frame
