"""Per-subscriber VP8 temporal-layer forwarding at the server, without decoding (sans-I/O).

A :class:`LayerForwarder` sits between one publisher's video stream and one subscriber. It
forwards whole frames whose TID is at most the subscriber's current layer and drops the
rest, and rewrites what the subscriber sees so the drops leave no trace: RTP sequence
numbers stay continuous (a receiver must not NACK a dropped frame's packets), PictureIDs
stay continuous. TL0PICIDX passes through: TL0 frames are never dropped, so it is already
consistent. A reverse map answers the subscriber's NACKs from the publisher's history.

Switching: down at once at the next frame boundary; up only where the new layer's frames
can be decoded, at a keyframe, at a TL0 frame (our encoder, media/vpx.py, never lets an
upper-layer frame reference data older than the latest TL0 frame), or one layer at a time at
a layer-sync frame (Y bit) of that layer.

Loss on the publisher's link: packets missing when a later one arrives are assumed to belong
to forwarded frames and keep their place in the subscriber's numbering, unless the frames
around the gap show they belong to a dropped frame. A late packet whose frame turns out to be
dropped leaves a hole (counted in ``late_holes``). Inspired by Galène's packetmap; written
from scratch with unwrapped (64-bit) counters.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from confero.protocol.rtp import RtpPacket, SequenceUnwrapper, Unwrapper
from confero.protocol.vp8 import (
    Vp8Descriptor,
    Vp8Error,
    is_keyframe,
    parse_descriptor,
    rewrite_descriptor,
)

MAX_TID = 2
#: A jump larger than this (sequence numbers or pictures) is a restart, not loss.
MAX_GAP = 1000
_MAX_PICTURES = 256
_MAX_RESERVED = 2048


@dataclass(slots=True)
class _Picture:
    forward: bool
    sub_pid: int | None


@dataclass(slots=True)
class ForwarderStats:
    forwarded: int = 0
    dropped: int = 0
    invalid: int = 0
    late_holes: int = 0
    resent: int = 0
    switches_up: int = 0
    switches_down: int = 0
    pauses: int = 0


class LayerForwarder:
    """Decides, per packet, whether one subscriber gets it, and renumbers what it gets."""

    def __init__(
        self, target_tid: int = MAX_TID, history: int = 2048, upswitch_at_base: bool = True
    ) -> None:
        self.target_tid = max(0, min(MAX_TID, target_tid))
        #: The layer actually forwarded now (lags target_tid until a switch point).
        self.current_tid = self.target_tid
        self.upswitch_at_base = upswitch_at_base
        self.stats = ForwarderStats()
        #: nothing forwarded (see :meth:`pause`); after :meth:`resume`, nothing until a
        #: keyframe
        self.paused = False
        self._await_keyframe = False
        self._seq = SequenceUnwrapper()
        self._pid = Unwrapper(15)
        self._next: int | None = None  # highest publisher ext seq seen + 1
        self._offset = 0  # publisher ext seq - subscriber ext seq for new packets
        self._reserved: dict[int, int] = {}  # missing publisher ext seq -> its offset
        self._last_pid: int | None = None  # picture of the newest packet
        self._last_marker = False
        self._highest_pid: int | None = None
        self._pid_offset = 0
        self._pictures: OrderedDict[int, _Picture] = OrderedDict()
        self._reserved_pids: dict[int, tuple[int, int]] = {}  # pid -> (pid offset, level)
        self._history = history
        self._ring_sub = [-1] * history
        self._ring_pub = [0] * history
        self._back_pub = [-1] * history
        self._back_sub = [0] * history
        self._sub_top: int | None = None  # highest subscriber ext seq sent
        # Packets older than the very first one seen may extend the numbering downwards
        # (nothing was sent below it), as long as they leave no hole.
        self._sub_bottom: int | None = None
        self._bottom_ext = 0

    def set_target(self, tid: int) -> None:
        """The layer the subscriber's downlink can carry (from :class:`LayerRateMeter`)."""
        self.target_tid = max(0, min(MAX_TID, tid))

    def pause(self) -> None:
        """Forward no picture of this stream from the next one on (the subscriber's link
        cannot carry even its base layer). The numbering stays continuous: to the
        subscriber a paused stream is a stream that sends nothing."""
        if not self.paused:
            self.paused = True
            self.stats.pauses += 1

    @property
    def awaiting_keyframe(self) -> bool:
        """Resumed, but nothing forwarded yet: the publisher's keyframe has not come."""
        return self._await_keyframe

    def resume(self) -> None:
        """Forward again, from the next keyframe (the pictures in between are gone, so
        nothing before a keyframe would decode): ask the publisher for one."""
        if self.paused:
            self.paused = False
            self._await_keyframe = True

    # -- forwarding --------------------------------------------------------------------------

    def forward(
        self, packet: RtpPacket, descriptor: Vp8Descriptor | None = None
    ) -> RtpPacket | None:
        """The packet as the subscriber should get it, or None to drop it.

        ``descriptor``: the packet's parsed VP8 descriptor, when the caller parsed it once
        for all subscribers (saves about a third of the cost).
        """
        fields = self.forward_fields(packet, descriptor)
        if fields is None:
            return None
        seq, payload = fields
        return RtpPacket(packet.payload_type, seq, packet.timestamp, packet.ssrc, payload,
                         packet.marker, list(packet.csrcs), dict(packet.extensions))

    def forward_fields(
        self, packet: RtpPacket, descriptor: Vp8Descriptor | None = None
    ) -> tuple[int, bytes] | None:
        """What :meth:`forward` changes, without building a packet: the subscriber's
        sequence number and the payload (the same object when its PictureID stays). The
        server patches these into the publisher's bytes for each subscriber."""
        if descriptor is None:
            try:
                descriptor = parse_descriptor(packet.payload)
            except Vp8Error:
                self.stats.invalid += 1
                return None
        ext = self._seq.unwrap(packet.sequence_number)
        if self._next is not None and ext - self._next > MAX_GAP:
            self._restart(ext)
        if self._next is not None and self._next - ext > MAX_GAP:
            self.stats.invalid += 1  # far too old to place
            return None
        pid = self._pid_ext(descriptor)
        picture, sub_pid = self._picture(packet, descriptor, pid)
        if self._next is None or ext >= self._next:
            return self._new_packet(packet, descriptor, ext, pid, picture, sub_pid)
        return self._late_packet(packet, descriptor, ext, picture, sub_pid)

    def _restart(self, ext: int) -> None:
        """The publisher jumped (new encoder, long outage): continue our numbering."""
        top = self._sub_top if self._sub_top is not None else ext - 1
        self._offset = ext - (top + 1)
        self._next = ext
        self._sub_bottom = None
        self._reserved.clear()
        self._last_pid = None
        self._last_marker = True

    def _new_packet(self, packet: RtpPacket, descriptor: Vp8Descriptor, ext: int,
                    pid: int | None, picture: _Picture | None,
                    sub_pid: int | None) -> tuple[int, bytes] | None:
        if self._next is None:
            self._sub_bottom = self._bottom_ext = ext
        elif ext > self._next:
            self._open_gap(ext, pid, descriptor)
        self._next = ext + 1
        self._last_pid = pid
        self._last_marker = packet.marker
        if picture is not None and not picture.forward:
            self._offset += 1
            self.stats.dropped += 1
            return None
        return self._emit(packet, descriptor, ext - self._offset, ext, sub_pid)

    def _late_packet(self, packet: RtpPacket, descriptor: Vp8Descriptor, ext: int,
                     picture: _Picture | None, sub_pid: int | None
                     ) -> tuple[int, bytes] | None:
        offset = self._reserved.pop(ext, None)
        if offset is None:  # a duplicate or retransmission of a packet we placed
            sub = self._sub_for(ext)
            if sub is None:
                sub = self._extend_down(ext, picture)
            if sub is None:
                self.stats.dropped += 1
                return None
        else:
            sub = ext - offset
        if picture is not None and not picture.forward:
            if offset is not None:
                self.stats.late_holes += 1
            self.stats.dropped += 1
            return None
        return self._emit(packet, descriptor, sub, ext, sub_pid)

    def _extend_down(self, ext: int, picture: _Picture | None) -> int | None:
        """A packet from before the first one seen (the stream's start, reordered): number
        it below everything sent so far, keeping places for what is still missing."""
        if self._sub_bottom is None or not 0 < self._bottom_ext - ext <= 64:
            return None
        offset = self._bottom_ext - self._sub_bottom
        for missing in range(ext + 1, self._bottom_ext):
            self._reserved[missing] = offset
        self._sub_bottom -= self._bottom_ext - ext - 1
        self._bottom_ext = ext
        if picture is not None and not picture.forward:
            return None  # no number used: nothing to fill
        self._sub_bottom -= 1
        return self._sub_bottom

    def _open_gap(self, ext: int, pid: int | None, descriptor: Vp8Descriptor) -> None:
        """Packets [next, ext) are missing: keep their place, unless they can only belong
        to frames this subscriber does not get."""
        assert self._next is not None
        if self._gap_is_dropped(pid, descriptor):
            self._offset += ext - self._next
            return
        for missing in range(self._next, ext):
            self._reserved[missing] = self._offset
        while len(self._reserved) > _MAX_RESERVED:
            del self._reserved[next(iter(self._reserved))]

    def _gap_is_dropped(self, pid: int | None, descriptor: Vp8Descriptor) -> bool:
        if pid is None or self._last_pid is None:
            return False
        first = self._last_pid if not self._last_marker else self._last_pid + 1
        last = pid if not descriptor.starts_frame else pid - 1
        if last < first or last - first > 8:
            return False
        for candidate in range(first, last + 1):
            known = self._pictures.get(candidate)
            if known is None or known.forward:
                return False
        return True

    def _emit(self, packet: RtpPacket, descriptor: Vp8Descriptor, sub: int, ext: int,
              sub_pid: int | None) -> tuple[int, bytes]:
        history = self._history
        slot = sub % history
        self._ring_sub[slot] = sub
        self._ring_pub[slot] = ext
        back = ext % history
        self._back_pub[back] = ext
        self._back_sub[back] = sub
        if self._sub_top is None or sub > self._sub_top:
            self._sub_top = sub
        self.stats.forwarded += 1
        payload = packet.payload
        if sub_pid is not None and sub_pid != descriptor.picture_id:
            payload = rewrite_descriptor(payload, descriptor, picture_id=sub_pid)
        return sub & 0xFFFF, payload

    def resend(self, packet: RtpPacket) -> RtpPacket | None:
        """A packet from the publisher's history (found through
        :meth:`publisher_sequence`) renumbered as this subscriber first got it, or None if
        it never got it or it is too old to renumber."""
        try:
            descriptor = parse_descriptor(packet.payload)
        except Vp8Error:
            return None
        ext = self._seq.unwrap(packet.sequence_number)
        sub = self._sub_for(ext)
        if sub is None:
            return None
        pid = self._pid_ext(descriptor)
        sub_pid = None
        if pid is not None:
            picture = self._pictures.get(pid)
            if picture is None or not picture.forward:
                return None
            sub_pid = picture.sub_pid
        self.stats.resent += 1
        payload = packet.payload
        if sub_pid is not None and sub_pid != descriptor.picture_id:
            payload = rewrite_descriptor(payload, descriptor, picture_id=sub_pid)
        return RtpPacket(packet.payload_type, sub & 0xFFFF, packet.timestamp, packet.ssrc,
                         payload, packet.marker, list(packet.csrcs), dict(packet.extensions))

    # -- pictures and switching -------------------------------------------------------------

    def _pid_ext(self, descriptor: Vp8Descriptor) -> int | None:
        if descriptor.picture_id is None:
            return None
        if descriptor.picture_id_bits == 7:
            return None  # too short to track; such streams are forwarded unlayered
        return self._pid.unwrap(descriptor.picture_id)

    def _picture(self, packet: RtpPacket, descriptor: Vp8Descriptor,
                 pid: int | None) -> tuple[_Picture | None, int | None]:
        """This frame's decision (made on its first packet to arrive) and its new PictureID."""
        if pid is None:
            return None, None
        known = self._pictures.get(pid)
        if known is not None:
            return known, known.sub_pid
        tid = descriptor.tid if descriptor.tid is not None else 0
        if self._highest_pid is not None and pid - self._highest_pid > MAX_GAP:
            top = self._highest_pid - self._pid_offset
            self._pid_offset = pid - (top + 1)
            self._reserved_pids.clear()
            self._highest_pid = None
        if self._highest_pid is None or pid > self._highest_pid:
            if self._highest_pid is not None:
                for missing in range(max(self._highest_pid + 1, pid - 64), pid):
                    self._reserved_pids[missing] = (self._pid_offset, self.current_tid)
                while len(self._reserved_pids) > _MAX_PICTURES:
                    del self._reserved_pids[next(iter(self._reserved_pids))]
            self._highest_pid = pid
            self._switch(descriptor, packet, tid)
            forward = tid <= self.current_tid and not self.paused
            if forward and self._await_keyframe:
                if descriptor.starts_frame and is_keyframe(packet.payload, descriptor):
                    self._await_keyframe = False
                else:
                    forward = False
            offset = self._pid_offset
            if not forward:
                self._pid_offset += 1
        else:
            reserved = self._reserved_pids.pop(pid, None)
            if reserved is None:
                offset, level = self._pid_offset, -1  # long forgotten: drop unless TL0
            else:
                offset, level = reserved
            forward = ((tid == 0 or tid <= level) and not self.paused
                       and not self._await_keyframe)
        entry = _Picture(forward, (pid - offset) & 0x7FFF if forward else None)
        self._pictures[pid] = entry
        while len(self._pictures) > _MAX_PICTURES:
            self._pictures.popitem(last=False)
        return entry, entry.sub_pid

    def _switch(self, descriptor: Vp8Descriptor, packet: RtpPacket, tid: int) -> None:
        if self.target_tid < self.current_tid:
            self.current_tid = self.target_tid
            self.stats.switches_down += 1
        elif self.target_tid > self.current_tid:
            key = descriptor.starts_frame and is_keyframe(packet.payload, descriptor)
            if key or (tid == 0 and self.upswitch_at_base):
                self.current_tid = self.target_tid
                self.stats.switches_up += 1
            elif descriptor.layer_sync and tid == self.current_tid + 1:
                self.current_tid = tid
                self.stats.switches_up += 1

    # -- NACK ---------------------------------------------------------------------------------

    def publisher_sequence(self, sequence_number: int) -> int | None:
        """The publisher's sequence number for one the subscriber NACKed, if still known."""
        if self._sub_top is None:
            return None
        delta = (sequence_number - self._sub_top) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        sub = self._sub_top + delta
        slot = sub % self._history
        if self._ring_sub[slot] != sub:
            # a hole we kept a place for: the publisher never got that packet to us either,
            # so the NACK must go on to the publisher under its own number
            for ext, offset in self._reserved.items():
                if ext - offset == sub:
                    return ext & 0xFFFF
            return None
        return self._ring_pub[slot] & 0xFFFF

    def _sub_for(self, ext: int) -> int | None:
        """The subscriber seq a publisher packet was sent as (for duplicates)."""
        slot = ext % self._history
        return self._back_sub[slot] if self._back_pub[slot] == ext else None


