"""End-to-end key management for SFrame, sans-I/O: the server only relays opaque blobs.

Each participant makes a fresh X25519 identity per meeting join. For every other participant
it runs SPAKE2 (symmetric mode) on the E2EE passphrase, which never leaves the client, and
mixes the PAKE key with the X25519 shared secret into a pairwise key bound to a transcript of
both identities and the meeting. Its own random sender key (the SFrame ``base_key``) then
travels to each peer wrapped with AES-GCM under the pairwise key.

Rotation: when someone leaves, every remaining sender makes a fresh random key (the departed
cannot derive it) and switches to it once every peer acknowledged it, or after
``ACTIVATION_TIMEOUT``. When someone joins, every sender ratchets its key one HKDF step (the
newcomer, given only the new key, cannot go back) and the others follow the ratchet on their
own, without messages. A KID is ``sender tag << 16 | epoch``, the tag being derived from the
sender's identity key.

A peer is "verified" once a key blob from it decrypted under the pairwise key: this proves it
knows the passphrase and saw the same identity keys as we did. A wrong passphrase or a relay
that swapped identity keys makes that fail ("cannot verify"). The safety code, a digest of
both identity keys, lets people check the same thing by reading it aloud, which also covers a
relay colluding with someone who knows the passphrase.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from spake2 import SPAKE2_Symmetric  # type: ignore[import-untyped]

BLOB_VERSION = 1
MSG_HELLO = 1
MSG_KEY = 2
MSG_ACK = 3
#: No valid blob is longer; anything longer is refused before parsing.
MAX_BLOB_SIZE = 256
MAX_PEERS = 256
MAX_PID_BYTES = 128
MAX_MEETING_ID_BYTES = 256
MAX_EPOCH = 0xFFFF
KEY_SIZE = 32
#: Epochs past the newest known one a receiver derives ahead: covers senders that processed
#: up to this many joins before we did.
RATCHET_LOOKAHEAD = 2
#: After a leave, the fresh send key is used once all peers acknowledged it or after this.
ACTIVATION_TIMEOUT = 0.5
#: Superseded receive keys keep decrypting frames still in flight for this long.
RETIRED_KEY_GRACE = 2.0
#: At most this many superseded key sets are kept, even if ``tick`` is not called.
MAX_RETIRED = 4 * MAX_PEERS
#: Iterations of the safety code's hash: slows a relay searching for colliding codes.
SAFETY_CODE_ITERATIONS = 1024

_SPAKE_MSG_SIZE = 33
_HELLO_SIZE = 2 + 32 + _SPAKE_MSG_SIZE
_SEQ_SIZE = 8
_KEY_BODY = 8 + KEY_SIZE
_ACK_BODY = 8
_TAG = 16


class E2eeError(ValueError):
    """A blob or argument that cannot be accepted; the reason is in the message."""


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerVerified:
    """The peer proved it knows the passphrase and saw our identity key (and we saw its)."""

    pid: str
    safety_code: str


@dataclass(frozen=True, slots=True)
class PeerUnverified:
    """Cannot verify: wrong passphrase, or the relay tampered with the key exchange."""

    pid: str
    reason: str


@dataclass(frozen=True, slots=True)
class SendKeyChanged:
    """``send_key()`` changed: install it in the SFrame context before the next frame."""

    kid: int


@dataclass(frozen=True, slots=True)
class ReceiveKeysChanged:
    """``receive_keys()`` changed: hand the new set to the SFrame context."""


@dataclass(frozen=True, slots=True)
class BlobRejected:
    pid: str
    reason: str


Event = PeerVerified | PeerUnverified | SendKeyChanged | ReceiveKeysChanged | BlobRejected


# --- primitives ------------------------------------------------------------------------------


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def make_kid(tag: int, epoch: int) -> int:
    return (tag << 16) | epoch


def kid_epoch(kid: int) -> int:
    return kid & 0xFFFF


def sender_tag(identity_public: bytes) -> int:
    """32 bits naming a sender in its KIDs, tied to its identity key for this join."""
    digest = hashlib.sha256(b"confero e2ee kid v1" + identity_public).digest()
    return int.from_bytes(digest[:4], "big")


def ratchet(key: bytes) -> bytes:
    """One forward step: the next epoch's key tells nothing about this one."""
    return HKDFExpand(hashes.SHA256(), KEY_SIZE, b"confero e2ee ratchet v1").derive(key)


