"""One person in one meeting with media: the call logic the bot and the app share.

:class:`Call` sits on a connected :class:`~confero.client.api.Client`. It opens the media
session when the client enters a meeting and rebuilds it after a rejoin (new keys and
SSRCs), knows who is who (SSRC -> participant, kept past a participant's departure so the
stream can still be freed), turns the camera and microphone on and off and tells the
server, records (asking a sender for a keyframe until its file has started, and closing a
sender's file when they leave), and frees a stream's state when its camera goes off or its
sender leaves. What each front end keeps for itself is presentation: the bot prints JSON,
the app emits Qt signals. Everything runs on one event loop; ``now`` is monotonic.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import av

from confero.client import api
from confero.client.e2ee_call import E2eeCall, E2eeNotice
from confero.client.media import AudioSource, DecodedVideo, MediaSession, VideoSource
from confero.client.media_tcp import stream_url
from confero.media.audio import SILENCE, Samples
from confero.media.recorder import MeetingRecorder
from confero.protocol import signaling as sig

if TYPE_CHECKING:  # imported when a P2P session starts (aioice costs ~0.3 s to import)
    from confero.client.p2p import PeerLink

log = logging.getLogger(__name__)

P2P_MODULE = "confero.client.p2p"


@dataclass(frozen=True)
class CallVideo:
    """A decoded picture and whose it is (None when the SSRC is nobody we know)."""

    participant: sig.ParticipantInfo | None
    name: str
    video: DecodedVideo
    #: which of the participant's streams: "camera", or "screen" (a shared screen)
    kind: str = "camera"


class Call:
    def __init__(
        self,
        client: api.Client,
        *,
        on_video: Callable[[CallVideo], None] | None = None,
        on_audio: Callable[[Samples], None] | None = None,
        on_source_error: Callable[[str, str], None] | None = None,
        on_media_started: Callable[[], None] | None = None,
        prepare_video: Callable[[int, av.VideoFrame], Any] | None = None,
        on_muted_level: Callable[[int], None] | None = None,
        fps: int = 30,
        device_playout: bool = False,
        receive_video: bool = True,
        passphrase: str | None = None,
        on_e2ee: Callable[[E2eeNotice], None] | None = None,
        on_mode_changed: Callable[[str, str], None] | None = None,
        on_transport_changed: Callable[[str, str], None] | None = None,
        media_transport: str = "auto",
        udp_port: int | None = None,
        simulcast: bool = True,
    ) -> None:
        """``device_playout``: a sound device will pull audio (:meth:`pull_audio`);
        otherwise the session plays out on a 20 ms schedule and hands frames to
        ``on_audio``. ``prepare_video(ssrc, frame)`` runs on the decoder thread per decoded frame.
        ``simulcast``: send a low-resolution copy of the camera too (issue 9; not in an
        E2EE meeting), for the server to forward to those whose downlink is slow."""
        self.client = client
        self.session: MediaSession | None = None
        self.recorder: MeetingRecorder | None = None
        self.video_source: VideoSource | None = None
        #: the screen we share as a second video stream (issue 12), None when not sharing
        self.screen_source: VideoSource | None = None
        self.audio_source: AudioSource | None = None
        self._on_video = on_video
        self._on_audio = on_audio
        self._on_source_error = on_source_error
        self._on_media_started = on_media_started
        self._prepare_video = prepare_video
        self._on_muted_level = on_muted_level
        self._fps = fps
        self._device_playout = device_playout
        self._receive_video = receive_video
        #: whether the server is asked to forward us video at all (see
        #: :meth:`set_receive_video`); a call that decodes none never asks for any
        self.receive_video = receive_video
        # participant id -> its info as last known: the client forgets a participant
        # before its ParticipantLeft reaches listeners, and we still need its SSRCs
        self._known: dict[str, sig.ParticipantInfo] = {}
        self._media_lock: asyncio.Lock | None = None  # made on the loop that uses it
        self.joined_at: float | None = None  # monotonic
        self.microphone_muted = False
        #: End-to-end encryption (E2EE meetings): keys from the passphrase, never sent.
        self.e2ee = E2eeCall(client, passphrase, on_e2ee)
        client.add_listener(self._e2ee_event)  # from the start: no blob may be missed
        # ---- peer-to-peer (issue 10)
        #: the media path the server says the meeting uses: "server" or "p2p", and why
        self.mode = "server"
        self.mode_reason = ""
        self._on_mode_changed = on_mode_changed
        self._link: PeerLink | None = None
        self._pending_start: sig.P2pStart | None = None
        self._pending_signals: list[sig.P2pSignalEvent] = []
        #: a P2P start waiting for the P2P module to be imported off the loop
        self._importing_for: sig.P2pStart | None = None
        self._keys_set = False
        self._p2p_since: float | None = None
        self._liveness: asyncio.Task[None] | None = None
        #: seconds of silence on the direct path after which consent counts as lost
        self.peer_silence_timeout = 3.0
        #: a P2P switch's old path is kept this long after the server ends the session
        self.p2p_drain = 1.5
        # ---- media over a WebSocket when UDP is blocked (issue 10)
        #: "auto" (UDP, the WebSocket if UDP stays silent), "udp" or "tcp"
        self.media_transport_policy = media_transport
        self._udp_port = udp_port  # tests: aim UDP at a dead port
        self._on_transport_changed = on_transport_changed
        #: the last session needed the WebSocket: the next one (a rejoin) starts there
        self._udp_blocked = False
        self.simulcast = simulcast
        #: picture being recorded (its camera's SSRC) -> the stream its file continues
        self._recorded_from: dict[int, int] = {}

    # ------------------------------------------------------------------ who is who

    def participant_for(self, ssrc: int) -> sig.ParticipantInfo | None:
        return self.stream_of(ssrc)[0]

    def stream_of(self, ssrc: int) -> tuple[sig.ParticipantInfo | None, str]:
        """Whose stream ``ssrc`` is, and which: "camera", "screen" or "audio". The
        camera's low-resolution copy (simulcast) is the "camera" too: same person, same
        tile, just a smaller picture."""
        for participant in self._known.values():
            if ssrc == participant.video_ssrc:
                return participant, "camera"
            if participant.low_ssrc and ssrc == participant.low_ssrc:
                return participant, "camera"
            if participant.screen_ssrc and ssrc == participant.screen_ssrc:
                return participant, "screen"
            if ssrc == participant.audio_ssrc:
                return participant, "audio"
        return None, "camera"

    def camera_ssrc_of(self, ssrc: int) -> int:
        """The SSRC that stands for the stream ``ssrc`` belongs to: a low copy's camera
        SSRC, else ``ssrc`` itself. Front ends key a sender's camera by it (one tile, one
        count, whichever of the two streams the server forwards)."""
        for participant in self._known.values():
            if participant.low_ssrc and ssrc == participant.low_ssrc:
                return participant.video_ssrc
        return ssrc

    def name_of(self, ssrc: int) -> str:
        """The sender's name; "<name> (screen)" for a shared screen (its own stream)."""
        participant, kind = self.stream_of(ssrc)
        if participant is None:
            return f"ssrc-{ssrc:08x}"
        return f"{participant.name} (screen)" if kind == "screen" else participant.name

    # ------------------------------------------------------------------ meeting life

    async def entered(self, result: sig.JoinResult) -> None:
        """We are in (created, joined or rejoined): open the media path."""
        self.joined_at = time.monotonic()
        self._known = {p.id: p for p in result.participants}
        if result.meeting.e2ee:
            self.e2ee.start(result.meeting, result.participants)
        if self.client.p2p and P2P_MODULE not in sys.modules:
            self._spawn(self._import_p2p())  # warm, before any p2p_start needs it
        await self.start_media()

    async def start_media(self) -> bool:
        """Open the media path of the meeting we are in (False: the server offers none).
        Start and stop are serialised, so a leave while this runs leaves nothing behind."""
        async with self._guard():
            grant = self.client.media_grant
            if self.client.meeting is None or self.session is not None:
                return self.session is not None
            if grant is None:
                return False
            if not self.receive_video:  # before the media path opens: not one packet
                await self.announce()
            host = urlsplit(self.client.url).hostname or "127.0.0.1"
            session = MediaSession(
                grant, host, on_video=self._video_decoded, on_audio=self._audio_played,
                fps=self._fps, device_playout=self._device_playout,
                receive_video=self._receive_video, on_source_error=self._source_failed,
                prepare_video=self._prepare_video, on_level=self._level,
                cipher=self.e2ee.cipher,
                media_transport="tcp_again" if self._udp_blocked
                and self.media_transport_policy == "auto" else self.media_transport_policy,
                stream_url=stream_url(self.client.url), stream_ssl=self.client.ssl_context,
                on_transport=self._transport_changed, udp_port=self._udp_port,
                simulcast=self.simulcast, stream_group=self.camera_ssrc_of,
            )
            await session.open()
            self.session = session
            session.audio_muted = self.microphone_muted
            session.set_video_source(self.video_source)
            if self.screen_source is not None and grant.screen_ssrc:
                session.set_screen_source(self.screen_source)
            elif self.screen_source is not None:
                self.screen_source = None  # a server without screen streams
            session.set_audio_source(self.audio_source)
            pending, self._pending_start = self._pending_start, None
            if pending is not None:
                self._p2p_start(pending)
        if self._on_media_started is not None:
            self._on_media_started()
        await self.announce()
        return True

    @property
    def media_transport(self) -> str:
        """How our media reaches the server: "udp", "tcp" (a WebSocket: UDP is blocked),
        or "" without media. Peer-to-peer is off over TCP (the server decides so)."""
        return self.session.media_transport if self.session is not None else ""

    @property
    def media_transport_reason(self) -> str:
        return self.session.transport_reason if self.session is not None else ""

    def _transport_changed(self, transport: str, reason: str) -> None:
        if self._on_transport_changed is not None:
            self._on_transport_changed(transport, reason)

    async def stop_media(self, *, keep_recording: bool = False) -> None:
        async with self._guard():
            await self._close_link()
            self._set_mode("server", "media_stopped", announce=self.mode != "server")
            if self.session is not None:
                session, self.session = self.session, None
                self._udp_blocked = session.media_transport == "tcp"
                await session.close()
            if not keep_recording:
                self.stop_recording()

    async def restart_media(self) -> None:
        """New keys and SSRCs after a rejoin; a recording in progress carries on."""
        await self.stop_media(keep_recording=True)
        if self.client.meeting is not None:
            await self.start_media()

    async def leave(self) -> None:
        await self.stop_media()
        await self.e2ee.close()
        if self.client.meeting is not None:
            with contextlib.suppress(api.RequestError, api.ConnectionLost, TimeoutError):
                await self.client.leave()

    def _guard(self) -> asyncio.Lock:
        if self._media_lock is None:
            self._media_lock = asyncio.Lock()
        return self._media_lock

    # ------------------------------------------------------------------ our media

    async def set_video_source(self, source: VideoSource | None) -> None:
        """Switch the camera (None: off). When this returns, the previous source is no
        longer read by the encoder thread and may be closed."""
        self.video_source = source
        if self.session is not None:
            self.session.set_video_source(source)
            await self.session.encoder_idle()
        await self.announce()

    async def set_screen_source(self, source: VideoSource | None) -> bool:
        """Share a screen as a second video stream beside the camera (None: stop). When
        this returns after a stop, the previous source is no longer read and may be
        closed. False: the server granted no screen stream (nothing is shared)."""
        grant = self.client.media_grant
        if source is not None and grant is not None and not grant.screen_ssrc:
            return False
        self.screen_source = source
        if self.session is not None:
            self.session.set_screen_source(source)
            await self.session.screen_encoder_idle()
        await self.announce()
        return True

    @property
    def screen_on(self) -> bool:
        return self.screen_source is not None

    async def set_audio_source(self, source: AudioSource | None) -> None:
        self.audio_source = source
        if self.session is not None:
            self.session.set_audio_source(source)
        await self.announce()

    async def set_microphone_muted(self, muted: bool) -> None:
        """Muted: the microphone keeps capturing (:attr:`own_level` stays live, so a front
        end can say "you are talking while muted") but no audio packet leaves."""
        self.microphone_muted = muted
        if self.session is not None:
            self.session.audio_muted = muted
        await self.announce()

    def _level(self, level: int) -> None:
        """Each captured microphone frame: while muted, a front end may want to know that
        someone is talking into a muted microphone."""
        if self.microphone_muted and self._on_muted_level is not None:
            self._on_muted_level(level)

    @property
    def camera_on(self) -> bool:
        return self.video_source is not None

    @property
    def microphone_on(self) -> bool:
        return self.audio_source is not None and not self.microphone_muted

    @property
    def own_level(self) -> tuple[int, float]:
        """Our microphone's last level (-dBov, 127 = silence) and when (monotonic)."""
        return self.session.own_level if self.session is not None else (127, 0.0)

    async def announce(self) -> None:
        """Tell the server (and so everyone) what we send."""
        client = self.client
        if client.meeting is not None and client.state == api.ConnectionState.CONNECTED:
            await client.set_media(camera=self.camera_on, microphone=self.microphone_on,
                                   screen=self.screen_on, receive_video=self.receive_video)

    async def set_receive_video(self, wanted: bool) -> None:
        """Ask the server for no video at all (a low-bandwidth mode: saves our downlink
        and the server's work) or for video again (each stream then starts from a
        keyframe). Ignored, staying off, when this call was made not to decode video."""
        self.receive_video = wanted and self._receive_video
        await self.announce()

    def _source_failed(self, kind: str, message: str) -> None:
        """A camera or microphone died mid-call: it is off now, and everyone is told."""
        if kind == "video":
            self.video_source = None
        elif kind == "screen":
            self.screen_source = None
        else:
            self.audio_source = None
        if self._on_source_error is not None:
            self._on_source_error(kind, message)
        task = asyncio.get_running_loop().create_task(self.announce())
        task.add_done_callback(_log_failure)

    # ------------------------------------------------------------------ what arrives

    def _video_decoded(self, video: DecodedVideo) -> None:
        if not video.shown:
            return  # the sender's other camera stream is the one on screen (simulcast)
        participant, kind = self.stream_of(video.ssrc)
        name = self.name_of(video.ssrc)  # "<name> (screen)": its own recorder file too
        if self.recorder is not None:
            self._record(video, name)
        if self._on_video is not None:
            self._on_video(CallVideo(participant, name, video, kind))

    def _record(self, video: DecodedVideo, name: str) -> None:
        """What is shown goes into one file per picture: a sender's camera and its low copy
        (simulcast) into the same file, the copy's frames smaller. A file may continue
        from the other stream only at one of its keyframes (a delta frame refers to frames
        the file does not hold); they share RTP timestamps, so the file's time runs on."""
        recorder, session = self.recorder, self.session
        assert recorder is not None
        key = self.camera_ssrc_of(video.ssrc)
        wants_keyframe = False
        if self._recorded_from.get(key, video.ssrc) != video.ssrc and not video.encoded.keyframe:
            # the tile switched streams on a delta frame: the file waits for a keyframe,
            # even one of the stream it had (its frames shown meanwhile are not in it)
            self._recorded_from[key] = 0
            wants_keyframe = True
        elif recorder.video(key, name, video.encoded, video.frame.width, video.frame.height):
            self._recorded_from[key] = video.ssrc
        else:
            wants_keyframe = True  # a file starts on a keyframe
        if wants_keyframe and session is not None:
            session.request_keyframe(video.ssrc, time.monotonic())

    def _audio_played(self, samples: Samples) -> None:
        recorder = self.recorder
        if recorder is not None:
            recorder.audio(samples)
        if self._on_audio is not None:
            self._on_audio(samples)

    def pull_audio(self) -> Samples:
        """For a sound device's thread: the current session's audio (silence between)."""
        session = self.session
        return session.pull_audio() if session is not None else SILENCE

    def set_device_playout(self, device: bool) -> None:
        self._device_playout = device
        if self.session is not None:
            self.session.set_device_playout(device)

    def handle_event(self, event: api.ClientEvent) -> None:
        """Keep the call in step with the meeting; front ends call this from their own
        listener (before presenting the event)."""
        match event:
            case sig.ParticipantJoined(participant=participant):
                self._known[participant.id] = participant
            case sig.ParticipantLeft(participant_id=pid):
                gone = self._known.pop(pid, None)
                if gone is not None:
                    videos = [s for s in (gone.video_ssrc, gone.screen_ssrc, gone.low_ssrc)
                              if s]
                    if self.session is not None:
                        for ssrc in videos:
                            self.session.forget_stream(ssrc, ended=True)
                        self.session.forget_audio_stream(gone.audio_ssrc)
                    if self.recorder is not None:
                        for ssrc in videos:
                            self.recorder.end_stream(ssrc)
                    self._recorded_from.pop(gone.video_ssrc, None)
            case sig.MediaChanged(participant_id=pid, camera=camera, screen=screen):
                known = self.client.participants.get(pid)
                if known is not None:
                    before = self._known.get(pid)
                    self._known[pid] = known
                    if not camera and self.session is not None:
                        self.session.forget_stream(known.video_ssrc, ended=False)
                        if known.low_ssrc:
                            self.session.forget_stream(known.low_ssrc, ended=False)
                    if not screen and known.screen_ssrc and self.session is not None:
                        self.session.forget_stream(known.screen_ssrc, ended=False)
                        if before is not None and before.screen and self.recorder is not None:
                            self.recorder.end_stream(known.screen_ssrc)
            case sig.ChatEvent(message=message):
                if self.recorder is not None:
                    self.recorder.chat(message)
            case sig.P2pStart():
                self._p2p_start(event)
            case sig.P2pSignalEvent():
                self._p2p_signal(event)
            case sig.P2pStop(session=session, reason=reason):
                self._p2p_stop(session, reason)
            case sig.ModeChanged(mode=mode, reason=reason, media=grant):
                if grant is not None and self.session is not None:
                    self.session.rekey_server(grant)
                    self.client.media_grant = grant
                self._mode_changed(mode, reason)
            case api.Rejoined(participants=participants):
                self._known = {p.id: p for p in participants}
                self._recorded_from.clear()  # new SSRCs: new files
                self._spawn(self.restart_media())
            case sig.MeetingEnded() | api.RejoinFailed():
                self._spawn(self.stop_media())
            case _:
                pass

    def _e2ee_event(self, event: api.ClientEvent) -> None:
        """Key exchange first, before any front end sees the event: a rejoin gets a new
        identity (and new keys) before the media restarts with them."""
        match event:
            case api.Rejoined(meeting=meeting, participants=participants):
                if meeting.e2ee:
                    self.e2ee.start(meeting, participants)
                else:
                    self.e2ee.stop()
            case sig.MeetingEnded() | api.RejoinFailed():
                self.e2ee.stop()
            case _:
                self.e2ee.on_event(event)

    def e2ee_status(self) -> dict[str, Any]:
        """Per participant name: verified, safety code, and frames decrypted / not."""
        if not self.e2ee.active:
            return {}
        frames: dict[int, dict[str, int]] = {}
        if self.session is not None:
            raw = self.session.stats().get("e2ee", {})
            assert isinstance(raw, dict)
            frames = raw
        out: dict[str, Any] = {}
        states = self.e2ee.peer_states()
        for participant in self._known.values():
            if participant.id == self.client.participant_id:
                continue
            state = states.get(participant.id, {"verified": False, "safety_code": None})
            counts = [frames.get(s, {}) for s in (participant.audio_ssrc,
                                                   participant.video_ssrc,
                                                   participant.screen_ssrc)]
            decrypted = sum(c.get("decrypted", 0) for c in counts)
            undecryptable = sum(c.get("undecryptable", 0) for c in counts)
            out[participant.name] = {
                "participant_id": participant.id,
                **state,
                "decrypted": decrypted,
                "undecryptable": undecryptable,
                "audio_undecryptable": counts[0].get("undecryptable", 0),
                "video_undecryptable": counts[1].get("undecryptable", 0),
                "state": "cannot decrypt" if undecryptable and not decrypted
                else "decrypting" if decrypted else "waiting",
            }
        return out

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        task.add_done_callback(_log_failure)

    # ------------------------------------------------------------------ peer-to-peer

    async def _import_p2p(self) -> None:
        """aioice (and dnspython) take ~0.3 s to import, seconds on a busy machine: on
        the event loop that stall made the server's heartbeat drop the connection right
        at a P2P start. A worker thread imports it; the loop keeps running."""
        await asyncio.to_thread(importlib.import_module, P2P_MODULE)

    async def _start_after_import(self, start: sig.P2pStart) -> None:
        await self._import_p2p()
        if self._importing_for is start:  # not stopped or superseded meanwhile
            self._importing_for = None
            self._p2p_start(start)

    def _p2p_start(self, start: sig.P2pStart) -> None:
        session = self.session
        if session is None:
            self._pending_start = start  # media opens right after the join reply
            return
        if P2P_MODULE not in sys.modules:
            self._importing_for = start
            self._spawn(self._start_after_import(start))
            return
        old = self._link
        if old is not None:
            self._spawn(old.close())
        self._keys_set = False
        from confero.client.p2p import PeerLink  # lazily: see the import above

        link = PeerLink(
            start.session, start.controlling, stun_server=session.address,
            turn=(start.turn_url, start.turn_username, start.turn_password)
            if start.turn_url else None,
            send_signal=self._send_signal, on_datagram=session.peer_datagram_received,
            on_state=self._link_state,
        )
        self._link = link
        session.attach_peer(link)
        link.start()
        signals, self._pending_signals = self._pending_signals, []
        for signal in signals:
            self._p2p_signal(signal)

    async def _send_signal(self, session: int, **fields: Any) -> None:
        await self.client.p2p_signal(session, **fields)

    def _p2p_signal(self, event: sig.P2pSignalEvent) -> None:
        link = self._link
        if link is None or link.session != event.session:
            if len(self._pending_signals) < 8:
                self._pending_signals.append(event)  # it may precede our own start
            return
        link.remote_signal(event)
        if link.rx_key is not None and not self._keys_set and self.session is not None:
            self.session.peer_keys(link.tx_key, link.rx_key)
            self._keys_set = True

    def _link_state(self, link: PeerLink, state: str) -> None:
        if link is not self._link:
            return
        if state == "connected":
            self._report(link.session, "connected")
            return
        if state in ("failed", "consent_lost"):
            self._report(link.session, state)
            if self.mode == "p2p" and self.session is not None:
                # do not wait for the server: our media goes back through it now
                self.session.switch_to_server()

    def _report(self, session: int, state: Any) -> None:
        if self.client.state == api.ConnectionState.CONNECTED:
            self._spawn(self.client.p2p_state(session, state))

    def _p2p_stop(self, session: int, reason: str) -> None:
        if self._importing_for is not None and self._importing_for.session == session:
            self._importing_for = None
        link = self._link
        if link is None or link.session != session:
            return
        self._spawn(self._drain_and_close(link))

    async def _drain_and_close(self, link: PeerLink) -> None:
        """Keep the direct path a moment (make-before-break), then close it."""
        await asyncio.sleep(self.p2p_drain)
        if self._link is link:
            await self._close_link()

    async def _close_link(self) -> None:
        link, self._link = self._link, None
        self._pending_signals.clear()
        self._pending_start = None
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None
        if self.session is not None and link is not None:
            self.session.detach_peer()
        if link is not None:
            await link.close()

    def _mode_changed(self, mode: str, reason: str) -> None:
        session = self.session
        if session is not None:
            if mode == "p2p":
                session.switch_to_p2p()
            else:
                session.switch_to_server()
        if mode == "p2p":
            self._p2p_since = time.monotonic()
            if self._liveness is None:
                self._liveness = asyncio.get_running_loop().create_task(self._watch_peer())
        self._set_mode(mode, reason)

    def _set_mode(self, mode: str, reason: str, *, announce: bool = True) -> None:
        self.mode, self.mode_reason = mode, reason
        if announce and self._on_mode_changed is not None:
            self._on_mode_changed(mode, reason)

    async def _watch_peer(self) -> None:
        """Consent freshness on the direct path (see :meth:`PeerLink.poll_liveness`)."""
        while True:
            await asyncio.sleep(0.5)
            link, session = self._link, self.session
            if link is None or session is None or self.mode != "p2p":
                continue
            heard = session.peer_heard_at()
            since = self._p2p_since or 0.0
            link.poll_liveness(max(heard or since, since), time.monotonic(),
                               self.peer_silence_timeout)

    @property
    def peer_path(self) -> str:
        """The direct path's candidate types (``srflx->srflx``, ``relay->relay``...)."""
        return self._link.selected if self._link is not None else ""

    async def request_server_mode(self) -> None:
        """Ask the server to take the meeting back (this side wants no direct path)."""
        link = self._link
        if link is not None:
            await self.client.p2p_state(link.session, "want_server")

    # ------------------------------------------------------------------ recording

    def start_recording(self, directory: Path | str) -> MeetingRecorder:
        self.stop_recording()
        self._recorded_from.clear()
        self.recorder = MeetingRecorder(directory)
        return self.recorder

    def stop_recording(self) -> MeetingRecorder | None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.close()
        return recorder

    # ------------------------------------------------------------------ queries

    def speaking(self, now: float) -> set[str]:
        """Participant ids talking now, from the mix's per-speaker levels."""
        session = self.session
        if session is None:
            return set()
        loud = session.speaking(now)
        return {p.id for p in self._known.values() if p.audio_ssrc in loud}

    def named_stats(self) -> dict[str, Any]:
        """The session's statistics with each video stream under its sender's name."""
        session = self.session
        if session is None:
            return {"video": {}, "audio": {}, "audio_buffer": {}, "sent": {}}
        raw = session.stats()
        video = raw["video"]
        assert isinstance(video, dict)
        named: dict[str, Any] = {}
        for ssrc, stream in video.items():
            if self.camera_ssrc_of(ssrc) != ssrc:
                continue  # a low copy: merged into its camera's entry below
            named[self.name_of(ssrc)] = stream
        for ssrc, low in video.items():
            camera_ssrc = self.camera_ssrc_of(ssrc)
            if camera_ssrc != ssrc:
                name = self.name_of(ssrc)
                named[name] = merge_camera_stats(video.get(camera_ssrc), low)
        return {**raw, "video": named}


