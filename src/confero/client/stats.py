"""What a receiver knows about one remote stream: counters, rates and delays.

``now`` is the receiver's monotonic clock; ``delay`` values are computed by the caller
from the capture time carried on the wire (the sender's wall clock) and the receiver's
wall clock, and are handed in as seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from confero.protocol.rtp import RtpPacket, SequenceUnwrapper


@dataclass
class StreamStats:
    """Cumulative counters plus one-second rates of one remote stream."""

    kind: str
    ssrc: int
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    nacks_sent: int = 0
    plis_sent: int = 0
    frames_decoded: int = 0
    decode_errors: int = 0
    frames_dropped: int = 0
    #: decoded but not shown: the sender's other camera stream was (simulcast, issue 9)
    frames_superseded: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    bitrate_bps: float = 0.0
    jitter_ms: float = 0.0
    delay_ms: float | None = None  # capture (sender clock) to decoded (our clock)
    #: Fraction of packets lost in the last one-second window (0..1).
    loss_fraction: float = 0.0
    _window_start: float = 0.0
    _window_frames: int = 0
    _window_bytes: int = 0
    _window_expected_base: int = 0
    _window_received_base: int = 0
    _delays: list[float] = field(default_factory=list)
    _all_delays: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    _highest_seq: int | None = None
    _first_seq: int | None = None
    _unwrap: SequenceUnwrapper = field(default_factory=SequenceUnwrapper)
    _transit: float | None = None

    def on_packet(self, packet: RtpPacket, size: int, now: float, clock_rate: int) -> None:
        self.packets += 1
        self.bytes += size
        self._window_bytes += size
        seq = self._unwrap.unwrap(packet.sequence_number)
        if self._first_seq is None:
            self._first_seq = seq
        if self._highest_seq is None or seq > self._highest_seq:
            self._highest_seq = seq
        self.lost = max(0, self._highest_seq - self._first_seq + 1 - self.packets)
        transit = now - packet.timestamp / clock_rate
        if self._transit is not None:
            delta = abs(transit - self._transit)
            if delta < 10:  # ignore timestamp jumps (a new talkspurt, a restart)
                self.jitter_ms += (delta * 1000 - self.jitter_ms) / 16
        self._transit = transit

    @property
    def expected(self) -> int:
        if self._highest_seq is None or self._first_seq is None:
            return 0
        return self._highest_seq - self._first_seq + 1

    def on_frame(self, delay: float | None) -> None:
        self.frames_decoded += 1
        self._window_frames += 1
        if delay is not None:
            self._delays.append(delay)
            self._all_delays.append(delay)

    def roll(self, now: float) -> None:
        """Close the current one-second window: compute fps, bitrate, loss and delay."""
        span = now - self._window_start
        if span <= 0:
            return
        self.fps = self._window_frames / span
        self.bitrate_bps = self._window_bytes * 8 / span
        expected = self.expected - self._window_expected_base
        received = self.packets - self._window_received_base
        self.loss_fraction = max(0.0, (expected - received) / expected) if expected > 0 else 0.0
        self._window_expected_base, self._window_received_base = self.expected, self.packets
        if self._delays:
            self.delay_ms = float(np.median(self._delays)) * 1000
        self._window_start = now
        self._window_frames = self._window_bytes = 0
        self._delays = []

    def delay_percentiles(self) -> dict[str, float] | None:
        """Capture-to-decoded delay over the last 20 000 frames, in milliseconds."""
        if not self._all_delays:
            return None
        ms = np.array(self._all_delays) * 1000
        return {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p95": round(float(np.percentile(ms, 95)), 2),
            "max": round(float(ms.max()), 2),
            "frames": len(ms),
        }

    def public(self) -> dict[str, object]:
        values: dict[str, object] = {
            k: v for k, v in self.__dict__.items() if not k.startswith("_")
        }
        values["delay_percentiles_ms"] = self.delay_percentiles()
        return values
