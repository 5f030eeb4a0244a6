"""When to show each decoded video frame: smooth the network's jitter with the least delay.

Frames are ready whenever their last packet arrived and the decoder finished: jitter on
the path, a retransmission, a burst after a stall, a slow decode all turn an even 30 fps
into uneven gaps and bunches on screen. Each stream here keeps the transit time of its
recent frames (decoded-at minus RTP time, both in seconds; the offset between the clocks
cancels out) and shows a frame at

    its RTP time + the smallest transit seen lately + the 95th percentile of the excess

so frames that arrive in a bunch are spread back to their capture spacing, and a frame
that arrives later than that is shown at once rather than held. The added delay is what
the measured jitter needs and never more than ``max_delay``: on a clean link it is a few
milliseconds; lip sync has room for it, as the sound already plays ~40 ms after the
picture (docs/performance.md). The delay moves by at most ``slew`` per frame, so a change
of jitter speeds frames up or slows them down a little instead of jumping.

Sans-I/O: callers give ``now`` (monotonic seconds); nothing here sleeps.
"""

from __future__ import annotations

from collections import deque

VIDEO_CLOCK = 90_000


class VideoPlayout:
    def __init__(self, *, window: float = 2.0, max_delay: float = 0.15,
                 slew: float = 0.005, max_samples: int = 128) -> None:
        self.window = window
        self.max_delay = max_delay
        self.slew = slew
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (now, transit)
        self._last_ts: int | None = None
        self._unwrapped = 0
        self._last_release = float("-inf")
        #: the delay currently added to the lowest transit (seconds)
        self.delay = 0.0
        self.frames = 0
        self.late = 0  # shown at once: arrived after their scheduled time

    def _media_time(self, rtp_timestamp: int) -> float:
        if self._last_ts is None:
            self._unwrapped = rtp_timestamp
        else:
            step = (rtp_timestamp - self._last_ts) & 0xFFFFFFFF
            if step >= 1 << 31:
                step -= 1 << 32
            self._unwrapped += step
        self._last_ts = rtp_timestamp
        return self._unwrapped / VIDEO_CLOCK

    def schedule(self, rtp_timestamp: int, now: float) -> float:
        """The monotonic time to show the frame with ``rtp_timestamp``, decoded at ``now``
        (never earlier than ``now``, nor than the previous frame's)."""
        media = self._media_time(rtp_timestamp)
        transit = now - media
        samples = self._samples
        if samples and abs(transit - min(t for _, t in samples)) > 10.0:
            samples.clear()  # a new stream or a restarted sender: the old base is void
            self.delay = 0.0
        samples.append((now, transit))
        while samples and samples[0][0] < now - self.window:
            samples.popleft()
        base = min(t for _, t in samples)
        excess = sorted(t - base for _, t in samples)
        wanted = min(self.max_delay, excess[int(0.95 * (len(excess) - 1))])
        self.delay += max(-self.slew, min(self.slew, wanted - self.delay))
        release = media + base + self.delay
        self.frames += 1
        if release < now:
            self.late += 1
            release = now
        release = max(release, self._last_release)
        self._last_release = release
        return release
