"""The ``confero`` command as a person (or a script) uses it: two terminal clients talking."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import ServerProcess

CHAT_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<name>[^:]+): (?P<text>.*)$")


class Terminal:
    """A ``confero chat`` process: type lines, wait for output lines."""

    def __init__(self, server: ServerProcess, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "confero.cli", "chat", "--server", server.url, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The next output line matching ``pattern`` (a regex searched in the line)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r}; output was:\n" + "\n".join(self.transcript)
                ) from None
            self.transcript.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def quit(self) -> int:
        self.type("/quit")
        self.expect(r"^\* bye$")
        return self.proc.wait(10)


@pytest.fixture
def terminals(server: ServerProcess) -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for terminal in started:
        if terminal.proc.poll() is None:
            terminal.proc.kill()
        terminal.proc.wait()


def test_two_terminals_create_list_join_chat_leave_and_cancel(
    server: ServerProcess, terminals: list[Terminal]
) -> None:
    alice = Terminal(server, "--name", "alice", "--create", "Team sync")
    bob = Terminal(server, "--name", "bob")
    terminals += [alice, bob]
    mid = alice.expect(r"^\* created 'Team sync' \(id (\w+)\); you are in it$").group(1)
    bob.expect(r"^\* connected to .* as bob")

    bob.type("/list")
    bob.expect(rf"^{mid}\s+1\s+alice\s+Team sync$")
    bob.type(f"/join {mid}")
    bob.expect(rf"^\* joined 'Team sync' \(id {mid}\) with alice$")
    alice.expect(r"^\* bob joined$")

    bob.type("hi alice, can you hear me?")
    for terminal in (alice, bob):
        match = CHAT_LINE.match(terminal.expect(r"^\[").string)
        assert match, terminal.transcript
        assert match.group("name", "text") == ("bob", "hi alice, can you hear me?")
    alice.type("loud and clear")
    bob.expect(r"^\[\d\d:\d\d:\d\d\] alice: loud and clear$")

    alice.type("/who")
    alice.expect(r"^\* in 'Team sync': alice, bob$")
    bob.type("/cancel")
    bob.expect(r"^! only the creator of a meeting can end it for everyone \(not_creator\)$")
    bob.type("/leave")
    bob.expect(r"^\* you left 'Team sync'$")
    alice.expect(r"^\* bob left$")

    bob.type(f"/join {mid}")  # back again: the history comes along
    bob.expect(r"^\[\d\d:\d\d:\d\d\] bob: hi alice, can you hear me\?$")
    bob.expect(r"^\[\d\d:\d\d:\d\d\] alice: loud and clear$")
    bob.expect(r"^\* joined 'Team sync'")
    alice.type("/cancel")
    for terminal in (alice, bob):
        terminal.expect(r"^\* meeting ended: the meeting was ended for everyone by its creator$")
    bob.type(f"/join {mid}")
    bob.expect(rf"^! meeting {mid} was cancelled by its creator \(meeting_ended\)$")
    bob.type("hello?")
    bob.expect(r"^! you are not in a meeting")
    bob.type("/frobnicate")
    bob.expect(r"^! unknown command /frobnicate")
    assert alice.quit() == 0
    assert bob.quit() == 0


def test_meetings_commands_for_scripts(server_factory: Callable[..., ServerProcess]) -> None:
    # Three CLI runs must see the creator's meeting: on a busy box they take longer than
    # the fixture's 3 s grace, so this server waits longer for the first participant.
    server = server_factory("--empty-grace", "120")

    def confero(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "confero.cli", "meetings", *args, "--server", server.url],
            capture_output=True, text=True, timeout=30,
        )

    created = confero("create", "--name", "script", "--title", "Nightly", "--json")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["title"] == "Nightly" and len(info["resume_token"]) >= 32
    listed = confero("list", "--json")
    assert listed.returncode == 0, listed.stderr
    [meeting] = json.loads(listed.stdout)
    assert (meeting["id"], meeting["creator"], meeting["participant_count"]) == (
        info["id"], "script", 0  # waits (--empty-grace) for its first participant
    )
    table = confero("list")
    assert re.search(rf"^{info['id']}\s+0\s+script\s+Nightly$", table.stdout, re.M)
    bad = confero("create", "--name", "x", "--title", " ")
    assert bad.returncode == 1 and "title cannot be blank" in bad.stderr


def test_unreachable_server_is_reported(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "confero.cli", "chat", "--server", "ws://127.0.0.1:9/ws",
         "--name", "x"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "cannot connect to ws://127.0.0.1:9/ws" in result.stdout
