"""Real devices: microphone and speaker (sounddevice/PortAudio), screen (PyAV x11grab),
camera (OpenCV, optional).

Each capture device runs in its own thread (PortAudio's callback thread, or a reader
thread for video) and hands the newest data over through a small bounded buffer, so a
stalled consumer costs memory only up to that bound and latency never piles up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from confero.media.audio import FRAME_SAMPLES, SAMPLE_RATE, SILENCE, Samples


class DeviceError(RuntimeError):
    """A device is missing or cannot be opened; the message says which and why."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # PortAudio itself is missing
        raise DeviceError(f"sound is unavailable: {exc} (install libportaudio2)") from exc
    return sounddevice


def has_default_device(kind: str) -> bool:
    """Is there a default ``"input"`` or ``"output"`` sound device to open at all?"""
    try:
        sd = _sounddevice()
        sd.query_devices(kind=kind)
    except Exception:  # DeviceError, PortAudioError, ValueError: none to be had
        return False
    return True


def _parse_device(spec: str | None) -> int | str | None:
    if spec is None or spec == "":
        return None
    return int(spec) if spec.isdigit() else spec


class MicrophoneSource:
    """Captures 48 kHz mono int16; ``next_frame`` returns the oldest 20 ms not yet sent.

    Keeps at most ``max_frames`` of audio: if the sender falls behind, the oldest is
    dropped (latency stays bounded); if it runs ahead, it gets silence.
    """

    def __init__(self, device: str | None = None, max_frames: int = 5) -> None:
        sd = _sounddevice()
        self._frames: deque[Samples] = deque(maxlen=max_frames)
        self._lock = threading.Lock()
        self.overflows = 0
        self.underruns = 0
        try:
            self._stream = sd.InputStream(
                samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES,
                device=_parse_device(device), callback=self._captured, latency="low",
            )
            self._stream.start()
        except Exception as exc:  # PortAudioError, ValueError for a bad device name
            raise DeviceError(f"cannot open the microphone {device or '(default)'}: {exc}"
                              ) from exc

    def _captured(self, data: Any, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.overflows += 1
        with self._lock:
            self._frames.append(np.array(data[:, 0], dtype=np.int16))

    def next_frame(self) -> Samples:
        with self._lock:
            if self._frames:
                frame = self._frames.popleft()
                return frame if len(frame) == FRAME_SAMPLES else np.resize(frame, FRAME_SAMPLES)
        self.underruns += 1
        return SILENCE

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class Speaker:
    """Plays what ``pull`` returns, 20 ms per device callback: the device clock drives
    playout, so there is no second clock to drift against."""

    def __init__(self, pull: Callable[[], Samples], device: str | None = None) -> None:
        sd = _sounddevice()
        self._pull = pull
        self.underruns = 0
        try:
            self._stream = sd.OutputStream(
                samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES,
                device=_parse_device(device), callback=self._play, latency="low",
            )
            self._stream.start()
        except Exception as exc:
            raise DeviceError(f"cannot open the speaker {device or '(default)'}: {exc}"
                              ) from exc

    def _play(self, out: Any, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.underruns += 1
        try:
            samples = self._pull()
        except Exception:  # never let an exception kill the audio thread
            samples = SILENCE
        out[:, 0] = np.resize(samples, frames)

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class _LatestFrame:
    """A reader thread keeps only the newest frame; ``frame()`` takes it (or repeats)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._latest: av.VideoFrame | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.error: Exception | None = None

    def _publish(self, frame: av.VideoFrame) -> None:
        self._latest = frame
        self._ready.set()

    def _wait_for_first_frame(self, what: str, timeout: float = 5.0) -> None:
        """Called by the constructor (off the event loop): a device that delivers nothing
        fails here, clearly, instead of stalling the sender later."""
        if not self._ready.wait(timeout):
            self.close()
            raise DeviceError(f"{what} delivered no picture in {timeout:g} s"
                              + (f": {self.error}" if self.error else ""))

    def frame(self, capture_us: int) -> av.VideoFrame:
        """The newest picture (never blocks: the constructor waited for the first)."""
        if self.error is not None and not self._ready.is_set():
            raise DeviceError(str(self.error))
        assert self._latest is not None
        return self._latest

    def close(self) -> None:
        self._stop.set()


class ScreenSource(_LatestFrame):
    """The X11 screen (``:0``, ``:99.0+0,0``...) via PyAV's x11grab, scaled to the size."""

    def __init__(self, display: str = ":0", width: int = 1280, height: int = 720,
                 fps: int = 15) -> None:
        super().__init__(width, height)
        try:
            self._container = av.open(display, format="x11grab",
                                      options={"framerate": str(fps), "draw_mouse": "1"})
        except (av.FFmpegError, OSError) as exc:
            raise DeviceError(f"cannot capture the screen {display}: {exc}") from exc
        threading.Thread(target=self._read, name="screen", daemon=True).start()
        self._wait_for_first_frame(f"the screen {display}")

    def _read(self) -> None:
        try:
            for frame in self._container.decode(video=0):
                if self._stop.is_set():
                    break
                self._publish(frame.reformat(self.width, self.height, "yuv420p"))
        except Exception as exc:
            self.error = exc
        finally:
            self._container.close()


class CameraSource(_LatestFrame):
    """A V4L2 camera through OpenCV (``pip install opencv-python-headless``); the bundled
    FFmpeg of PyAV has no v4l2 input. ``device`` is an index (0) or a path or a file."""

    def __init__(self, device: str = "0", width: int = 640, height: int = 480,
                 fps: int = 30) -> None:
        super().__init__(width, height)
        try:
            import cv2
        except ImportError as exc:
            raise DeviceError("camera capture needs OpenCV: pip install opencv-python-headless"
                              ) from exc
        self._cv2: Any = cv2
        source: int | str = int(device) if device.isdigit() else device
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            raise DeviceError(f"cannot open the camera {device}")
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._capture.set(cv2.CAP_PROP_FPS, fps)
        threading.Thread(target=self._read, name="camera", daemon=True).start()
        self._wait_for_first_frame(f"the camera {device}")

    def _read(self) -> None:
        cv2 = self._cv2
        try:
            while not self._stop.is_set():
                ok, image = self._capture.read()
                if not ok:
                    self.error = DeviceError("the camera stopped delivering frames")
                    break
                rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                self._publish(frame.reformat(self.width, self.height, "yuv420p"))
        finally:
            self._capture.release()
