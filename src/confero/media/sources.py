"""Media sources from files: any audio or video file PyAV can read, looped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from confero.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Samples


class FileAudioSource:
    """Decodes a file (WAV, Ogg, MP3, ...) to 48 kHz mono int16, 20 ms at a time, looping."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no audio file at {self.path}")
        self._chunks = self._decode_forever()
        self._buffer = next(self._chunks)  # fail now, not in the middle of a call

    def _decode_forever(self) -> Iterator[Samples]:
        while True:
            produced = False
            with av.open(str(self.path)) as container:
                if not container.streams.audio:
                    raise ValueError(f"{self.path} has no audio stream")
                resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                for frame in container.decode(audio=0):
                    for out in resampler.resample(frame):
                        produced = True
                        yield np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1)
            if not produced:
                raise ValueError(f"{self.path} decoded to no audio")

    def next_frame(self) -> Samples:
        while len(self._buffer) < FRAME_SAMPLES:
            self._buffer = np.concatenate([self._buffer, next(self._chunks)])
        frame, self._buffer = self._buffer[:FRAME_SAMPLES], self._buffer[FRAME_SAMPLES:]
        return frame


class FileVideoSource:
    """Frames of a video file, scaled to ``width`` x ``height``, looping at the end."""

    def __init__(self, path: Path | str, width: int = 640, height: int = 480) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no video file at {self.path}")
        self.width, self.height = width, height
        self._frames = self._decode_forever()
        self._first: Any = next(self._frames)

    def _decode_forever(self) -> Iterator[av.VideoFrame]:
        while True:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ValueError(f"{self.path} has no video stream")
                for frame in container.decode(video=0):
                    yield frame.reformat(self.width, self.height, "yuv420p")

    def frame(self, capture_us: int) -> av.VideoFrame:
        if self._first is not None:
            first, self._first = self._first, None
            return first  # type: ignore[no-any-return]
        return next(self._frames)
