"""Video frame assembly: the receiver's jitter buffer for VP8 over RTP, sans-I/O.

A frame is released the moment it is complete (its first packet with S=1/PID=0, its
marker packet, and every sequence number between), never by waiting for the next frame to
begin. Frames leave in order. When a frame cannot be completed in time (NACK did not
recover it) or the buffer overflows, the assembler drops what it holds, waits for a
keyframe, and asks for one (PLI). A fresh assembler waits for a keyframe too, so a late
joiner asks for one at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from confero.protocol.rtp import RtpPacket, SequenceUnwrapper
from confero.protocol.vp8 import Vp8Descriptor, Vp8Error, is_keyframe, parse_descriptor


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    timestamp: int
    keyframe: bool
    picture_id: int | None
    first_seq: int
    packets: int
    #: Local time when the frame's last missing packet arrived (completion time).
    completed_at: float
    #: Local time when the frame's first packet arrived.
    first_packet_at: float
    extensions: dict[int, bytes]


@dataclass(slots=True)
class _Stored:
    packet: RtpPacket
    descriptor: Vp8Descriptor
    arrived: float


class FrameAssembler:
    def __init__(
        self,
        *,
        max_packets: int = 600,
        max_wait: float = 0.25,
        pli_interval: float = 0.3,
        silent_after: float = 2.0,
    ) -> None:
        self.max_packets = max_packets
        #: no keyframe requests for a stream silent this long (it stopped; asking more
        #: would only have the publisher send keyframes for nobody)
        self.silent_after = silent_after
        self.max_wait = max_wait  # how long an incomplete frame may block the ones after it
        self.pli_interval = pli_interval
        self._unwrap = SequenceUnwrapper()
        self._packets: dict[int, _Stored] = {}
        self._released_until: int | None = None  # unwrapped seq of the last released packet
        self.waiting_for_keyframe = True
        self._pli_sent_at: float | None = None
        self._incomplete_since: float | None = None
        self._last_arrival = float("-inf")  # when the latest packet was stored
        self._newest: int | None = None  # the highest (unwrapped) sequence number stored
        # statistics
        self.frames_released = 0
        self.frames_dropped = 0
        self.packets_late = 0
        self.packets_invalid = 0
        self.keyframe_requests = 0

    def push(self, packet: RtpPacket, now: float) -> list[Frame]:
        try:
            descriptor = parse_descriptor(packet.payload)
        except Vp8Error:
            self.packets_invalid += 1
            return []
        seq = self._unwrap.unwrap(packet.sequence_number)
        if self._released_until is not None and seq <= self._released_until:
            self.packets_late += 1  # duplicate, or a retransmission that came too late
            return []
        if seq in self._packets:
            return []
        self._packets[seq] = _Stored(packet, descriptor, now)
        self._last_arrival = now
        if self._newest is None or seq > self._newest:
            self._newest = seq
        if len(self._packets) > self.max_packets:
            self._give_up(clear=True)
            return []
        return self._release(now)

    def poll(self, now: float) -> list[Frame]:
        """Call periodically: gives up on frames that stayed incomplete too long.

        Too long means ``max_wait`` with a hole (a missing packet below the newest one,
        which NACK had that long to repair), or ``max_wait`` without any packet at all (a
        lost tail). A frame whose packets are still arriving in order is not given up on,
        however long it takes: on a slow link a paced keyframe takes a second or more,
        and abandoning it half-way only asks for another one (a keyframe storm)."""
        if (
            self._incomplete_since is not None
            and now >= self._incomplete_since + self.max_wait
            and not self.waiting_for_keyframe
            and (self._has_hole() or now >= self._last_arrival + self.max_wait)
        ):
            self._give_up(clear=False)
        return self._release(now)

    def keyframe_request_due(self, now: float) -> bool:
        """True when a PLI should be sent now (at most once per ``pli_interval``), unless
        a keyframe is already on its way: its first packet is here and the rest keep
        coming in order."""
        if not self.waiting_for_keyframe:
            return False
        if self._pli_sent_at is not None and now < self._pli_sent_at + self.pli_interval:
            return False
        if self._keyframe_arriving(now):
            return False
        if now > self._last_arrival + self.silent_after > float("-inf"):
            # the stream stopped (the server paused it for us, or switched us to the
            # publisher's other form): a keyframe request cannot bring it back, and when
            # it comes back the server starts it with a keyframe
            self._pli_sent_at = now  # (and no timer is due for it)
            return False
        self._pli_sent_at = now
        self.keyframe_requests += 1
        return True

    def _has_hole(self) -> bool:
        """A packet missing between the last released one and the newest one here."""
        if self._released_until is None or self._newest is None:
            return False
        return self._newest - self._released_until != len(self._packets)

    def _keyframe_arriving(self, now: float) -> bool:
        if self._newest is None or now >= self._last_arrival + self.pli_interval:
            return False
        starts = [seq for seq, stored in self._packets.items()
                  if stored.descriptor.starts_frame
                  and is_keyframe(stored.packet.payload, stored.descriptor)]
        if not starts:
            return False
        start = max(starts)
        return sum(1 for seq in self._packets if seq >= start) == self._newest - start + 1

    def next_deadline(self) -> float | None:
        """When :meth:`poll` or :meth:`keyframe_request_due` next need to be called."""
        deadlines = []
        if self._incomplete_since is not None and not self.waiting_for_keyframe:
            give_up = self._incomplete_since + self.max_wait
            if not self._has_hole():  # still arriving in order: from the latest packet
                give_up = max(give_up, self._last_arrival + self.max_wait)
            deadlines.append(give_up)
        if self.waiting_for_keyframe:
            sent = self._pli_sent_at
            due = float("-inf") if sent is None else sent + self.pli_interval
            if self._newest is not None and self._last_arrival + self.pli_interval > due:
                due = max(due, self._last_arrival + self.pli_interval) if (
                    self._keyframe_arriving(self._last_arrival)) else due
            if self._last_arrival == float("-inf") or (
                    due <= self._last_arrival + self.silent_after):
                deadlines.append(due)
        return min(deadlines) if deadlines else None

    def request_keyframe(self) -> None:
        """The decoder failed: wait for (and ask for) a keyframe."""
        self.waiting_for_keyframe = True
        self._pli_sent_at = None

    # ------------------------------------------------------------------ internals

    def _release(self, now: float) -> list[Frame]:
        frames: list[Frame] = []
        while (found := self._next_complete()) is not None:
            frames.append(self._emit(*found, now))
        if not self._packets or self.waiting_for_keyframe:
            self._incomplete_since = None
        elif frames or self._incomplete_since is None:
            self._incomplete_since = now  # blocked on an incomplete frame from now on
        return frames

    def _next_complete(self) -> tuple[int, list[_Stored]] | None:
        if not self.waiting_for_keyframe and self._released_until is not None:
            start = self._released_until + 1
            parts = self._collect(start)
            return None if parts is None else (start, parts)
        for start in sorted(self._packets):  # the oldest complete keyframe
            stored = self._packets[start]
            if is_keyframe(stored.packet.payload, stored.descriptor):
                parts = self._collect(start)
                if parts is not None:
                    return start, parts
        return None

    def _collect(self, start: int) -> list[_Stored] | None:
        """The packets of the frame beginning at ``start``, if all are here."""
        first = self._packets.get(start)
        if first is None or not first.descriptor.starts_frame:
            return None
        parts = []
        seq = start
        while True:
            stored = self._packets.get(seq)
            if stored is None or stored.packet.timestamp != first.packet.timestamp:
                return None
            parts.append(stored)
            if stored.packet.marker:
                return parts
            seq += 1

    def _emit(self, start: int, parts: list[_Stored], now: float) -> Frame:
        end = start + len(parts) - 1
        for seq in range(start, end + 1):
            del self._packets[seq]
        if self.waiting_for_keyframe:
            older = [seq for seq in self._packets if seq < start]
            self.frames_dropped += len({self._packets[seq].packet.timestamp for seq in older})
            for seq in older:
                del self._packets[seq]
            self.waiting_for_keyframe = False
        self._released_until = end
        self.frames_released += 1
        first = parts[0]
        return Frame(
            data=b"".join(p.packet.payload[p.descriptor.header_size :] for p in parts),
            timestamp=first.packet.timestamp,
            keyframe=is_keyframe(first.packet.payload, first.descriptor),
            picture_id=first.descriptor.picture_id,
            first_seq=first.packet.sequence_number,
            packets=len(parts),
            completed_at=now,
            first_packet_at=min(p.arrived for p in parts),
            extensions=first.packet.extensions,
        )

    def _give_up(self, *, clear: bool) -> None:
        """Stop waiting for the blocking frame: wait for a keyframe instead."""
        if clear:
            self.frames_dropped += len({s.packet.timestamp for s in self._packets.values()})
            self._packets.clear()
        self._incomplete_since = None
        self.waiting_for_keyframe = True
