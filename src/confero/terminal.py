"""``confero chat``: an interactive terminal client built only on :mod:`confero.client`.

Lines typed are chat messages; lines starting with ``/`` are commands (``/help``). Output
is plain lines so it works the same in a terminal, under tmux, or through pipes in tests.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from confero import client as api
from confero.protocol.signaling import ChatMessage, MeetingInfo
from confero.stdin import stdin_lines

HELP = """commands:
  /list                          open meetings
  /create TITLE [--password PW]  create a meeting and enter it
  /join ID [PASSWORD]            enter a meeting
  /leave                         leave the current meeting
  /cancel [ID]                   end a meeting for everyone (its creator only)
  /who                           who is in the current meeting
  /quit                          leave and exit
anything else is sent as a chat message to the current meeting"""


_CONTROL = dict.fromkeys(c for c in range(0x20) if c != 0x09) | {0x7F: None}


def printable(text: str) -> str:
    """Text from other people, made safe for a terminal: no escape sequences, one line."""
    cleaned = text.translate(_CONTROL | {0x0A: " ", 0x0D: None})
    return "".join(ch for ch in cleaned if ch.isprintable() or ch == "\t")


def format_chat(message: ChatMessage) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(message.ts))
    return f"[{stamp}] {printable(message.sender)}: {printable(message.text)}"


def format_meetings(meetings: list[MeetingInfo]) -> list[str]:
    if not meetings:
        return ["no open meetings"]
    lines = [f"{'ID':<12} {'PEOPLE':>6}  {'CREATOR':<16} TITLE"]
    for m in meetings:
        lock = " (password)" if m.has_password else ""
        lines.append(
            f"{m.id:<12} {m.participant_count:>6}  {printable(m.creator):<16} "
            f"{printable(m.title)}{lock}"
        )
    return lines


class TerminalChat:
    def __init__(self, client: api.Client, write: Callable[[str], None]) -> None:
        self.client = client
        self.write = write
        client.add_listener(self._on_event)

    # ------------------------------------------------------------------ events

    def _on_event(self, event: api.ClientEvent) -> None:
        me = self.client.participant_id
        match event:
            case api.ChatEvent(message=message):
                self.write(format_chat(message))
            case api.ParticipantJoined(participant=p) if p.id != me:
                self.write(f"* {p.name} joined")
            case api.ParticipantLeft(name=name, reason=reason):
                how = {"left": "left", "disconnected": "disconnected",
                       "replaced": "reconnected elsewhere"}.get(reason, reason)
                self.write(f"* {name} {how}")
            case api.MeetingEnded(message=message):
                self.write(f"* meeting ended: {message}")
            case api.StateChanged(state=state, reason=reason):
                if state in (api.ConnectionState.RECONNECTING, api.ConnectionState.FAILED) or (
                    state == api.ConnectionState.CONNECTED and reason
                ):
                    self.write(f"* connection {state.value}" + (f": {reason}" if reason else ""))
            case api.Rejoined(meeting=meeting):
                self.write(f"* back in {meeting.title!r}")
            case api.RejoinFailed(meeting_id=mid, message=message):
                self.write(f"* could not rejoin meeting {mid}: {message}")

    # ------------------------------------------------------------------ commands

    async def run_line(self, line: str) -> bool:
        """Handle one input line; False means quit."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            await self._attempt(self._chat(line))
            return True
        try:
            words = shlex.split(line[1:])
        except ValueError as exc:
            self.write(f"! {exc}")
            return True
        command, args = (words[0].lower(), words[1:]) if words else ("", [])
        if command in ("quit", "exit", "q"):
            return False
        handler = {
            "help": self._help,
            "list": self._list,
            "create": self._create,
            "join": self._join,
            "leave": self._leave,
            "cancel": self._cancel,
            "who": self._who,
        }.get(command)
        if handler is None:
            self.write(f"! unknown command /{command}; try /help")
        else:
            await self._attempt(handler(args))
        return True

    async def _attempt(self, action: object) -> None:
        try:
            await action  # type: ignore[misc]
        except api.RequestError as exc:
            self.write(f"! {exc.message} ({exc.code})")
        except (api.ConnectionLost, TimeoutError):
            self.write("! not connected right now; try again in a moment")

    async def _chat(self, text: str) -> None:
        if self.client.meeting is None:
            self.write("! you are not in a meeting: /list, /join ID or /create TITLE")
            return
        await self.client.send_chat(text)

    async def _help(self, args: list[str]) -> None:
        self.write(HELP)

    async def _list(self, args: list[str]) -> None:
        for row in format_meetings(await self.client.list_meetings()):
            self.write(row)

    async def _create(self, args: list[str]) -> None:
        password = None
        if "--password" in args:
            at = args.index("--password")
            if at + 1 >= len(args):
                self.write("! --password needs a value")
                return
            password = args[at + 1]
            del args[at : at + 2]
        if not args:
            self.write("! usage: /create TITLE [--password PW]")
            return
        result = await self.client.create_meeting(" ".join(args), password)
        self.write(f"* created {result.meeting.title!r} (id {result.meeting.id}); you are in it")

    async def _join(self, args: list[str]) -> None:
        if not args:
            self.write("! usage: /join ID [PASSWORD]")
            return
        result = await self.client.join(args[0], args[1] if len(args) > 1 else None)
        for message in result.history:
            self.write(format_chat(message))
        others = [p.name for p in result.participants if p.id != self.client.participant_id]
        self.write(
            f"* joined {result.meeting.title!r} (id {result.meeting.id})"
            + (f" with {', '.join(others)}" if others else "")
        )

    async def _leave(self, args: list[str]) -> None:
        if self.client.meeting is None:
            self.write("! you are not in a meeting")
            return
        title = self.client.meeting.title
        await self.client.leave()
        self.write(f"* you left {title!r}")

    async def _cancel(self, args: list[str]) -> None:
        await self.client.cancel(args[0] if args else None)

    async def _who(self, args: list[str]) -> None:
        if self.client.meeting is None:
            self.write("! you are not in a meeting")
            return
        names = sorted(p.name for p in self.client.participants.values())
        self.write(f"* in {self.client.meeting.title!r}: {', '.join(names)}")


def _print(line: str) -> None:
    print(line, flush=True)


async def run_terminal(
    url: str,
    name: str,
    *,
    cafile: str | None,
    token: str | None,
    join: str | None,
    create: str | None,
    password: str | None,
) -> int:
    client = api.Client(url, name, cafile=cafile, resume_token=token)
    try:
        await client.connect()
    except api.ConnectionFailed as exc:
        _print(f"! {exc}")
        return 2
    chat = TerminalChat(client, _print)
    _print(f"* connected to {url} as {name}; /help for commands")
    try:
        if create:
            extra = ["--password", password] if password else []
            await chat._attempt(chat._create([create, *extra]))
        elif join:
            await chat._attempt(chat._join([join, *([password] if password else [])]))
        lines = stdin_lines()
        while (line := await lines.get()) is not None:
            if not await chat.run_line(line):
                break
            if client.state == api.ConnectionState.FAILED:
                return 3
    finally:
        await client.close()
    _print("* bye")
    return 0
