"""What happens in a meeting: the engine's events shown on the page, and the controls
turned into engine calls. The page holds widgets; this holds the meeting's state."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMessageBox

from confero.app.devices import (
    SYNTHETIC_CAMERA,
    SYNTHETIC_MIC,
    camera_choices,
    mic_choices,
    speaker_choices,
)
from confero.app.engine import SCREEN_SUFFIX, SELF, DeviceChoice, Engine, screen_key
from confero.app.layout_policy import MODES
from confero.app.meeting_page import MeetingPage
from confero.app.meeting_signals import MeetingSignals
from confero.app.quality import ConnectionQuality
from confero.app.settings import Continuity
from confero.app.shortcuts import ShortcutHelp
from confero.app.side_panel import CHAT, PEOPLE, STATS
from confero.app.speech import MutedSpeechDetector
from confero.app.toasts import Chimes
from confero.protocol.signaling import (
    ChatMessage,
    JoinResult,
    MediaChanged,
    ParticipantInfo,
    ParticipantLeft,
)

if TYPE_CHECKING:
    from confero.app.window import MainWindow

#: Shared instead of the X11 display when $CONFERO_SCREEN is "synthetic" (tests, demos,
#: screenshots), and from the More menu: slides, as the bot's ``--screen`` sends.
SYNTHETIC_SCREEN = DeviceChoice("Synthetic screen (slides)", "synthetic_screen")
JOINING_FOR_MS = 6000
RECONNECT_MEMORY = 60.0  # a leave and a join of one name within this is a reconnect


class MeetingController:
    def __init__(self, window: MainWindow, page: MeetingPage, engine: Engine,
                 continuity: Continuity) -> None:
        self.window, self.page, self.engine, self.continuity = window, page, engine, continuity
        self.participants: dict[str, ParticipantInfo] = {}
        self.hands: set[str] = set()
        self.qualities: dict[str, ConnectionQuality] = {}
        self.detector = MutedSpeechDetector()
        self.chimes = Chimes(continuity.flag("chimes", True))
        self.is_creator = False
        self.microphone = self.camera = self.sharing = self.hand = False
        self.space_talking = False
        self._open_microphone: DeviceChoice | None = None  # open in the engine, maybe muted
        self.with_audio = True
        self._gone: dict[str, float] = {}  # name -> when they dropped (for reconnects)
        self.help = ShortcutHelp(window)
        self._build_more_menu()
        self._wire()
        self.signals = MeetingSignals(self)  # mode badge, server counters, E2EE

    # ------------------------------------------------------------------ setup

    def _build_more_menu(self) -> None:
        bar, menu = self.page.bar, self.page.bar.more_menu
        self.record_action = self._action(menu, "Record the meeting", self._record_clicked,
                                          checkable=True)
        self.page.record_action = self.record_action  # type: ignore[attr-defined]
        self._action(menu, "Statistics", lambda: self.toggle_panel(STATS))
        self.fullscreen_action = self._action(menu, "Full screen\tF11", self.toggle_fullscreen)
        self.chimes_action = self._action(menu, "Chimes when people come and go",
                                          self._chimes_toggled, checkable=True)
        self.chimes_action.setChecked(self.chimes.enabled)
        self.no_video_action = self._action(menu, "Receive no video (saves bandwidth)",
                                            self._no_video_toggled, checkable=True)
        #: the frame store's serial when video was asked for again: older pictures of
        #: the others are from before the pause, and never shown
        self._video_since = 0
        self._action(menu, "Keyboard shortcuts\t?", self.show_help)
        menu.addSeparator()
        self._action(menu, "Use the synthetic camera",
                     lambda: self._use_camera(SYNTHETIC_CAMERA))
        self._action(menu, "Use the synthetic microphone (440 Hz)",
                     lambda: self._use_mic(SYNTHETIC_MIC))
        self._action(menu, "Share a synthetic screen (slides)",
                     lambda: None if self.sharing else self._share(SYNTHETIC_SCREEN))
        bar.layout_menu.setTitle("Layout")
        menu.addMenu(bar.layout_menu)
        menu.addSeparator()
        menu.addAction(bar.end_action)

    @staticmethod
    def _action(menu: Any, text: str, slot: Any, *, checkable: bool = False) -> QAction:
        action = QAction(text, menu)
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def meeting_menu_actions(self) -> list[tuple[str, Any]]:
        """Every bar control, for the window's Meeting menu (shortcut shown after a tab)."""
        return [("Mute or unmute\tM", self.toggle_mic), ("Camera on or off\tV",
                                                          self.toggle_camera),
                ("Share screen\tD", self.toggle_share), ("Raise or lower hand\tR",
                                                         self.toggle_hand),
                ("Chat\tC", lambda: self.toggle_panel(CHAT)),
                ("People\tP", lambda: self.toggle_panel(PEOPLE)),
                ("Statistics", lambda: self.toggle_panel(STATS)),
                ("Next layout\tW", self.next_layout), ("Full screen\tF11",
                                                        self.toggle_fullscreen),
                ("Keyboard shortcuts\t?", self.show_help)]

    def shortcut_actions(self) -> dict[str, Any]:
        return {"M": self.toggle_mic, "V": self.toggle_camera, "D": self.toggle_share,
                "C": lambda: self.toggle_panel(CHAT), "P": lambda: self.toggle_panel(PEOPLE),
                "R": self.toggle_hand, "W": self.next_layout, "F11": self.toggle_fullscreen,
                "?": self.show_help, "Esc": self.escape}

    def _wire(self) -> None:
        page, bar, engine = self.page, self.page.bar, self.engine
        bar.mic_button.clicked.connect(lambda on: self._use_mic(
            bar.mic_picker.current() if on else None))
        bar.camera_button.clicked.connect(lambda on: self._use_camera(
            bar.camera_picker.current() if on else None))
        bar.screen_button.clicked.connect(lambda _on: self.toggle_share())
        bar.hand_button.clicked.connect(lambda _on: self.toggle_hand())
        bar.panel_button.clicked.connect(lambda _on: self.toggle_panel(CHAT))
        bar.people_button.clicked.connect(lambda _on: self.toggle_panel(PEOPLE))
        bar.layout_button.clicked.connect(self.next_layout)
        bar.layout_group.triggered.connect(lambda action: self.set_layout(action.data()))
        bar.leave_button.clicked.connect(self.leave)
        bar.end_action.triggered.connect(self.end_for_all)
        bar.mic_picker.group.triggered.connect(lambda _a: self._device_picked("microphone"))
        bar.camera_picker.group.triggered.connect(lambda _a: self._device_picked("camera"))
        bar.speaker_picker.group.triggered.connect(lambda _a: self._device_picked("speaker"))
        bar.test_sound.triggered.connect(self._test_sound)
        page.banner.unmute_button.clicked.connect(self._banner_unmute)
        page.chat_input.returnPressed.connect(self._send_chat)
        page.bar_timer.timeout.connect(self._maybe_hide_bar)
        engine.joined.connect(self.joined)
        engine.rejoined.connect(self.rejoined)
        engine.participant_joined.connect(self.participant_joined)
        engine.participant_left.connect(self.participant_left)
        engine.media_changed.connect(self.media_changed)
        engine.chat.connect(self.chat)
        engine.stats.connect(self.stats)
        engine.speaking.connect(self.speaking)
        engine.local_media.connect(self.local_media)
        engine.local_screen.connect(self.local_screen)
        engine.recording.connect(self.recording)
        engine.muted_level.connect(self.muted_level)

    # ------------------------------------------------------------------ meeting life

    def joined(self, result: JoinResult) -> None:
        self.window.join_done()
        page = self.page
        page.reset()
        self.is_creator = result.is_creator
        self.participants = {p.id: p for p in result.participants}
        self.hands.clear()
        self.qualities.clear()
        page.header.show_meeting(result.meeting.title, result.meeting.id)
        page.bar.end_action.setVisible(result.is_creator)
        page.self_view.set_name(f"{self.window.name} (you)")
        me = self.engine.participant_id
        for participant in result.participants:
            if participant.id != me:
                self._add_tile(participant, joining=False)
                self._sync_screen(participant)
        for message in result.history:
            page.side.add_chat(message)
        page.unread = 0
        page.mark_read()
        self._fill_pickers()
        self.window.show_meeting_page()
        self.refresh()
        self.window.setWindowTitle(f"{result.meeting.title} - confero")
        self.continuity.add_recent(result.meeting.id, result.meeting.title, result.is_creator)
        self._apply_join_choices()
        self.activity()

    def _apply_join_choices(self) -> None:
        camera, mic, speaker = self.window.join_choices
        if not self.with_audio:
            self.engine.choose_speaker(DeviceChoice("No sound", "none"))
        elif speaker is not None:
            self.engine.choose_speaker(speaker)
        if camera is not None:
            self.page.bar.camera_picker.choose(camera.label)
            self._use_camera(camera)
        if mic is not None and self.with_audio:
            self.page.bar.mic_picker.choose(mic.label)
            self._use_mic(mic)
        else:
            self.detector.mute()

    def rejoined(self, participants: list[ParticipantInfo]) -> None:
        """After a reconnect: who left or came meanwhile, and everyone's new streams."""
        me = self.engine.participant_id
        current = {p.id: p for p in participants if p.id != me}
        for key in list(self.page.stage.tiles):
            base = key.removesuffix(SCREEN_SUFFIX)
            if base != SELF and base not in current:
                self.page.stage.remove(key)
        for participant in current.values():
            self._add_tile(participant, joining=False)
            self._sync_screen(participant)
        for tile in self.page.stage.tiles.values():
            tile.set_state(status="")
        self.participants = {p.id: p for p in participants}
        self.refresh()

    def connection_state(self, state: str) -> None:
        if state == "reconnecting":
            for tile in self.page.stage.tiles.values():
                tile.set_state(status="Reconnecting…")

    def left(self) -> None:
        self.page.reset()
        self.participants = {}
        self.hands.clear()
        self.microphone = self.camera = self.sharing = self.hand = False
        self.detector.unmute()
        self.refresh()

    def _add_tile(self, participant: ParticipantInfo, *, joining: bool) -> None:
        tile = self.page.stage.add(participant.id, participant.name)
        tile.set_state(camera=participant.camera, microphone=participant.microphone,
                       status="Joining…" if joining else "")
        if joining:  # cleared by the first picture or after a while (tile as the context)
            QTimer.singleShot(JOINING_FOR_MS, tile, lambda: tile.set_state(status="")
                              if tile.status == "Joining…" else None)

    def _sync_screen(self, participant: ParticipantInfo) -> None:
        """A participant's shared screen is a tile of its own, on the stage while shared."""
        key = screen_key(participant.id)
        stage = self.page.stage
        if participant.screen and key not in stage.tiles:
            stage.add_screen(key, f"{participant.name} (screen)")
        elif not participant.screen and key in stage.tiles:
            stage.remove(key)
            self.qualities.pop(key, None)

    def participant_joined(self, participant: ParticipantInfo) -> None:
        self.participants[participant.id] = participant
        self._add_tile(participant, joining=True)
        gone = self._gone.pop(participant.name, None)
        reconnect = gone is not None and time.monotonic() - gone < RECONNECT_MEMORY
        if not reconnect:
            self.page.toasts.show_text(f"{participant.name} joined")
        self.chimes.people_changed("joined", mine=participant.id == self.engine.participant_id,
                                   reconnect=reconnect, people=len(self.participants))
        self.refresh()

    def participant_left(self, event: ParticipantLeft) -> None:
        self.participants.pop(event.participant_id, None)
        self.hands.discard(event.participant_id)
        self.qualities.pop(event.participant_id, None)
        self.page.stage.remove(event.participant_id)
        self.page.stage.remove(screen_key(event.participant_id))
        self.qualities.pop(screen_key(event.participant_id), None)
        reconnect = event.reason == "replaced"
        if event.reason == "disconnected":
            self._gone[event.name] = time.monotonic()
        if not reconnect:
            how = {"left": "left", "disconnected": "lost their connection"}.get(
                event.reason, event.reason)
            self.page.toasts.show_text(f"{event.name} {how}")
        self.chimes.people_changed("left", mine=False, reconnect=reconnect,
                                   people=len(self.participants))
        self.refresh()

    def media_changed(self, event: MediaChanged) -> None:
        tile = self.page.stage.tiles.get(event.participant_id)
        if tile is not None:
            tile.set_state(camera=event.camera, microphone=event.microphone)
        known = self.participants.get(event.participant_id)
        if known is not None:
            known = self.participants[event.participant_id] = msgspec.structs.replace(
                known, camera=event.camera, microphone=event.microphone, screen=event.screen)
            if known.id != self.engine.participant_id:
                self._sync_screen(known)
        self.refresh()

    def chat(self, message: ChatMessage) -> None:
        self.page.side.add_chat(message)
        self.page.count_unread()
        self.refresh()

    def stats(self, stats: dict[str, Any]) -> None:
        self.page.side.show_stats(stats)
        now = time.monotonic()
        by_name = {p.name: p.id for p in self.participants.values()}
        by_name.update({f"{p.name} (screen)": screen_key(p.id)  # a screen: its own tile
                        for p in self.participants.values() if p.screen})
        for name, values in stats.get("video", {}).items():
            participant_id = by_name.get(name)
            tile = self.page.stage.tiles.get(participant_id or "")
            if tile is None or participant_id is None:
                continue
            quality = self.qualities.setdefault(participant_id, ConnectionQuality())
            quality.update(packets=int(values.get("packets", 0)),
                           lost=int(values.get("lost", 0)), fps=float(values.get("fps", 0)),
                           delay_ms=values.get("delay_ms"), now=now)
            tile.set_quality(quality, now)
            if tile.status == "Joining…" and tile.shows_video():
                tile.set_state(status="")

    def speaking(self, talking: set[str]) -> None:
        stage = self.page.stage
        for participant_id, tile in stage.tiles.items():
            tile.set_state(speaking=participant_id in talking)
        self.page.self_view.set_state(speaking=SELF in talking)
        stage.heard(talking - {SELF})
        if self.hand and SELF in talking and not self.space_talking:
            self.toggle_hand()  # a raised hand drops when you get to talk

    def local_media(self, camera: bool, microphone: bool) -> None:
        """What the engine really sends. The bar follows it both ways: a report queued
        before a click (the M key's, arriving after V was pressed on a busy machine) may
        turn the camera button off, and the engine's next report must turn it back on,
        or the bar would say "off" while the camera sends."""
        self.page.self_view.set_state(camera=camera, microphone=microphone)
        self.microphone = microphone
        self.camera = camera
        self.refresh()

    def local_screen(self, on: bool) -> None:
        """What the engine really shares: a failed source, or the meeting's end, stops it."""
        if not on and self.sharing:
            self.sharing = False
            self.page.stage.remove(screen_key(SELF))
        self.refresh()

    def recording(self, on: bool, directory: str) -> None:
        self.record_action.setChecked(on)
        self.page.header.recording.setVisible(on)
        self.page.header.say(f"Recording into {directory}" if on
                                 else f"Recording saved in {directory}")

    def muted_level(self, level_dbov: int) -> None:
        """The engine's microphone level while we send nothing (see Engine.muted_level)."""
        if self.detector.feed(level_dbov, time.monotonic()):
            self.page.banner.show()

    # ------------------------------------------------------------------ controls

    def refresh(self) -> None:
        page = self.page
        page.bar.show_state(microphone=self.microphone, camera=self.camera,
                            sharing=self.sharing, hand=self.hand,
                            chat=page.chat_visible(), people=page.people_visible(),
                            layout=page.stage.policy.mode, unread=page.unread)
        page.side.show_people(self.window.name, self.is_creator,
                              [p for p in self.participants.values()
                               if p.id != self.engine.participant_id], self.hands)
        others = [k for k in page.stage.tiles if k != screen_key(SELF)]  # our screen: alone
        page.waiting.setVisible(not others and self.window.in_meeting())
        page.place_overlays()
        page.self_view.set_state(hand=self.hand)

    def toggle_mic(self) -> None:
        self._use_mic(None if self.microphone else self.page.bar.mic_picker.current())

    def _use_mic(self, choice: DeviceChoice | None) -> None:
        """Muting keeps the microphone open and capturing (nothing is sent), so the engine
        can tell us when someone talks into it; a different device is opened anew."""
        self.microphone = choice is not None
        if choice is None:
            self.detector.mute()
            self.engine.set_muted(True)
        else:
            self.detector.unmute()
            self.page.banner.hide()
            if choice != self._open_microphone:
                self.engine.set_microphone(choice)
                self._open_microphone = choice
            self.engine.set_muted(False)
        self.refresh()

    def _banner_unmute(self) -> None:
        self.page.banner.hide()
        if not self.microphone:
            self.toggle_mic()

    def space(self, pressed: bool) -> None:
        """Hold Space to talk while muted; release to be muted again."""
        if pressed and not self.microphone:
            self.space_talking = True
            self._use_mic(self.page.bar.mic_picker.current())
        elif not pressed and self.space_talking:
            self.space_talking = False
            self._use_mic(None)

    def toggle_camera(self) -> None:
        self._use_camera(None if self.camera else self.page.bar.camera_picker.current())

    def _use_camera(self, choice: DeviceChoice | None) -> None:
        self.camera = choice is not None
        self.engine.set_camera(choice, self.window.name)
        self.refresh()

    def toggle_share(self) -> None:
        """Share the screen as a second stream (the camera stays on), or stop."""
        if self.sharing:
            self._share(None)
            return
        choice = self.share_choice()
        if choice is None:
            self.window.show_error("There is no X11 display to share (DISPLAY is not set).")
            self.refresh()
        else:
            self._share(choice)

    @staticmethod
    def share_choice() -> DeviceChoice | None:
        """$CONFERO_SCREEN=synthetic: slides; else the X11 display, if there is one."""
        if os.environ.get("CONFERO_SCREEN") == "synthetic":
            return SYNTHETIC_SCREEN
        display = os.environ.get("DISPLAY")
        return DeviceChoice(f"Screen {display}", "screen", display) if display else None

    def _share(self, choice: DeviceChoice | None) -> None:
        """Our screen gets a tile of its own, which takes the stage; stopping removes it
        and the layout from before returns (see LayoutPolicy.screen_started)."""
        self.sharing = choice is not None
        key = screen_key(SELF)
        if choice is None:
            self.page.stage.remove(key)
        else:
            self.page.stage.add_screen(key, "Your screen")
        self.engine.set_screen(choice, self.window.name)
        self.refresh()

    def toggle_hand(self) -> None:
        self.hand = not self.hand
        self.engine.set_hand(self.hand)
        self.refresh()

    def hand_changed(self, participant_id: str, raised: bool) -> None:
        if participant_id == self.engine.participant_id:
            return
        tile = self.page.stage.tiles.get(participant_id)
        known = self.participants.get(participant_id)
        if raised and participant_id not in self.hands and known is not None:
            self.page.toasts.show_text(f"{known.name} raised their hand")
        (self.hands.add if raised else self.hands.discard)(participant_id)
        if tile is not None:
            tile.set_state(hand=raised)
        self.refresh()

    def toggle_panel(self, index: int) -> None:
        page = self.page
        shown = page.side.isVisible() and page.side.currentIndex() == index
        page.show_panel(None if shown else index)
        self.refresh()

    def next_layout(self) -> None:
        self.set_layout(MODES[(MODES.index(self.page.stage.policy.mode) + 1) % len(MODES)])

    def set_layout(self, mode: str) -> None:
        self.page.stage.set_mode(mode)
        self.refresh()
        self.activity()

    def toggle_fullscreen(self) -> None:
        window = self.window
        window.showNormal() if window.isFullScreen() else window.showFullScreen()
        self.activity()

    def escape(self) -> None:
        if self.page.stage.focused is not None:
            self.page.stage.toggle_focus(self.page.stage.focused)
        elif self.window.isFullScreen():
            self.window.showNormal()

    def show_help(self) -> None:
        self.help.show()
        self.help.raise_()

    def activity(self) -> None:
        """A mouse move or Tab: the bar comes back, and may hide again after 4 s."""
        page = self.page
        if not page.bar.isVisible():
            page.bar.show()
        page.bar_timer.start()

    def bar_may_hide(self) -> bool:
        stage = self.page.stage
        return self.window.isFullScreen() or stage.focused is not None or (
            stage.arrangement.kind == "speaker")

    def _maybe_hide_bar(self) -> None:
        bar = self.page.bar
        menus = (bar.mic_menu, bar.camera_picker, bar.layout_menu, bar.more_menu)
        focus_in_bar = bar.isAncestorOf(self.window.focusWidget()) if (
            self.window.focusWidget() is not None) else False
        if (self.bar_may_hide() and not focus_in_bar
                and not any(m.isVisible() for m in menus)):
            bar.hide()

    def _fill_pickers(self) -> None:
        bar, memory = self.page.bar, self.continuity
        cameras, mics, speakers = camera_choices(), mic_choices(), speaker_choices()
        bar.camera_picker.fill(cameras, memory.text("camera"))
        bar.mic_picker.fill(mics, memory.text("microphone"))
        bar.speaker_picker.fill(speakers, memory.text("speaker"))
        missing = [what for what, found in (("camera", len(cameras) > 1),
                                            ("microphone", len(mics) > 1),
                                            ("speaker", len(speakers) > 1)) if not found]
        if missing:
            self.page.header.say(f"No {' or '.join(missing)} found: synthetic sources "
                                     "are in the menus")

    def _device_picked(self, kind: str) -> None:
        bar = self.page.bar
        picker = {"microphone": bar.mic_picker, "camera": bar.camera_picker,
                  "speaker": bar.speaker_picker}[kind]
        choice = picker.current()
        if choice is None:
            return
        self.continuity.set(kind, choice.label)
        if kind == "speaker":
            self.engine.choose_speaker(choice)
        elif kind == "microphone" and self.microphone:
            self._use_mic(choice)
        elif kind == "camera" and self.camera:
            self._use_camera(choice)

    def _test_sound(self) -> None:
        speaker = self.page.bar.speaker_picker.current()
        if speaker is None or speaker.kind == "none":
            self.page.header.say("No speaker chosen: pick one in the Mic menu to hear it.")
            return
        self.chimes.test(speaker.device)
        self.page.header.say(f"Playing a test sound on {speaker.label}")

    def _chimes_toggled(self, on: bool) -> None:
        self.chimes.enabled = on
        self.continuity.set("chimes", on)

    def _send_chat(self) -> None:
        text = self.page.chat_input.text().strip()
        if text:
            self.engine.send_chat(text)
            self.page.chat_input.clear()

    def recordings_directory(self) -> Path:
        """$CONFERO_RECORD_DIR, or the remembered folder (default ~/confero-recordings),
        one timestamped folder per recording."""
        base = os.environ.get("CONFERO_RECORD_DIR") or self.continuity.text(
            "recordings", str(Path.home() / "confero-recordings"))
        return Path(base) / time.strftime("%Y%m%d-%H%M%S")

    def _record_clicked(self, on: bool) -> None:
        if on:
            self.engine.start_recording(str(self.recordings_directory()))
        else:
            self.engine.stop_recording()

    def leave(self) -> None:
        if self.window.in_meeting():
            self.engine.leave_meeting()

    def end_for_all(self) -> None:
        answer = QMessageBox.question(
            self.window, "End meeting for all",
            "End this meeting for everyone? Nobody will be able to join it again.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.engine.end_meeting_for_all()

    def _no_video_toggled(self, off: bool) -> None:
        if not off:  # pictures from before the pause are stale: only newer ones show
            self._video_since = self.engine.frames.serial
        self.engine.set_receive_video(not off)
        self.pull_frames()  # the tiles say so at once

    def pull_frames(self) -> None:
        stage = self.page.stage
        held = self.no_video_action.isChecked()
        since = self._video_since
        sizes = self.engine.pictures
        for participant_id, tile in stage.tiles.items():
            sizes.show_at(participant_id, *tile.picture_size())
            ours = participant_id == screen_key(SELF)
            tile.set_video_held(held and not ours)  # not our own
            latest = self.engine.frames.get(participant_id)
            if latest is not None and tile.camera and (ours or latest[1] > since):
                tile.set_image(*latest)
        own = self.engine.frames.get(SELF)
        view = self.page.self_view
        if own is not None and view.camera:
            view.set_image(*own)

    def keys_active(self) -> bool:
        return self.window.in_meeting()


