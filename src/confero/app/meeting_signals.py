"""The media path and end-to-end encryption of the meeting, shown on the meeting page.

The engine says which path the media takes (``mode_changed``), what the server counted
for the meeting (``server_media``) and how each person's encrypted media fares
(``e2ee_state``); this turns them into the header's badges, each tile's verified/cannot
decrypt badge and the safety codes in the People panel. Kept apart from ``meeting`` (the
controls) so the two grow independently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from confero.app.engine import SCREEN_SUFFIX
from confero.protocol.signaling import JoinResult

if TYPE_CHECKING:
    from confero.app.meeting import MeetingController


class MeetingSignals:
    def __init__(self, controller: MeetingController) -> None:
        self.controller = controller
        self.page = controller.page
        self.e2ee = False
        self.no_passphrase = False
        #: participant id -> "verified" | "not verified" | "cannot decrypt"
        self.tile_states: dict[str, str] = {}
        engine = controller.engine
        # connected after the controller's own ``joined``: that one resets the page first
        engine.joined.connect(self.joined)
        engine.mode_changed.connect(self.mode_changed)
        engine.server_media.connect(self.server_media)
        engine.e2ee_state.connect(self.e2ee_state)
        engine.media_transport_changed.connect(self.page.header.show_transport)

    def joined(self, result: JoinResult) -> None:
        self.e2ee = result.meeting.e2ee
        self.no_passphrase = False
        self.tile_states = {}
        header = self.page.header
        header.show_mode(result.mode, "joined")
        header.show_e2ee("encrypted" if self.e2ee else None)
        self.page.side.safety, self.page.side.safety_notes = {}, {}

    def mode_changed(self, mode: str, reason: str) -> None:
        self.page.header.show_mode(mode, reason)

    def server_media(self, counters: dict[str, Any]) -> None:
        if self.controller.window.in_meeting():
            self.page.header.show_server_media(counters)

    def e2ee_state(self, state: dict[str, Any]) -> None:
        if not self.e2ee:
            return
        if state.get("state") == "cannot decrypt" and "peer" not in state:
            self.no_passphrase = True
            self.page.header.show_e2ee("no passphrase")
            self._show_tiles({})
            return
        status = state.get("status")
        if isinstance(status, dict):
            self._status(status)
        elif state.get("peer") and state.get("state") in ("verified", "cannot verify"):
            verified = state["state"] == "verified"
            notes = self.page.side.safety_notes
            if verified:
                notes.pop(str(state["peer"]), None)
            else:
                notes[str(state["peer"])] = str(state.get("reason") or "")
            self._status({"": {"participant_id": state["peer"], "verified": verified,
                               "safety_code": state.get("safety_code"),
                               "state": "waiting"}}, partial=True)

    def _status(self, status: dict[str, Any], *, partial: bool = False) -> None:
        """Once a second per participant: verified, safety code, frames decrypted or not."""
        safety = {} if not partial else dict(self.page.side.safety)
        states = {} if not partial else dict(self.tile_states)
        for values in status.values():
            if not isinstance(values, dict) or not values.get("participant_id"):
                continue
            pid = str(values["participant_id"])
            verified, code = bool(values.get("verified")), values.get("safety_code")
            safety[pid] = (verified, str(code) if code else None)
            if self.no_passphrase or values.get("state") == "cannot decrypt":
                states[pid] = "cannot decrypt"
            else:
                states[pid] = "verified" if verified else "not verified"
        self._show_tiles(states)
        if safety != self.page.side.safety or partial:
            self.page.side.safety = safety
            self.controller.refresh()

    def _show_tiles(self, states: dict[str, str]) -> None:
        self.tile_states = states
        fallback = "cannot decrypt" if self.no_passphrase else "not verified"
        for key, tile in self.page.stage.tiles.items():  # a screen tile: its sharer's state
            tile.set_e2ee(states.get(key.removesuffix(SCREEN_SUFFIX), fallback))
