"""Fixtures: a real ``confero server`` process on a free loopback port, and clients."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from confero.client import Client
from tests.bots import bots
from tests.sound import pulse

__all__ = ["bots", "pulse"]  # fixtures defined beside their helpers, shared by all tests

from tests.netlab_fixtures import netlab

__all__ += ["netlab"]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str
    http: str
    data_dir: Path
    media_port: int = 0
    args: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def read_json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    """The next stdout line of ``proc`` as JSON, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError(f"no output from {proc.args} within {timeout}s")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{proc.args} exited with {proc.wait()} before printing")
            if line.startswith("{"):
                return dict(json.loads(line))
    finally:
        selector.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(data_dir: Path, *extra: str, port: int = 0) -> ServerProcess:
    args = [
        sys.executable, "-m", "confero.cli", "server", "--port", str(port), "--media-port", "0",
        "--data-dir", str(data_dir), "--heartbeat", "2", "--empty-grace", "3", *extra,
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=None, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        ready = read_json_line(proc, 20)
    except BaseException:
        proc.kill()
        raise
    assert ready["event"] == "listening"
    return ServerProcess(proc, str(ready["url"]), str(ready["http"]), data_dir,
                         int(str(ready["media_port"])), args)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def factory(*extra: str, port: int = 0, data_dir: Path | None = None) -> ServerProcess:
        server = start_server(data_dir or tmp_path / "data", *extra, port=port)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect(server: ServerProcess) -> AsyncIterator[ClientFactory]:
    """``await connect("alice")``: a connected client, closed at the end of the test."""
    clients: list[Client] = []

    async def factory(name: str, **kwargs: object) -> Client:
        client = Client(kwargs.pop("url", server.url), name, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        await client.connect()
        return client

    yield factory
    for client in clients:
        await client.close()
