"""Playout buffer for 20 ms audio frames, sans-I/O; used by the mixer and by clients.

``push`` files packets by RTP timestamp as they arrive; ``pop`` is called once per 20 ms
playout tick and returns the frame due now, :data:`LOST` when it is missing but later
ones are here (conceal it), or ``None`` when the stream is idle (muted, silent, not yet
started). The buffer starts playing once ``target`` frames are queued, keeps its depth
near ``target`` by dropping frames when it stays too deep (latency stays bounded), and, when
adaptive, sets ``target`` from the measured inter-arrival jitter (RFC 3550 estimator) and
from its own underruns.

Why underruns count, not only the jitter estimate: on a busy machine the timing fault is
scheduling stalls (a process not run for 20-100 ms, then a burst), rare enough that the
smoothed RFC 3550 jitter stays at a few ms while every stall empties a one-frame buffer.
Each underrun therefore deepens the buffer by one frame at once; it comes back down one
frame at a time only after ``relax_after`` pops without an underrun. A buffer that is too
deep is trimmed only when it stays so for ``shed_after`` pops: after a stall the queued
burst is normal, and throwing it away at once would make a click and then, at the next
stall, a hole (measured on a stall simulation: 6 % of frames shed or concealed before).

With ``hold_on_underrun``, a frame that is due but missing while nothing later has arrived
either is waited for rather than skipped: this tick is concealed and the frame plays on
the next one, so the buffer grows one frame deeper exactly when the link's timing needs
it (a late frame is then played, not thrown away as late). ``peek`` shows the payload due
after the one just popped, for Opus in-band FEC (the next packet rebuilds a lost one).
"""

from __future__ import annotations

import math
from typing import Final

from confero.protocol.rtp import Unwrapper


class _Lost:
    def __repr__(self) -> str:
        return "LOST"


LOST: Final = _Lost()