def safety_code(meeting_id: str, public_a: bytes, public_b: bytes) -> str:
    """Six groups of five digits from both identity keys, the same on both sides."""
    low, high = sorted((public_a, public_b))
    digest = hashlib.sha512(b"confero safety code v1" + _lp(meeting_id.encode())).digest()
    for _ in range(SAFETY_CODE_ITERATIONS):
        digest = hashlib.sha512(digest + low + high).digest()
    groups = [int.from_bytes(digest[i * 5 : i * 5 + 5], "big") % 100000 for i in range(6)]
    return " ".join(f"{group:05d}" for group in groups)


def _normalize_passphrase(passphrase: str) -> bytes:
    return unicodedata.normalize("NFKC", passphrase).encode("utf-8")


# --- per-peer state --------------------------------------------------------------------------


class _Peer:
    """What we know of one other participant: the pairing, and its sender keys."""

    def __init__(self, pid: str, spake: SPAKE2_Symmetric, spake_msg: bytes) -> None:
        self.pid = pid
        self.spake = spake
        self.spake_msg = spake_msg
        self.public: bytes | None = None
        self.tag = -1
        self.code: str | None = None
        self.wrap_out: AESGCM | None = None
        self.wrap_in: AESGCM | None = None
        self.seq_out = 0
        self.seq_in = -1
        self.verified = False
        self.failed = False
        # Its sender keys: the newest explicit or derived base, and joins seen since.
        self.base_epoch = -1
        self.base_key = b""
        self.last_explicit_epoch = -1
        self.last_explicit_key = b""
        self.ahead = 0
        self.keys: dict[int, bytes] = {}

    def window(self) -> dict[int, bytes]:
        if self.base_epoch < 0:
            return {}
        out = {}
        key = self.base_key
        last = min(self.base_epoch + self.ahead + RATCHET_LOOKAHEAD, MAX_EPOCH)
        for epoch in range(self.base_epoch, last + 1):
            out[make_kid(self.tag, epoch)] = key
            key = ratchet(key)
        return out


@dataclass(frozen=True, slots=True)
class _Retired:
    expires: float
    pid: str
    keys: dict[int, bytes]


