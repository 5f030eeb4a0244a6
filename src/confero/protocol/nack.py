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
        max_tries: int = 3,
        max_age: float = 0.5,
        max_gap: int = 200,
    ) -> None:
        self.retry_interval = retry_interval
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
                for missing in range(self._highest + 1, value):
                    self._missing[missing] = _Missing(now, now)
            self._highest = value
        elif self._missing.pop(value, None) is not None:
            self.recovered += 1

    def due(self, now: float) -> list[int]:
        """16-bit sequence numbers to NACK now (each at most ``max_tries`` times)."""
        asks: list[int] = []
        for value, entry in list(self._missing.items()):
            if entry.tries >= self.max_tries or now - entry.first_seen > self.max_age:
                del self._missing[value]
            elif entry.next_ask <= now:
                entry.tries += 1
                entry.next_ask = now + self.retry_interval
                asks.append(value & 0xFFFF)
        return asks

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
