"""wss/https with a self-signed certificate: trusted when given, refused clearly when not."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from confero.client import Client, ConnectionFailed
from tests.conftest import ServerProcess


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "confero test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_server_is_reachable_with_its_certificate_and_refused_without(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    cert, key = self_signed(tmp_path)
    server = server_factory("--tls-cert", str(cert), "--tls-key", str(key))
    assert server.url.startswith("wss://") and server.http.startswith("https://")

    async with Client(server.url, "alice", cafile=str(cert)) as alice:
        created = await alice.create_meeting("secure")
        assert created.meeting.title == "secure"

    untrusting = Client(server.url, "mallory")
    with pytest.raises(ConnectionFailed, match="certificate is not trusted"):
        await untrusting.connect()

    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as http, http.get(
        server.http + "healthz", ssl=context
    ) as response:
        assert (await response.json())["status"] == "ok"


async def test_plain_ws_to_a_tls_server_fails_with_a_reason(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    cert, key = self_signed(tmp_path)
    server = server_factory("--tls-cert", str(cert), "--tls-key", str(key))
    client = Client(server.url.replace("wss://", "ws://"), "confused", reconnect=False)
    with pytest.raises(ConnectionFailed, match=r"cannot connect to ws://127\.0\.0\.1"):
        await client.connect()
