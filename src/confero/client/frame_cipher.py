"""End-to-end frame encryption as an optional transform of the media endpoint.

An ordinary meeting has no cipher (``None``): frames go out as encoded. In an end-to-end
encrypted meeting every encoded frame is SFrame-protected before it is packetised and
unprotected after it is reassembled, before any decoder sees it. Video keeps the VP8 frame
header in the clear (the server still tells keyframes and sizes); audio is protected whole.
A frame that fails (no key, wrong key, tampered, replayed) raises ``SFrameError``: the
endpoint counts it per stream and drops it, so garbage never reaches a decoder.
"""

from __future__ import annotations

import threading
from typing import Protocol

from confero.protocol.sframe import SFrameContext, SFrameError, protect_vp8, unprotect_vp8

__all__ = ["FrameCipher", "SFrameCipher", "SFrameError"]


class FrameCipher(Protocol):
    def protect_video(self, frame: bytes) -> bytes: ...

    def protect_audio(self, payload: bytes) -> bytes: ...

    def unprotect_video(self, frame: bytes) -> bytes: ...

    def unprotect_audio(self, payload: bytes) -> bytes: ...


class SFrameCipher:
    """SFrame with keys from :class:`~confero.protocol.e2ee_keys.E2eeSession`.

    Thread-safe: keys are installed from the event loop while a sound device's thread may
    be unprotecting audio.
    """

    def __init__(self) -> None:
        self._ctx = SFrameContext()
        self._lock = threading.Lock()
        self._send_kid: int | None = None

    def set_send_key(self, kid: int, base_key: bytes) -> None:
        with self._lock:
            if kid != self._send_kid:
                self._ctx.add_send_key(kid, base_key)
                self._send_kid = kid

    def set_receive_keys(self, keys: dict[int, bytes]) -> None:
        with self._lock:
            self._ctx.set_receive_keys(keys)

    def protect_video(self, frame: bytes) -> bytes:
        with self._lock:
            if self._send_kid is None:
                raise SFrameError("no send key yet")
            return protect_vp8(self._ctx, self._send_kid, frame)

    def protect_audio(self, payload: bytes) -> bytes:
        with self._lock:
            if self._send_kid is None:
                raise SFrameError("no send key yet")
            return self._ctx.protect(self._send_kid, payload)

    def unprotect_video(self, frame: bytes) -> bytes:
        with self._lock:
            return unprotect_vp8(self._ctx, frame)

    def unprotect_audio(self, payload: bytes) -> bytes:
        with self._lock:
            return self._ctx.unprotect(payload)
