"""The direct path to the other person: ICE (RFC 8445) with aioice, as an asyncio shell.

One :class:`PeerLink` per P2P session the server starts (``p2p_start``). It gathers host
and server-reflexive candidates (the server answers STUN on its media port), and relayed
ones when the server handed out TURN credentials, sends its ICE credentials, its
candidates and a fresh SRTP master key of its own through the server (``p2p_signal``),
takes the peer's, runs the connectivity checks and then carries SRTP datagrams both ways.
It reports ``connected``, ``failed`` or ``consent_lost``.

Liveness: aioice runs RFC 7675 consent checks (every ~5 s; it gives up after 6 misses).
That is slow to notice a peer that went away, so the link also watches the direct path
itself: a peer that sends media or RTCP at least every second and is silent for
``silence_timeout`` seconds counts as consent lost (``poll_liveness``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aioice import Candidate, Connection, stun

from confero.protocol import signaling as sig
from confero.protocol.srtp import decode_key, encode_key, new_master_key

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 8.0
#: STUN retransmission timeout (RFC 8489 RTO) for this process's ICE transactions. aioice
#: uses 500 ms; behind NATs the first connectivity check of each side is dropped by design
#: (the other side's pinhole is not open yet), so the RTO is the join-to-P2P time. 150 ms
#: keeps the 6 retransmissions (19 s in all) and brings P2P under a second. A module
#: global of aioice's, read per transaction: set when this module is imported.
CHECK_RTO = 0.15
stun.RETRY_RTO = CHECK_RTO


def parse_turn_url(url: str) -> tuple[str, int] | None:
    """``turn:host[:port]`` (RFC 7065, UDP only here) -> (host, port); None if unusable."""
    scheme, _, rest = url.partition(":")
    if scheme != "turn" or not rest:
        return None
    rest = rest.split("?", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host:
        return rest, 3478
    try:
        return host, int(port)
    except ValueError:
        return None


#: Addresses no TURN server on the internet can send to: RFC 1918, shared address space
#: (carrier-grade NAT), link-local, and their IPv6 counterparts (ULA, link-local).
UNROUTED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "fc00::/7", "fe80::/10",
))


def is_unrouted(host: str) -> bool:
    """True for a literal address in :data:`UNROUTED_NETWORKS` (a name is not judged)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in UNROUTED_NETWORKS)


def relay_can_reach(turn_host: str | None, remote_host: str) -> bool:
    """Whether a relayed candidate on ``turn_host`` is worth checking against
    ``remote_host``: a private address only when the TURN server is in a private network
    itself (and so may share it)."""
    return turn_host is None or is_unrouted(turn_host) or not is_unrouted(remote_host)


