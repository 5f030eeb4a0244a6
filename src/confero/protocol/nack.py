"""Loss repair bookkeeping (RFC 4585 generic NACK), sans-I/O.

:class:`NackGenerator` (receiver) notices gaps in sequence numbers and says which ones to
ask for, when, and how often. :class:`RetransmitBuffer` (sender) keeps the last packets so
it can answer. Both are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from confero.protocol.rtp import SequenceUnwrapper


@dataclass(slots=True)
class _Missing:
    first_seen: float
    next_ask: float
    tries: int = 0


class NackGenerator:
    def __init__(
        self,
        *,
        retry_interval: float = 0.04,
        max_tries: int = 10,
        quick_tries: int = 3,
        max_age: float = 0.5,
        max_gap: int = 200,
        min_reorder_delay: float = 0.005,
        max_reorder_delay: float = 0.05,
    ) -> None:
        #: The first ``quick_tries`` asks for a packet are ``retry_interval`` apart: on a
        #: long round trip they overlap, and the copies they bring are what repairs a
        #: hole at once when one NACK or one retransmission is lost. Later asks wait a
        #: little over the round trip (:attr:`rtt`, when known): a repair that is
        #: overdue by then was lost, so they go on until ``max_tries`` or ``max_age``
        #: (before, 3 asks within 80 ms were all there was, and a hole whose three
        #: answers were lost, or that the server had to fetch from the publisher first,
        #: was never asked for again).
        self.retry_interval = retry_interval
        self.quick_tries = quick_tries
        self.rtt: float | None = None
        self.min_reorder_delay = min_reorder_delay
        self.max_reorder_delay = max_reorder_delay
        #: How long a gap may stay open before it counts as a loss. A packet that was
        #: only reordered by the network fills its gap within the reordering the path
        #: shows; asking for it at once costs a needless NACK and retransmission. Learnt
        #: from gaps that filled by themselves (never asked for) and from NACKs that
        #: proved needless (the original arrived, then the retransmission as a duplicate).
        self.reorder_delay = min_reorder_delay
        self._reorder_estimate = 0.0
        #: recently asked-for packets that then arrived: unwrapped seq -> how long after
        #: the gap opened (bounded; a later duplicate of one proves the ask was needless)
        self._filled_after_ask: dict[int, float] = {}
        self.needless = 0  # NACKs answered by a duplicate: the packet was only late
        self.max_tries = max_tries
        self.max_age = max_age
        self.max_gap = max_gap
        self._unwrap = SequenceUnwrapper()
        self._highest: int | None = None
        self._missing: dict[int, _Missing] = {}
        self.recovered = 0  # packets that arrived after being reported missing

    def on_packet(self, seq: int, now: float) -> None:
        value = self._unwrap.unwrap(seq)
        if self._highest is None:
            self._highest = value
            return
        if value > self._highest:
            gap = value - self._highest - 1
            if gap > self.max_gap:
                self._missing.clear()  # a jump this large is a restart: ask for a keyframe
            else:
                ask_at = now + self.reorder_delay
                for missing in range(self._highest + 1, value):
                    self._missing[missing] = _Missing(now, ask_at)
            self._highest = value
        elif (entry := self._missing.pop(value, None)) is not None:
            self.recovered += 1
            waited = now - entry.first_seen
            if entry.tries == 0:
                self._learn_reordering(waited)
            else:
                self._filled_after_ask[value] = waited
                if len(self._filled_after_ask) > 256:
                    del self._filled_after_ask[next(iter(self._filled_after_ask))]

    def on_duplicate(self, seq: int) -> None:
        """A packet arrived twice (e.g. SRTP's replay check refused the second copy). If we
        had asked for it, the first copy was merely late: wait longer before asking."""
        value = self._unwrap.unwrap(seq)
        waited = self._filled_after_ask.pop(value, None)
        if waited is not None:
            self.needless += 1
            self._learn_reordering(waited)

    def _learn_reordering(self, waited: float) -> None:
        # a slowly decaying maximum: one late packet raises the wait at once, and calm
        # minutes bring it back down
        self._reorder_estimate = max(waited, self._reorder_estimate * 0.98)
        self.reorder_delay = min(self.max_reorder_delay,
                                 max(self.min_reorder_delay,
                                     self._reorder_estimate * 1.25 + 0.002))

    def due(self, now: float) -> list[int]:
        """16-bit sequence numbers to NACK now (each at most ``max_tries`` times)."""
        asks: list[int] = []
        for value, entry in list(self._missing.items()):
            if entry.tries >= self.max_tries or now >= entry.first_seen + self.max_age:
                del self._missing[value]
            elif entry.next_ask <= now:
                entry.tries += 1
                entry.next_ask = now + self.resend_interval(entry.tries)
                asks.append(value & 0xFFFF)
        return asks

    def resend_interval(self, tries: int) -> float:
        """How long after its ``tries``-th ask a packet is asked for again."""
        if tries < self.quick_tries or self.rtt is None:
            return self.retry_interval
        return max(self.retry_interval, 1.2 * self.rtt + 0.01)

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has something to say (a NACK or an expiry)."""
        if not self._missing:
            return None
        return min(
            min(e.next_ask, e.first_seen + self.max_age) for e in self._missing.values()
        )

    @property
    def missing_count(self) -> int:
        return len(self._missing)


class RetransmitBuffer:
    """The last ``capacity`` packets a sender sent, by sequence number."""

    def __init__(self, capacity: int = 1024) -> None:
        self._slots: list[tuple[int, bytes] | None] = [None] * capacity

    def store(self, seq: int, packet: bytes) -> None:
        self._slots[seq % len(self._slots)] = (seq, packet)

    def get(self, seq: int) -> bytes | None:
        slot = self._slots[seq % len(self._slots)]
        return slot[1] if slot is not None and slot[0] == seq else None
