"""Vanishing clients, a restarting server, reconnection and rejoin."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from confero.client import (
    ChatEvent,
    Client,
    ConnectionFailed,
    ConnectionState,
    ParticipantJoined,
    ParticipantLeft,
    Rejoined,
    RejoinFailed,
    StateChanged,
)
from tests.conftest import ClientFactory, ServerProcess, free_port


@pytest.fixture
def terminal_client(server: ServerProcess) -> Iterator[Callable[[str, str], subprocess.Popen[str]]]:
    """A ``confero chat`` process that joined a meeting (stdin kept open)."""
    procs: list[subprocess.Popen[str]] = []

    def start(name: str, meeting_id: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "confero.cli", "chat", "--server", server.url,
             "--name", name, "--join", meeting_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("* joined"):
                return proc
            assert not line.startswith("!"), line
        raise AssertionError(f"{name} never joined")

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_a_vanished_client_is_removed_and_the_others_are_told(
    connect: ClientFactory, terminal_client: Callable[[str, str], subprocess.Popen[str]],
    how: str,
) -> None:
    """SIGKILL: the kernel closes the socket. SIGSTOP: the socket stays open but silent,
    so only the server's heartbeat (0.5 s here) can notice."""
    alice = await connect("alice")
    mid = (await alice.create_meeting("vanish")).meeting.id
    victim = await asyncio.to_thread(terminal_client, "victim", mid)
    await alice.wait_for(lambda e: isinstance(e, ParticipantJoined))
    assert {p.name for p in alice.participants.values()} == {"alice", "victim"}
    os.kill(victim.pid, getattr(signal, how))
    left = await alice.wait_for(lambda e: isinstance(e, ParticipantLeft), timeout=5)
    assert isinstance(left, ParticipantLeft)
    assert (left.name, left.reason) == ("victim", "disconnected")
    assert [p.name for p in alice.participants.values()] == ["alice"]
    sent = await alice.send_chat("still here")
    assert sent.seq == 1


async def test_client_reconnects_after_a_server_restart_and_catches_up(
    server_factory: Callable[..., ServerProcess],
) -> None:
    port = free_port()
    server = server_factory(port=port)
    alice = Client(server.url, "alice", reconnect_timeout=30)
    bob = Client(server.url, "bob", reconnect_timeout=30)
    states: list[ConnectionState] = []
    alice.add_listener(lambda e: states.append(e.state) if isinstance(e, StateChanged) else None)
    await alice.connect()
    await bob.connect()
    try:
        mid = (await alice.create_meeting("durable")).meeting.id
        await bob.join(mid)
        await alice.send_chat("before")
        await bob.wait_for(lambda e: isinstance(e, ChatEvent))

        server.stop(signal.SIGKILL)
        await alice.wait_for(lambda e: isinstance(e, StateChanged)
                             and e.state == ConnectionState.RECONNECTING)
        server_factory(port=port, data_dir=server.data_dir)

        for client in (alice, bob):
            back = await client.wait_for(lambda e: isinstance(e, Rejoined), timeout=20)
            assert isinstance(back, Rejoined) and back.meeting.id == mid
        assert alice.is_creator and not bob.is_creator
        await alice.send_chat("after")
        chat = await bob.wait_for(lambda e: isinstance(e, ChatEvent))
        assert isinstance(chat, ChatEvent)
        assert (chat.message.seq, chat.message.text) == (2, "after")  # "before" not repeated
        assert states[:3] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED,
                              ConnectionState.RECONNECTING]
        assert states[-1] == ConnectionState.CONNECTED
        await alice.cancel()  # the creator is still the creator after the restart
    finally:
        await alice.close()
        await bob.close()


async def test_missed_chat_is_replayed_once_after_a_reconnect(
    server: ServerProcess, connect: ClientFactory
) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    mid = (await alice.create_meeting("catch-up")).meeting.id
    await bob.join(mid)
    await alice.send_chat("one")
    await bob.wait_for(lambda e: isinstance(e, ChatEvent))
    bob.reconnect_timeout = 30
    assert bob._ws is not None
    bob._ws._response.connection.transport.abort()  # type: ignore[union-attr]  # cut the TCP link
    await alice.wait_for(lambda e: isinstance(e, ParticipantLeft), timeout=5)
    await alice.send_chat("two (while bob was away)")
    await bob.wait_for(lambda e: isinstance(e, Rejoined), timeout=10)
    chat = await bob.wait_for(lambda e: isinstance(e, ChatEvent))
    assert isinstance(chat, ChatEvent) and chat.message.text == "two (while bob was away)"
    await alice.send_chat("three")
    chat = await bob.wait_for(lambda e: isinstance(e, ChatEvent))
    assert isinstance(chat, ChatEvent) and chat.message.text == "three"


async def test_rejoin_failure_is_reported_with_the_reason(
    server: ServerProcess, connect: ClientFactory
) -> None:
    alice, bob = await connect("alice"), await connect("bob")
    mid = (await alice.create_meeting("fragile")).meeting.id
    await bob.join(mid)
    assert bob._ws is not None
    bob._ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await alice.wait_for(lambda e: isinstance(e, ParticipantLeft), timeout=5)
    await alice.cancel()
    failed = await bob.wait_for(lambda e: isinstance(e, RejoinFailed), timeout=10)
    assert isinstance(failed, RejoinFailed)
    assert failed.code == "meeting_ended" and "cancelled" in failed.message
    assert bob.meeting is None and bob.state == ConnectionState.CONNECTED


async def test_a_refused_hello_fails_once_and_does_not_retry(server: ServerProcess) -> None:
    client = Client(server.url, "bad\x01name")
    states: list[ConnectionState] = []
    client.add_listener(lambda e: states.append(e.state) if isinstance(e, StateChanged) else None)
    with pytest.raises(ConnectionFailed, match="refused us: a display name"):
        await client.connect()
    assert states == [ConnectionState.CONNECTING, ConnectionState.FAILED]
    assert client._reader is None and client._reconnector is None  # nothing left running
