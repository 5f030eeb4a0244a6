"""SFrame (RFC 9605): the RFC's test vectors, then the context's counter, replay and key rules.

tests/data/rfc9605-test-vectors.json is the JSON form of RFC 9605 Appendix C as published by
the SFrame working group (github.com/sframe-wg/sframe, test-vectors/test-vectors.json at
commit f6868b8, the text of the RFC), unmodified: sha256 b8d35efd41749567427cb9ae52d9a736...
Two of the AES-GCM vectors (Appendix C.3) are also written out below so that a broken JSON
file cannot silently turn the suite into a no-op.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from confero.protocol import sframe
from confero.protocol.sframe import CipherSuite, SFrameContext, SFrameError

VECTORS_PATH = Path(__file__).parent / "data" / "rfc9605-test-vectors.json"
VECTORS_SHA256 = "b8d35efd41749567427cb9ae52d9a7362904154978ff6a5fb20c0258a8ffdec1"
VECTORS: dict[str, list[dict[str, Any]]] = json.loads(VECTORS_PATH.read_text())

# RFC 9605 Appendix C.3, cipher suites 0x0004 and 0x0005 (copied from the RFC text).
RFC_GCM_VECTORS = [
    {
        "cipher_suite": 4,
        "kid": 0x123,
        "ctr": 0x4567,
        "base_key": "000102030405060708090a0b0c0d0e0f",
        "sframe_key": "d34f547f4ca4f9a7447006fe7fcbf768",
        "sframe_salt": "75234edefe07819026751816",
        "metadata": "4945544620534672616d65205747",
        "pt": "64726166742d696574662d736672616d652d656e63",
        "ct": "9901234567b7412c2513a1b66dbb48841bbaf17f598751176ad847681a69c6d0b091c070"
        "18ce4adb34eb",
    },
    {
        "cipher_suite": 5,
        "kid": 0x123,
        "ctr": 0x4567,
        "base_key": "000102030405060708090a0b0c0d0e0f",
        "sframe_key": "d3e27b0d4a5ae9e55df01a70e6d4d28d969b246e2936f4b7a5d9b494da6b9633",
        "sframe_salt": "84991c167b8cd23c93708ec7",
        "metadata": "4945544620534672616d65205747",
        "pt": "64726166742d696574662d736672616d652d656e63",
        "ct": "990123456794f509d36e9beacb0e261d99c7d1e972f1fed787d4049f17ca21353c1cc24d"
        "56ceabced279",
    },
]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_vector_file_is_the_published_one() -> None:
    assert hashlib.sha256(VECTORS_PATH.read_bytes()).hexdigest() == VECTORS_SHA256
    assert len(VECTORS["header"]) == 289
    assert {v["cipher_suite"] for v in VECTORS["sframe"]} == {1, 2, 3, 4, 5}
    assert len(VECTORS["aes_ctr_hmac"]) == 3


@pytest.mark.parametrize("vector", VECTORS["header"], ids=lambda v: f"{v['kid']:x}-{v['ctr']:x}")
def test_rfc_header_vectors(vector: dict[str, Any]) -> None:
    encoded = h(vector["encoded"])
    assert sframe.encode_header(vector["kid"], vector["ctr"]) == encoded
    kid, ctr, size = sframe.decode_header(encoded + b"payload")
    assert (kid, ctr, size) == (vector["kid"], vector["ctr"], len(encoded))


@pytest.mark.parametrize("vector", VECTORS["aes_ctr_hmac"], ids=lambda v: str(v["cipher_suite"]))
def test_rfc_aes_ctr_hmac_vectors(vector: dict[str, Any]) -> None:
    suite = CipherSuite(vector["cipher_suite"])
    key, nonce, aad = h(vector["key"]), h(vector["nonce"]), h(vector["aad"])
    pt, ct = h(vector["pt"]), h(vector["ct"])
    assert sframe.aead_encrypt(suite, key, nonce, aad, pt) == ct
    assert sframe.aead_decrypt(suite, key, nonce, aad, ct) == pt
    with pytest.raises(SFrameError):
        sframe.aead_decrypt(suite, key, nonce, aad + b"x", ct)


def _check_sframe_vector(vector: dict[str, Any]) -> None:
    suite = CipherSuite(vector["cipher_suite"])
    kid, ctr, base_key = vector["kid"], vector["ctr"], h(vector["base_key"])
    metadata, pt, ct = h(vector["metadata"]), h(vector["pt"]), h(vector["ct"])
    key, salt = sframe.derive_key_salt(suite, kid, base_key)
    assert key == h(vector["sframe_key"])
    assert salt == h(vector["sframe_salt"])
    if "sframe_secret" in vector:
        assert sframe.sframe_secret(suite, base_key) == h(vector["sframe_secret"])
    assert sframe.encrypt(suite, kid, ctr, base_key, metadata, pt) == ct
    assert sframe.decrypt(suite, base_key, metadata, ct) == pt
    # The stateful context reaches the same bytes when its counter gets to CTR.
    receiver = SFrameContext(suite)
    receiver.add_receive_key(kid, base_key)
    assert receiver.unprotect(ct, metadata) == pt
    with pytest.raises(SFrameError):  # the same frame twice is a replay
        receiver.unprotect(ct, metadata)


@pytest.mark.parametrize("vector", VECTORS["sframe"], ids=lambda v: str(v["cipher_suite"]))
def test_rfc_sframe_vectors(vector: dict[str, Any]) -> None:
    _check_sframe_vector(vector)


@pytest.mark.parametrize("vector", RFC_GCM_VECTORS, ids=lambda v: str(v["cipher_suite"]))
def test_rfc_gcm_vectors_written_out(vector: dict[str, Any]) -> None:
    _check_sframe_vector(vector)


def test_context_counter_reaches_the_vector() -> None:
    vector = RFC_GCM_VECTORS[0]
    sender = SFrameContext(CipherSuite.AES_128_GCM_SHA256_128)
    sender.add_send_key(vector["kid"], h(vector["base_key"]))
    for _ in range(vector["ctr"]):
        sender.protect(vector["kid"], b"")
    out = sender.protect(vector["kid"], h(vector["pt"]), h(vector["metadata"]))
    assert out == h(vector["ct"])


# --- beyond the vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(CipherSuite))
def test_round_trip_and_tamper(suite: CipherSuite) -> None:
    sender, receiver = SFrameContext(suite), SFrameContext(suite)
    sender.add_send_key(9, b"k" * 32)
    receiver.add_receive_key(9, b"k" * 32)
    frame = bytes(range(256)) * 5
    for _ in range(20):
        protected = sender.protect(9, frame, b"meta")
        assert frame not in protected
        assert receiver.unprotect(protected, b"meta") == frame
    protected = sender.protect(9, frame, b"meta")
    for i in (0, 1, 3, len(protected) // 2, len(protected) - 1):
        bad = bytearray(protected)
        bad[i] ^= 0x01
        with pytest.raises(SFrameError):
            receiver.unprotect(bytes(bad), b"meta")
    with pytest.raises(SFrameError):
        receiver.unprotect(protected, b"other meta")
    with pytest.raises(SFrameError):
        receiver.unprotect(protected[:-1], b"meta")
    assert receiver.unprotect(protected, b"meta") == frame  # failures did not burn the CTR


def test_counter_never_repeats_and_refuses_at_exhaustion() -> None:
    sender = SFrameContext(counter_limit=5)
    sender.add_send_key(1, b"s" * 16)
    headers = [sframe.decode_header(sender.protect(1, b"x"))[1] for _ in range(6)]
    assert headers == [0, 1, 2, 3, 4, 5]
    with pytest.raises(SFrameError, match="exhausted"):
        sender.protect(1, b"x")
    with pytest.raises(SFrameError, match="already used"):
        sender.add_send_key(1, b"s" * 16)  # would restart the counter
    sender.remove_send_key(1)
    with pytest.raises(SFrameError, match="already used"):
        sender.add_send_key(1, b"t" * 16)


def test_a_kid_is_for_sending_or_receiving() -> None:
    ctx = SFrameContext()
    ctx.add_send_key(1, b"a" * 16)
    with pytest.raises(SFrameError):
        ctx.add_receive_key(1, b"a" * 16)
    ctx.add_receive_key(2, b"b" * 16)
    with pytest.raises(SFrameError):
        ctx.add_send_key(2, b"b" * 16)


def test_replay_window() -> None:
    sender, receiver = SFrameContext(), SFrameContext(replay_window=64)
    sender.add_send_key(300, b"r" * 16)
    receiver.add_receive_key(300, b"r" * 16)
    frames = [sender.protect(300, bytes([i])) for i in range(200)]
    # Out of order within the window is fine, each frame once.
    for i in [5, 3, 4, 0, 1, 2, 100, 60, 99]:
        assert receiver.unprotect(frames[i]) == bytes([i])
    for i in [3, 100, 60]:
        with pytest.raises(SFrameError, match="replay"):
            receiver.unprotect(frames[i])
    with pytest.raises(SFrameError, match="too old"):
        receiver.unprotect(frames[10])  # 90 behind the highest (100), window is 64
    assert receiver.unprotect(frames[199]) == bytes([199])


def test_unknown_kid_and_bounded_receive_keys() -> None:
    receiver = SFrameContext(max_receive_keys=3)
    for kid in range(10, 15):
        receiver.add_receive_key(kid, bytes([kid]) * 16)
    assert receiver.receive_kids == [12, 13, 14]
    sender = SFrameContext()
    sender.add_send_key(10, bytes([10]) * 16)
    with pytest.raises(SFrameError, match="no receive key"):
        receiver.unprotect(sender.protect(10, b"frame"))


def test_set_receive_keys_keeps_replay_state_of_unchanged_keys() -> None:
    sender, receiver = SFrameContext(), SFrameContext()
    sender.add_send_key(20, b"q" * 16)
    receiver.set_receive_keys({20: b"q" * 16, 21: b"w" * 16})
    frame = sender.protect(20, b"once")
    assert receiver.unprotect(frame) == b"once"
    receiver.set_receive_keys({20: b"q" * 16})
    with pytest.raises(SFrameError, match="replay"):
        receiver.unprotect(frame)
    receiver.set_receive_keys({21: b"w" * 16})
    with pytest.raises(SFrameError, match="no receive key"):
        receiver.unprotect(frame)


def test_set_receive_keys_replaces_a_changed_key() -> None:
    sender, receiver = SFrameContext(), SFrameContext()
    sender.add_send_key(30, b"new key!" * 2)
    receiver.set_receive_keys({30: b"old key!" * 2})  # e.g. a ratchet guess
    frame = sender.protect(30, b"fresh")
    with pytest.raises(SFrameError):
        receiver.unprotect(frame)
    receiver.set_receive_keys({30: b"new key!" * 2})  # the explicit key arrived
    assert receiver.unprotect(frame) == b"fresh"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80", b"\x88\x01", b"\x08", b"\x80\x05\x00", b"\x08\x07", b"\xff" + b"\x00" * 7],
)
def test_malformed_headers_are_errors(data: bytes) -> None:
    with pytest.raises(SFrameError):
        sframe.decode_header(data)
    receiver = SFrameContext()
    with pytest.raises(SFrameError):
        receiver.unprotect(data)


def test_context_header_matches_encode_header() -> None:
    values = [0, 1, 7, 8, 255, 256, 65535, 65536, 2**32 - 1, 2**48 + 5, sframe.MAX_UINT64]
    for kid in values:
        sender, receiver = SFrameContext(), SFrameContext()
        sender.add_send_key(kid, b"h" * 16)
        receiver.add_receive_key(kid, b"h" * 16)
        state = sender._send[kid]
        for ctr in values:
            assert state.header(ctr) == sframe.encode_header(kid, ctr)
        assert receiver.unprotect(sender.protect(kid, b"x")) == b"x"


def test_header_extremes() -> None:
    top = sframe.MAX_UINT64
    assert sframe.decode_header(sframe.encode_header(top, top)) == (top, top, 17)
    with pytest.raises(SFrameError):
        sframe.encode_header(top + 1, 0)
    with pytest.raises(SFrameError):
        sframe.encode_header(0, -1)


def _vp8_frame(keyframe: bool, size: int) -> bytes:
    # Frame tag: P bit (bit 0) is 0 on keyframes; then start code and dimensions on keyframes.
    tag = bytes([0x10 if keyframe else 0x11, 0x02, 0x00])
    head = tag + (b"\x9d\x01\x2a" + b"\x80\x02\xe0\x01" if keyframe else b"")
    return head + bytes((i * 7) & 0xFF for i in range(size - len(head)))


@pytest.mark.parametrize(("keyframe", "clear"), [(True, 10), (False, 3)])
def test_vp8_partial_encryption(keyframe: bool, clear: int) -> None:
    sender, receiver = SFrameContext(), SFrameContext()
    sender.add_send_key(77, b"v" * 16)
    receiver.add_receive_key(77, b"v" * 16)
    frame = _vp8_frame(keyframe, 1200)
    protected = sframe.protect_vp8(sender, 77, frame)
    assert protected[:clear] == frame[:clear]  # the server still sees the frame tag
    assert bool(protected[0] & 0x01) is not keyframe
    assert frame[clear : clear + 32] not in protected
    assert sframe.unprotect_vp8(receiver, protected) == frame
    # The clear bytes are authenticated: flipping the size bits or the P bit fails.
    for index in (1, 0):
        bad = bytearray(sframe.protect_vp8(sender, 77, frame))
        bad[index] ^= 0x02 if index == 1 else 0x01
        with pytest.raises(SFrameError):
            sframe.unprotect_vp8(receiver, bytes(bad))


def test_vp8_too_short() -> None:
    sender = SFrameContext()
    sender.add_send_key(1, b"v" * 16)
    with pytest.raises(SFrameError):
        sframe.protect_vp8(sender, 1, b"\x10\x02\x00\x9d")  # a keyframe needs 10 bytes
    with pytest.raises(SFrameError):
        sframe.protect_vp8(sender, 1, b"")
    with pytest.raises(SFrameError):
        sframe.unprotect_vp8(sender, b"\x11\x02\x00")
