"""``confero bot``: a headless participant for demos, tests and load.

It joins (or creates) a meeting, sends synthetic or file video and a tone or file audio,
receives everyone else, optionally records what it received, and prints one JSON object
per line on stdout; the first line names the meeting. Lines on stdin steer it while it
runs: ``camera on|off``, ``mic on|off``, ``chat TEXT``, ``stats``, ``leave``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from confero import client as api
from confero.client.media import AudioSource, DecodedVideo, MediaSession, VideoSource
from confero.media.audio import SILENCE, Samples, SineSource
from confero.media.devices import (
    CameraSource,
    DeviceError,
    MicrophoneSource,
    ScreenSource,
    Speaker,
)
from confero.media.recorder import MeetingRecorder
from confero.media.sources import FileAudioSource, FileVideoSource
from confero.media.video import SyntheticCamera, identity_code, luma_plane, read_stamp
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
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    frames: int = 0
    stamps: Counter[str] = field(default_factory=Counter)
    freezes: list[tuple[float, float]] = field(default_factory=list)  # (ended at, seconds)


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
        self.session: MediaSession | None = None
        self.speaker: Speaker | None = None
        self.recorder = MeetingRecorder(args.record) if args.record else None
        source = make_video_source(args.video, args.name, args.width, args.height)
        self.video_source = _CountedSource(source) if source is not None else None
        self.audio_source = make_audio_source(args.audio)
        self.camera = self.video_source is not None
        self.microphone = self.audio_source is not None
        self.seen: dict[int, _Seen] = {}
        # participant id -> video SSRC, kept here because the client forgets a participant
        # before its ParticipantLeft reaches listeners
        self._video_ssrcs: dict[str, int] = {}
        self.joined_at = 0.0
        self.stop = asyncio.Event()
        self.stop_reason = "duration"

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        try:
            await self.client.connect()
        except api.ConnectionFailed as exc:
            emit("error", code="connection_failed", message=str(exc))
            return 2
        try:
            if self.args.create:
                result = await self.client.create_meeting(self.args.create, self.args.password)
            else:
                result = await self.client.join(self.args.join, self.args.password)
        except api.RequestError as exc:
            emit("error", code=exc.code, message=exc.message)
            await self.client.close()
            return 1
        self.joined_at = time.time()
        self._video_ssrcs = {p.id: p.video_ssrc for p in result.participants}
        emit("joined", meeting_id=result.meeting.id, title=result.meeting.title,
             participant_id=self.client.participant_id, created=bool(self.args.create),
             participants=[p.name for p in result.participants])
        self.client.add_listener(self._on_event)
        await self._start_media()
        if self.args.chat:
            await self.client.send_chat(self.args.chat)
        tasks = [asyncio.create_task(self._report_stats())]
        if not self.args.no_stdin:
            tasks.append(asyncio.create_task(self._read_commands()))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._finish, "signal")
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
        for source in (self.audio_source, self.video_source):
            close = getattr(source, "close", None)
            if close is not None:
                close()
        if self.session is not None:
            await self.session.close()
        if self.client.meeting is not None:
            with contextlib.suppress(api.RequestError, api.ConnectionLost, TimeoutError):
                await self.client.leave()
        await self.client.close()
        if self.recorder is not None:
            self.recorder.close()
            summary["recorded"] = self.recorder.files()
        emit("done", reason=self.stop_reason, **summary)

    # ------------------------------------------------------------------ media

    async def _start_media(self) -> None:
        grant = self.client.media_grant
        if grant is None:
            emit("error", code="no_media", message="the server offered no media path")
            return
        host = urlsplit(self.args.server).hostname or "127.0.0.1"
        play = self.args.play is not None
        self.session = MediaSession(grant, host, on_video=self._on_video,
                                    on_audio=self._on_audio, fps=self.args.fps,
                                    device_playout=play,
                                    receive_video=not self.args.send_only)
        await self.session.open()
        if play and self.speaker is None:
            self.speaker = Speaker(self._pull_audio, self.args.play or None)
        self.session.set_video_source(self.video_source if self.camera else None)
        self.session.set_audio_source(self.audio_source if self.microphone else None)
        await self.client.set_media(camera=self.camera, microphone=self.microphone)

    async def _restart_media(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.seen.clear()
        await self._start_media()

    def _pull_audio(self) -> Samples:
        """For the speaker's thread: the current session's audio (silence between two)."""
        session = self.session
        return session.pull_audio() if session is not None else SILENCE

    def _name_of(self, ssrc: int) -> str:
        for participant in self.client.participants.values():
            if participant.video_ssrc == ssrc:
                return participant.name
        return f"ssrc-{ssrc:08x}"

    def _on_video(self, video: DecodedVideo) -> None:
        seen = self.seen.get(video.ssrc)
        if seen is None:
            seen = self.seen[video.ssrc] = _Seen(self._name_of(video.ssrc))
        seen.frames += 1
        gap = video.received_at - (seen.last_frame_at or video.received_at)
        if gap > FREEZE_GAP and len(seen.freezes) < 10_000:
            seen.freezes.append((round(video.received_at, 3), round(gap, 3)))
        seen.last_frame_at = video.received_at
        if seen.first_frame_at is None:
            seen.first_frame_at = video.received_at
            emit("video_started", name=seen.name, ssrc=video.ssrc,
                 after_join_ms=round((video.received_at - self.joined_at) * 1000, 1),
                 width=video.frame.width, height=video.frame.height)
        if self.args.check_stamps:
            _, identity = read_stamp(luma_plane(video.frame))
            ok = identity == identity_code(seen.name)
            seen.stamps["match" if ok else "mismatch"] += 1
        if self.recorder is not None and not self.recorder.video(
            video.ssrc, seen.name, video.encoded, video.frame.width, video.frame.height
        ) and self.session is not None:
            self.session.request_keyframe(video.ssrc, time.monotonic())

    def _on_audio(self, samples: Samples) -> None:
        if self.recorder is not None:
            self.recorder.audio(samples)

    # ------------------------------------------------------------------ signaling events

    def _on_event(self, event: api.ClientEvent) -> None:
        match event:
            case api.ParticipantJoined(participant=p):
                emit("participant_joined", name=p.name, participant_id=p.id)
                self._video_ssrcs[p.id] = p.video_ssrc
            case api.ParticipantLeft(name=name, participant_id=pid, reason=reason):
                emit("participant_left", name=name, participant_id=pid, reason=reason)
                ssrc = self._video_ssrcs.pop(pid, None)
                if ssrc is not None and self.session is not None:
                    self.session.forget_stream(ssrc, ended=True)
            case api.MediaChanged(participant_id=pid, camera=camera, microphone=microphone):
                known = self.client.participants.get(pid)
                name = known.name if known else pid
                if known is not None and not camera and self.session is not None:
                    self.session.forget_stream(known.video_ssrc, ended=False)
                    self.seen.pop(known.video_ssrc, None)
                emit("media_changed", name=name, camera=camera, microphone=microphone)
            case api.ChatEvent(message=message):
                emit("chat", sender=message.sender, text=message.text, seq=message.seq,
                     ts=message.ts)
                if self.recorder is not None:
                    self.recorder.chat(message)
            case api.MeetingEnded(reason=reason, message=message):
                emit("meeting_ended", reason=reason, message=message)
                self._finish("meeting_ended")
            case api.StateChanged(state=state, reason=reason):
                emit("connection", state=state.value, reason=reason)
                if state == api.ConnectionState.FAILED:
                    self._finish("connection_failed")
            case api.Rejoined(participants=participants):
                emit("rejoined")
                self._video_ssrcs = {p.id: p.video_ssrc for p in participants}
                asyncio.get_running_loop().create_task(self._restart_media())
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
            self.camera = rest == "on" and self.video_source is not None
            if self.session is not None:
                self.session.set_video_source(self.video_source if self.camera else None)
            await self.client.set_media(camera=self.camera, microphone=self.microphone)
            emit("camera", on=self.camera)
        elif word == "mic" and rest in ("on", "off"):
            self.microphone = rest == "on" and self.audio_source is not None
            if self.session is not None:
                self.session.set_audio_source(self.audio_source if self.microphone else None)
            await self.client.set_media(camera=self.camera, microphone=self.microphone)
            emit("microphone", on=self.microphone)
        elif word == "chat" and rest:
            await self.client.send_chat(rest)
        elif word == "stats":
            self._emit_stats()
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
        if self.session is None:
            return
        stats = self.session.stats()
        video = stats["video"]
        assert isinstance(video, dict)
        named = {self._name_of(ssrc): s for ssrc, s in video.items()}
        emit("stats", video=named, audio=stats["audio"], audio_buffer=stats["audio_buffer"],
             sent=stats["sent"], frames_sent=self._frames_sent())

    def _frames_sent(self) -> int:
        return self.video_source.frames if self.video_source is not None else 0

    def _summary(self) -> dict[str, Any]:
        return {
            "video": {
                seen.name: {"frames": seen.frames, "stamps": dict(seen.stamps),
                            "first_frame_t": seen.first_frame_at,
                            "last_frame_t": seen.last_frame_at, "freezes": seen.freezes}
                for seen in self.seen.values()
            },
            "frames_sent": self._frames_sent(),
            "stats": self.session.stats() if self.session is not None else None,
        }


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
