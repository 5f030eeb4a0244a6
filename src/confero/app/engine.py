"""The app's engine: everything but the widgets, on its own asyncio thread.

The GUI thread never touches the network, a codec or a device. It calls the engine's
methods, which schedule work on the engine's event loop and return at once; the engine
answers with Qt signals (queued to the GUI thread) and keeps the newest decoded picture of
each participant, already converted to a ``QImage``, for the GUI to paint at display rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import msgspec
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from confero import client as api
from confero.app.pictures import DEFAULT_MAX_WIDTH, PictureSizes, fitted_size, frame_to_image
from confero.client.call import Call, CallVideo
from confero.client.e2ee_call import NoPassphrase
from confero.client.media import AudioSource, VideoSource
from confero.media.audio import SineSource
from confero.media.devices import (
    CameraSource,
    DeviceError,
    MicrophoneSource,
    ScreenSource,
    Speaker,
    has_default_device,
)
from confero.media.screen_pattern import SyntheticScreen
from confero.media.video import SyntheticCamera
from confero.protocol.e2ee_keys import PeerUnverified, PeerVerified, SendKeyChanged, kid_epoch
from confero.protocol.signaling import HandChanged

log = logging.getLogger(__name__)

SELF = "self"
#: How often the server's media counters for our meeting are asked for (the mode badge's
#: proof that nothing goes through the server in peer-to-peer).
SERVER_MEDIA_INTERVAL = 2.0
#: The frame-store and tile key of a participant's shared screen (and of ours: SELF).
SCREEN_SUFFIX = ":screen"


def screen_key(participant_id: str) -> str:
    return participant_id + SCREEN_SUFFIX


@dataclass(frozen=True)
class DeviceChoice:
    """What a picker offers: ``kind`` is synthetic/screen/camera/mic/sine/none/default."""

    label: str
    kind: str
    device: str = ""


def to_qimage(frame: av.VideoFrame, max_width: int = DEFAULT_MAX_WIDTH) -> QImage:
    """A picture for the self-view and the device check: no wider than ``max_width``."""
    width, height = fitted_size(frame.width, frame.height, 0, 0, max_width)
    return frame_to_image(frame, width, height)


class FrameStore:
    """The newest picture per participant (and ``SELF``), shared between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._images: dict[str, tuple[QImage, int]] = {}
        self._serial = 0

    def put(self, key: str, image: QImage) -> None:
        with self._lock:
            self._serial += 1
            self._images[key] = (image, self._serial)

    def get(self, key: str) -> tuple[QImage, int] | None:
        with self._lock:
            return self._images.get(key)

    @property
    def serial(self) -> int:
        """The serial of the newest picture put so far (later ones have higher ones)."""
        with self._lock:
            return self._serial

    def drop(self, key: str) -> None:
        with self._lock:
            self._images.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._images.clear()


class _TappedVideo:
    """A video source that also shows what it sends in the self-view (at most 15 fps);
    ``key``: where in the frame store (SELF, or our screen's tile)."""

    def __init__(self, source: VideoSource, frames: FrameStore, key: str = SELF) -> None:
        self._source = source
        self._frames = frames
        self._key = key
        self.width, self.height = source.width, source.height
        self._last = 0.0

    def frame(self, capture_us: int) -> av.VideoFrame:
        frame = self._source.frame(capture_us)
        now = time.monotonic()
        if now - self._last >= 1 / 15:
            self._last = now
            self._frames.put(self._key, to_qimage(frame, 320))
        return frame

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


