"""Where the tiles go: grid pages, or the speaker large over a strip, or one tile alone.

Geometry is computed here by hand (no layout manager): every arrangement change is one
pass of ``setGeometry`` calls, and a tile keeps its widget (and its picture) whichever
place it moves to. The self-view floats in the lower right corner.
"""

from __future__ import annotations

import math
import time

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QAction, QResizeEvent
from PySide6.QtWidgets import QLabel, QToolButton, QWidget

from confero.app.engine import SELF
from confero.app.layout_policy import Arrangement, LayoutPolicy
from confero.app.tiles import VideoTile

GAP = 6
SELF_CELL = SELF
STRIP_HEIGHT = 120


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` tiles: 1, 1x2, 2x2, 2x3, 3x3, ... 5x5."""
    if count <= 0:
        return 0, 0
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return rows, columns


class Stage(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("stage")
        self.tiles: dict[str, VideoTile] = {}
        self.self_view: VideoTile | None = None
        self.policy = LayoutPolicy()
        self.focused: str | None = None  # double-clicked: this tile alone
        self.arrangement = Arrangement("grid", None, [], 0, 1)
        self.setMinimumSize(480, 320)
        # a click on the video takes the focus out of the chat box, so shortcuts work again
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.setAccessibleName("Video of the people in the meeting")
        self.previous_page = QToolButton(self)
        self.previous_page.setText("◀")
        self.previous_page.setAccessibleName("Previous page of people")
        self.next_page = QToolButton(self)
        self.next_page.setText("▶")
        self.next_page.setAccessibleName("Next page of people")
        self.page_label = QLabel(self)
        self.page_label.setTextFormat(Qt.TextFormat.PlainText)
        self.page_label.setObjectName("page_label")
        self.previous_page.clicked.connect(lambda: self.turn_page(-1))
        self.next_page.clicked.connect(lambda: self.turn_page(1))

    # ------------------------------------------------------------------ tiles

    def add(self, participant_id: str, name: str) -> VideoTile:
        tile = self.tiles.get(participant_id)
        if tile is None:
            tile = VideoTile(participant_id, name)
            tile.setParent(self)
            tile.on_double_click = self.toggle_focus
            self._add_tile_actions(tile)
            self.tiles[participant_id] = tile
            self.relayout()
        return tile

    def _add_tile_actions(self, tile: VideoTile) -> None:
        """Right-click on a tile: pin it (for me), or show it alone in the window."""
        pid = tile.participant_id
        pin = QAction("Pin for me", tile)
        pin.setObjectName("pin_action")
        pin.triggered.connect(lambda: self.pin(pid))
        alone = QAction("Full window (double-click)", tile)
        alone.setObjectName("focus_action")
        alone.triggered.connect(lambda: self.toggle_focus(pid))
        tile.addAction(pin)
        tile.addAction(alone)
        tile.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)

    def add_screen(self, key: str, name: str) -> VideoTile:
        """A shared screen's tile (``"<participant id>:screen"``): it takes the stage."""
        tile = self.add(key, name)
        tile.shared_screen = True
        tile.set_state(camera=True)  # a screen tile shows its picture, never initials
        tile.set_name(name)  # said as a shared screen
        self.policy.screen_started(key)
        self.relayout()
        return tile

    def remove(self, participant_id: str) -> None:
        self.policy.screen_stopped(participant_id)  # nothing unless it is a screen
        tile = self.tiles.pop(participant_id, None)
        if tile is not None:
            tile.setParent(None)
            tile.deleteLater()
            if self.focused == participant_id:
                self.focused = None
            if self.policy.pinned == participant_id:
                self.policy.pinned = None
            self.relayout()

    def clear(self) -> None:
        for participant_id in list(self.tiles):
            self.remove(participant_id)
        self.focused = None
        self.policy.pinned = None
        self.policy.page = 0

    def set_self_view(self, tile: VideoTile) -> None:
        self.self_view = tile
        tile.setParent(self)
        tile.on_double_click = self.toggle_focus
        self.relayout()

    def visible_tiles(self) -> list[VideoTile]:
        return [t for t in self.tiles.values() if t.isVisible()]

    # ------------------------------------------------------------------ choices

    def set_mode(self, mode: str) -> None:
        self.policy.set_mode(mode)
        self.relayout()

    def pin(self, participant_id: str | None) -> None:
        self.policy.pin(participant_id)
        for pid, tile in self.tiles.items():
            tile.set_state(pinned=pid == self.policy.pinned)
            for action in tile.actions():
                if action.objectName() == "pin_action":
                    action.setText("Unpin" if pid == self.policy.pinned else "Pin for me")
        self.relayout()

    def toggle_focus(self, participant_id: str) -> None:
        self.focused = None if self.focused == participant_id else participant_id
        self.relayout()

    def turn_page(self, step: int) -> None:
        self.policy.page += step
        self.relayout()

    def heard(self, talking: set[str]) -> None:
        before = self.arrangement.stage
        self.policy.heard(talking, list(self.tiles), time.monotonic())
        if self.arrangement.kind == "speaker" and self.policy.stage != before:
            self.relayout()

    # ------------------------------------------------------------------ geometry

    def resizeEvent(self, event: QResizeEvent) -> None:
        self.relayout()

    def relayout(self) -> None:
        area = self.rect().adjusted(GAP, GAP, -GAP, -GAP)
        order = list(self.tiles)
        fit = max(1, (area.width() + GAP) // (STRIP_HEIGHT * 4 // 3 + GAP))
        self.arrangement = arrangement = self.policy.arrange(order, time.monotonic(), fit)
        places: dict[str, QRect] = {}
        focus = self.focused
        if focus is not None and (focus in self.tiles or focus == SELF_CELL):
            if focus in self.tiles:
                places[focus] = area
        elif arrangement.kind == "grid":
            # in the grid you are one cell among the others; elsewhere you float
            cells = arrangement.shown + ([SELF_CELL] if self.self_view is not None else [])
            places.update(self._grid(cells, area))
        else:
            strip = QRect(area.left(), area.bottom() - STRIP_HEIGHT + 1, area.width(),
                          STRIP_HEIGHT) if arrangement.shown else QRect()
            if arrangement.stage is not None:
                top = area.adjusted(0, 0, 0, -(STRIP_HEIGHT + GAP) if arrangement.shown else 0)
                places[arrangement.stage] = top
            places.update(self._strip(arrangement.shown, strip))
        for participant_id, tile in self.tiles.items():
            rect = places.get(participant_id)
            if rect is None:
                tile.hide()
            else:
                tile.setGeometry(rect)
                tile.show()
        self._place_pager(arrangement)
        self._place_self_view(area, focus, places.get(SELF_CELL))

    def _grid(self, shown: list[str], area: QRect) -> dict[str, QRect]:
        rows, columns = grid_shape(len(shown))
        if not shown:
            return {}
        width = (area.width() - GAP * (columns - 1)) // columns
        height = (area.height() - GAP * (rows - 1)) // rows
        return {pid: QRect(area.left() + (i % columns) * (width + GAP),
                           area.top() + (i // columns) * (height + GAP), width, height)
                for i, pid in enumerate(shown)}

    def _strip(self, shown: list[str], strip: QRect) -> dict[str, QRect]:
        """One row at 4:3, centred; the policy pages by what fits."""
        if not shown:
            return {}
        width = STRIP_HEIGHT * 4 // 3
        used = len(shown) * (width + GAP) - GAP
        left = strip.left() + max(0, (strip.width() - used) // 2)
        return {pid: QRect(left + i * (width + GAP), strip.top(), width, strip.height())
                for i, pid in enumerate(shown)}

    def _place_pager(self, arrangement: Arrangement) -> None:
        paged = arrangement.pages > 1 and self.focused is None
        for widget in (self.previous_page, self.next_page, self.page_label):
            widget.setVisible(paged)
        if not paged:
            return
        self.page_label.setText(f"Page {arrangement.page + 1} of {arrangement.pages}")
        self.page_label.adjustSize()
        y = 8
        self.previous_page.move(8, y)
        self.page_label.move(40, y + 4)
        self.next_page.move(48 + self.page_label.width(), y)
        self.previous_page.setEnabled(arrangement.page > 0)
        self.next_page.setEnabled(arrangement.page < arrangement.pages - 1)
        for widget in (self.previous_page, self.next_page, self.page_label):
            widget.raise_()

    def _place_self_view(self, area: QRect, focus: str | None, cell: QRect | None) -> None:
        tile = self.self_view
        if tile is None:
            return
        if focus == SELF_CELL:
            tile.setGeometry(area)
        elif focus is not None and focus in self.tiles:
            tile.hide()
            return
        elif cell is not None:
            tile.setGeometry(cell)
        else:
            width = max(160, self.width() // 5)
            height = width * 3 // 4
            bottom = self.height() - 12
            if self.arrangement.kind == "speaker" and self.arrangement.shown and focus is None:
                bottom -= STRIP_HEIGHT + GAP
            tile.setGeometry(self.width() - width - 12, bottom - height, width, height)
        tile.show()
        tile.raise_()
