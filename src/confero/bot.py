"""``confero bot``: a headless participant for demos, tests and load.

It joins (or creates) a meeting, sends synthetic or file video and a tone or file audio,
receives everyone else, optionally records what it received, and prints one JSON object
per line on stdout; the first line names the meeting. Lines on stdin steer it while it
runs: ``camera on|off``, ``mic on|off``, ``screen on|off``, ``chat TEXT``, ``stats``,
``leave``. ``--screen`` shares a synthetic screen (slides) as a second video stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confero import client as api
from confero.client.call import Call, CallVideo
from confero.client.e2ee_call import E2eeNotice, NoPassphrase
from confero.client.media import AudioSource, VideoSource
from confero.media.audio import SineSource
from confero.media.devices import (
    CameraSource,
    DeviceError,
    MicrophoneSource,
    ScreenSource,
    Speaker,
)
from confero.media.screen_pattern import SyntheticScreen, looks_like_slide
from confero.media.sources import FileAudioSource, FileVideoSource
from confero.media.video import SyntheticCamera, identity_code, luma_plane, read_stamp_any
from confero.protocol import signaling as sig
from confero.protocol.e2ee_keys import PeerUnverified, PeerVerified, SendKeyChanged, kid_epoch
from confero.stdin import stdin_lines


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.time(), 3), **fields}, default=str),
          flush=True)


DEVICE_SPECS = ("none", "synthetic", "sine:", "mic", "screen", "camera")


def make_video_source(spec: str, name: str, width: int, height: int) -> VideoSource | None:
    kind, _, device = spec.partition(":")
    if spec == "none":
        return None
    if spec == "synthetic":
        return SyntheticCamera(name, width, height)
    if kind == "screen":
        return ScreenSource(device or ":0", width, height)
    if kind == "camera":
        return CameraSource(device or "0", width, height)
    return FileVideoSource(spec, width, height)


def make_audio_source(spec: str) -> AudioSource | None:
    kind, _, device = spec.partition(":")
    if spec == "none":
        return None
    if kind == "sine":
        return SineSource(float(device))
    if kind == "mic":
        return MicrophoneSource(device or None)
    return FileAudioSource(spec)


FREEZE_GAP = 0.2  # seconds between two decoded frames of one sender that count as a freeze


@dataclass
class _Seen:
    """What this bot has seen of one remote video stream."""

    name: str
    kind: str = "camera"  # or "screen": a shared screen, its sender's second stream
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    frames: int = 0
    stamps: Counter[str] = field(default_factory=Counter)
    #: decoded frames that look like a slide page (the synthetic screen), with --check-stamps
    slide_frames: int = 0
    #: the longest gap between decoded frames, and gaps over 100 ms (P2P switch bench)
    max_gap: float = 0.0
    gaps_over_100ms: int = 0
    # for benches, in wall-clock time like every event's "t": first and last decoded frame,
    # and each gap longer than FREEZE_GAP as (ended at, seconds)
    first_frame_wall: float | None = None
    last_frame_wall: float | None = None
    freezes: list[tuple[float, float]] = field(default_factory=list)


class _CountedSource:
    """A video source that counts the frames taken from it: the frames this bot sent."""

    def __init__(self, source: VideoSource) -> None:
        self.source, self.width, self.height = source, source.width, source.height
        self.frames = 0

    def frame(self, capture_us: int) -> Any:
        self.frames += 1
        return self.source.frame(capture_us)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


class Bot:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.client = api.Client(args.server, args.name, cafile=args.cafile)
        self.call = Call(self.client, on_video=self._on_video, fps=args.fps,
                         device_playout=args.play is not None,
                         receive_video=not args.send_only,
                         on_source_error=self._source_failed,
                         on_media_started=self._media_started,
                         passphrase=getattr(args, "passphrase", None),
                         on_e2ee=self._on_e2ee,
                         on_mode_changed=self._mode_changed,
                         on_transport_changed=self._transport_changed,
                         media_transport=getattr(args, "media_transport", "auto") or "auto",
                         udp_port=getattr(args, "media_udp_port", None),
                         simulcast=not getattr(args, "no_simulcast", False))
        self.client.p2p = not getattr(args, "no_p2p", False)
        self.speaker: Speaker | None = None
        source = make_video_source(args.video, args.name, args.width, args.height)
        self.video_source = _CountedSource(source) if source is not None else None
        self.audio_source = make_audio_source(args.audio)
        self.screen_source: _CountedSource | None = None
        if getattr(args, "screen_size", None):
            width, _, height = str(args.screen_size).partition("x")
            self.screen_source = _CountedSource(
                SyntheticScreen(args.name, int(width), int(height)))
        self.call.video_source = self.video_source
        if getattr(args, "screen", False):
            self.call.screen_source = self.screen_source
        self.call.audio_source = self.audio_source
        #: per remote video stream, by the SSRC that stands for it: a sender's camera and
        #: its low copy (simulcast) are one stream here, as they are one tile in the app
        self.seen: dict[int, _Seen] = {}
        self.stop = asyncio.Event()
        self.stop_reason = "duration"

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        try:
            await self.client.connect()
        except api.ConnectionFailed as exc:
            emit("error", code="connection_failed", message=str(exc))
            return 2
        # listen before entering: a p2p_start can follow the join reply at once
        self.client.add_listener(self._on_event)
        try:
            if self.args.create:
                result = await self.client.create_meeting(
                    self.args.create, self.args.password,
                    mode=getattr(self.args, "mode", "auto") or "auto",
                    e2ee=bool(getattr(self.args, "e2ee", False)))
            else:
                result = await self.client.join(self.args.join, self.args.password)
        except api.RequestError as exc:
            emit("error", code=exc.code, message=exc.message)
            await self.client.close()
            return 1
        emit("joined", meeting_id=result.meeting.id, title=result.meeting.title,
             participant_id=self.client.participant_id, created=bool(self.args.create),
             participants=[p.name for p in result.participants], e2ee=result.meeting.e2ee,
             mode=result.mode, mode_setting=result.mode_setting)
        if getattr(self.args, "passphrase", None) and not result.meeting.e2ee:
            # Our passphrase would protect nothing: refuse rather than send in the clear.
            emit("error", code="not_e2ee",
                 message="this meeting is not end-to-end encrypted; not sending media")
            await self.client.close()
            return 1
        if self.args.record:
            self.call.start_recording(self.args.record)
        await self.call.entered(result)
        if self.call.session is None:
            emit("error", code="no_media", message="the server offered no media path")
        if self.args.chat:
            await self.client.send_chat(self.args.chat)
        tasks = [asyncio.create_task(self._report_stats())]
        if not self.args.no_stdin:
            tasks.append(asyncio.create_task(self._read_commands()))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._finish, "signal")
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # where is it stuck?
        try:
            if self.args.duration:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.args.duration)
            else:
                await self.stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await self._shutdown()
        return 0

    def _finish(self, reason: str) -> None:
        self.stop_reason = reason
        self.stop.set()

    async def _shutdown(self) -> None:
        summary = self._summary()
        if self.speaker is not None:
            self.speaker.close()
        recorder = self.call.recorder
        self.call.recorder = None  # the files are closed below, after the media stops
        await self.call.leave()  # stops the encoder thread before its sources close
        for source in (self.audio_source, self.video_source, self.screen_source):
            close = getattr(source, "close", None)
            if close is not None:
                close()
        await self.client.close()
        if recorder is not None:
            recorder.close()
            summary["recorded"] = recorder.files()
        emit("done", reason=self.stop_reason, **summary)

    # ------------------------------------------------------------------ media

    def _media_started(self) -> None:
        self.seen.clear()
        if self.args.play is not None and self.speaker is None:
            self.speaker = Speaker(self.call.pull_audio, self.args.play or None)

    def _source_failed(self, kind: str, message: str) -> None:
        emit("error", code="source_failed", message=f"{kind}: {message}")

    def _on_e2ee(self, notice: E2eeNotice) -> None:
        if isinstance(notice, NoPassphrase):
            emit("e2ee", state="cannot decrypt", reason="no passphrase")
            return
        if isinstance(notice, SendKeyChanged):  # a join ratchet or a rotation after a leave
            emit("e2ee_key", epoch=kid_epoch(notice.kid))
            return
        known = self.client.participants.get(notice.pid)
        name = known.name if known is not None else notice.pid
        if isinstance(notice, PeerVerified):
            emit("e2ee", state="verified", name=name, safety_code=notice.safety_code)
        elif isinstance(notice, PeerUnverified):
            emit("e2ee", state="cannot verify", name=name, reason=notice.reason)
        else:
            emit("e2ee", state="blob_rejected", name=name, reason=notice.reason)

    def _on_video(self, call_video: CallVideo) -> None:
        video = call_video.video
        key = self.call.camera_ssrc_of(video.ssrc)
        seen = self.seen.get(key)
        if seen is None:
            seen = self.seen[key] = _Seen(call_video.name, call_video.kind)
        seen.frames += 1
        wall = time.time()
        gap = video.received_at - (seen.last_frame_at or video.received_at)
        if gap > FREEZE_GAP and len(seen.freezes) < 10_000:
            seen.freezes.append((round(wall, 3), round(gap, 3)))
        seen.max_gap = max(seen.max_gap, gap)
        seen.gaps_over_100ms += gap > 0.1
        seen.last_frame_at, seen.last_frame_wall = video.received_at, wall
        if seen.first_frame_wall is None:
            seen.first_frame_wall = wall
        if seen.first_frame_at is None:
            seen.first_frame_at = video.received_at
            joined_at = self.call.joined_at or video.received_at
            emit("video_started", name=seen.name, ssrc=video.ssrc, kind=seen.kind,
                 after_join_ms=round((video.received_at - joined_at) * 1000, 1),
                 width=video.frame.width, height=video.frame.height)
        if self.args.check_stamps:
            luma = luma_plane(video.frame)
            _, identity = read_stamp_any(luma)  # (a simulcast copy's too)
            ok = identity == identity_code(seen.name)
            seen.stamps["match" if ok else "mismatch"] += 1
            seen.slide_frames += looks_like_slide(luma)

    # ------------------------------------------------------------------ signaling events

    def _on_event(self, event: api.ClientEvent) -> None:
        self.call.handle_event(event)
        match event:
            case api.ParticipantJoined(participant=p):
                emit("participant_joined", name=p.name, participant_id=p.id)
            case api.ParticipantLeft(name=name, participant_id=pid, reason=reason):
                emit("participant_left", name=name, participant_id=pid, reason=reason)
            case api.MediaChanged(participant_id=pid, camera=camera, microphone=microphone,
                                  screen=screen):
                known = self.client.participants.get(pid)
                name = known.name if known else pid
                if known is not None and not camera:
                    self.seen.pop(known.video_ssrc, None)
                ended = None
                if known is not None and not screen:
                    ended = self.seen.pop(known.screen_ssrc, None)
                if ended is not None:  # what we saw of the screen that just stopped
                    emit("screen_ended", name=ended.name, frames=ended.frames,
                         stamps=dict(ended.stamps), slide_frames=ended.slide_frames)
                emit("media_changed", name=name, camera=camera, microphone=microphone,
                     screen=screen)
            case api.HandChanged(participant_id=pid, raised=raised):
                known = self.client.participants.get(pid)
                emit("hand_changed", name=known.name if known else pid, raised=raised)
            case api.ChatEvent(message=message):
                emit("chat", sender=message.sender, text=message.text, seq=message.seq,
                     ts=message.ts)
            case api.MeetingEnded(reason=reason, message=message):
                emit("meeting_ended", reason=reason, message=message)
                self._finish("meeting_ended")
            case api.StateChanged(state=state, reason=reason):
                emit("connection", state=state.value, reason=reason)
                if state == api.ConnectionState.FAILED:
                    self._finish("connection_failed")
            case api.Rejoined():
                emit("rejoined")
            case sig.P2pStart(session=session, controlling=controlling):
                emit("p2p_start", session=session, controlling=controlling,
                     turn=bool(event.turn_url))
            case sig.P2pStop(session=session, reason=reason):
                emit("p2p_stop", session=session, reason=reason)
            case api.RejoinFailed(code=code, message=message):
                emit("error", code=code, message=message)
                self._finish("rejoin_failed")

    # ------------------------------------------------------------------ commands, stats

    async def _read_commands(self) -> None:
        lines = stdin_lines()
        while (line := await lines.get()) is not None:
            try:
                await self._command(line.strip())
            except (api.RequestError, api.ConnectionLost, TimeoutError) as exc:
                emit("error", code=getattr(exc, "code", "request_failed"), message=str(exc))

    async def _command(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "camera" and rest in ("on", "off"):
            await self.call.set_video_source(self.video_source if rest == "on" else None)
            emit("camera", on=self.call.camera_on)
        elif word == "screen" and rest in ("on", "off"):
            shared = await self.call.set_screen_source(
                self.screen_source if rest == "on" else None)
            if not shared:
                emit("error", code="no_screen_stream",
                     message="the server grants no screen-share stream")
            emit("screen", on=self.call.screen_on)
        elif word == "mic" and rest in ("on", "off"):
            # muting keeps the microphone capturing; no audio packet leaves while muted
            await self.call.set_microphone_muted(rest == "off")
            emit("microphone", on=self.call.microphone_on)
        elif word == "chat" and rest:
            await self.client.send_chat(rest)
        elif word == "hand" and rest in ("up", "down"):
            await self.client.raise_hand(rest == "up")
        elif word == "stats":
            self._emit_stats()
        elif word == "server":  # ask the server to take the meeting back from P2P
            await self.call.request_server_mode()
        elif word == "media":  # the server's media counters for this meeting
            await self._emit_server_media("media")
        elif word == "leave":
            self._finish("leave")
        elif line:
            emit("error", code="unknown_command", message=f"unknown command {line!r}")

    async def _report_stats(self) -> None:
        if not self.args.stats_interval:
            return
        while True:
            await asyncio.sleep(self.args.stats_interval)
            self._emit_stats()

    def _emit_stats(self) -> None:
        if self.call.session is None:
            return
        stats = self.call.named_stats()
        emit("stats", video=stats["video"], audio=stats["audio"],
             audio_buffer=stats["audio_buffer"], sent=stats["sent"],
             uplink=stats.get("uplink"), encode_cpu_s=stats.get("encode_cpu_s"),
             frames_sent=self._frames_sent(), mode=self.call.mode,
             e2ee=self.call.e2ee_status(),
             gaps={seen.name: {"max_gap_ms": round(seen.max_gap * 1000, 1),
                               "over_100ms": seen.gaps_over_100ms}
                   for seen in self.seen.values()},
             paths=self.call.session.path_counters(),
             transport=self.call.session.transport_counters())

    def _frames_sent(self) -> int:
        return self.video_source.frames if self.video_source is not None else 0

    def _summary(self) -> dict[str, Any]:
        return {
            "video": {
                seen.name: {"frames": seen.frames, "stamps": dict(seen.stamps),
                            "kind": seen.kind, "slide_frames": seen.slide_frames,
                            "max_gap_ms": round(seen.max_gap * 1000, 1),
                            "gaps_over_100ms": seen.gaps_over_100ms,
                            "first_frame_t": seen.first_frame_wall,
                            "last_frame_t": seen.last_frame_wall, "freezes": seen.freezes}
                for seen in self.seen.values()
            },
            "frames_sent": self._frames_sent(),
            "screen_frames_sent": self.screen_source.frames
            if self.screen_source is not None else 0,
            "stats": self.call.session.stats() if self.call.session is not None else None,
            "e2ee": self.call.e2ee_status(),
            "mode": self.call.mode,
            "paths": self.call.session.path_counters() if self.call.session is not None
            else None,
            "transport": self.call.session.transport_counters()
            if self.call.session is not None else None,
        }

    # ------------------------------------------------------------------ transport

    def _transport_changed(self, transport: str, reason: str) -> None:
        """UDP or TCP (a WebSocket, when the network drops UDP) and why."""
        session = self.call.session
        seconds = session.fallback_seconds if session is not None else None
        emit("transport", transport=transport, reason=reason,
             after_ms=None if seconds is None or transport != "tcp" else round(seconds * 1000))

    # ------------------------------------------------------------------ peer-to-peer

    def _mode_changed(self, mode: str, reason: str) -> None:
        emit("mode", mode=mode, reason=reason, path=self.call.peer_path if mode == "p2p" else "")
        task = asyncio.get_running_loop().create_task(self._emit_server_media("server_media"))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _emit_server_media(self, event: str) -> None:
        """The server's own count of what it received and forwarded for this meeting."""
        try:
            media = await self.client.meeting_media()
        except (api.RequestError, api.ConnectionLost, TimeoutError) as exc:
            if self.stop.is_set() or self.client.meeting is None:
                return  # leaving: the meeting's counters are no longer ours to ask for
            emit("error", code="meeting_media", message=str(exc))
            return
        emit(event, mode=media.mode, received_bytes=media.received_bytes,
             received_packets=media.received_packets, forwarded_bytes=media.forwarded_bytes,
             forwarded_packets=media.forwarded_packets, mixed_bytes=media.mixed_bytes)


def _dump_tasks() -> None:
    """SIGUSR1: every asyncio task's stack on stderr (a test's clue when a bot hangs)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


def main(args: Any) -> int:
    for spec in (args.video, args.audio):
        if not spec.startswith(DEVICE_SPECS) and not Path(spec).is_file():
            emit("error", code="bad_source", message=f"no such file: {spec}")
            return 2
    try:
        bot = Bot(args)
    except (DeviceError, FileNotFoundError, ValueError) as exc:
        emit("error", code="bad_source", message=str(exc))
        return 2
    return asyncio.run(bot.run())
