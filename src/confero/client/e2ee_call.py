"""The E2EE key exchange of one call: :class:`E2eeSession` on the event loop.

It feeds the sans-I/O key manager (:mod:`confero.protocol.e2ee_keys`) with the meeting's
membership and the blobs the server relays, ticks it a few times a second, relays what it
wants sent through the signaling client, and installs its keys into the SFrame cipher the
media endpoint uses. The passphrase stays here: it never goes to the server.

SPAKE2 is pure Python (tens of milliseconds per pairing, far more on a busy machine), so
every step of the key manager runs on one worker thread, in order; the event loop only
installs the results. Blocking the loop for that long would miss WebSocket heartbeats.

Without a passphrase (or with a wrong one) the call still runs: our own frames are still
encrypted (under a key nobody gets) and nothing we receive can be decrypted; front ends
show "cannot decrypt" instead of noise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from confero.client import api
from confero.client.frame_cipher import SFrameCipher
from confero.protocol import e2ee_keys as keys
from confero.protocol import signaling as sig

log = logging.getLogger(__name__)

#: How often the key manager's clock runs (activation timeouts, retired keys).
TICK_INTERVAL = 0.2
#: Membership events and blobs kept while no session exists yet (before entering).
MAX_EARLY_EVENTS = 512
#: Blobs waiting to be relayed; more means something is badly wrong: drop the oldest.
MAX_OUTBOX = 4096


@dataclass(frozen=True)
class NoPassphrase:
    """We are in an E2EE meeting without a passphrase: nothing can be decrypted."""


E2eeNotice = (keys.PeerVerified | keys.PeerUnverified | keys.BlobRejected | NoPassphrase
              | keys.SendKeyChanged)


@dataclass(frozen=True)
class _Outcome:
    """What one step of the key manager produced, read on its worker thread."""

    events: list[keys.Event]
    send_key: tuple[int, bytes]
    receive_keys: dict[int, bytes] | None  # None: unchanged
    outgoing: list[tuple[str, bytes]]
    states: dict[str, dict[str, Any]]


class E2eeCall:
    def __init__(self, client: api.Client, passphrase: str | None,
                 on_notice: Callable[[E2eeNotice], None] | None = None) -> None:
        self.client = client
        self.passphrase = passphrase
        self._on_notice = on_notice
        self.session: keys.E2eeSession | None = None
        self.cipher: SFrameCipher | None = None
        self.meeting_id: str | None = None
        self._early: list[Any] = []
        self._outbox: asyncio.Queue[tuple[str, bytes]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="e2ee-keys")
        self._generation = 0  # bumped by stop(): late results of an old session are dropped
        self._states: dict[str, dict[str, Any]] = {}
        self.blobs_sent = 0
        self.blobs_failed = 0

    # ------------------------------------------------------------------ life

    @property
    def active(self) -> bool:
        return self.cipher is not None

    def start(self, meeting: sig.MeetingInfo, participants: list[sig.ParticipantInfo]) -> None:
        """We entered (or re-entered, with a new identity) an E2EE meeting."""
        self.stop()
        loop = asyncio.get_running_loop()
        now = loop.time()
        me = self.client.participant_id or ""
        self.meeting_id = meeting.id
        self.cipher = SFrameCipher()
        self._outbox = asyncio.Queue()
        if not self.passphrase:
            # Our frames still leave encrypted, under a key nobody will ever receive.
            self.cipher.set_send_key(secrets.randbits(31) << 16, os.urandom(32))
            self._early.clear()
            self._notify(NoPassphrase())
            return
        self.session = keys.E2eeSession(me, meeting.id, self.passphrase)
        self.cipher.set_send_key(*self.session.send_key())
        session = self.session
        for participant in participants:
            if participant.id != me:
                pid = participant.id
                self._apply(partial(session.on_participant_joined, pid, now, initial=True))
        early, self._early = self._early, []
        for event in early:
            self.on_event(event)
        self._tasks = [loop.create_task(self._tick_forever()),
                       loop.create_task(self._send_forever())]

    def stop(self) -> None:
        self._generation += 1
        self._states = {}
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self.session = None
        self.cipher = None
        self.meeting_id = None
        self._outbox = None

    # ------------------------------------------------------------------ inputs

    def on_event(self, event: api.ClientEvent) -> None:
        """Signaling events (a client listener): membership and relayed blobs."""
        if not isinstance(event, sig.ParticipantJoined | sig.ParticipantLeft
                          | sig.E2eeBlobReceived):
            return
        session = self.session
        if session is None:
            if self.cipher is None and len(self._early) < MAX_EARLY_EVENTS:
                self._early.append(event)  # before we entered: replayed by start()
            return
        if event.meeting_id != session.meeting_id:
            return
        now = asyncio.get_running_loop().time()
        match event:
            case sig.ParticipantJoined(participant=participant):
                self._apply(lambda: session.on_participant_joined(participant.id, now))
            case sig.ParticipantLeft(participant_id=pid):
                self._apply(lambda: session.on_participant_left(pid, now))
            case sig.E2eeBlobReceived(from_=sender, blob=text):
                try:
                    blob = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    session.rejected += 1
                    return
                self._apply(lambda: session.handle_blob(sender, blob, now))

    def _apply(self, step: Callable[[], list[keys.Event]]) -> None:
        """Run one step of the key manager on the worker thread; apply it on the loop."""
        session = self.session
        if session is None:
            return
        generation = self._generation
        loop = asyncio.get_running_loop()

        def work() -> _Outcome:
            try:
                events = step()
            except keys.E2eeError as exc:
                log.warning("e2ee: %s", exc)
                events = []
            changed = any(isinstance(e, keys.ReceiveKeysChanged) for e in events)
            states = {pid: {"verified": session.verified(pid),
                            "safety_code": session.safety_code(pid)}
                      for pid in session.peers()}
            return _Outcome(events, session.send_key(),
                            session.receive_keys() if changed else None,
                            session.outgoing(), states)

        def done(future: Future[_Outcome]) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._handle, generation, future)

        with contextlib.suppress(RuntimeError):  # shut down: the process is exiting
            self._worker.submit(work).add_done_callback(done)

    def _handle(self, generation: int, future: Future[_Outcome]) -> None:
        cipher = self.cipher
        if generation != self._generation or cipher is None or future.cancelled():
            return
        try:
            outcome = future.result()
        except Exception:
            log.exception("e2ee key manager step failed")
            return
        self._states = outcome.states
        cipher.set_send_key(*outcome.send_key)
        if outcome.receive_keys is not None:
            cipher.set_receive_keys(outcome.receive_keys)
        for event in outcome.events:
            if isinstance(event, keys.PeerVerified | keys.PeerUnverified | keys.BlobRejected
                          | keys.SendKeyChanged):
                self._notify(event)
        outbox = self._outbox
        for pid, blob in outcome.outgoing:
            if outbox is None:
                break
            if outbox.qsize() >= MAX_OUTBOX:
                outbox.get_nowait()
                self.blobs_failed += 1
            outbox.put_nowait((pid, blob))

    def _notify(self, notice: E2eeNotice) -> None:
        if self._on_notice is not None:
            try:
                self._on_notice(notice)
            except Exception:
                log.exception("e2ee notice listener failed")

    # ------------------------------------------------------------------ tasks

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            session = self.session
            if session is not None:
                self._apply(partial(session.tick, loop.time()))

    async def _send_forever(self) -> None:
        outbox = self._outbox
        assert outbox is not None
        while True:
            pid, blob = await outbox.get()
            for attempt in range(5):
                try:
                    await self.client.relay_e2ee_blob(pid, blob)
                    self.blobs_sent += 1
                    break
                except api.RequestError as exc:
                    if exc.code != sig.ErrorCode.RATE_LIMITED:
                        self.blobs_failed += 1  # e.g. the peer left meanwhile
                        break
                    await asyncio.sleep(0.25 * (attempt + 1))
                except (api.ConnectionLost, TimeoutError):
                    self.blobs_failed += 1
                    break
            else:
                self.blobs_failed += 1

    # ------------------------------------------------------------------ queries

    def peer_states(self) -> dict[str, dict[str, Any]]:
        """Per participant id: verified (bool) and the safety code to compare."""
        return dict(self._states)

    async def close(self) -> None:
        tasks = self._tasks
        self.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
