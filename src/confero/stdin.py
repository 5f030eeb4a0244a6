"""Standard input as an asyncio queue of lines."""

from __future__ import annotations

import asyncio
import sys
import threading


def stdin_lines() -> asyncio.Queue[str | None]:
    """Lines from stdin, read by a daemon thread (works for ttys, pipes and files alike);
    ``None`` marks the end of input."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue
