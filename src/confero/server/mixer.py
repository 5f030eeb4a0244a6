"""Per-meeting audio mixing: jitter buffers, decoding, mix-minus, limiting, encoding.

Sans-I/O: ``push`` takes each speaker's Opus payload as it arrives, ``mix`` is called on
the 20 ms clock and returns what each listener should receive now. Costs follow who
talks, not who is present:

- muted participants send nothing; packets whose RFC 6464 level says "silence" are not
  even decoded;
- everyone who is not speaking hears the same mix (all speakers), encoded once and
  shared; only each active speaker needs a mix of its own (everyone but themselves);
- with nobody speaking, nothing is encoded or sent (clients play silence).

Every listener receives one continuous Opus stream, and its decoder only works well if the
packets come from one continuous encoder state. So a listener who starts talking does not
get a fresh encoder (its first packets would decode as a ~60 ms hole and a click): its own
encoder starts as a byte copy of the shared encoder's state, the one that made the last
packet it received. When it stops talking it stays on its own encoder, now fed the shared
mix, until that encoder produces exactly the shared packets for a few frames in a row (the
two states have converged, so moving back is invisible to its decoder) or, at worst, for
``HANGOVER_FRAMES``.

A missing frame of a speaker is recovered from the next packet's in-band FEC when that
packet is already here (the jitter buffer is peeked one frame ahead), and otherwise
extrapolated by Opus' own PLC.

Sums are int32 (no int16 wrap-around); the result goes through a soft limiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from confero.media.audio import Mix, Samples, level_dbov, play_next, soft_limit
from confero.media.opus import Decoder, Encoder
from confero.protocol.audio_jitter import AudioJitterBuffer

#: Frames at or below this level (-dBov, RFC 6464) are treated as silence.
SILENCE_LEVEL = 70
#: After a listener stops talking: identical packets in a row that prove its own encoder
#: has converged onto the shared one, and the most frames we keep it apart anyway.
CONVERGED_FRAMES = 3
#: At most this many speakers are decoded and mixed in one tick: the loudest by the RFC
#: 6464 level in their packets' headers (known without decoding), each kept for at
#: least ``MIXED_HOLD_TICKS`` once chosen so the selection does not flap. More voices at
#: once are not intelligible anyway, and it bounds one meeting's mixing cost whatever its
#: size: 24 people talking at once cost what 4 do, and a bystander meeting's mix on the
#: same event loop keeps its 50 ticks a second.
MAX_MIXED_SPEAKERS = 4
MIXED_HOLD_TICKS = 50
HANGOVER_FRAMES = 50


def jitter_buffer() -> AudioJitterBuffer:
    """A speaker's buffer at the mixer input: starts at one frame and grows from measured
    jitter; an underrun waits for the late frame instead of skipping it, so a link whose
    only fault is timing jitter conceals nothing once the depth has settled."""
    return AudioJitterBuffer(target=1, min_target=1, max_target=8, capacity=25,
                             hold_on_underrun=True)


def mix_encoder() -> Encoder:
    """The mixes' encoders: libopus chooses the mode from the signal (as the PyAV encoder
    did before), no in-band FEC. FEC would keep libopus in its speech modes and cost
    about twice the CPU per encode (measured: 436 against 117 us for a three-tone mix),
    and the mixer's encodes are most of the server's audio work; it is one setting to
    turn on (``set_packet_loss_perc``) once receivers report downlink loss."""
    return Encoder(fec=False, packet_loss_perc=0, voice=False)


@dataclass
class _Member:
    buffer: AudioJitterBuffer
    decoder: Decoder | None = None
    #: Own encoder, present while this listener needs (or just needed) its own mix.
    encoder: Encoder | None = None
    #: The last packet this listener was sent came from the shared encoder.
    on_shared: bool = False
    hangover: int = 0
    same_in_a_row: int = 0
    #: level (-dBov) of the latest packet's header; ticks it stays in the mix regardless
    level: int = 127
    hold: int = 0


@dataclass
class MixerStats:
    ticks: int = 0
    decoded: int = 0
    encoded: int = 0
    skipped_silent: int = 0
    concealed: int = 0  # missing frames, PLC or FEC
    not_mixed: int = 0  # frames of speakers beyond the loudest MAX_MIXED_SPEAKERS
    recovered: int = 0  # of which rebuilt from the next packet's FEC
    decode_errors: int = 0
    forks: int = 0  # own encoders started from the shared state
    rejoined: int = 0  # own encoders given up for the shared one after converging
    busy_seconds: float = 0.0


class MeetingMixer:
    def __init__(
        self,
        encoder_factory: Callable[[], Encoder] = mix_encoder,
        decoder_factory: Callable[[], Decoder] = Decoder,
        clock: Callable[[], float] = time.perf_counter,
        max_mixed: int = MAX_MIXED_SPEAKERS,
    ) -> None:
        self._members: dict[str, _Member] = {}
        self.max_mixed = max_mixed
        self._shared_encoder: Encoder | None = None
        self._encoder_factory = encoder_factory
        self._decoder_factory = decoder_factory
        self._clock = clock  # only to measure our own CPU time for /metrics
        self.stats = MixerStats()
        #: Who was mixed in the last tick, with their level (-dBov, RFC 6464 scale):
        #: the router names them as CSRCs with RFC 6465 levels, for active-speaker display.
        self.levels: dict[str, int] = {}

    def add(self, participant_id: str) -> None:
        self._members.setdefault(participant_id, _Member(jitter_buffer()))

    def remove(self, participant_id: str) -> None:
        self._members.pop(participant_id, None)

    @property
    def empty(self) -> bool:
        return not self._members

    def push(self, participant_id: str, timestamp: int, payload: bytes, level: int | None,
             now: float, *, redundant: tuple[tuple[int, bytes], ...] = ()) -> None:
        """``redundant``: (timestamp, payload) copies of earlier frames that came with
        this packet (RFC 2198); they fill holes a lost packet left."""
        member = self._members.get(participant_id)
        if member is None or not payload:
            return
        if level is not None and level >= SILENCE_LEVEL:
            self.stats.skipped_silent += 1  # silent: not worth a decode
            return
        member.level = level if level is not None else 0  # unknown counts as loud
        for earlier, data in redundant:
            if data:
                member.buffer.push(earlier, data, now, redundant=True)
        member.buffer.push(timestamp, payload, now)

    def mix(self) -> dict[str, bytes]:
        """One 20 ms tick: listener id -> Opus payload (absent: send nothing)."""
        started = self._clock()
        self.stats.ticks += 1
        speaking: dict[str, Samples] = {}
        chosen = self._loudest()
        for pid, member in self._members.items():
            if pid not in chosen:
                self._skip_frame(member)
                continue
            frame = self._next_frame(member)
            if frame is not None:
                speaking[pid] = frame
                member.hold = MIXED_HOLD_TICKS
        for member in self._members.values():
            member.hold = max(0, member.hold - 1)
        out: dict[str, bytes] = {}
        self.levels = {pid: level_dbov(frame) for pid, frame in speaking.items()}
        if speaking:
            total: Mix = np.sum(
                np.stack(list(speaking.values())).astype(np.int32), axis=0, dtype=np.int32
            )
            # Forks first: the shared encoder's state must be the one that made the last
            # packet these listeners got, i.e. taken before it encodes this tick.
            for pid, member in self._members.items():
                if pid in speaking and len(speaking) > 1 and member.encoder is None:
                    member.encoder = self._fork(member)
            shared: bytes | None = None
            for pid, member in self._members.items():
                own = speaking.get(pid)
                if own is not None:
                    if len(speaking) > 1:  # alone speaking: nothing to hear but yourself
                        assert member.encoder is not None
                        member.hangover = HANGOVER_FRAMES
                        member.same_in_a_row = 0
                        out[pid] = self._encode(member.encoder, total - own)
                        member.on_shared = False
                    continue
                if shared is None:
                    if self._shared_encoder is None:
                        self._shared_encoder = self._encoder_factory()
                    shared = self._encode(self._shared_encoder, total)
                if member.encoder is not None and (
                    member.same_in_a_row >= CONVERGED_FRAMES or member.hangover <= 0
                ):
                    # decided now, not when the last own packet went out: had it started
                    # talking again at once, its own encoder would simply have continued
                    self.stats.rejoined += member.same_in_a_row >= CONVERGED_FRAMES
                    member.encoder = None
                if member.encoder is None:
                    out[pid] = shared
                    member.on_shared = True
                    continue
                # stopped talking: stay on the own state until it meets the shared one
                payload = self._encode(member.encoder, total)
                member.same_in_a_row = member.same_in_a_row + 1 if payload == shared else 0
                member.hangover -= 1
                out[pid] = payload
                member.on_shared = False
        self.stats.busy_seconds += self._clock() - started
        return out

    def _encode(self, encoder: Encoder, mix: Mix) -> bytes:
        self.stats.encoded += 1
        return encoder.encode(soft_limit(mix))

    def _fork(self, member: _Member) -> Encoder:
        if member.on_shared and self._shared_encoder is not None:
            self.stats.forks += 1
            return self._shared_encoder.clone()
        return self._encoder_factory()

    def _loudest(self) -> set[str]:
        """Who is mixed this tick: everyone with audio queued, or, beyond
        ``max_mixed``, those still held and then the loudest by header level."""
        active = [pid for pid, m in self._members.items()
                  if m.buffer.depth or m.buffer.playing]
        if len(active) <= self.max_mixed:
            return set(active)
        ranked = sorted(active, key=lambda pid: (self._members[pid].hold <= 0,
                                                 self._members[pid].level))
        return set(ranked[: self.max_mixed])

    def _skip_frame(self, member: _Member) -> None:
        """Keep a speaker's buffer moving without decoding it; its decoder's state goes
        stale, so it starts afresh when the speaker is mixed again."""
        if member.buffer.depth or member.buffer.playing:
            if member.buffer.pop() is not None:
                self.stats.not_mixed += 1
            member.decoder = None

    def _next_frame(self, member: _Member) -> Samples | None:
        if member.decoder is None:
            if not member.buffer.depth:
                return None  # never heard from: nothing to decode or conceal
            member.decoder = self._decoder_factory()
        frame, kind = play_next(member.buffer, member.decoder)
        if kind == "decoded":
            self.stats.decoded += 1
        elif kind in ("fec", "plc"):
            self.stats.concealed += 1
            self.stats.recovered += kind == "fec"
        elif kind == "error":
            self.stats.decode_errors += 1  # a bad packet is a lost one
        return frame
