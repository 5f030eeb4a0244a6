"""Several senders' audio streams, one jitter buffer each, sans-I/O.

The server's mix is one stream; a peer-to-peer call (and, later, end-to-end encrypted
audio that the server cannot mix) delivers each sender's Opus stream as it was sent. The
receiver then keeps a jitter buffer per SSRC, pops all of them on its playout clock,
decodes each and mixes locally (:class:`confero.client.audio_mix.LocalMixer`). Streams
are bounded in number and forgotten once silent for ``idle_forget`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from confero.protocol.audio_jitter import AudioJitterBuffer

MAX_AUDIO_STREAMS: Final = 16
MAX_ENDED_STATS: Final = 32


class AudioStreams:
    def __init__(self, *, max_streams: int = MAX_AUDIO_STREAMS, idle_forget: float = 5.0
                 ) -> None:
        self.max_streams = max_streams
        self.idle_forget = idle_forget
        self._buffers: dict[int, AudioJitterBuffer] = {}
        self._last_packet: dict[int, float] = {}
        self.dropped_too_many = 0
        #: the final statistics of streams forgotten lately (a sender who left), so a
        #: report made after they left still says what was played of them
        self._ended: OrderedDict[int, dict[str, int]] = OrderedDict()

    def push(self, ssrc: int, timestamp: int, payload: bytes, now: float, *,
             redundant: bool = False) -> None:
        buffer = self._buffers.get(ssrc)
        if buffer is None:
            if len(self._buffers) >= self.max_streams:
                self.dropped_too_many += 1
                return
            buffer = self._buffers[ssrc] = AudioJitterBuffer(target=2, min_target=1,
                                                             max_target=10)
        if not redundant:
            self._last_packet[ssrc] = now
        buffer.push(timestamp, payload, now, redundant=redundant)

    def pop(self, now: float) -> dict[int, bytes | object]:
        """One 20 ms step of every stream: SSRC -> Opus bytes or ``LOST``; streams with
        nothing to play are absent."""
        out: dict[int, bytes | object] = {}
        for ssrc, buffer in list(self._buffers.items()):
            item = buffer.pop()
            if item is not None:
                out[ssrc] = item
            elif now - self._last_packet.get(ssrc, now) > self.idle_forget:
                self.forget(ssrc)
        return out

    def buffered(self, ssrc: int) -> int:
        """Frames waiting in ``ssrc``'s buffer (0 for an unknown stream)."""
        buffer = self._buffers.get(ssrc)
        return buffer.depth if buffer is not None else 0

    def forget(self, ssrc: int) -> None:
        buffer = self._buffers.pop(ssrc, None)
        self._last_packet.pop(ssrc, None)
        if buffer is not None:
            self._ended[ssrc] = {**self._stats_of(buffer), "ended": 1}
            while len(self._ended) > MAX_ENDED_STATS:
                self._ended.popitem(last=False)

    def ssrcs(self) -> list[int]:
        return list(self._buffers)

    def stats(self) -> dict[int, dict[str, int]]:
        """Per stream, live ones and those forgotten lately (``ended``: 1)."""
        live = {ssrc: self._stats_of(b) for ssrc, b in self._buffers.items()}
        return {**{k: v for k, v in self._ended.items() if k not in live}, **live}

    @staticmethod
    def _stats_of(buffer: AudioJitterBuffer) -> dict[str, int]:
        return {"depth_frames": buffer.depth, "concealed": buffer.concealed,
                "late": buffer.late, "played": buffer.played}
