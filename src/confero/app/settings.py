"""What the app remembers between runs (QSettings): server, name, devices, join choices,
recent meetings, and the resume token that makes this app the creator of its meetings
again after a restart, so a creator can still end them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from PySide6.QtCore import QSettings

DEFAULT_SERVER = "ws://127.0.0.1:8750/ws"
MAX_RECENT = 8


@dataclass(frozen=True)
class RecentMeeting:
    id: str
    title: str
    created: bool


class Continuity:
    def __init__(self, settings: QSettings) -> None:
        self.settings = settings

    def text(self, key: str, default: str = "") -> str:
        value = self.settings.value(key, default)
        return value if isinstance(value, str) else default

    def flag(self, key: str, default: bool) -> bool:
        value = self.settings.value(key, default)
        if isinstance(value, str):
            return value.lower() in ("true", "1", "yes")
        return bool(value)

    def set(self, key: str, value: str | bool) -> None:
        self.settings.setValue(key, value)

    # ------------------------------------------------------------------ resume tokens

    def resume_token(self, server: str, name: str) -> str | None:
        tokens = self._json("resume_tokens", {})
        token = tokens.get(f"{name}@{server}") if isinstance(tokens, dict) else None
        return token if isinstance(token, str) else None

    def remember_token(self, server: str, name: str, token: str) -> None:
        tokens = self._json("resume_tokens", {})
        if not isinstance(tokens, dict):
            tokens = {}
        tokens[f"{name}@{server}"] = token
        while len(tokens) > 20:
            tokens.pop(next(iter(tokens)))
        self.settings.setValue("resume_tokens", json.dumps(tokens))

    # ------------------------------------------------------------------ recent meetings

    def recent(self) -> list[RecentMeeting]:
        raw = self._json("recent_meetings", [])
        meetings = []
        for entry in raw if isinstance(raw, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                meetings.append(RecentMeeting(entry["id"], str(entry.get("title", "")),
                                              bool(entry.get("created", False))))
        return meetings[:MAX_RECENT]

    def add_recent(self, meeting_id: str, title: str, created: bool) -> None:
        before = [m for m in self.recent() if m.id != meeting_id]
        created = created or any(m.created for m in self.recent() if m.id == meeting_id)
        meetings = [RecentMeeting(meeting_id, title, created), *before][:MAX_RECENT]
        self.settings.setValue("recent_meetings", json.dumps(
            [{"id": m.id, "title": m.title, "created": m.created} for m in meetings]))

    def _json(self, key: str, default: object) -> object:
        try:
            return json.loads(self.text(key, ""))
        except ValueError:
            return default
