"""What devices the machine has, as picker choices (synthetic ones always last)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from confero.app.engine import DeviceChoice

SYNTHETIC_CAMERA = DeviceChoice("Synthetic camera", "synthetic")
SYNTHETIC_MIC = DeviceChoice("Synthetic 440 Hz tone", "sine", "440")
NO_SOUND = DeviceChoice("No sound", "none")


def sound_devices(kind: str) -> list[DeviceChoice]:
    """Input ("mic") or output ("speaker") devices PortAudio can open; [] without sound."""
    try:
        import sounddevice
        devices = sounddevice.query_devices()
    except Exception:  # no PortAudio, no server, no devices: the caller says so
        return []
    channel_key = "max_input_channels" if kind == "mic" else "max_output_channels"
    return [DeviceChoice(str(d["name"]), kind, str(d["name"]))
            for d in devices if d[channel_key] > 0]


def cameras() -> list[DeviceChoice]:
    return [DeviceChoice(f"Camera {Path(p).name}", "camera", p)
            for p in sorted(glob.glob("/dev/video*"))]


def video_devices() -> list[DeviceChoice]:
    choices = cameras()
    display = os.environ.get("DISPLAY")
    if display:
        choices.append(DeviceChoice(f"Screen {display}", "screen", display))
    return choices


def camera_choices() -> list[DeviceChoice]:
    return [*cameras(), SYNTHETIC_CAMERA]


def mic_choices() -> list[DeviceChoice]:
    return [*sound_devices("mic"), SYNTHETIC_MIC]


def speaker_choices() -> list[DeviceChoice]:
    return [*sound_devices("speaker"), NO_SOUND]
