"""Check your devices before joining: a mirrored preview, a live microphone meter, a test
sound, and the choice to join muted or with the camera off (remembered).

The preview and the meter run on a small worker thread that owns the sources, so opening
a slow camera never blocks the window; the GUI pulls the newest picture and level on a
timer, as the meeting view does.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from confero.app.devices import camera_choices, mic_choices, speaker_choices
from confero.app.engine import DeviceChoice, Engine, to_qimage
from confero.app.plain import clip, plain_label
from confero.app.settings import Continuity
from confero.app.theme import COLOURS
from confero.client.media import AudioSource, VideoSource
from confero.media.audio import level_dbov
from confero.media.devices import DeviceError
from confero.media.video import SyntheticCamera


class PreviewWorker(threading.Thread):
    """Opens the chosen camera and microphone and keeps the newest picture and level."""

    def __init__(self, camera: DeviceChoice | None, mic: DeviceChoice | None,
                 name: str) -> None:
        super().__init__(name="device-check", daemon=True)
        self._camera, self._mic, self._name = camera, mic, name
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.image: QImage | None = None
        self.level_dbov = 127
        self.problems: list[str] = []

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        video: VideoSource | None = None
        audio: AudioSource | None = None
        try:
            if self._camera is not None:
                try:  # a synthetic preview is drawn small: the engine shares this CPU
                    video = (SyntheticCamera(self._name or "me", 320, 240)
                             if self._camera.kind == "synthetic"
                             else Engine._open_video(self._camera, self._name))
                except (DeviceError, OSError, ValueError) as exc:
                    self.problems.append(f"camera: {exc}")
            if self._mic is not None:
                try:
                    audio = Engine._open_audio(self._mic)
                except (DeviceError, OSError, ValueError) as exc:
                    self.problems.append(f"microphone: {exc}")
            last_picture = 0.0
            while not self._halt.wait(0.02):
                if audio is not None:
                    level = level_dbov(audio.next_frame())
                    with self._lock:
                        self.level_dbov = level
                now = time.monotonic()
                if video is not None and now - last_picture >= 1 / 15:
                    last_picture = now
                    image = to_qimage(video.frame(int(time.time() * 1e6)), 320)
                    with self._lock:
                        self.image = image.flipped(Qt.Orientation.Horizontal)
        finally:
            for source in (video, audio):
                close = getattr(source, "close", None)
                if close is not None:
                    close()

    def latest(self) -> tuple[QImage | None, int]:
        with self._lock:
            return self.image, self.level_dbov


class Preview(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("preview")
        self.image: QImage | None = None
        self.setMinimumSize(320, 240)
        self.setAccessibleName("Camera preview, mirrored")

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(48, 49, 52))
        if self.image is not None:
            size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRectF(0, 0, size.width(), size.height())
            target.moveCenter(QRectF(self.rect()).center())
            painter.drawImage(target, self.image)
        else:
            painter.setPen(QColor(COLOURS["muted_text"]))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Camera is off")
        painter.end()


class LevelMeter(QWidget):
    """The microphone's loudness as a bar with ten steps (counted, not only coloured)."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("mic_meter")
        self.value = 0.0  # 0..1
        self.setMinimumHeight(14)
        self.setAccessibleName("Microphone level")

    def set_level(self, dbov: int) -> None:
        value = float(np.clip((60 - dbov) / 60, 0.0, 1.0))
        if abs(value - self.value) > 0.01:
            self.value = value
            self.setAccessibleDescription(f"{round(value * 10)} of 10")
            self.update()

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        steps = 10
        width = (self.width() - (steps - 1) * 3) / steps
        lit = round(self.value * steps)
        for index in range(steps):
            colour = QColor(COLOURS["good"] if index < 7 else COLOURS["fair"])
            painter.fillRect(QRectF(index * (width + 3), 0, width, self.height()),
                             colour if index < lit else QColor(COLOURS["raised"]))
        painter.end()


