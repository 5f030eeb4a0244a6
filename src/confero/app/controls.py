"""The control bar: Mic, Camera | Share, Raise hand, Chat, People, Layout, More | Leave.

Every button is an icon with a tooltip naming its shortcut and an accessible name that
follows its state. Off is a slashed icon on red *and* the words "off"/"muted" in the
tooltip and accessible name, never the colour alone. Device pickers live in the Mic and
Camera buttons' menus; everything on the bar is also in a menu.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QHBoxLayout, QMenu, QToolButton, QWidget

from confero.app import icons
from confero.app.engine import DeviceChoice

ORDER = ("mic_button", "camera_button", "screen_button", "hand_button", "panel_button",
         "people_button", "layout_button", "more_button", "leave_button")


def _button(name: str, icon: str, *, checkable: bool = True) -> QToolButton:
    button = QToolButton()
    button.setObjectName(name)
    button.setProperty("bar", True)
    button.setCheckable(checkable)
    button.setIcon(icons.icon(icon))
    button.setIconSize(QSize(22, 22))
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
    button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    button.setAutoRaise(False)
    return button


class DevicePicker(QMenu):
    """A menu section of radio items, one per device; ``current`` is the checked one."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.group = QActionGroup(self)
        self.group.setExclusive(True)

    def fill(self, choices: list[DeviceChoice], remembered: str = "") -> None:
        for action in self.group.actions():
            self.group.removeAction(action)
            self.removeAction(action)
        for index, choice in enumerate(choices):
            action = QAction(choice.label, self)  # QAction text is plain
            action.setCheckable(True)
            action.setData(choice)
            action.setChecked(choice.label == remembered or (index == 0 and not remembered))
            self.group.addAction(action)
            self.addAction(action)
        if self.group.checkedAction() is None and self.group.actions():
            self.group.actions()[0].setChecked(True)

    def choices(self) -> list[DeviceChoice]:
        return [a.data() for a in self.group.actions()]

    def current(self) -> DeviceChoice | None:
        action = self.group.checkedAction()
        choice = action.data() if action is not None else None
        return choice if isinstance(choice, DeviceChoice) else None

    def choose(self, label: str) -> bool:
        for action in self.group.actions():
            if action.text() == label:
                action.setChecked(True)
                return True
        return False


