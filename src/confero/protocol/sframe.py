"""SFrame (RFC 9605): end-to-end encryption of whole media frames.

SFrame sits under the transport: a sender encrypts each encoded frame before packetizing it,
the server forwards the result without being able to read it, and SRTP still protects each
hop. Keys come from outside (see ``e2ee_keys``); this module only turns a ``base_key`` per KID
into AEAD keys, and frames into SFrame ciphertexts and back.

Every failure (bad header, unknown KID, failed authentication, replay, exhausted counter) is
an ``SFrameError`` so that callers have one thing to count and drop.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

#: Largest KID or CTR the header can carry (a 3-bit length field counts 1..8 bytes).
MAX_UINT64 = (1 << 64) - 1
#: Frames beyond this are refused: bounded work per call, far above any encoded media frame.
MAX_FRAME_SIZE = 4 * 1024 * 1024


class SFrameError(ValueError):
    """Any frame that cannot be protected or unprotected; the frame is to be dropped."""


class CipherSuite(IntEnum):
    """The IANA "SFrame Cipher Suites" registry entries defined by RFC 9605."""

    AES_128_CTR_HMAC_SHA256_80 = 0x0001
    AES_128_CTR_HMAC_SHA256_64 = 0x0002
    AES_128_CTR_HMAC_SHA256_32 = 0x0003
    AES_128_GCM_SHA256_128 = 0x0004
    AES_256_GCM_SHA512_128 = 0x0005


@dataclass(frozen=True, slots=True)
class SuiteParams:
    hash_name: str  # "sha256" or "sha512"
    nh: int  # hash output size
    nka: int  # AES key size inside the CTR+HMAC compound key (0 for GCM)
    nk: int  # AEAD key size
    nn: int  # nonce size
    nt: int  # tag size


SUITES: dict[CipherSuite, SuiteParams] = {
    CipherSuite.AES_128_CTR_HMAC_SHA256_80: SuiteParams("sha256", 32, 16, 48, 12, 10),
    CipherSuite.AES_128_CTR_HMAC_SHA256_64: SuiteParams("sha256", 32, 16, 48, 12, 8),
    CipherSuite.AES_128_CTR_HMAC_SHA256_32: SuiteParams("sha256", 32, 16, 48, 12, 4),
    CipherSuite.AES_128_GCM_SHA256_128: SuiteParams("sha256", 32, 0, 16, 12, 16),
    CipherSuite.AES_256_GCM_SHA512_128: SuiteParams("sha512", 64, 0, 32, 12, 16),
}

DEFAULT_SUITE = CipherSuite.AES_128_GCM_SHA256_128


# --- header ----------------------------------------------------------------------------------


def _uint_len(value: int) -> int:
    return max(1, (value.bit_length() + 7) // 8)


def encode_header(kid: int, ctr: int) -> bytes:
    """Config byte, then KID and CTR in the fewest big-endian bytes (values < 8 fit inline)."""
    if not 0 <= kid <= MAX_UINT64 or not 0 <= ctr <= MAX_UINT64:
        raise SFrameError("KID and CTR must be unsigned 64-bit integers")
    if kid < 8 and ctr < 8:  # the common audio/early-video case: one byte
        return bytes(((kid << 4) | ctr,))
    config = 0
    tail = b""
    if kid < 8:
        config |= kid << 4
    else:
        n = _uint_len(kid)
        config |= 0x80 | ((n - 1) << 4)
        tail += kid.to_bytes(n, "big")
    if ctr < 8:
        config |= ctr
    else:
        n = _uint_len(ctr)
        config |= 0x08 | (n - 1)
        tail += ctr.to_bytes(n, "big")
    return bytes((config,)) + tail


def decode_header(data: bytes) -> tuple[int, int, int]:
    """Return (kid, ctr, header length); a non-minimal encoding is refused as malformed."""
    if not data:
        raise SFrameError("empty SFrame ciphertext")
    config = data[0]
    offset = 1
    if config & 0x80:
        end = offset + ((config >> 4) & 0x07) + 1
        if len(data) < end:
            raise SFrameError("truncated SFrame KID")
        if data[offset] == 0 or (end == 2 and data[1] < 8):  # a shorter form existed
            raise SFrameError("non-minimal SFrame KID encoding")
        kid = int.from_bytes(data[offset:end], "big")
        offset = end
    else:
        kid = (config >> 4) & 0x07
    if config & 0x08:
        end = offset + (config & 0x07) + 1
        if len(data) < end:
            raise SFrameError("truncated SFrame CTR")
        if data[offset] == 0 or (end == offset + 1 and data[offset] < 8):
            raise SFrameError("non-minimal SFrame CTR encoding")
        ctr = int.from_bytes(data[offset:end], "big")
        offset = end
    else:
        ctr = config & 0x07
    return kid, ctr, offset


# --- key schedule and AEAD -------------------------------------------------------------------


def _hash(params: SuiteParams) -> hashes.HashAlgorithm:
    return hashes.SHA256() if params.hash_name == "sha256" else hashes.SHA512()


def derive_key_salt(suite: CipherSuite, kid: int, base_key: bytes) -> tuple[bytes, bytes]:
    """RFC 9605 section 4.4.2: HKDF-Extract with an empty salt, then two labelled expands."""
    params = SUITES[suite]
    if not 0 <= kid <= MAX_UINT64:
        raise SFrameError("KID must be an unsigned 64-bit integer")
    if not base_key:
        raise SFrameError("empty base_key")
    secret = sframe_secret(suite, base_key)
    suffix = kid.to_bytes(8, "big") + int(suite).to_bytes(2, "big")
    key = HKDFExpand(_hash(params), params.nk, b"SFrame 1.0 Secret key " + suffix).derive(secret)
    salt = HKDFExpand(_hash(params), params.nn, b"SFrame 1.0 Secret salt " + suffix).derive(secret)
    return key, salt


def sframe_secret(suite: CipherSuite, base_key: bytes) -> bytes:
    """The intermediate HKDF-Extract output, exposed for the RFC's test vectors."""
    return hmac.new(b"", base_key, SUITES[suite].hash_name).digest()  # HKDF-Extract, salt ""