#: Counters and rates that add up across a sender's two camera streams (simulcast).
_ADDED = ("packets", "bytes", "lost", "nacks_sent", "plis_sent", "frames_decoded",
          "decode_errors", "frames_dropped", "frames_superseded", "fps", "bitrate_bps")


def merge_camera_stats(camera: dict[str, Any] | None, low: dict[str, Any]) -> dict[str, Any]:
    """One entry for a sender's camera out of its two streams' (the camera and its low
    copy): counts and rates add up (``frames_decoded`` and ``fps`` count frames shown,
    and only one stream's frames are shown at a time); size, delay and jitter are the
    stream shown last second's (the one with more frames). ``low`` keeps the copy's own
    figures, to tell which of the two a subscriber is getting."""
    copy = {"frames_decoded": low.get("frames_decoded", 0), "fps": low.get("fps", 0.0),
            "bitrate_bps": low.get("bitrate_bps", 0.0), "width": low.get("width", 0),
            "height": low.get("height", 0)}
    if camera is None:
        return {**low, "low": copy}
    main = low if low.get("fps", 0.0) > camera.get("fps", 0.0) else camera
    merged = dict(main)
    for key in _ADDED:
        merged[key] = camera.get(key, 0) + low.get(key, 0)
    merged["low"] = copy
    return merged


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if isinstance(exc, api.RequestError | api.ConnectionLost | TimeoutError):
            log.info("call: %s", exc)
        else:
            log.error("call task failed", exc_info=exc)