class LayerRateMeter:
    """Each temporal layer's bitrate over a sliding window, from the publisher's packets."""

    def __init__(self, window: float = 1.0, layers: int = MAX_TID + 1) -> None:
        self.window = window
        self.layers = layers
        self._packets: deque[tuple[float, int, int]] = deque(maxlen=20_000)
        self._bytes = [0] * layers
        self._last_now = 0.0

    def on_packet(self, size: int, tid: int | None, now: float) -> None:
        layer = min(max(tid or 0, 0), self.layers - 1)
        if len(self._packets) == self._packets.maxlen:
            _, old_layer, old_size = self._packets[0]
            self._bytes[old_layer] -= old_size
        self._packets.append((now, layer, size))
        self._bytes[layer] += size
        self._last_now = max(self._last_now, now)
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._packets and self._packets[0][0] <= now - self.window:
            _, layer, size = self._packets.popleft()
            self._bytes[layer] -= size

    def rates(self, now: float | None = None) -> list[float]:
        """Bits per second of each layer alone."""
        self._expire(self._last_now if now is None else now)
        return [8 * b / self.window for b in self._bytes]

    def cumulative(self, now: float | None = None) -> list[float]:
        """Bits per second a subscriber receives at each max TID."""
        total, out = 0.0, []
        for rate in self.rates(now):
            total += rate
            out.append(total)
        return out

    def choose_layer(self, available_bps: float, now: float | None = None,
                     current: int | None = None, up_margin: float = 0.15) -> int:
        """The highest max TID whose rate fits ``available_bps`` (0 if none does: the base
        layer is all that is left to send). Going above ``current`` needs ``up_margin`` of
        headroom, so a rate near a boundary does not flap."""
        choice = 0
        for tid, rate in enumerate(self.cumulative(now)):
            needed = rate * (1 + up_margin) if current is not None and tid > current else rate
            if needed <= available_bps:
                choice = tid
        return choice