class _Aead:
    """One derived key, ready to seal and open: built once per KID, not per frame."""

    __slots__ = ("_auth_key", "_enc_key", "_gcm", "params")

    def __init__(self, suite: CipherSuite, key: bytes) -> None:
        self.params = SUITES[suite]
        if len(key) != self.params.nk:
            raise SFrameError("wrong AEAD key size")
        if self.params.nka:
            self._gcm: AESGCM | None = None
            self._enc_key = key[: self.params.nka]
            self._auth_key = key[self.params.nka :]
        else:
            self._gcm = AESGCM(key)
            self._enc_key = b""
            self._auth_key = b""

    def _tag(self, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
        p = self.params
        lengths = len(aad).to_bytes(8, "big") + len(ct).to_bytes(8, "big") + p.nt.to_bytes(8, "big")
        mac = hmac.new(self._auth_key, lengths + nonce + aad + ct, p.hash_name).digest()
        return mac[: p.nt]

    def _ctr(self, nonce: bytes, data: bytes) -> bytes:
        cipher = Cipher(algorithms.AES(self._enc_key), modes.CTR(nonce + b"\x00\x00\x00\x00"))
        encryptor = cipher.encryptor()
        return encryptor.update(data) + encryptor.finalize()

    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        if self._gcm is not None:
            return self._gcm.encrypt(nonce, plaintext, aad)
        ct = self._ctr(nonce, plaintext)
        return ct + self._tag(nonce, aad, ct)

    def open(self, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        if len(ciphertext) < self.params.nt:
            raise SFrameError("SFrame ciphertext shorter than its tag")
        if self._gcm is not None:
            try:
                return self._gcm.decrypt(nonce, ciphertext, aad)
            except InvalidTag:
                raise SFrameError("SFrame authentication failed") from None
        inner, tag = ciphertext[: -self.params.nt], ciphertext[-self.params.nt :]
        if not hmac.compare_digest(tag, self._tag(nonce, aad, inner)):
            raise SFrameError("SFrame authentication failed")
        return self._ctr(nonce, inner)


def aead_encrypt(suite: CipherSuite, key: bytes, nonce: bytes, aad: bytes, pt: bytes) -> bytes:
    return _Aead(suite, key).seal(nonce, aad, pt)


def aead_decrypt(suite: CipherSuite, key: bytes, nonce: bytes, aad: bytes, ct: bytes) -> bytes:
    return _Aead(suite, key).open(nonce, aad, ct)


# --- context ---------------------------------------------------------------------------------


class _ReplayWindow:
    """SRTP-style sliding window (RFC 3711 3.3.2) over CTR: each CTR is accepted once."""

    __slots__ = ("bitmap", "highest", "mask", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.mask = (1 << size) - 1
        self.highest = -1
        self.bitmap = 0  # bit i set: highest - i already seen

    def check(self, ctr: int) -> None:
        if ctr > self.highest:
            return
        delta = self.highest - ctr
        if delta >= self.size:
            raise SFrameError("SFrame CTR too old (outside the replay window)")
        if self.bitmap >> delta & 1:
            raise SFrameError("SFrame replay")

    def accept(self, ctr: int) -> None:
        if ctr > self.highest:
            shift = ctr - self.highest
            self.bitmap = 1 if shift >= self.size else ((self.bitmap << shift) | 1) & self.mask
            self.highest = ctr
        else:
            self.bitmap |= 1 << (self.highest - ctr)


class _KeyState:
    __slots__ = ("aead", "base_key", "counter", "kid_bytes", "kid_config", "replay", "salt")

    def __init__(self, suite: CipherSuite, kid: int, base_key: bytes, window: int) -> None:
        key, salt = derive_key_salt(suite, kid, base_key)
        self.base_key = base_key
        self.aead = _Aead(suite, key)
        self.salt = int.from_bytes(salt, "big")
        self.counter = 0
        self.replay = _ReplayWindow(window)
        # The KID half of the header never changes for a key: encode it once.
        if kid < 8:
            self.kid_config, self.kid_bytes = kid << 4, b""
        else:
            n = _uint_len(kid)
            self.kid_config, self.kid_bytes = 0x80 | ((n - 1) << 4), kid.to_bytes(n, "big")

    def header(self, ctr: int) -> bytes:
        if ctr < 8:
            return bytes((self.kid_config | ctr,)) + self.kid_bytes
        n = (ctr.bit_length() + 7) >> 3
        return bytes((self.kid_config | 0x08 | (n - 1),)) + self.kid_bytes + ctr.to_bytes(n, "big")


class SFrameContext:
    """The keys of one participant: its own send keys and a bounded set of receive keys.

    A KID is either for sending or for receiving, never both (RFC 9605 4.4.1), and a send
    KID cannot be installed twice: that would restart its counter and reuse nonces.
    """

    def __init__(
        self,
        suite: CipherSuite = DEFAULT_SUITE,
        *,
        max_receive_keys: int = 1024,
        max_send_keys: int = 16,
        replay_window: int = 1024,
        counter_limit: int = MAX_UINT64,
    ) -> None:
        if suite not in SUITES:
            raise SFrameError(f"unknown SFrame cipher suite {suite}")
        self.suite = CipherSuite(suite)
        self._nn = SUITES[self.suite].nn
        self._max_receive = max_receive_keys
        self._max_send = max_send_keys
        self._window = replay_window
        self._counter_limit = min(counter_limit, MAX_UINT64)
        self._send: OrderedDict[int, _KeyState] = OrderedDict()
        self._receive: OrderedDict[int, _KeyState] = OrderedDict()
        self._retired_send: set[int] = set()

    # key management

    def add_send_key(self, kid: int, base_key: bytes) -> None:
        if kid in self._send or kid in self._retired_send:
            raise SFrameError(f"send KID {kid} already used: its counter cannot restart")
        if kid in self._receive:
            raise SFrameError(f"KID {kid} is a receive key")
        self._send[kid] = _KeyState(self.suite, kid, base_key, self._window)
        while len(self._send) > self._max_send:
            old, _ = self._send.popitem(last=False)
            self._retired_send.add(old)

    def remove_send_key(self, kid: int) -> None:
        if self._send.pop(kid, None) is not None:
            self._retired_send.add(kid)

    def add_receive_key(self, kid: int, base_key: bytes) -> None:
        """Install (or replace) a receive key; past the bound the oldest one is forgotten."""
        if kid in self._send or kid in self._retired_send:
            raise SFrameError(f"KID {kid} is a send key")
        self._receive.pop(kid, None)
        self._receive[kid] = _KeyState(self.suite, kid, base_key, self._window)
        while len(self._receive) > self._max_receive:
            self._receive.popitem(last=False)

    def remove_receive_key(self, kid: int) -> None:
        self._receive.pop(kid, None)

    def set_receive_keys(self, keys: dict[int, bytes]) -> None:
        """Make the receive set exactly ``keys``, keeping replay state of unchanged KIDs."""
        if len(keys) > self._max_receive:
            raise SFrameError("too many receive keys")
        fresh: OrderedDict[int, _KeyState] = OrderedDict()
        for kid, base_key in keys.items():
            old = self._receive.get(kid)
            if old is not None and hmac.compare_digest(old.base_key, base_key):
                fresh[kid] = old
            else:
                if kid in self._send or kid in self._retired_send:
                    raise SFrameError(f"KID {kid} is a send key")
                fresh[kid] = _KeyState(self.suite, kid, base_key, self._window)
        self._receive = fresh

    @property
    def receive_kids(self) -> list[int]:
        return list(self._receive)

    # frames

    def protect(self, kid: int, plaintext: bytes, metadata: bytes = b"") -> bytes:
        state = self._send.get(kid)
        if state is None:
            raise SFrameError(f"no send key for KID {kid}")
        if len(plaintext) > MAX_FRAME_SIZE:
            raise SFrameError("frame too large")
        ctr = state.counter
        if ctr > self._counter_limit:
            raise SFrameError(f"send KID {kid} exhausted its counter: rotate the key")
        state.counter = ctr + 1  # before sealing: a CTR is never handed out twice
        header = state.header(ctr)
        nonce = (state.salt ^ ctr).to_bytes(self._nn, "big")
        return header + state.aead.seal(nonce, header + metadata, plaintext)

    def unprotect(self, ciphertext: bytes, metadata: bytes = b"") -> bytes:
        if len(ciphertext) > MAX_FRAME_SIZE + 64:
            raise SFrameError("frame too large")
        kid, ctr, size = decode_header(ciphertext)
        state = self._receive.get(kid)
        if state is None:
            raise SFrameError(f"no receive key for KID {kid}")
        state.replay.check(ctr)
        nonce = (state.salt ^ ctr).to_bytes(self._nn, "big")
        header = ciphertext[:size]
        plaintext = state.aead.open(nonce, header + metadata, ciphertext[size:])
        state.replay.accept(ctr)  # only an authentic frame moves the window
        return plaintext


def encrypt(
    suite: CipherSuite, kid: int, ctr: int, base_key: bytes, metadata: bytes, plaintext: bytes
) -> bytes:
    """RFC 9605's stateless ``encrypt`` with an explicit CTR: for test vectors and interop.

    Media goes through ``SFrameContext.protect``, which owns the counter.
    """
    key, salt = derive_key_salt(suite, kid, base_key)
    params = SUITES[suite]
    header = encode_header(kid, ctr)
    nonce = (int.from_bytes(salt, "big") ^ ctr).to_bytes(params.nn, "big")
    return header + _Aead(suite, key).seal(nonce, header + metadata, plaintext)


def decrypt(suite: CipherSuite, base_key: bytes, metadata: bytes, ciphertext: bytes) -> bytes:
    kid, ctr, size = decode_header(ciphertext)
    key, salt = derive_key_salt(suite, kid, base_key)
    params = SUITES[suite]
    nonce = (int.from_bytes(salt, "big") ^ ctr).to_bytes(params.nn, "big")
    header = ciphertext[:size]
    return _Aead(suite, key).open(nonce, header + metadata, ciphertext[size:])


def peek_kid(ciphertext: bytes) -> int:
    """The KID of an SFrame ciphertext, unauthenticated: for routing to a context, not trust."""
    return decode_header(ciphertext)[0]


# --- partial encryption of VP8 ---------------------------------------------------------------

#: RFC 6386 9.1: a keyframe starts with a 3-byte frame tag, a 3-byte start code and the
#: 4-byte dimensions; a delta frame with the 3-byte frame tag only.
VP8_KEYFRAME_CLEAR = 10
VP8_DELTA_CLEAR = 3


def vp8_clear_size(frame: bytes) -> int:
    """How many leading bytes stay readable: the server tells keyframes (P bit) and sizes."""
    if not frame:
        raise SFrameError("empty VP8 frame")
    return VP8_DELTA_CLEAR if frame[0] & 0x01 else VP8_KEYFRAME_CLEAR


def protect_vp8(ctx: SFrameContext, kid: int, frame: bytes, metadata: bytes = b"") -> bytes:
    """Encrypt a VP8 frame but its frame tag (and keyframe header), which is authenticated."""
    clear = vp8_clear_size(frame)
    if len(frame) < clear:
        raise SFrameError("VP8 frame shorter than its header")
    head = frame[:clear]
    return head + ctx.protect(kid, frame[clear:], head + metadata)


def unprotect_vp8(ctx: SFrameContext, data: bytes, metadata: bytes = b"") -> bytes:
    clear = vp8_clear_size(data)
    if len(data) <= clear:
        raise SFrameError("protected VP8 frame too short")
    head = data[:clear]
    return head + ctx.unprotect(data[clear:], head + metadata)