class AudioJitterBuffer:
    def __init__(
        self,
        *,
        frame_ticks: int = 960,
        clock_rate: int = 48_000,
        target: int = 2,
        min_target: int = 1,
        max_target: int = 8,
        adaptive: bool = True,
        idle_after: int = 3,
        capacity: int = 50,
        hold_on_underrun: bool = False,
        shed_after: int = 50,
        relax_after: int = 500,
        peak_memory: float = 20.0,
    ) -> None:
        self.frame_ticks = frame_ticks
        self.clock_rate = clock_rate
        self.target = target
        self.min_target = min_target
        self.max_target = max_target
        self.adaptive = adaptive
        self.idle_after = idle_after
        self.capacity = capacity
        self.hold_on_underrun = hold_on_underrun
        self.shed_after = shed_after
        self.relax_after = relax_after
        self.peak_memory = peak_memory
        self._peak_frames = 0  # the deepest stall seen lately, in frames
        self._peak_at = -math.inf
        self._pops_since_underrun = 0
        self._lowest_depth = capacity  # the least queued after a pop, since the last check
        self._frames: dict[int, bytes] = {}
        self._unwrap = Unwrapper(32)  # RTP timestamps
        self._next: int | None = None  # timestamp due at the next pop, None when idle
        self._empty_pops = 0
        self._over_target_pops = 0
        self._last_arrival: tuple[float, int] | None = None
        #: RFC 3550 inter-arrival jitter, in seconds.
        self.jitter = 0.0
        # statistics
        self.played = 0
        self.concealed = 0
        self.late = 0
        self.dropped_for_latency = 0
        self.underruns = 0  # due frames missing with nothing later queued (late, or lost)
        self.recovered = 0  # frames filled in from a later packet's redundant copy

    @property
    def depth(self) -> int:
        """Frames queued from the next one due."""
        return len(self._frames)

    @property
    def playing(self) -> bool:
        return self._next is not None

    def push(self, timestamp: int, payload: bytes, now: float, *,
             redundant: bool = False) -> None:
        """``redundant``: a copy of an earlier frame that rode in a later packet (RFC
        2198): it fills a hole if there is one, and is no timing sample (it arrives a
        frame late by design) nor a late packet when its original already played."""
        ts = self._unwrap.unwrap(timestamp)
        if redundant:
            # only while playing: a copy that reaches an idle buffer is of a frame before
            # the talkspurt's first, and playing it would add a frame of latency
            if self._next is not None and ts >= self._next and ts not in self._frames:
                self._frames[ts] = payload
                self.recovered += 1
                while len(self._frames) > self.capacity:
                    del self._frames[min(self._frames)]
                    self.dropped_for_latency += 1
            return
        self._update_jitter(ts, now)
        if self._next is not None and ts < self._next:
            self.late += 1
            return
        self._frames.setdefault(ts, payload)
        while len(self._frames) > self.capacity:
            del self._frames[min(self._frames)]
            self.dropped_for_latency += 1

    def pop(self) -> bytes | _Lost | None:
        if self._next is None:
            if len(self._frames) < self.target:
                return None
            self._next = min(self._frames)
        if len(self._frames) > self.target + 2:
            self._over_target_pops += 1
            if self._over_target_pops >= self.shed_after:
                # Persistently too deep (a burst after a stall): shed the excess in one
                # jump, oldest first. One discontinuity is one click; skipping a frame
                # every 100 ms until caught up would be a click every 100 ms. Two frames
                # of slack, not one: a target relaxed by a frame is met when the stream
                # next pauses (it rebuffers at the new target), not by a cut mid-sound
                # (that cut was a click every 10 s in the toggling scenario).
                self._over_target_pops = 0
                while len(self._frames) > self.target + 1:
                    oldest = min(self._frames)
                    del self._frames[oldest]
                    self.dropped_for_latency += 1
                    self._next = max(self._next, oldest + self.frame_ticks)
        else:
            self._over_target_pops = 0
        due = self._next
        payload = self._frames.pop(due, None)
        self._next = due + self.frame_ticks
        if payload is not None:
            self._empty_pops = 0
            self.played += 1
            self._relax()
            return payload
        if self._frames:  # a hole with later frames queued: conceal it
            self.concealed += 1
            return LOST
        self._empty_pops += 1
        if self._empty_pops >= self.idle_after:  # the stream stopped: go idle, rebuffer
            self._next = None
            self._empty_pops = 0
            self._grow_target()
            return None
        if self.hold_on_underrun and self._empty_pops == 1:
            self._next = due  # late rather than lost (as far as we know): wait for it
        self.concealed += 1
        self.underruns += 1
        self._grow_target(step=True)
        return LOST

    def peek(self) -> bytes | None:
        """The frame due at the next :meth:`pop`, if it has arrived (after a pop returned
        :data:`LOST`, its in-band FEC can rebuild the lost frame)."""
        return self._frames.get(self._next) if self._next is not None else None

    def _grow_target(self, *, step: bool = False) -> None:
        """``step``: an underrun, which the buffer's depth did not cover: one frame deeper
        now (and at least what the jitter estimate asks for)."""
        self._pops_since_underrun = 0
        self._lowest_depth = self.capacity
        if self.adaptive and self.target < self.max_target:
            wanted = self._target_from_jitter()
            if step:
                wanted = max(wanted, self.target + 1)
            self.target = min(self.max_target, max(self.target, wanted))

    def _relax(self) -> None:
        """A long spell without underruns in which the buffer never ran down to its last
        frame: one frame shallower, never below what the jitter estimate asks for (the
        spare frame drains through the shedding above). A spell whose lowest depth was
        one frame used the depth it had, and keeps it."""
        self._pops_since_underrun += 1
        self._lowest_depth = min(self._lowest_depth, len(self._frames))
        if self._pops_since_underrun >= self.relax_after and self.adaptive:
            spare = self._lowest_depth >= 2
            self._pops_since_underrun = 0
            self._lowest_depth = self.capacity
            wanted = self._target_from_jitter()
            if spare and self.target > max(self.min_target, wanted):
                self.target -= 1

    def _target_from_jitter(self) -> int:
        frame_seconds = self.frame_ticks / self.clock_rate
        return max(self.min_target, math.ceil((3 * self.jitter) / frame_seconds) + 1)

    def _update_jitter(self, ts: int, now: float) -> None:
        if self._last_arrival is not None:
            last_now, last_ts = self._last_arrival
            transit_change = (now - last_now) - (ts - last_ts) / self.clock_rate
            self.jitter += (abs(transit_change) - self.jitter) / 16
            if ts - last_ts == self.frame_ticks:
                self._note_gap(now - last_now, now)
            if self.adaptive:
                # let the target come down when the network calms down (and no stall
                # was seen for a while: stalls recur, the smoothed jitter forgets them)
                wanted = max(self._target_from_jitter(), self._peak_floor(now))
                if wanted < self.target and self._next is None:
                    self.target = max(self.min_target, wanted)
        self._last_arrival = (now, ts)

    def _note_gap(self, gap: float, now: float) -> None:
        """Two consecutive frames ``gap`` seconds apart: a stall of the sender, the path
        or this process. Playing through it needed ``gap`` worth of frames queued; keep
        that depth (and do not relax) while such stalls keep coming."""
        frame_seconds = self.frame_ticks / self.clock_rate
        if gap <= 2.5 * frame_seconds:
            return
        frames = min(self.max_target, math.ceil(gap / frame_seconds - 0.25))
        if now - self._peak_at > self.peak_memory:
            self._peak_frames = 0
        self._peak_frames = max(self._peak_frames, frames)
        self._peak_at = now
        self._pops_since_underrun = 0
        self._lowest_depth = self.capacity
        if self.adaptive and frames > self.target:
            self.target = frames

    def _peak_floor(self, now: float) -> int:
        return self._peak_frames if now - self._peak_at <= self.peak_memory else 0