class Engine(QObject):
    state_changed = Signal(str, str)  # state, reason
    # Containers travel as ``object``: PySide6 converts a ``dict``/``list``/``set`` signal
    # argument to a QVariant and back, and with None values inside that corrupted None's
    # reference count here (a fatal "deallocating None" after a few hundred emissions).
    meetings_changed = Signal(object)  # list[MeetingInfo]
    joined = Signal(object)  # JoinResult
    rejoined = Signal(object)  # list[ParticipantInfo]: who is there after a reconnect
    left = Signal(str)  # why we are back in the lobby
    participant_joined = Signal(object)  # ParticipantInfo
    participant_left = Signal(object)  # ParticipantLeft
    media_changed = Signal(object)  # MediaChanged
    chat = Signal(object)  # ChatMessage
    error = Signal(str)
    notice = Signal(str)
    stats = Signal(object)  # dict: name -> stream statistics
    speaking = Signal(object)  # set: participant ids (and SELF) talking now
    local_media = Signal(bool, bool)  # camera on, microphone on (what we actually send)
    local_screen = Signal(bool)  # we share a screen (a second video stream) or not
    recording = Signal(bool, str)
    #: E2EE meetings: a dict, either {"peer": participant id, "state": "verified" |
    #: "cannot verify" | "blob_rejected", "safety_code" or "reason"}, {"state": "cannot
    #: decrypt", "reason": "no passphrase"}, {"state": "key_changed", "epoch": n} (our
    #: sender key was ratcheted or rotated), or once a second {"status": {name: {verified,
    #: safety_code, decrypted, undecryptable, audio_undecryptable, video_undecryptable,
    #: state: "decrypting" | "cannot decrypt" | "waiting"}}}.
    e2ee_state = Signal(object)
    #: the meeting's media path: "p2p" (direct) or "server", and the server's reason
    mode_changed = Signal(str, str)
    #: every SERVER_MEDIA_INTERVAL s in a meeting, and right after a mode change: the
    #: server's own counters for it (MeetingMediaResult as a dict: mode, received_bytes,
    #: forwarded_bytes, mixed_bytes, ... packets)
    server_media = Signal(object)
    #: how our media reaches the server: "udp", or "tcp" (a WebSocket: this network drops
    #: UDP), and why (docs/protocol.md "Media over WebSocket"); for a badge in the UI
    media_transport_changed = Signal(str, str)
    # --- added for the app UI (branch app-ui); small and separate from the call logic ---
    resume_token = Signal(str)  # the server's resume token after each connect (remembered)
    hand_changed = Signal(str, bool)  # participant id, hand raised
    # STUB HOOK FOR THE LEAD: the microphone's level (RFC 6464 -dBov, 0 loud..127 silent)
    # of every 20 ms frame captured while muted (capturing, sending nothing). Nothing emits
    # it yet: the media side (keep capturing while muted) is the lead's; the UI's speech
    # detector and "You are muted" banner listen to it already.
    muted_level = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.frames = FrameStore()
        #: how large each tile shows its pictures: the decoder thread converts to that
        self.pictures = PictureSizes()
        self.client: api.Client | None = None
        self.call: Call | None = None  # the call logic shared with the bot
        self._video: _TappedVideo | None = None
        self._screen: _TappedVideo | None = None
        self._audio: AudioSource | None = None
        self._speaker: Speaker | None = None
        self._speaker_device: DeviceChoice = DeviceChoice("Default speaker", "default")
        self._ticker: asyncio.Task[None] | None = None
        self._muted = False  # the microphone captures, but nothing is sent
        self._receive_video = True  # False: the server is asked to forward us no video
        self._speaker_task: asyncio.Task[Any] | None = None
        self._media_poller: asyncio.Task[None] | None = None
        self._poll_now: asyncio.Event | None = None  # set on a mode change: ask at once
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ plumbing

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run on the engine loop; failures become ``error`` signals with a clear text."""
        future = asyncio.run_coroutine_threadsafe(self._guarded(coroutine), self._loop)
        return future

    async def _guarded(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coroutine
        except api.RequestError as exc:
            self.error.emit(exc.message)
        except (api.ConnectionLost, TimeoutError):
            self.error.emit("not connected to the server right now")
        except (api.ConnectionFailed, api.ConfigError, DeviceError) as exc:
            self.error.emit(str(exc))
        except Exception as exc:
            log.exception("engine task failed")
            self.error.emit(f"unexpected error: {exc}")
        return None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Leave cleanly and stop the thread (called when the window closes)."""
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._disconnect(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ connection

    def connect_to(self, url: str, name: str, cafile: str | None = None,
                   resume_token: str | None = None) -> None:
        self.submit(self._connect(url, name, cafile, resume_token))

    async def _connect(self, url: str, name: str, cafile: str | None,
                       resume_token: str | None = None) -> None:
        await self._disconnect()
        client = api.Client(url, name, cafile=cafile or None, resume_token=resume_token)
        client.add_listener(self._on_event)
        client.add_listener(self._on_ui_event)
        self.client = client
        self.call = Call(client, on_video=self._on_video, prepare_video=self.pictures.convert,
                         device_playout=True, on_source_error=self._source_failed,
                         on_media_started=self._media_started, on_e2ee=self._on_e2ee,
                         on_muted_level=self.muted_level.emit,
                         on_mode_changed=self._mode_changed,
                         on_transport_changed=self.media_transport_changed.emit)
        client.p2p = True  # two people talk directly when the meeting allows it
        self.call.video_source, self.call.audio_source = self._video, self._audio
        self.call.microphone_muted = self._muted
        self.call.receive_video = self._receive_video
        await client.connect()
        if client.resume_token:
            self.resume_token.emit(client.resume_token)
        self.meetings_changed.emit(await client.list_meetings())

    @property
    def participant_id(self) -> str | None:
        """Ours, as the server knows it now (a reconnect gets a new one)."""
        client = self.client
        return client.participant_id if client is not None else None

    def disconnect_from_server(self) -> None:
        self.submit(self._disconnect())

    async def _disconnect(self) -> None:
        await self._stop_media()
        self.call = None
        if self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(api.RequestError, api.ConnectionLost, TimeoutError):
                if client.meeting is not None:
                    await client.leave()
            await client.close()

    def _require_client(self) -> api.Client:
        if self.client is None:
            raise api.ConnectionLost("not connected")
        return self.client

    @property
    def session(self) -> Any:
        """The media session of the meeting we are in, if any."""
        return self.call.session if self.call is not None else None

    # ------------------------------------------------------------------ meetings

    def refresh_meetings(self) -> None:
        async def refresh() -> None:
            self.meetings_changed.emit(await self._require_client().list_meetings())

        self.submit(refresh())

    def create_meeting(self, title: str, password: str | None, *, e2ee: bool = False,
                       passphrase: str | None = None) -> None:
        """``e2ee``: end-to-end encrypted; ``passphrase`` never leaves this machine."""
        async def create() -> None:
            self._set_passphrase(passphrase)
            result = await self._require_client().create_meeting(title, password or None,
                                                                  e2ee=e2ee)
            await self._entered(result)

        self.submit(create())

    def join_meeting(self, meeting_id: str, password: str | None,
                     passphrase: str | None = None) -> None:
        async def join() -> None:
            self._set_passphrase(passphrase)
            result = await self._require_client().join(meeting_id.strip(), password or None)
            await self._entered(result)

        self.submit(join())

    def _set_passphrase(self, passphrase: str | None) -> None:
        if self.call is not None:
            self.call.e2ee.passphrase = passphrase or None

    def _on_e2ee(self, notice: Any) -> None:
        if isinstance(notice, NoPassphrase):
            self.e2ee_state.emit({"state": "cannot decrypt", "reason": "no passphrase"})
        elif isinstance(notice, SendKeyChanged):
            self.e2ee_state.emit({"state": "key_changed", "epoch": kid_epoch(notice.kid)})
        elif isinstance(notice, PeerVerified):
            self.e2ee_state.emit({"peer": notice.pid, "state": "verified",
                                  "safety_code": notice.safety_code})
        elif isinstance(notice, PeerUnverified):
            self.e2ee_state.emit({"peer": notice.pid, "state": "cannot verify",
                                  "reason": notice.reason})
        else:
            self.e2ee_state.emit({"peer": notice.pid, "state": "blob_rejected",
                                  "reason": notice.reason})

    def leave_meeting(self) -> None:
        async def leave() -> None:
            await self._stop_media()
            client = self._require_client()
            if client.meeting is not None:
                await client.leave()
            self.left.emit("You left the meeting.")

        self.submit(leave())

    def end_meeting_for_all(self) -> None:
        async def cancel() -> None:
            await self._require_client().cancel()

        self.submit(cancel())

    # --- added for the app UI (branch app-ui) ---

    def end_meeting(self, meeting_id: str) -> None:
        """End a meeting we created, from the lobby (we need not be in it)."""

        async def cancel() -> None:
            await self._require_client().cancel(meeting_id)
            self.notice.emit("The meeting was ended for everyone.")
            self.meetings_changed.emit(await self._require_client().list_meetings())

        self.submit(cancel())

    def set_hand(self, raised: bool) -> None:
        async def hand() -> None:
            client = self._require_client()
            if client.meeting is not None:
                await client.raise_hand(raised)

        self.submit(hand())

    def _on_ui_event(self, event: api.ClientEvent) -> None:
        if isinstance(event, HandChanged):
            self.hand_changed.emit(event.participant_id, event.raised)

    # --- end of the app UI additions ---

    def send_chat(self, text: str) -> None:
        self.submit(self._require_client_call("send_chat", text))

    async def _require_client_call(self, method: str, *args: Any) -> Any:
        return await getattr(self._require_client(), method)(*args)

    async def _entered(self, result: Any) -> None:
        self.joined.emit(result)
        self._start_media_poller()
        if self.call is not None:
            await self.call.entered(result)
            if self.call.session is None:
                self.notice.emit("The server offers no media for this meeting: chat only.")

    # ------------------------------------------------------------------ media

    def _media_started(self) -> None:
        """The call opened a media session (on joining, or again after a rejoin)."""
        self._open_speaker()
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        self.local_media.emit(self._video is not None, self._microphone_live())

    async def _stop_media(self, *, keep_recording: bool = False) -> None:
        if self._media_poller is not None:
            self._media_poller.cancel()
            self._media_poller = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._speaker is not None:
            self._speaker.close()
            self._speaker = None
        if self.call is not None:
            recorder = self.call.recorder if not keep_recording else None
            await self.call.stop_media(keep_recording=keep_recording)
            if recorder is not None:
                self.recording.emit(False, str(recorder.directory))
        if self._screen is not None:  # a share ends with the meeting, never carries over
            screen, self._screen = self._screen, None
            if self.call is not None:
                self.call.screen_source = None
            await asyncio.to_thread(screen.close)
            self.local_screen.emit(False)
        self.frames.clear()

    def _source_failed(self, kind: str, message: str) -> None:
        """A camera or microphone died mid-call: say so, and show it as off."""
        if kind == "screen":
            self._screen = None
            self.frames.drop(screen_key(SELF))
            self.error.emit(f"Screen sharing stopped: {message}")
            self.local_screen.emit(False)
            return
        if kind == "video":
            self._video = None
            self.frames.drop(SELF)
        else:
            self._audio = None
        self.error.emit(f"The {'camera' if kind == 'video' else 'microphone'} stopped: "
                        f"{message}")
        self.local_media.emit(self._video is not None, self._microphone_live())

    def _open_speaker(self) -> None:
        """Open the speaker without blocking the engine loop: a sound server can take a
        second or two to start a stream, and the loop must keep answering heartbeats
        and media meanwhile (the session plays out silently until the device pulls)."""
        task = self._loop.create_task(self._guarded(self._open_speaker_off_loop()))
        self._speaker_task = task

    async def _open_speaker_off_loop(self) -> None:
        call = self.call
        if call is None or call.session is None or self._speaker_device.kind == "none":
            if call is not None:
                call.set_device_playout(False)  # keep the buffers moving, silently
            return
        if self._speaker_device.kind == "default" and not await asyncio.to_thread(
            has_default_device, "output"
        ):
            call.set_device_playout(False)
            self.notice.emit("No speaker found: you can see and chat, but not hear. "
                             "Pick one when it is connected.")
            return
        call.set_device_playout(False)  # until the device is there to pull
        try:
            speaker = await asyncio.to_thread(Speaker, call.pull_audio,
                                              self._speaker_device.device or None)
        except DeviceError as exc:
            self.notice.emit(f"No sound output: {exc}. You can still see and chat.")
            return
        if self.call is not call or call.session is None:
            speaker.close()  # the meeting ended meanwhile
            return
        if self._speaker is not None:
            self._speaker.close()
        call.set_device_playout(True)
        self._speaker = speaker

    def choose_speaker(self, choice: DeviceChoice) -> None:
        async def switch() -> None:
            self._speaker_device = choice
            if self._speaker is not None:
                self._speaker.close()
                self._speaker = None
            if self.session is not None:
                self._open_speaker()

        self.submit(switch())

    def set_camera(self, choice: DeviceChoice | None, name: str = "") -> None:
        """Turn the camera on with this source, or off (None)."""

        async def switch() -> None:
            old, self._video = self._video, None
            await self._set_call_video(None)
            if old is not None:
                await asyncio.to_thread(old.close)
            if choice is not None:
                source = await asyncio.to_thread(self._open_video, choice, name)
                self._video = _TappedVideo(source, self.frames)
            else:
                self.frames.drop(SELF)
            await self._set_call_video(self._video)
            self.local_media.emit(self._video is not None, self._microphone_live())

        self.submit(switch())

    def set_screen(self, choice: DeviceChoice | None, name: str = "") -> None:
        """Share a screen as a second video stream beside the camera, or stop (None)."""

        async def switch() -> None:
            old, self._screen = self._screen, None
            if self.call is not None and old is not None:
                await self.call.set_screen_source(None)
            if old is not None:
                await asyncio.to_thread(old.close)
            self.frames.drop(screen_key(SELF))
            if choice is not None:
                source = await asyncio.to_thread(self._open_screen, choice, name)
                tapped = _TappedVideo(source, self.frames, screen_key(SELF))
                if self.call is not None and not await self.call.set_screen_source(tapped):
                    await asyncio.to_thread(tapped.close)
                    self.error.emit("This server cannot carry a shared screen.")
                else:
                    self._screen = tapped
            self.local_screen.emit(self._screen is not None)

        self.submit(switch())

    @staticmethod
    def _open_screen(choice: DeviceChoice, name: str) -> VideoSource:
        if choice.kind == "synthetic_screen":
            return SyntheticScreen(name or "me", 1280, 720)
        return ScreenSource(choice.device or ":0", 1280, 720)

    def _microphone_live(self) -> bool:
        return self._audio is not None and not self._muted

    def set_receive_video(self, wanted: bool) -> None:
        """Ask the server for no video at all (saves our downlink and its work), or for
        video again (each picture comes back with the keyframe it asks for)."""

        async def switch() -> None:
            self._receive_video = wanted
            if self.call is not None:
                await self.call.set_receive_video(wanted)
            if not wanted:
                self.frames.clear()  # no frozen pictures; our own come back by themselves

        self.submit(switch())

    def set_muted(self, muted: bool) -> None:
        """Mute without closing the microphone: it keeps capturing, so ``muted_level``
        can tell the window that someone talks into a muted microphone, and unmuting is
        instant; no audio packet leaves while muted."""

        async def switch() -> None:
            self._muted = muted
            if self.call is not None:
                await self.call.set_microphone_muted(muted)
            self.local_media.emit(self._video is not None, self._microphone_live())

        self.submit(switch())

    def set_microphone(self, choice: DeviceChoice | None) -> None:
        async def switch() -> None:
            old, self._audio = self._audio, None
            await self._set_call_audio(None)
            close = getattr(old, "close", None)
            if close is not None:
                close()
            if choice is not None:
                self._audio = await asyncio.to_thread(self._open_audio, choice)
            await self._set_call_audio(self._audio)
            self.local_media.emit(self._video is not None, self._microphone_live())

        self.submit(switch())

    @staticmethod
    def _open_video(choice: DeviceChoice, name: str) -> VideoSource:
        if choice.kind == "synthetic":
            return SyntheticCamera(name or "me", 640, 480)
        if choice.kind == "screen":
            return ScreenSource(choice.device or ":0", 1280, 720)
        return CameraSource(choice.device or "0", 640, 480)

    @staticmethod
    def _open_audio(choice: DeviceChoice) -> AudioSource:
        if choice.kind == "sine":
            return SineSource(float(choice.device or 440))
        return MicrophoneSource(choice.device or None)

    async def _set_call_video(self, source: VideoSource | None) -> None:
        if self.call is not None:
            await self.call.set_video_source(source)

    async def _set_call_audio(self, source: AudioSource | None) -> None:
        if self.call is not None:
            await self.call.set_audio_source(source)

    # ------------------------------------------------------------------ recording

    def start_recording(self, directory: str) -> None:
        async def start() -> None:
            if self.call is None:
                raise api.ConnectionLost("not connected")
            self._stop_recording()
            self.call.start_recording(Path(directory))
            self.recording.emit(True, directory)

        self.submit(start())

    def stop_recording(self) -> None:
        self._loop.call_soon_threadsafe(self._stop_recording)

    def _stop_recording(self) -> None:
        recorder = self.call.stop_recording() if self.call is not None else None
        if recorder is not None:
            self.recording.emit(False, str(recorder.directory))

    # ------------------------------------------------------------------ incoming

    def _on_video(self, call_video: CallVideo) -> None:
        participant = call_video.participant
        if participant is not None and call_video.video.prepared is not None:
            key = screen_key(participant.id) if call_video.kind == "screen" else participant.id
            self.pictures.bind(call_video.video.ssrc, key)
            self.frames.put(key, call_video.video.prepared)

    def _on_event(self, event: api.ClientEvent) -> None:
        if self.call is not None:
            self.call.handle_event(event)
        match event:
            case api.StateChanged(state=state, reason=reason):
                self.state_changed.emit(state.value, reason)
            case api.MeetingsChanged(meetings=meetings):
                self.meetings_changed.emit(meetings)
            case api.ParticipantJoined(participant=participant):
                self.participant_joined.emit(participant)
            case api.ParticipantLeft():
                self.frames.drop(event.participant_id)
                self.frames.drop(screen_key(event.participant_id))
                self.pictures.forget(event.participant_id)
                self.pictures.forget(screen_key(event.participant_id))
                self.participant_left.emit(event)
            case api.MediaChanged():
                if not event.camera:
                    self.frames.drop(event.participant_id)
                if not event.screen:
                    self.frames.drop(screen_key(event.participant_id))
                self.media_changed.emit(event)
            case api.ChatEvent(message=message):
                self.chat.emit(message)
            case api.MeetingEnded(message=message):
                self._loop.create_task(self._stop_media())
                self.left.emit(message[0].upper() + message[1:] + ".")
            case api.Rejoined(participants=participants):
                self.rejoined.emit(participants)
                self.notice.emit("Reconnected and back in the meeting.")
            case api.RejoinFailed(message=message):
                self._loop.create_task(self._stop_media())
                self.left.emit(f"Could not rejoin the meeting: {message}")

    async def _tick(self) -> None:
        """Five times a second: who is talking; once a second: statistics."""
        count = 0
        while True:
            await asyncio.sleep(0.2)
            call = self.call
            if call is None or call.session is None:
                continue
            now = time.monotonic()
            talking = call.speaking(now)
            level, at = call.own_level
            if self._audio is not None and now - at < 0.5 and level < 50:
                talking.add(SELF)
            self.speaking.emit(talking)
            count += 1
            if count % 5 == 0:
                stats = call.named_stats()
                self.stats.emit({"video": stats["video"], "audio": stats["audio"],
                                 "sent": stats["sent"]})
                if call.e2ee.active:
                    self.e2ee_state.emit({"status": call.e2ee_status()})

    # ------------------------------------------------------------------ the media path

    def _mode_changed(self, mode: str, reason: str) -> None:
        self.mode_changed.emit(mode, reason)
        if self._poll_now is not None:
            self._poll_now.set()  # the counters at the switch, not up to 2 s later

    def _start_media_poller(self) -> None:
        if self._media_poller is None:
            self._poll_now = asyncio.Event()
            self._media_poller = self._loop.create_task(self._poll_server_media())

    async def _poll_server_media(self) -> None:
        """The server's counters for our meeting, while we are in one. A failed ask (a
        reconnect, a meeting just ended) is skipped quietly: the next one comes soon."""
        wake = self._poll_now
        assert wake is not None
        while True:
            wake.clear()  # a mode change while we ask sets it again: ask once more at once
            client = self.client
            if client is not None and client.meeting is not None:
                try:
                    media = await client.meeting_media()
                except (api.RequestError, api.ConnectionLost, TimeoutError):
                    pass
                else:
                    self.server_media.emit(msgspec.structs.asdict(media))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), SERVER_MEDIA_INTERVAL)