class DeviceCheckPage(QWidget):
    join_requested = Signal(bool)  # with audio
    back_requested = Signal()

    def __init__(self, continuity: Continuity) -> None:
        super().__init__()
        self.setObjectName("device_check")
        self._continuity = continuity
        self._worker: PreviewWorker | None = None
        self.name = ""
        self.heading = plain_label("", "prejoin_title")
        font = self.heading.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        self.heading.setFont(font)
        self.preview = Preview()
        self.meter = LevelMeter()
        self.camera = QComboBox()
        self.camera.setObjectName("prejoin_camera")
        self.mic = QComboBox()
        self.mic.setObjectName("prejoin_mic")
        self.speaker = QComboBox()
        self.speaker.setObjectName("prejoin_speaker")
        self.test_sound = QPushButton("Play a test sound")
        self.test_sound.setObjectName("test_sound")
        self.muted = QCheckBox("Join with the microphone muted")
        self.muted.setObjectName("join_muted")
        self.camera_off = QCheckBox("Join with the camera off")
        self.camera_off.setObjectName("join_camera_off")
        self.status = plain_label("", "prejoin_status")
        self.status.setWordWrap(True)
        self.join_button = QPushButton("Join")
        self.join_button.setObjectName("prejoin_join")
        self.join_button.setDefault(True)
        self.join_no_audio = QPushButton("Join without audio")
        self.join_no_audio.setObjectName("prejoin_no_audio")
        self.back_button = QPushButton("Back")
        self.back_button.setObjectName("prejoin_back")
        form = QFormLayout()
        form.addRow("Camera", self.camera)
        form.addRow("Microphone", self.mic)
        form.addRow("Level", self.meter)
        form.addRow("Speaker", self.speaker)
        form.addRow("", self.test_sound)
        form.addRow("", self.muted)
        form.addRow("", self.camera_off)
        side = QVBoxLayout()
        side.addLayout(form)
        side.addWidget(self.status)
        side.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.back_button)
        buttons.addStretch(1)
        buttons.addWidget(self.join_no_audio)
        buttons.addWidget(self.join_button)
        side.addLayout(buttons)
        body = QHBoxLayout()
        body.addWidget(self.preview, 3)
        body.addLayout(side, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(32, 24, 32, 24)
        layout.addWidget(self.heading)
        layout.addLayout(body, 1)
        self._timer = QTimer(self)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._pull)
        self.join_button.clicked.connect(lambda: self._join(True))
        self.join_no_audio.clicked.connect(lambda: self._join(False))
        self.back_button.clicked.connect(self._back)
        self.test_sound.clicked.connect(self._play_test_sound)
        self.camera.activated.connect(lambda _i: self._restart())
        self.mic.activated.connect(lambda _i: self._restart())
        self.muted.toggled.connect(lambda _on: self._restart())
        self.camera_off.toggled.connect(lambda _on: self._restart())

    # ------------------------------------------------------------------ open/close

    def open_for(self, title: str, name: str) -> None:
        self.name = name
        self.heading.setText(clip(f"Ready to join “{title}”?", 120))
        memory = self._continuity
        for combo, choices, key in ((self.camera, camera_choices(), "camera"),
                                    (self.mic, mic_choices(), "microphone"),
                                    (self.speaker, speaker_choices(), "speaker")):
            combo.clear()
            for choice in choices:
                combo.addItem(choice.label, choice)
            index = combo.findText(memory.text(key))
            combo.setCurrentIndex(max(0, index))
        for box, key in ((self.muted, "join_muted"), (self.camera_off, "join_camera_off")):
            box.blockSignals(True)
            box.setChecked(memory.flag(key, True))
            box.blockSignals(False)
        self._restart()
        self._timer.start()
        self.join_button.setFocus()

    def close_check(self) -> None:
        self._timer.stop()
        if self._worker is not None:
            self._worker.stop()
            self._worker.join(2)
            self._worker = None
        self.preview.image = None

    def choices(self) -> tuple[DeviceChoice | None, DeviceChoice | None, DeviceChoice | None]:
        """(camera, microphone, speaker) as chosen here."""
        return self.camera.currentData(), self.mic.currentData(), self.speaker.currentData()

    def _restart(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker.join(2)
        camera, mic, _ = self.choices()
        self._worker = PreviewWorker(None if self.camera_off.isChecked() else camera, mic,
                                     self.name)
        self._worker.start()
        words = ["camera off" if self.camera_off.isChecked() else "camera on",
                 "microphone muted" if self.muted.isChecked() else "microphone on"]
        self.status.setText(f"You will join with the {words[0]} and the {words[1]}.")

    def _pull(self) -> None:
        worker = self._worker
        if worker is None:
            return
        image, level = worker.latest()
        if image is not self.preview.image:
            self.preview.image = image
            self.preview.update()
        self.meter.set_level(level)
        if worker.problems:
            self.status.setText("Could not open the " + "; ".join(worker.problems))

    def _remember(self) -> None:
        camera, mic, speaker = self.choices()
        memory = self._continuity
        for key, choice in (("camera", camera), ("microphone", mic), ("speaker", speaker)):
            if choice is not None:
                memory.set(key, choice.label)
        memory.set("join_muted", self.muted.isChecked())
        memory.set("join_camera_off", self.camera_off.isChecked())

    def _join(self, with_audio: bool) -> None:
        self._remember()
        self.close_check()
        self.join_requested.emit(with_audio)

    def _back(self) -> None:
        self.close_check()
        self.back_requested.emit()

    def _play_test_sound(self) -> None:
        speaker = self.speaker.currentData()
        if speaker is None or speaker.kind == "none":
            self.status.setText("No speaker chosen: pick one to hear the test sound.")
            return
        self.status.setText(f"Playing a test sound on {speaker.label}…")

        def play() -> None:
            try:
                import sounddevice

                from confero.app.toasts import _chime_samples

                sounddevice.play(np.tile(_chime_samples(True), 2), 48_000,
                                 device=speaker.device or None, blocking=True)
            except Exception:  # no device: the status line already told them what we tried
                return

        threading.Thread(target=play, daemon=True).start()
