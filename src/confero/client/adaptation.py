"""How a sender's video follows the uplink estimate: bitrate, and picture size with it.

The estimate (``TargetBitrate`` from the endpoint's congestion control) is shared by audio
and video; video gets what audio leaves. Below what a picture size needs to look decent,
a smaller picture at the same rate looks better than a blocky large one, so the size
steps down; it steps back up only with a margin, so a rate hovering at a threshold does
not flap between sizes (each change costs a keyframe).
"""

from __future__ import annotations

from dataclasses import dataclass

#: What Opus (32 kbit/s) plus its RTP/SRTP/UDP/IP overhead at 50 packets/s costs.
AUDIO_SHARE_BPS = 48_000
MIN_VIDEO_BPS = 40_000
#: (scale of the source size, the least video bitrate that scale needs), largest first.
#: 640x480 at 30 fps looks decent from ~450 kbit/s in VP8 realtime; 480x360 from ~220.
LADDER: tuple[tuple[float, int], ...] = ((1.0, 450_000), (0.75, 220_000), (0.5, 0))
#: Step up only when the rate exceeds the larger size's need by this factor.
UP_MARGIN = 1.3
#: Never scale a picture below this height (a stamp strip and faces stay legible).
MIN_HEIGHT = 240


def video_share(target_bps: int, audio_on: bool) -> int:
    return max(MIN_VIDEO_BPS, target_bps - (AUDIO_SHARE_BPS if audio_on else 0))


#: While a screen is shared the camera gets a quarter of the video share, at most this:
#: a small picture in a strip, next to the screen people are reading.
CAMERA_WHILE_SHARING_BPS = 150_000


def split_video(video_bps: int, *, camera_on: bool, screen_on: bool) -> tuple[int, int]:
    """(camera, screen) bitrates out of one video share (issue 12): one uplink estimate,
    one budget. Sharing: the screen gets most of it (its text must stay legible), the
    camera a quarter up to ``CAMERA_WHILE_SHARING_BPS`` (the ladder then picks a small
    picture for it); each keeps at least ``MIN_VIDEO_BPS``."""
    if not screen_on:
        return video_bps, 0
    if not camera_on:
        return 0, video_bps
    camera = max(MIN_VIDEO_BPS, min(CAMERA_WHILE_SHARING_BPS, video_bps // 4))
    return camera, max(MIN_VIDEO_BPS, video_bps - camera)


@dataclass
class ResolutionLadder:
    width: int
    height: int
    step: int = 0  # index into LADDER

    def size(self) -> tuple[int, int]:
        return self._scaled(LADDER[self.step][0])

    def choose(self, video_bps: int) -> tuple[int, int]:
        """The picture size for this rate (and remember it)."""
        while self.step + 1 < len(LADDER) and video_bps < LADDER[self.step][1]:
            if self._scaled(LADDER[self.step + 1][0])[1] < MIN_HEIGHT:
                break
            self.step += 1
        while self.step > 0 and video_bps >= LADDER[self.step - 1][1] * UP_MARGIN:
            self.step -= 1
        return self.size()

    def _scaled(self, scale: float) -> tuple[int, int]:
        if scale == 1.0 or self.height * scale < MIN_HEIGHT:
            return self.width, self.height
        return (max(2, int(self.width * scale) // 2 * 2),
                max(2, int(self.height * scale) // 2 * 2))


# ---------------------------------------------------------------------------- simulcast

#: The camera's low-resolution copy (simulcast, issue 9) gets a quarter of the camera's
#: budget, at most this: a 320x240 picture at 15 fps looks decent from ~100 kbit/s.
LOW_COPY_MAX_BPS = 150_000
#: Below this camera budget the copy is not sent: the camera alone adapts down (as without
#: simulcast); the copy comes back once the budget exceeds it by UP_MARGIN.
LOW_COPY_MIN_CAMERA_BPS = 350_000
#: The copy is half the camera source's width and height, never smaller than this.
LOW_COPY_MIN_SIZE = (160, 120)


def low_copy_size(width: int, height: int) -> tuple[int, int] | None:
    """The copy's picture size for a camera source of ``width`` x ``height``: half of it,
    even; None when that would be below :data:`LOW_COPY_MIN_SIZE` (the camera itself is
    then small enough for a slow link)."""
    low = (width // 2) // 2 * 2, (height // 2) // 2 * 2
    if low[0] < LOW_COPY_MIN_SIZE[0] or low[1] < LOW_COPY_MIN_SIZE[1]:
        return None
    return low


@dataclass
class SimulcastSplit:
    """Divides the camera's budget between the camera and its low copy, with hysteresis:
    a budget hovering at the threshold must not start and stop the copy every second
    (each start costs a keyframe of the copy)."""

    sending: bool = True

    def split(self, camera_bps: int) -> tuple[int, int]:
        """(camera, copy) bitrates out of the camera's budget; copy 0: do not send it."""
        if self.sending and camera_bps < LOW_COPY_MIN_CAMERA_BPS:
            self.sending = False
        elif not self.sending and camera_bps >= LOW_COPY_MIN_CAMERA_BPS * UP_MARGIN:
            self.sending = True
        if not self.sending:
            return camera_bps, 0
        low = min(LOW_COPY_MAX_BPS, camera_bps // 4)
        return camera_bps - low, low
