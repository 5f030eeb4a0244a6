"""SQLite persistence of meetings and chat: the embedded default store.

One file (``confero.sqlite3``) in the data directory, WAL mode so readers never wait on
the writer. Writes are small and synchronous on the event loop thread. The interface is
small so a networked store can replace it when meetings are spread over several servers.

Durability (docs/security.md): ``synchronous=NORMAL``. A committed write is in the WAL
before its ``ok`` is sent, so a crash of the server process (SIGKILL, OOM) loses nothing
acknowledged; the WAL reaches the disk at :meth:`Store.flush` (a checkpoint, every few
seconds, called by the core), so a power cut or kernel crash can lose the last few seconds.
``FULL`` would fsync every chat line on the event loop: 7.5 ms each on the reference box
(0.03 ms with NORMAL), a ceiling of ~130 lines/s for the whole server and stalls in media.

Failures: every write that fails raises :class:`StoreError` (the caller leaves its memory
as it was) and marks the store as failing until a write succeeds again; a database that
cannot be opened, or that was deleted or replaced while running, is one clear sentence.
"""

from __future__ import annotations

import os
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
CREATE INDEX IF NOT EXISTS meetings_ended_at ON meetings(ended_at);
CREATE TABLE IF NOT EXISTS admitted (
    meeting_id TEXT NOT NULL REFERENCES meetings(id),
    token_hash BLOB NOT NULL,
    PRIMARY KEY (meeting_id, token_hash)
) WITHOUT ROWID;
-- End-to-end encrypted meetings (a table of its own: older databases gain it as is)
CREATE TABLE IF NOT EXISTS meeting_e2ee (
    meeting_id TEXT PRIMARY KEY
) WITHOUT ROWID;
"""

DB_FILENAME = "confero.sqlite3"


class StoreError(Exception):
    """The database cannot be used; the message says what is wrong and what to do."""


def _explain(path: str, exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, IsADirectoryError) or os.path.isdir(path):
        return f"{path} is a directory, not a database file: move it away or pick --data-dir"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (f"{path} is corrupt or not a confero database ({text}): restore it from a "
                "backup, or move it away to start with an empty store")
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        return (f"{path} cannot be written ({text}): give the server's user write access to "
                "the file and its directory")
    if "disk is full" in text or "disk I/O" in text:
        return f"cannot write {path} ({text}): free disk space and check the disk"
    if "unable to open" in text:
        return (f"cannot open {path} ({text}): check that its directory exists and can be "
                "written")
    return f"database {path} failed: {text}"


class Store:
    def __init__(self, path: Path | str) -> None:
        """``path`` is a file, or ``":memory:"`` for tests of the core."""
        self.path = str(path)
        #: Why the last write failed (None while writes succeed): /healthz reports it.
        self.failure: str | None = None
        try:
            if os.path.isdir(self.path):
                raise IsADirectoryError(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            [(verdict,)] = self._db.execute("PRAGMA quick_check(1)").fetchall()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
            self._db.execute("PRAGMA user_version").fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(_explain(self.path, exc)) from exc
        self._identity = self._file_identity()
        self._unflushed = False

    @classmethod
    def in_directory(cls, data_dir: Path) -> Store:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {data_dir}: {exc}") from exc
        return cls(data_dir / DB_FILENAME)

    def close(self) -> None:
        self._db.close()

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0)
        return (st.st_dev, st.st_ino)

    def check_file(self) -> str | None:
        """Notice a database file deleted or replaced under the running server: its writes
        would go to an unlinked file and vanish at restart."""
        if self._identity is None or self._file_identity() == self._identity:
            return None
        problem = (f"the database file {self.path} was deleted or replaced while the server "
                   "was running: what is stored from now on is lost at restart. Restore the "
                   "file (or stop the server, move the data away) and restart the server")
        self.failure = problem
        return problem

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            self.failure = _explain(self.path, exc)
            raise StoreError(self.failure) from exc
        self._unflushed = True
        if self.failure is not None and self.check_file() is None:
            self.failure = None

    def flush(self) -> None:
        """Checkpoint the WAL, which fsyncs it: bounds what a power cut can lose."""
        if not self._unflushed:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            self.failure = _explain(self.path, exc)
            raise StoreError(self.failure) from exc
        self._unflushed = False

    def add_meeting(self, meeting: Meeting) -> None:
        self._write(
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
            self._write("INSERT OR IGNORE INTO meeting_e2ee (meeting_id) VALUES (?)",
                        (meeting.id,))

    def end_meeting(self, meeting_id: str, reason: EndReason, now: float) -> None:
        self._write(
            "UPDATE meetings SET ended_at = ?, end_reason = ? WHERE id = ?",
            (now, reason, meeting_id),
        )
        self._write("DELETE FROM admitted WHERE meeting_id = ?", (meeting_id,))

    def add_admitted(self, meeting_id: str, token_hash: bytes) -> None:
        """Remember that this resume token got into this meeting (survives a restart, so
        members are not sent back through the password budgets after one)."""
        self._write("INSERT OR IGNORE INTO admitted (meeting_id, token_hash) VALUES (?, ?)",
                    (meeting_id, token_hash))

    def admitted(self, meeting_id: str, limit: int) -> list[bytes]:
        rows = self._db.execute(
            "SELECT token_hash FROM admitted WHERE meeting_id = ? LIMIT ?", (meeting_id, limit)
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def add_chat(self, message: ChatMessage) -> None:
        self._write(
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

    def purge_ended(self, ended_before: float) -> int:
        """Delete the chat, then the record, of meetings that ended before this time."""
        old = "SELECT id FROM meetings WHERE ended_at IS NOT NULL AND ended_at < ?"
        try:
            with self._db:
                self._db.execute("BEGIN")
                for table in ("chat", "admitted", "meeting_e2ee"):
                    self._db.execute(f"DELETE FROM {table} WHERE meeting_id IN ({old})",
                                     (ended_before,))
                cursor = self._db.execute(
                    "DELETE FROM meetings WHERE ended_at IS NOT NULL AND ended_at < ?",
                    (ended_before,))
        except sqlite3.Error as exc:
            self.failure = _explain(self.path, exc)
            raise StoreError(self.failure) from exc
        return cursor.rowcount