class E2eeSession:
    """One participant's end of the key exchange in one meeting join.

    Inputs: membership events, blobs relayed from peers, and the passage of time (``tick``).
    Outputs: blobs for peers (``outgoing``), the send key and receive keys for SFrame, and
    events. Nothing here touches the network or the clock.
    """

    def __init__(
        self,
        me: str,
        meeting_id: str,
        passphrase: str,
        *,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not passphrase:
            raise E2eeError("an E2EE meeting needs a passphrase")
        if not me or len(me.encode()) > MAX_PID_BYTES:
            raise E2eeError("participant id empty or too long")
        if not meeting_id or len(meeting_id.encode()) > MAX_MEETING_ID_BYTES:
            raise E2eeError("meeting id empty or too long")
        self.me = me
        self.meeting_id = meeting_id
        self._password = _normalize_passphrase(passphrase)
        self._entropy = entropy
        self._identity = X25519PrivateKey.from_private_bytes(entropy(32))
        self.public_key = self._identity.public_key().public_bytes_raw()
        self.tag = sender_tag(self.public_key)
        self._peers: dict[str, _Peer] = {}
        self._early_hellos: dict[str, bytes] = {}
        self._out: list[tuple[str, bytes]] = []
        self._epoch = 0
        self._key = entropy(KEY_SIZE)
        self._active: tuple[int, bytes] = (make_kid(self.tag, 0), self._key)
        self._pending: set[str] = set()
        self._pending_since = 0.0
        self._pending_epoch = 0
        self._retired: list[_Retired] = []
        self.rejected = 0  # blobs refused, for metrics

    # --- queries -----------------------------------------------------------------------------

    def send_key(self) -> tuple[int, bytes]:
        return self._active

    def receive_keys(self) -> dict[int, bytes]:
        current: dict[int, bytes] = {}
        for peer in self._peers.values():
            current.update(peer.keys)
        merged: dict[int, bytes] = {}
        for retired in self._retired:
            merged.update(retired.keys)
        merged.update(current)  # a current key wins over a retired one with the same KID
        return merged

    def verified(self, pid: str) -> bool:
        peer = self._peers.get(pid)
        return peer is not None and peer.verified

    def safety_code(self, pid: str) -> str | None:
        peer = self._peers.get(pid)
        return None if peer is None else peer.code

    def sender_of(self, kid: int) -> str | None:
        """Which peer a KID belongs to (for "this tile is verified"); None if not a peer's."""
        tag = kid >> 16
        for peer in self._peers.values():
            if peer.tag == tag and peer.public is not None:
                return peer.pid
        return None

    def peers(self) -> list[str]:
        return list(self._peers)

    def outgoing(self) -> list[tuple[str, bytes]]:
        out, self._out = self._out, []
        return out

    # --- membership --------------------------------------------------------------------------

    def on_participant_joined(self, pid: str, now: float, *, initial: bool = False) -> list[Event]:
        """``initial``: the peer was already in the meeting when we joined (our roster).

        A real join ratchets every sender key, ours and our model of the others', so that
        the newcomer cannot read what was said before it came.
        """
        if pid == self.me or pid in self._peers:
            return []
        if len(pid.encode()) > MAX_PID_BYTES or not pid:
            raise E2eeError("participant id empty or too long")
        if len(self._peers) >= MAX_PEERS:
            raise E2eeError("too many participants for E2EE")
        events: list[Event] = []
        if not initial:
            events += self._ratchet_all(now)
        spake = SPAKE2_Symmetric(
            self._password, idSymmetric=self._spake_id(pid), entropy_f=self._entropy
        )
        peer = _Peer(pid, spake, spake.start())
        self._peers[pid] = peer
        self._send(pid, bytes((BLOB_VERSION, MSG_HELLO)) + self.public_key + peer.spake_msg)
        early = self._early_hellos.pop(pid, None)
        if early is not None:
            events += self.handle_blob(pid, early, now)
        return events

    def on_participant_left(self, pid: str, now: float) -> list[Event]:
        """The departed knew our key: make a fresh one for those who stay."""
        self._early_hellos.pop(pid, None)
        peer = self._peers.pop(pid, None)
        if peer is None:
            return []
        self._pending.discard(pid)
        self._retired = [r for r in self._retired if r.pid != pid]
        events: list[Event] = [ReceiveKeysChanged()] if peer.keys else []
        self._advance_epoch(self._entropy(KEY_SIZE))
        recipients = [p for p in self._peers.values() if p.wrap_out is not None and not p.failed]
        for other in recipients:
            self._send_key_to(other)
        if not self._pending:
            self._pending_since = now
        self._pending = {p.pid for p in recipients}
        self._pending_epoch = self._epoch
        events += self._maybe_activate(now)
        return events

    def tick(self, now: float) -> list[Event]:
        """Time-driven work: activating a rotated key that some peer never acknowledged (and
        sending it to that peer once more), dropping superseded receive keys. Call it a few
        times a second."""
        events: list[Event] = []
        if self._pending and now - self._pending_since >= ACTIVATION_TIMEOUT:
            for pid in self._pending:  # once more, in case the relay lost or damaged it
                self._send_key_to(self._peers[pid])
            self._pending.clear()
            events += self._maybe_activate(now)
        before = len(self._retired)
        self._retired = [r for r in self._retired if r.expires > now]
        if len(self._retired) != before:
            events.append(ReceiveKeysChanged())
        return events

    # --- blobs -------------------------------------------------------------------------------

    def handle_blob(self, from_pid: str, blob: bytes, now: float) -> list[Event]:
        """Never raises on bad input: a refused blob becomes a ``BlobRejected`` event."""
        try:
            return self._handle(from_pid, blob, now)
        except E2eeError as exc:
            self.rejected += 1
            return [BlobRejected(from_pid, str(exc))]

    def _handle(self, from_pid: str, blob: bytes, now: float) -> list[Event]:
        if len(blob) > MAX_BLOB_SIZE:
            raise E2eeError(f"blob of {len(blob)} bytes is over the {MAX_BLOB_SIZE}-byte limit")
        if len(blob) < 2:
            raise E2eeError("blob too short")
        if blob[0] != BLOB_VERSION:
            raise E2eeError(f"unsupported blob version {blob[0]}")
        kind = blob[1]
        if kind not in (MSG_HELLO, MSG_KEY, MSG_ACK):
            raise E2eeError(f"unknown blob type {kind}")
        if from_pid == self.me:
            raise E2eeError("blob claims to come from ourselves")
        peer = self._peers.get(from_pid)
        if peer is None:
            if kind == MSG_HELLO and len(blob) == _HELLO_SIZE:
                if len(self._early_hellos) >= MAX_PEERS or len(from_pid.encode()) > MAX_PID_BYTES:
                    raise E2eeError("too many hellos from unknown participants")
                self._early_hellos[from_pid] = blob  # the join event may come after it
                return []
            raise E2eeError("blob from an unknown participant")
        if peer.failed:
            raise E2eeError("participant could not be verified; ignoring its blobs")
        if kind == MSG_HELLO:
            return self._on_hello(peer, blob)
        return self._on_sealed(peer, kind, blob, now)

    def _on_hello(self, peer: _Peer, blob: bytes) -> list[Event]:
        if len(blob) != _HELLO_SIZE:
            raise E2eeError("hello of the wrong size")
        if peer.public is not None:
            raise E2eeError("second hello from the same participant")
        public = blob[2:34]
        spake_msg = blob[34:]
        if public == self.public_key:
            raise E2eeError("hello carries our own identity key")
        try:
            shared = self._identity.exchange(X25519PublicKey.from_public_bytes(public))
            if spake_msg[:1] != b"S":  # SPAKE2's symmetric-mode side byte
                raise E2eeError("not a symmetric SPAKE2 message")
            pake_key: bytes = peer.spake.finish(spake_msg)
        except Exception as exc:
            # Hostile bytes into two parsers, one of which (spake2) also fails with
            # AssertionError on some points: any failure means "cannot verify".
            peer.failed = True
            reason = f"{type(exc).__name__}: {exc}"
            return [PeerUnverified(peer.pid, f"cannot verify: bad key exchange ({reason})")]
        tag = sender_tag(public)
        if tag == self.tag or any(p.tag == tag for p in self._peers.values()):
            peer.failed = True
            return [PeerUnverified(peer.pid, "cannot verify: key id collision")]
        peer.public = public
        peer.tag = tag
        peer.code = safety_code(self.meeting_id, self.public_key, public)
        mine = (self.me.encode(), self.public_key, peer.spake_msg)
        theirs = (peer.pid.encode(), public, spake_msg)
        transcript = hashlib.sha256(
            b"confero e2ee pair v1"
            + _lp(self.meeting_id.encode())
            + b"".join(_lp(pid) + pub + msg for pid, pub, msg in sorted((mine, theirs)))
        ).digest()
        prk = HKDF(hashes.SHA256(), KEY_SIZE, transcript, b"confero e2ee pairwise v1").derive(
            shared + pake_key
        )
        peer.wrap_out = AESGCM(self._wrap_key(prk, self.me, peer.pid))
        peer.wrap_in = AESGCM(self._wrap_key(prk, peer.pid, self.me))
        self._send_key_to(peer)
        return []

    def _on_sealed(self, peer: _Peer, kind: int, blob: bytes, now: float) -> list[Event]:
        body = _KEY_BODY if kind == MSG_KEY else _ACK_BODY
        if len(blob) != 2 + _SEQ_SIZE + body + _TAG:
            raise E2eeError("sealed blob of the wrong size")
        if peer.wrap_in is None:
            raise E2eeError("sealed blob before the participant's hello")
        seq = int.from_bytes(blob[2:10], "big")
        if seq <= peer.seq_in:
            raise E2eeError("replayed or reordered blob")
        try:
            plain = peer.wrap_in.decrypt(seq.to_bytes(12, "big"), blob[10:], blob[:10])
        except InvalidTag:
            if peer.verified:
                raise E2eeError("blob failed authentication (tampered)") from None
            peer.failed = True
            peer.wrap_out = None
            return [
                PeerUnverified(peer.pid, "cannot verify: wrong passphrase or tampered key exchange")
            ]
        peer.seq_in = seq
        kid = int.from_bytes(plain[:8], "big")
        if kid >> 16 != (self.tag if kind == MSG_ACK else peer.tag):
            raise E2eeError("key id does not belong to this participant")
        events: list[Event] = []
        if not peer.verified:
            peer.verified = True
            assert peer.code is not None
            events.append(PeerVerified(peer.pid, peer.code))
        if kind == MSG_ACK:
            return events + self._on_ack(peer, kid, now)
        epoch = kid_epoch(kid)
        if epoch == peer.last_explicit_epoch and plain[8:] == peer.last_explicit_key:
            self._seal(peer, MSG_ACK, kid.to_bytes(8, "big"))  # our acknowledgement was lost
            return events
        if epoch <= peer.last_explicit_epoch:
            raise E2eeError("stale sender key")
        if peer.keys:
            self._retire(_Retired(now + RETIRED_KEY_GRACE, peer.pid, peer.keys))
        peer.last_explicit_epoch = epoch
        peer.last_explicit_key = plain[8:]
        peer.base_epoch = epoch
        peer.base_key = plain[8:]
        peer.ahead = 0
        peer.keys = peer.window()
        self._seal(peer, MSG_ACK, kid.to_bytes(8, "big"))
        events.append(ReceiveKeysChanged())
        return events

    def _on_ack(self, peer: _Peer, kid: int, now: float) -> list[Event]:
        if peer.pid in self._pending and kid_epoch(kid) >= self._pending_epoch:
            self._pending.discard(peer.pid)
            return self._maybe_activate(now)
        return []

    def _retire(self, retired: _Retired) -> None:
        self._retired.append(retired)
        del self._retired[:-MAX_RETIRED]

    # --- our sender key ----------------------------------------------------------------------

    def _advance_epoch(self, key: bytes) -> None:
        if self._epoch >= MAX_EPOCH:
            raise E2eeError("sender key epochs exhausted: rejoin the meeting")
        self._epoch += 1
        self._key = key

    def _maybe_activate(self, now: float) -> list[Event]:
        """Switch sending to the newest key unless a rotation still waits for peers."""
        if self._pending:
            return []
        kid = make_kid(self.tag, self._epoch)
        if self._active[0] == kid:
            return []
        self._active = (kid, self._key)
        return [SendKeyChanged(kid)]

    def _ratchet_all(self, now: float) -> list[Event]:
        """A newcomer arrives: our key steps forward, and our model of every peer's too."""
        # If the fresh key of a leave still waits for acknowledgements, this ratchets it and
        # the switch still waits; peers holding it derive the step themselves.
        self._advance_epoch(ratchet(self._key))
        events = self._maybe_activate(now)
        changed = False
        for peer in self._peers.values():
            if peer.base_epoch < 0:
                continue
            peer.ahead += 1
            while peer.ahead > 1 and peer.base_epoch < MAX_EPOCH:
                old = {make_kid(peer.tag, peer.base_epoch): peer.base_key}
                self._retire(_Retired(now + RETIRED_KEY_GRACE, peer.pid, old))
                peer.base_key = ratchet(peer.base_key)
                peer.base_epoch += 1
                peer.ahead -= 1
            peer.keys = peer.window()
            changed = True
        if changed:
            events.append(ReceiveKeysChanged())
        return events

    # --- sending -----------------------------------------------------------------------------

    def _send_key_to(self, peer: _Peer) -> None:
        kid = make_kid(self.tag, self._epoch)
        self._seal(peer, MSG_KEY, kid.to_bytes(8, "big") + self._key)

    def _seal(self, peer: _Peer, kind: int, plain: bytes) -> None:
        if peer.wrap_out is None:
            return
        seq = peer.seq_out
        peer.seq_out += 1
        head = bytes((BLOB_VERSION, kind)) + seq.to_bytes(_SEQ_SIZE, "big")
        self._send(peer.pid, head + peer.wrap_out.encrypt(seq.to_bytes(12, "big"), plain, head))

    def _send(self, pid: str, blob: bytes) -> None:
        self._out.append((pid, blob))

    def _spake_id(self, pid: str) -> bytes:
        low, high = sorted((self.me.encode(), pid.encode()))
        return b"confero e2ee v1" + _lp(self.meeting_id.encode()) + _lp(low) + _lp(high)

    @staticmethod
    def _wrap_key(prk: bytes, sender: str, receiver: str) -> bytes:
        info = b"confero e2ee wrap v1" + _lp(sender.encode()) + _lp(receiver.encode())
        return HKDFExpand(hashes.SHA256(), KEY_SIZE, info).derive(prk)
