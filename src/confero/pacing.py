"""A drift-free periodic schedule for asyncio loops (media clocks, senders, timers)."""

from __future__ import annotations

import asyncio


class Pacer:
    """``await pacer.wait()`` returns once per ``interval`` on an absolute schedule, so
    time spent working between waits does not accumulate as drift. When the loop falls
    more than ``resync_after`` intervals behind (a busy machine, a stall), the missed
    ticks are dropped rather than replayed in a burst, and ``resyncs`` counts it.

    Create it inside the running loop; the first wait returns one interval later."""

    def __init__(self, interval: float, resync_after: float = 5) -> None:
        self.interval = interval
        self.resync_after = resync_after
        self.resyncs = 0
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time()

    async def wait(self) -> None:
        self._next += self.interval
        delay = self._next - self._loop.time()
        if delay < -self.resync_after * self.interval:
            self.resyncs += 1
            self._next = self._loop.time()
        await asyncio.sleep(max(0.0, delay))
