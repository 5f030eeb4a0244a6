"""``client/p2p.py``: which candidate pairs are worth checking through a TURN relay."""

from __future__ import annotations

import asyncio

from aioice import Candidate
from aioice.ice import StunProtocol

from confero.client.p2p import _IceConnection, is_unrouted, relay_can_reach


def _candidate(kind: str, host: str, port: int) -> Candidate:
    return Candidate(foundation=f"{kind}{port}", component=1, transport="udp",
                     priority=1, host=host, port=port, type=kind)


def test_private_addresses_are_not_reachable_from_a_public_relay() -> None:
    assert is_unrouted("192.168.1.2") and is_unrouted("10.1.2.3")
    assert is_unrouted("172.20.0.1") and is_unrouted("100.64.0.9")
    assert is_unrouted("169.254.3.4") and is_unrouted("fd00::1")
    assert not is_unrouted("203.0.113.2") and not is_unrouted("172.32.0.1")
    assert not is_unrouted("abcd.local")  # a name is not judged (aioice keeps mDNS off relays)
    assert not relay_can_reach("203.0.113.1", "192.168.1.2")
    assert relay_can_reach("203.0.113.1", "203.0.114.2")
    # a TURN server inside a private network may share it with the peer
    assert relay_can_reach("10.0.0.5", "10.0.0.7")
    assert relay_can_reach(None, "192.168.1.2")


def test_relay_is_not_paired_with_the_peers_private_host_candidates() -> None:
    async def scenario() -> list[tuple[str, str]]:
        connection = _IceConnection(turn_host="203.0.113.1", ice_controlling=True)
        for kind, host, port in (("host", "192.168.2.2", 4000),
                                 ("relay", "203.0.113.1", 50001)):
            protocol = StunProtocol(connection)
            protocol.local_candidate = _candidate(kind, host, port)
            connection._protocols.append(protocol)
        connection.remote_username, connection.remote_password = "u", "p" * 22
        await connection.add_remote_candidate(_candidate("host", "192.168.1.2", 5000))
        await connection.add_remote_candidate(_candidate("srflx", "203.0.113.2", 5000))
        return sorted((pair.local_candidate.host, pair.remote_candidate.host)
                      for pair in connection._check_list)

    assert asyncio.run(scenario()) == [
        ("192.168.2.2", "192.168.1.2"),  # host -> host: worth it on a shared LAN
        ("192.168.2.2", "203.0.113.2"),
        ("203.0.113.1", "203.0.113.2"),  # relay -> the peer's public address
    ]
