"""An in-memory network for the sans-I/O media cores, driven by explicit time.

Client :class:`~confero.client.endpoint.MediaEndpoint`s and the server's
:class:`~confero.server.media_router.MediaRouter` exchange datagrams through links that
can drop, duplicate, delay and reorder chosen datagrams (a predicate decides), in the
spirit of aioquic's connection tests. Nothing here touches a socket or the real clock.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from confero.client.endpoint import EndpointConfig, Event, KeyframeNeeded, MediaEndpoint
from confero.protocol.rtp import RtpPacket, is_rtcp
from confero.server.media_router import MediaRouter

Address = tuple[str, int]
SERVER: Address = ("192.0.2.1", 8751)

#: A fake VP8 keyframe / delta frame: the frame tag and (for keyframes) the start code and
#: size are real, the rest is filler; the router and the endpoint never decode.
def fake_frame(keyframe: bool, size: int = 3000, width: int = 320, height: int = 240,
               fill: int = 0x55) -> bytes:
    if keyframe:
        header = (bytes([0x10, 0x02, 0x00]) + b"\x9d\x01\x2a"
                  + width.to_bytes(2, "little") + height.to_bytes(2, "little"))
    else:
        header = bytes([0x11, 0x02, 0x00])
    return header + bytes([fill]) * max(0, size - len(header))


@dataclass
class Datagram:
    data: bytes
    source: Address
    destination: Address
    sent_at: float

    @property
    def is_rtcp(self) -> bool:
        return is_rtcp(self.data)


#: What a link does with one datagram: a list of extra delays, one per copy delivered
#: ([] drops it, [0.0] passes it, [0.0, 0.0] duplicates it, [0.03] delays it).
Fate = Callable[[Datagram], list[float]]


def passes(_: Datagram) -> list[float]:
    return [0.0]


@dataclass
class Client:
    name: str
    address: Address
    endpoint: MediaEndpoint
    uplink: Fate = passes  # client -> server
    downlink: Fate = passes  # server -> client
    events: list[Event] = field(default_factory=list)
    keyframe_wanted: bool = True
    frames_sent: int = 0

    def send_frame(self, now: float, size: int = 3000) -> bool:
        keyframe, self.keyframe_wanted = self.keyframe_wanted, False
        self.endpoint.send_video_frame(fake_frame(keyframe, size), keyframe=keyframe,
                                       capture_us=int(now * 1e6), captured_at=now)
        self.frames_sent += 1
        return keyframe


class MemoryNetwork:
    """The server's router and any number of client endpoints, on one fake clock."""

    def __init__(self, latency: float = 0.01, seed: int = 1) -> None:
        self.now = 0.0
        self.latency = latency
        self.router = MediaRouter(SERVER[1])
        self.clients: dict[Address, Client] = {}
        self.random = random.Random(seed)
        self._queue: list[tuple[float, int, Datagram]] = []
        self._order = itertools.count()
        self._next_tick = 0.0
        self.delivered: list[Datagram] = []

    # ------------------------------------------------------------------ set-up

    def join(self, name: str, meeting: str = "m1", *, e2ee: bool = False,
             **kwargs: object) -> Client:
        self.router.reserve(name)
        grant = self.router.admit(name, meeting, e2ee=e2ee)
        address = (f"10.0.0.{len(self.clients) + 2}", 40000 + len(self.clients))
        endpoint = MediaEndpoint(EndpointConfig.from_grant(grant), self.now, **kwargs)  # type: ignore[arg-type]
        client = Client(name, address, endpoint)
        self.clients[address] = client
        self._collect(client)
        return client

    # ------------------------------------------------------------------ running

    def run(self, until: float, *, step: float = 0.001,
            each: Callable[[float], None] | None = None) -> None:
        """Advance the clock to ``until`` in ``step``s: deliver what is due, fire timers,
        run the 20 ms mixing clock, and call ``each(now)`` (e.g. to send frames)."""
        while self.now < until - 1e-9:
            self.now = round(self.now + step, 9)
            if each is not None:
                each(self.now)
            self._deliver_due()
            for client in self.clients.values():
                if client.endpoint.get_timer() <= self.now:
                    client.endpoint.handle_timer(self.now)
                self._collect(client)
            if self.now >= self._next_tick:
                self._next_tick += 0.02
                for data, destination in self.router.tick(self.now):
                    self._send(Datagram(data, SERVER, destination, self.now))

    def _collect(self, client: Client) -> None:
        for data in client.endpoint.datagrams_to_send():
            self._send(Datagram(data, client.address, SERVER, self.now))
        while (event := client.endpoint.next_event()) is not None:
            if isinstance(event, KeyframeNeeded):
                client.keyframe_wanted = True
            client.events.append(event)

    def _send(self, datagram: Datagram) -> None:
        if datagram.destination == SERVER:
            fate = self.clients[datagram.source].uplink
        else:
            client = self.clients.get(datagram.destination)
            if client is None:
                return
            fate = client.downlink
        for extra in fate(datagram):
            at = self.now + self.latency + extra
            heapq.heappush(self._queue, (at, next(self._order), datagram))

    def _deliver_due(self) -> None:
        while self._queue and self._queue[0][0] <= self.now + 1e-9:
            _, _, datagram = heapq.heappop(self._queue)
            self.delivered.append(datagram)
            if datagram.destination == SERVER:
                for data, destination in self.router.handle_datagram(
                    datagram.data, datagram.source, self.now
                ):
                    self._send(Datagram(data, SERVER, destination, self.now))
            else:
                client = self.clients[datagram.destination]
                client.endpoint.receive_datagram(datagram.data, self.now)
                self._collect(client)


def rtp_of(datagram: Datagram, endpoint_or_router_key: object = None) -> RtpPacket | None:
    """The clear RTP header fields of a datagram (SRTP leaves the header readable)."""
    if datagram.is_rtcp:
        return None
    data = datagram.data[:-10]  # the auth tag; the payload stays encrypted (unused here)
    try:
        return RtpPacket.parse(data)
    except ValueError:
        return None
