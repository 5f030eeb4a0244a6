"""SQLite persistence of meetings and chat: the embedded default store.

One file (``confero.sqlite3``) in the data directory, WAL mode so readers never wait on
the writer. Writes are small and synchronous on the event loop thread: a chat insert costs
tens of microseconds with ``synchronous=NORMAL`` (durable at the next checkpoint, never
corrupt), which is cheaper than a hop to a thread. The interface is small so a networked
store can replace it when meetings are spread over several servers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from confero.protocol.signaling import ChatMessage, EndReason
from confero.server.registry import Meeting

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meetings (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    creator_name TEXT NOT NULL,
    creator_token_hash BLOB NOT NULL,
    password_hash TEXT,
    created_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT
);
CREATE TABLE IF NOT EXISTS chat (
    meeting_id TEXT NOT NULL REFERENCES meetings(id),
    seq INTEGER NOT NULL,
    sender TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    text TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (meeting_id, seq)
) WITHOUT ROWID;
-- End-to-end encrypted meetings (a table of its own: older databases gain it as is)
CREATE TABLE IF NOT EXISTS meeting_e2ee (
    meeting_id TEXT PRIMARY KEY
) WITHOUT ROWID;
"""

DB_FILENAME = "confero.sqlite3"


class Store:
    def __init__(self, path: Path | str) -> None:
        """``path`` is a file, or ``":memory:"`` for tests of the core."""
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_directory(cls, data_dir: Path) -> Store:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(data_dir / DB_FILENAME)

    def close(self) -> None:
        self._db.close()

    def add_meeting(self, meeting: Meeting) -> None:
        self._db.execute(
            "INSERT INTO meetings (id, title, creator_name, creator_token_hash, password_hash,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                meeting.id,
                meeting.title,
                meeting.creator_name,
                meeting.creator_token_hash,
                meeting.password_hash,
                meeting.created_at,
            ),
        )
        if meeting.e2ee:
            self._db.execute("INSERT OR IGNORE INTO meeting_e2ee (meeting_id) VALUES (?)",
                             (meeting.id,))

    def end_meeting(self, meeting_id: str, reason: EndReason, now: float) -> None:
        self._db.execute(
            "UPDATE meetings SET ended_at = ?, end_reason = ? WHERE id = ?",
            (now, reason, meeting_id),
        )

    def add_chat(self, message: ChatMessage) -> None:
        self._db.execute(
            "INSERT INTO chat (meeting_id, seq, sender, sender_id, text, ts)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                message.meeting_id,
                message.seq,
                message.sender,
                message.sender_id,
                message.text,
                message.ts,
            ),
        )

    def history(self, meeting_id: str, limit: int) -> tuple[list[ChatMessage], bool]:
        """The last ``limit`` messages in order, and whether that is all of them."""
        rows = self._db.execute(
            "SELECT meeting_id, seq, sender, sender_id, text, ts FROM chat"
            " WHERE meeting_id = ? ORDER BY seq DESC LIMIT ?",
            (meeting_id, limit + 1),
        ).fetchall()
        complete = len(rows) <= limit
        messages = [ChatMessage(*row) for row in reversed(rows[:limit])]
        return messages, complete

    def open_meetings(self) -> Iterator[Meeting]:
        rows = self._db.execute(
            "SELECT m.id, m.title, m.creator_name, m.creator_token_hash, m.password_hash,"
            " m.created_at, COALESCE(MAX(c.seq), 0) FROM meetings m"
            " LEFT JOIN chat c ON c.meeting_id = m.id"
            " WHERE m.ended_at IS NULL GROUP BY m.id ORDER BY m.created_at"
        ).fetchall()
        e2ee = {mid for (mid,) in self._db.execute(
            "SELECT e.meeting_id FROM meeting_e2ee e JOIN meetings m ON m.id = e.meeting_id"
            " WHERE m.ended_at IS NULL"
        )}
        for mid, title, creator, token_hash, pw_hash, created_at, last_seq in rows:
            yield Meeting(
                id=mid,
                title=title,
                creator_name=creator,
                creator_token_hash=bytes(token_hash),
                password_hash=pw_hash,
                created_at=created_at,
                last_seq=last_seq,
                e2ee=mid in e2ee,
            )

    def recently_ended(self, limit: int) -> list[tuple[str, EndReason]]:
        rows = self._db.execute(
            "SELECT id, end_reason FROM meetings WHERE ended_at IS NOT NULL"
            " ORDER BY ended_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [(mid, reason) for mid, reason in reversed(rows)]
