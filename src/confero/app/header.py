"""The meeting header: title, the copyable meeting id, elapsed time, recording, notices,
the media path (direct or through the server, with the server's own byte count as the
proof) and the meeting's end-to-end encryption."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QWidget

from confero.app import icons
from confero.app.plain import clip, plain_label, tooltip


def elapsed_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else (
        f"{rest // 60:02d}:{rest % 60:02d}")


MODE_TEXT = {"p2p": "Direct (peer-to-peer)", "server": "Through the server"}
REASON_TEXT = {
    "joined": "the meeting's path when you joined",
    "ice_connected": "the two of you reached each other directly",
    "participant_joined": "a third person joined",
    "participant_left": "someone left",
    "ice_failed": "no direct connection could be made",
    "ice_timeout": "a direct connection took too long to set up",
    "consent_lost": "the direct connection stopped answering",
    "requested": "a participant asked for the server",
    "meeting_ended": "the meeting ended",
    "media_stopped": "your media stopped",
}
#: After going direct, the server may still see media for a moment: the make-before-break
#: overlap and the mixer's concealment of the last frames it had. They belong to the
#: switch, so the "since direct" count starts this long after it.
HANDOVER = 1.0


def byte_text(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    for unit, size in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if count < size * 1000 or unit == "GB":
            return f"{count / size:.1f} {unit}"
    return f"{count} B"  # not reached


@dataclass
class RelayReading:
    text: str
    detail: str


class RelayMeter:
    """What the server relayed for our meeting, from its own cumulative counters: in
    peer-to-peer, counted from the switch (after HANDOVER), so it stays at zero while
    the media goes direct; through the server, the meeting's total."""

    def __init__(self) -> None:
        self.mode = "server"
        self.since = 0.0
        self._base: dict[str, int] | None = None

    def mode_changed(self, mode: str, now: float) -> None:
        self.mode, self.since, self._base = mode, now, None

    def update(self, counters: dict[str, Any], now: float) -> RelayReading:
        mode = str(counters.get("mode", self.mode))
        if mode != self.mode:  # the counters heard of a switch before the event came
            self.mode_changed(mode, now)
        values = {key: int(counters.get(key, 0)) for key in (
            "received_bytes", "forwarded_bytes", "mixed_bytes")}
        if self.mode != "p2p":
            relayed = values["forwarded_bytes"] + values["mixed_bytes"]
            return RelayReading(
                f"Server relayed {byte_text(relayed)}",
                f"The server received {byte_text(values['received_bytes'])} and sent "
                f"{byte_text(relayed)} of this meeting's media since it began "
                "(the server's own count).")
        if self._base is None:
            if now - self.since < HANDOVER:
                return RelayReading("Server relayed: measuring…",
                                    "Counting starts a second after the switch to direct.")
            self._base = values
        delta = {key: values[key] - self._base[key] for key in values}
        relayed = delta["forwarded_bytes"] + delta["mixed_bytes"]
        return RelayReading(
            f"Server relayed {byte_text(relayed)} since direct",
            f"Since the switch to direct the server received "
            f"{byte_text(delta['received_bytes'])} and sent {byte_text(relayed)} of this "
            "meeting's media (the server's own count, asked every 2 s).")


def copy_to_clipboard(text: str) -> None:
    clipboard = QGuiApplication.clipboard()
    if clipboard is not None:
        clipboard.setText(text)


TRANSPORT_REASON_TEXT = {
    "udp_timeout": "nothing came back over UDP within 2 s (a network that blocks UDP)",
    "udp_blocked_before": "UDP was blocked earlier in this call",
    "forced": "chosen with --media-transport tcp",
}


