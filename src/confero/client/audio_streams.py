"""Per-sender audio receive and a local mix, for when nobody mixes for us.

The server mixes audio for ordinary meetings; in an end-to-end encrypted meeting it cannot
(it forwards the loudest few senders' packets instead), and peer to peer there is no server.
Then each sender's stream needs its own jitter buffer, its own Opus decoder (decoder state
is per stream) and concealment, and the decoded frames are summed here.

:class:`AudioStreams` is the sans-I/O half the media endpoint owns: packets in by SSRC,
one item per stream out per 20 ms tick. :class:`StreamMixer` is the half the shell owns
(codecs stay outside the endpoint): it decodes those items and mixes them.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from confero.media.audio import SILENCE, OpusDecoder, Samples, conceal, soft_limit
from confero.protocol.audio_jitter import LOST, AudioJitterBuffer

#: At most this many senders' buffers are kept (the least recently heard goes first).
MAX_STREAMS = 16

__all__ = ["LOST", "MAX_STREAMS", "AudioStreams", "StreamMixer"]


class AudioStreams:
    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.max_streams = max_streams
        self._buffers: OrderedDict[int, AudioJitterBuffer] = OrderedDict()
        self.packets: dict[int, int] = {}
        self.evicted = 0

    def push(self, ssrc: int, timestamp: int, payload: bytes, now: float) -> None:
        buffer = self._buffers.get(ssrc)
        if buffer is None:
            while len(self._buffers) >= self.max_streams:
                old, _ = self._buffers.popitem(last=False)
                self.packets.pop(old, None)
                self.evicted += 1
            buffer = self._buffers[ssrc] = AudioJitterBuffer(target=2, min_target=1,
                                                            max_target=10)
        else:
            self._buffers.move_to_end(ssrc)
        self.packets[ssrc] = self.packets.get(ssrc, 0) + 1
        if payload:
            buffer.push(timestamp, payload, now)

    def pop(self) -> dict[int, bytes | object]:
        """One 20 ms tick: per playing stream, Opus bytes or :data:`LOST` (idle ones are
        left out)."""
        out: dict[int, bytes | object] = {}
        for ssrc, buffer in self._buffers.items():
            item = buffer.pop()
            if item is not None:
                out[ssrc] = item
        return out

    def peek(self, ssrc: int) -> bytes | None:
        buffer = self._buffers.get(ssrc)
        return buffer.peek() if buffer is not None else None

    def forget(self, ssrc: int) -> None:
        self._buffers.pop(ssrc, None)
        self.packets.pop(ssrc, None)

    def __len__(self) -> int:
        return len(self._buffers)

    def stats(self) -> dict[int, dict[str, int]]:
        return {
            ssrc: {"packets": self.packets.get(ssrc, 0), "played": b.played,
                   "concealed": b.concealed, "late": b.late, "target_frames": b.target}
            for ssrc, b in self._buffers.items()
        }


class _Decoder:
    __slots__ = ("concealed_in_a_row", "decoder", "last")

    def __init__(self) -> None:
        self.decoder = OpusDecoder()
        self.last: Samples | None = None
        self.concealed_in_a_row = 0


class StreamMixer:
    """Decodes each stream's item with that stream's decoder and sums them (soft limit)."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.max_streams = max_streams
        self._decoders: OrderedDict[int, _Decoder] = OrderedDict()

    def mix(self, items: dict[int, bytes | object]) -> Samples | None:
        """None when no stream is playing (nothing to add)."""
        if not items:
            return None
        total = np.zeros(len(SILENCE), dtype=np.int32)
        for ssrc, item in items.items():
            state = self._decoders.get(ssrc)
            if state is None:
                while len(self._decoders) >= self.max_streams:
                    self._decoders.popitem(last=False)
                state = self._decoders[ssrc] = _Decoder()
            else:
                self._decoders.move_to_end(ssrc)
            if item is LOST:
                state.concealed_in_a_row += 1
                samples = conceal(state.last, state.concealed_in_a_row)
            else:
                assert isinstance(item, bytes)
                samples = state.decoder.decode(item)
                state.last = samples
                state.concealed_in_a_row = 0
            total += samples
        return soft_limit(total)

    def forget(self, ssrc: int) -> None:
        self._decoders.pop(ssrc, None)
