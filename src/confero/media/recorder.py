"""Recording what a participant receives: mixed audio as WAV, each video as WebM, chat.

Video is remuxed, never re-encoded: the VP8 frames that arrived go into the file as they
are, starting at the first keyframe, timed by their RTP timestamps.
"""

from __future__ import annotations

import json
import re
import threading
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from confero.media.audio import SAMPLE_RATE, Samples
from confero.protocol.profile import VIDEO_CLOCK
from confero.protocol.signaling import ChatMessage
from confero.protocol.video_jitter import Frame


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "participant"


class _VideoTrack:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._container: Any = None
        self._stream: Any = None
        self._first_ts: int | None = None
        self._last_pts = -1
        self.frames = 0

    def add(self, frame: Frame, width: int, height: int) -> bool:
        """Mux the frame; False while the file still waits for its first keyframe."""
        if self._container is None:
            if not frame.keyframe:
                return False  # a file must start with a keyframe to play
            self._container = av.open(str(self.path), "w", format="webm")
            self._stream = self._container.add_stream("libvpx", rate=30)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            self._stream.time_base = Fraction(1, VIDEO_CLOCK)
            self._first_ts = frame.timestamp
        assert self._first_ts is not None
        pts = (frame.timestamp - self._first_ts) & 0xFFFFFFFF
        if pts <= self._last_pts:
            pts = self._last_pts + 1  # the muxer needs increasing timestamps
        self._last_pts = pts
        packet = av.Packet(frame.data)
        packet.stream = self._stream
        packet.pts = packet.dts = pts
        packet.time_base = Fraction(1, VIDEO_CLOCK)
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        self.frames += 1
        return True

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class MeetingRecorder:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._wav = wave.open(str(self.directory / "audio.wav"), "wb")  # noqa: SIM115
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self._chat = (self.directory / "chat.jsonl").open("a", encoding="utf-8")
        self._videos: dict[int, _VideoTrack] = {}
        # Audio may come from a sound device's thread while video, chat and close come
        # from the event loop: one lock keeps the files whole.
        self._lock = threading.Lock()
        self._closed = False

    def audio(self, samples: Samples) -> None:
        with self._lock:
            if not self._closed:
                self._wav.writeframes(samples.astype("<i2").tobytes())

    def video(self, ssrc: int, name: str, frame: Frame, width: int, height: int) -> bool:
        """Record a frame; False while this sender's file waits for a keyframe (the caller
        should ask for one)."""
        with self._lock:
            if self._closed:
                return True
            track = self._videos.get(ssrc)
            if track is None:
                track = self._videos[ssrc] = _VideoTrack(
                    self.directory / f"video-{_safe(name)}-{ssrc:08x}.webm"
                )
            return track.add(frame, width, height)

    def end_stream(self, ssrc: int) -> None:
        """The sender left: finish its file and free its descriptor (someone who rejoins
        eighty times must not hold eighty open files)."""
        with self._lock:
            track = self._videos.pop(ssrc, None)
            if track is not None:
                track.close()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._videos)

    def chat(self, message: ChatMessage) -> None:
        record = {"seq": message.seq, "ts": message.ts, "sender": message.sender,
                  "text": message.text}
        with self._lock:
            if not self._closed:
                self._chat.write(json.dumps(record) + "\n")
                self._chat.flush()

    def files(self) -> list[str]:
        return sorted(str(p) for p in self.directory.iterdir())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wav.close()
            self._chat.close()
            for track in self._videos.values():
                track.close()