class MeetingHeader(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.meeting_id = ""
        self.started = time.monotonic()
        self.title = plain_label("", "meeting_title")
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        self.id_label = plain_label("", "meeting_id_label")
        self.id_label.setProperty("class", "hint")
        self.copy_button = QToolButton()
        self.copy_button.setObjectName("copy_id")
        self.copy_button.setIcon(icons.icon("copy"))
        self.copy_button.setToolTip("Copy the meeting id")
        self.copy_button.setAccessibleName("Copy the meeting id")
        self.elapsed = plain_label("00:00", "elapsed")
        self.elapsed.setAccessibleName("Time in the meeting")
        self.recording = plain_label("● Recording", "recording_dot")
        self.recording.setStyleSheet("color: #ea4335; font-weight: bold")
        self.recording.hide()
        self.notice = plain_label("", "notice")
        self.notice.setObjectName("notice")
        self.e2ee_icon = QLabel()
        self.e2ee_icon.setPixmap(icons.pixmap("lock", size=16))
        self.e2ee_icon.setAccessibleName("Lock")
        self.e2ee_icon.hide()
        self.e2ee = plain_label("", "e2ee_state")
        self.e2ee.setProperty("badge", True)
        self.e2ee.hide()
        self.mode_badge = plain_label("", "mode_badge")
        self.mode_badge.setProperty("badge", True)
        #: shown only while our media goes over the WebSocket (UDP blocked): in words
        self.transport = plain_label("", "media_transport")
        self.transport.setProperty("badge", True)
        self.transport.hide()
        self.relayed = plain_label("", "server_relayed")
        self.relayed.setProperty("class", "hint")
        self.relay_meter = RelayMeter()
        self.mode = ""
        self.notice.setMinimumWidth(40)  # a long notice gives way, not the window
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 6, 12, 2)
        row.addWidget(self.title)
        row.addWidget(self.id_label)
        row.addWidget(self.copy_button)
        row.addSpacing(12)
        row.addWidget(self.recording)
        row.addSpacing(12)
        row.addWidget(self.e2ee_icon)
        row.addWidget(self.e2ee)
        row.addSpacing(8)
        row.addWidget(self.mode_badge)
        row.addWidget(self.transport)
        row.addWidget(self.relayed)
        row.addStretch(1)
        row.addWidget(self.notice)
        row.addSpacing(12)
        row.addWidget(self.elapsed)
        self.copy_button.clicked.connect(self.copy_id)
        self._notice_timer = QTimer(self)
        self._notice_timer.setSingleShot(True)
        self._notice_timer.setInterval(12_000)
        self._notice_timer.timeout.connect(lambda: self.notice.setText(""))
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self.tick)

    def show_meeting(self, title: str, meeting_id: str) -> None:
        self.meeting_id = meeting_id
        self.title.setText(clip(title, 80))
        self.title.setToolTip("")
        self.id_label.setText(f"id {meeting_id}")
        self.started = time.monotonic()
        self.tick()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self.recording.hide()
        self.notice.setText("")
        self.show_e2ee(None)
        self.mode = ""
        self.show_transport("udp", "")
        for label in (self.mode_badge, self.relayed):
            label.setText("")
            label.setToolTip("")
            label.setAccessibleName("")
        self.relay_meter = RelayMeter()

    def show_mode(self, mode: str, reason: str) -> None:
        """The media path now; why it changed is in the tooltip and the accessible name."""
        text = MODE_TEXT.get(mode, mode)
        why = REASON_TEXT.get(reason, reason.replace("_", " "))
        self.mode = mode
        self.mode_badge.setText(text)
        self.mode_badge.setToolTip(tooltip(f"Media path: {text}" + (
            f"\nWhy: {why}" if why else "")))
        self.mode_badge.setAccessibleName(f"Media path: {text}" + (
            f". Why: {why}" if why else ""))
        self.relay_meter.mode_changed(mode, time.monotonic())
        self.relayed.setText("")
        self.relayed.setAccessibleName("")

    def show_transport(self, transport: str, reason: str) -> None:
        """How our media travels: nothing said for UDP (the normal case); over TCP, a
        badge with why (the network drops UDP to the server) in tooltip and name."""
        if transport != "tcp":
            self.transport.hide()
            self.transport.setText("")
            self.transport.setAccessibleName("")
            return
        why = TRANSPORT_REASON_TEXT.get(reason, reason.replace("_", " "))
        self.transport.setText("Media over TCP")
        detail = ("Your media goes to the server over TCP (a WebSocket): " + why
                  + ". It works, with a little more delay on a lossy network.")
        self.transport.setToolTip(tooltip(detail))
        self.transport.setAccessibleName("Media over TCP. " + detail)
        self.transport.show()

    def show_server_media(self, counters: dict[str, Any]) -> None:
        mode = str(counters.get("mode", self.mode))
        if mode != self.mode:  # the server's answer came before the mode event
            self.show_mode(mode, "")
        reading = self.relay_meter.update(counters, time.monotonic())
        self.relayed.setText(reading.text)
        self.relayed.setToolTip(tooltip(reading.detail))
        self.relayed.setAccessibleName(f"{reading.text}. {reading.detail}")

    def show_e2ee(self, state: str | None) -> None:
        """None: an ordinary meeting; "encrypted", or "no passphrase" (nothing we receive
        can be decrypted)."""
        if state is None:
            self.e2ee.hide()
            self.e2ee_icon.hide()
            return
        text = ("End-to-end encrypted" if state == "encrypted"
                else "Cannot decrypt: no passphrase")
        detail = ("Keys are agreed between the participants with the meeting's passphrase; "
                  "the server cannot read the media." if state == "encrypted" else
                  "You joined without the meeting's passphrase: nobody's picture or sound "
                  "can be decrypted. Leave and join again with it.")
        self.e2ee.setText(text)
        self.e2ee.setToolTip(tooltip(detail))
        self.e2ee.setAccessibleName(f"{text}. {detail}")
        self.e2ee.show()
        self.e2ee_icon.show()

    def tick(self) -> None:
        self.elapsed.setText(elapsed_text(time.monotonic() - self.started))

    def say(self, text: str) -> None:
        """A passing notice: it clears itself after a while."""
        self.notice.setText(clip(text, 200))
        self._notice_timer.start()

    def copy_id(self) -> None:
        copy_to_clipboard(self.meeting_id)
        self.say("Meeting id copied")


class WaitingCard(QFrame):
    """"Waiting for others..." while you are alone, with a Copy button for the id."""

    def __init__(self, header: MeetingHeader) -> None:
        super().__init__()
        self.setObjectName("toast")
        self.label = plain_label("Waiting for others to join…", "waiting_text")
        self.copy_button = QPushButton("Copy meeting id")
        self.copy_button.setObjectName("waiting_copy")
        row = QHBoxLayout(self)
        row.setContentsMargins(14, 8, 8, 8)
        row.addWidget(self.label)
        row.addWidget(self.copy_button)
        self.copy_button.clicked.connect(header.copy_id)
        self.hide()