class _IceConnection(Connection):
    """aioice's ``Connection`` without the pairs from our relayed candidate to the peer's
    private host addresses.

    Why: they can never work through a TURN server on the internet, and they cost the
    whole allocation. coturn (4.6) closes an allocation when a send from its relay socket
    fails, and a TURN host without a route to such an address (or whose firewall rejects
    it) fails that send at once. Our next request to coturn then lands on a fresh session:
    438 Wrong nonce, 400 Bad Request (no allocation), every relay check fails and ICE
    times out. Found with coturn in a namespace test (tests/test_p2p.py). Filtering happens
    where aioice forms pairs (RFC 8445 6.1.2.2), right after it, so no check is started.
    """

    def __init__(self, *, turn_host: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._turn_host = turn_host

    def _pair_remote_candidate(self, remote_candidate: Candidate) -> None:
        super()._pair_remote_candidate(remote_candidate)
        if relay_can_reach(self._turn_host, remote_candidate.host):
            return
        self._check_list[:] = [
            pair for pair in self._check_list
            if pair.remote_candidate is not remote_candidate
            or pair.local_candidate.type != "relay"
        ]


class PeerLink:
    def __init__(
        self,
        session: int,
        controlling: bool,
        *,
        stun_server: tuple[str, int] | None,
        turn: tuple[str, str, str] | None = None,
        send_signal: Callable[..., Awaitable[None]],
        on_datagram: Callable[[bytes], None],
        on_state: Callable[[PeerLink, str], None],
    ) -> None:
        self.session = session
        self.controlling = controlling
        #: the key that protects what WE send on the direct path (fresh per session)
        self.tx_key = new_master_key()
        self.rx_key: bytes | None = None
        self.state = "new"  # new -> connecting -> connected | failed | closed
        self._send_signal = send_signal
        self._on_datagram = on_datagram
        self._on_state = on_state
        turn_server = parse_turn_url(turn[0]) if turn is not None else None
        self._ice = _IceConnection(
            turn_host=turn_server[0] if turn_server else None,
            ice_controlling=controlling, stun_server=stun_server, use_ipv6=False,
            turn_server=turn_server,
            turn_username=turn[1] if turn is not None and turn_server else None,
            turn_password=turn[2] if turn is not None and turn_server else None,
        )
        self._remote_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.started_at = asyncio.get_running_loop().time()
        self.connected_at: float | None = None
        self.sent = 0
        self.send_errors = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self.state = "closed"
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._ice.close()

    # ------------------------------------------------------------------ signaling

    def remote_signal(self, event: sig.P2pSignalEvent) -> None:
        """The peer's credentials, candidates and key (trickled; any order)."""
        if event.session != self.session or self.state == "closed":
            return
        if event.ufrag and event.pwd:
            self._ice.remote_username = event.ufrag
            self._ice.remote_password = event.pwd
            self._remote_ready.set()
        if event.key:
            with contextlib.suppress(ValueError):
                self.rx_key = decode_key(event.key)
        for line in event.candidates:
            try:
                candidate = Candidate.from_sdp(line)
            except (ValueError, IndexError):
                continue  # one bad candidate costs only itself
            self._spawn(self._ice.add_remote_candidate(candidate))
        if event.end_of_candidates:
            self._spawn(self._ice.add_remote_candidate(None))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # ------------------------------------------------------------------ the path

    async def _run(self) -> None:
        self.state = "connecting"
        try:
            await self._send_signal(self.session, ufrag=self._ice.local_username,
                                    pwd=self._ice.local_password,
                                    key=encode_key(self.tx_key))
            await self._ice.gather_candidates()
            await self._send_signal(
                self.session,
                candidates=[c.to_sdp() for c in self._ice.local_candidates][:16],
                end_of_candidates=True,
            )
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._remote_ready.wait()
                await self._ice.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ICE failed, timed out, or signaling went away
            log.info("p2p session %d: ICE failed: %r", self.session, exc)
            self._set_state("failed")
            return
        self.connected_at = asyncio.get_running_loop().time()
        self._set_state("connected")
        try:
            while True:
                data, _component = await self._ice.recvfrom()
                self._on_datagram(data)
        except asyncio.CancelledError:
            raise
        except ConnectionError:
            if self.state == "connected":
                self._set_state("consent_lost")

    def _set_state(self, state: str) -> None:
        if self.state == "closed":
            return
        self.state = state
        self._on_state(self, state)

    def send(self, data: bytes) -> None:
        """Send one datagram on the nominated pair (no-op until connected)."""
        if self.state != "connected":
            return
        # aioice's sendto() is a coroutine around transport.sendto; a task per packet
        # would cost more than the packet, so use the nominated pair's transport directly
        pair = self._ice._nominated.get(1)
        transport = getattr(getattr(pair, "protocol", None), "transport", None)
        if pair is None or transport is None:
            self.send_errors += 1
            return
        transport.sendto(data, pair.remote_addr)
        self.sent += 1

    @property
    def selected(self) -> str:
        """The nominated pair's candidate types, e.g. ``srflx->srflx`` or ``relay->host``."""
        pair = self._ice._nominated.get(1)
        if pair is None:
            return ""
        local = getattr(getattr(pair, "local_candidate", None), "type", "?")
        remote = getattr(getattr(pair, "remote_candidate", None), "type", "?")
        return f"{local}->{remote}"

    def poll_liveness(self, heard_at: float | None, now: float, silence_timeout: float
                      ) -> None:
        """Declare consent lost when the connected peer was silent too long."""
        if self.state != "connected" or self.connected_at is None:
            return
        last = max(heard_at or self.connected_at, self.connected_at)
        if now - last > silence_timeout:
            self._set_state("consent_lost")