class ControlBar(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("control_bar")
        self.mic_button = _button("mic_button", "mic")
        self.camera_button = _button("camera_button", "camera")
        self.screen_button = _button("screen_button", "share")
        self.hand_button = _button("hand_button", "hand")
        self.panel_button = _button("panel_button", "chat")
        self.people_button = _button("people_button", "people")
        self.layout_button = _button("layout_button", "grid", checkable=False)
        self.more_button = _button("more_button", "more", checkable=False)
        self.leave_button = QToolButton()
        self.leave_button.setObjectName("leave_button")
        self.leave_button.setIcon(icons.icon("leave", "#ffffff"))
        self.leave_button.setIconSize(QSize(22, 22))
        self.leave_button.setText("Leave")
        self.leave_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.leave_button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.leave_button.setToolTip("Leave the meeting (Ctrl+W)")
        self.leave_button.setAccessibleName("Leave the meeting")

        self.mic_menu = QMenu(self)
        self.mic_picker = DevicePicker("Microphone", self.mic_menu)
        self.speaker_picker = DevicePicker("Speaker", self.mic_menu)
        self.test_sound = QAction("Play a test sound", self.mic_menu)
        self.mic_menu.addMenu(self.mic_picker)
        self.mic_menu.addMenu(self.speaker_picker)
        self.mic_menu.addAction(self.test_sound)
        self.camera_picker = DevicePicker("Camera", self)
        for button, menu in ((self.mic_button, self.mic_menu),
                             (self.camera_button, self.camera_picker)):
            button.setMenu(menu)
            button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)

        self.layout_menu = QMenu("Layout", self)
        self.layout_group = QActionGroup(self)
        self.layout_actions: dict[str, QAction] = {}
        for mode, label in (("auto", "Auto"), ("grid", "Grid"), ("speaker", "Speaker")):
            action = QAction(label, self.layout_menu)
            action.setCheckable(True)
            action.setData(mode)
            action.setChecked(mode == "auto")
            self.layout_group.addAction(action)
            self.layout_menu.addAction(action)
            self.layout_actions[mode] = action
        self.layout_button.setMenu(self.layout_menu)
        self.layout_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)

        self.more_menu = QMenu("More", self)
        self.more_button.setMenu(self.more_menu)
        self.more_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.end_action = QAction("End the meeting for everyone", self.more_menu)

        row = QHBoxLayout(self)
        row.setContentsMargins(12, 8, 12, 10)
        row.setSpacing(10)
        row.addStretch(1)
        for button in (self.mic_button, self.camera_button):
            row.addWidget(button)
        row.addSpacing(18)
        for button in (self.screen_button, self.hand_button, self.panel_button,
                       self.people_button, self.layout_button, self.more_button):
            row.addWidget(button)
        row.addStretch(1)
        row.addWidget(self.leave_button)
        for first, second in zip(self.buttons(), self.buttons()[1:], strict=False):
            QWidget.setTabOrder(first, second)
        self.show_state(microphone=False, camera=False, sharing=False, hand=False,
                        chat=True, people=False, layout="auto", unread=0)

    def buttons(self) -> list[QToolButton]:
        return [getattr(self, name) for name in ORDER]

    def show_state(self, *, microphone: bool, camera: bool, sharing: bool, hand: bool,
                   chat: bool, people: bool, layout: str, unread: int) -> None:
        """One place that turns state into icons, colours, tooltips and accessible names."""
        self._toggle(self.mic_button, microphone, "mic", on_words=("Microphone on", "Mute (M)"),
                     off_words=("Microphone off, muted", "Unmute (M)"), red_when_off=True)
        self._toggle(self.camera_button, camera, "camera",
                     on_words=("Camera on", "Turn the camera off (V)"),
                     off_words=("Camera off", "Turn the camera on (V)"), red_when_off=True)
        self._toggle(self.screen_button, sharing, "share",
                     on_words=("Sharing your screen", "Stop sharing (D)"),
                     off_words=("Not sharing", "Share your screen (D)"))
        self._toggle(self.hand_button, hand, "hand",
                     on_words=("Hand raised", "Lower your hand (R)"),
                     off_words=("Hand down", "Raise your hand (R)"))
        unread_words = f", {unread} unread" if unread else ""
        self._toggle(self.panel_button, chat, "chat",
                     on_words=(f"Chat open{unread_words}", "Close the chat (C)"),
                     off_words=(f"Chat closed{unread_words}", "Open the chat (C)"))
        self.panel_button.setText(f"Chat ({unread})" if unread else "Chat")
        self.panel_button.setToolButtonStyle(
            Qt.ToolButtonStyle.ToolButtonTextBesideIcon if unread
            else Qt.ToolButtonStyle.ToolButtonIconOnly)
        self._toggle(self.people_button, people, "people",
                     on_words=("People open", "Close the people list (P)"),
                     off_words=("People closed", "Show the people list (P)"))
        name = {"auto": "Auto", "grid": "Grid", "speaker": "Speaker"}[layout]
        self.layout_button.setIcon(icons.icon("speaker" if layout == "speaker" else "grid"))
        self.layout_button.setToolTip(f"Layout: {name}. Next layout (W)")
        self.layout_button.setAccessibleName(f"Layout {name}")
        self.layout_actions[layout].setChecked(True)
        self.more_button.setToolTip("More: recording, statistics, full screen, shortcuts (?)")
        self.more_button.setAccessibleName("More options")

    @staticmethod
    def _toggle(button: QToolButton, on: bool, icon: str, *, on_words: tuple[str, str],
                off_words: tuple[str, str], red_when_off: bool = False) -> None:
        button.setChecked(on)
        off = red_when_off and not on
        button.setIcon(icons.icon(icon, "#ffffff" if off else
                                  ("#202124" if on and not red_when_off else "#e8eaed"),
                                  slashed=red_when_off and not on))
        state, action = on_words if on else off_words
        button.setToolTip(action)
        button.setAccessibleName(state)
        button.setAccessibleDescription(action)
        button.setProperty("off", off)
        button.setProperty("active", on and not red_when_off)
        style = button.style()
        style.unpolish(button)
        style.polish(button)
