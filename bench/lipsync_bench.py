"""Lip sync: how far one person's sound and picture drift apart on the way to a listener.

    .venv/bin/python bench/lipsync_bench.py [--seconds 20]

A talker sends a camera that flashes white and a microphone that beeps at the same
instants (every second, for 60 ms), through a real ``confero server`` on loopback (video
forwarded, audio through the mixer). A listener in the same process (one clock for both
ends) notes when each flash is decoded and when each beep is handed to the sound device.
The skew of one event is (audio hand-off - audio capture) - (video decoded - video
capture): positive means the sound comes after the picture. ITU-R BT.1359 finds sound
detectably early beyond 45 ms and detectably late beyond 125 ms, so the target is
-45 ms <= skew <= +125 ms. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_bench import MACHINE, Server

from confero.client import Client
from confero.client.media import DecodedVideo, MediaSession
from confero.media.audio import FRAME_SAMPLES, Samples, SineSource
from confero.media.video import luma_plane

PERIOD = 1.0
FLASH = 0.06


def flashing(wall: float) -> bool:
    return (wall % PERIOD) < FLASH


class FlashCamera:
    width, height = 320, 240

    def __init__(self) -> None:
        self.onsets: list[float] = []
        self._was = False

    def frame(self, capture_us: int) -> av.VideoFrame:
        wall = capture_us / 1e6
        on = flashing(wall)
        if on and not self._was:
            self.onsets.append(wall)
        self._was = on
        value = 235 if on else 40
        image = np.full((self.height, self.width, 3), value, dtype=np.uint8)
        return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")


class BeepMicrophone:
    def __init__(self) -> None:
        self._tone = SineSource(1000, 12000)
        self.onsets: list[float] = []
        self._was = False

    def next_frame(self) -> Samples:
        wall = time.time()
        on = flashing(wall)
        if on and not self._was:
            self.onsets.append(wall)
        self._was = on
        return self._tone.next_frame() if on else np.zeros(FRAME_SAMPLES, dtype=np.int16)


def pair(captures: list[float], arrivals: list[float]) -> list[float]:
    """Delay of each captured event: the first arrival after it and before the next one."""
    delays = []
    for index, captured in enumerate(captures):
        limit = captures[index + 1] if index + 1 < len(captures) else float("inf")
        later = [a for a in arrivals if captured <= a < limit]
        if later:
            delays.append(later[0] - captured)
    return delays


async def run(seconds: float) -> dict[str, Any]:
    server = Server()
    try:
        async with Client(server.url, "talker") as talker, Client(
            server.url, "listener"
        ) as listener:
            created = await talker.create_meeting("lip sync")
            joined = await listener.join(created.meeting.id)
            assert created.media is not None and joined.media is not None
            seen_video: list[float] = []
            heard_audio: list[float] = []
            state = {"bright": False, "loud": False}

            def on_video(video: DecodedVideo) -> None:
                bright = float(luma_plane(video.frame).mean()) > 150
                if bright and not state["bright"]:
                    seen_video.append(time.time())
                state["bright"] = bright

            def on_audio(samples: Samples) -> None:
                loud = bool(np.abs(samples).max() > 2000)
                if loud and not state["loud"]:
                    heard_audio.append(time.time())
                state["loud"] = loud

            camera, microphone = FlashCamera(), BeepMicrophone()
            talk = MediaSession(created.media, "127.0.0.1", receive_video=False)
            hear = MediaSession(joined.media, "127.0.0.1", on_video=on_video,
                                on_audio=on_audio)
            await talk.open()
            await hear.open()
            talk.set_video_source(camera)
            talk.set_audio_source(microphone)
            await asyncio.sleep(seconds)
            await talk.close()
            await hear.close()
    finally:
        server.close()
    video_delays = pair(camera.onsets, seen_video)
    audio_delays = pair(microphone.onsets, heard_audio)
    count = min(len(video_delays), len(audio_delays))
    skews = sorted((audio_delays[i] - video_delays[i]) * 1000 for i in range(count))
    if not skews:
        return {"bench": "lipsync", "error": "no event seen at both ends", "machine": MACHINE}
    return {
        "bench": "lipsync",
        "events": count,
        "video_delay_ms_p50": round(statistics.median(video_delays) * 1000, 1),
        "audio_delay_ms_p50": round(statistics.median(audio_delays) * 1000, 1),
        "skew_ms": {
            "p5": round(skews[int(0.05 * (len(skews) - 1))], 1),
            "p50": round(statistics.median(skews), 1),
            "p95": round(skews[int(0.95 * (len(skews) - 1))], 1),
        },
        "target_ms": {"min": -45, "max": 125, "meaning": "positive: sound after picture"},
        "within_target": all(-45 <= s <= 125 for s in skews),
        "note": "capture quantisation: audio 20 ms frames, video 33 ms frames; both onsets "
                "are taken from the first frame captured inside the flash",
        "machine": MACHINE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds))))


if __name__ == "__main__":
    main()
