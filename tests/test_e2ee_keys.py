"""E2EE key management: in-memory participants exchanging blobs through a relay we control.

The relay stands for the server: it sees every blob and, in some tests, tampers with them.
Frames go through real SFrame contexts fed with each session's keys, so "cannot decrypt" means
an SFrame authentication failure, not a missing dictionary entry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confero.protocol import e2ee_keys as ek
from confero.protocol.e2ee_keys import (
    BlobRejected,
    E2eeSession,
    Event,
    PeerUnverified,
    PeerVerified,
    SendKeyChanged,
)
from confero.protocol.sframe import SFrameContext, SFrameError

MEETING = "meeting-42"
PASSPHRASE = "correct horse battery staple"
Tamper = Callable[[str, str, bytes], bytes | None]  # (from, to, blob) -> blob or None to drop


@dataclass
class Member:
    session: E2eeSession
    events: list[Event] = field(default_factory=list)
    ctx: SFrameContext = field(default_factory=SFrameContext)
    installed: set[int] = field(default_factory=set)

    def sync_keys(self) -> None:
        """What the media endpoint does on SendKeyChanged/ReceiveKeysChanged."""
        kid, key = self.session.send_key()
        if kid not in self.installed:
            self.ctx.add_send_key(kid, key)
            self.installed.add(kid)
        self.ctx.set_receive_keys(self.session.receive_keys())

    def send(self, payload: bytes) -> bytes:
        self.sync_keys()
        return self.ctx.protect(self.session.send_key()[0], payload)

    def can_read(self, frame: bytes, payload: bytes) -> bool:
        self.sync_keys()
        try:
            return self.ctx.unprotect(frame) == payload
        except SFrameError:
            return False


class Relay:
    """The server's role: membership events in the same order to all, blobs relayed."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.now = 100.0
        self.tamper: Tamper | None = None
        self.seen: list[tuple[str, str, bytes]] = []

    def join(self, pid: str, passphrase: str = PASSPHRASE) -> Member:
        member = Member(E2eeSession(pid, MEETING, passphrase))
        for other in self.members:
            member.events += member.session.on_participant_joined(other, self.now, initial=True)
        for other in self.members.values():
            other.events += other.session.on_participant_joined(pid, self.now)
        self.members[pid] = member
        self.pump()
        return member

    def leave(self, pid: str) -> Member:
        gone = self.members.pop(pid)
        for other in self.members.values():
            other.events += other.session.on_participant_left(pid, self.now)
        self.pump()
        return gone

    def pump(self, limit: int = 1000) -> None:
        for _ in range(limit):
            batch = [
                (pid, to, blob)
                for pid, member in self.members.items()
                for to, blob in member.session.outgoing()
            ]
            if not batch:
                return
            for sender, to, blob in batch:
                self.seen.append((sender, to, blob))
                out: bytes | None = blob
                if self.tamper is not None:
                    out = self.tamper(sender, to, blob)
                if out is not None and to in self.members:
                    target = self.members[to]
                    target.events += target.session.handle_blob(sender, out, self.now)
        raise AssertionError("blob exchange did not settle")

    def tick(self, seconds: float) -> None:
        self.now += seconds
        for member in self.members.values():
            member.events += member.session.tick(self.now)


def events_of(member: Member, kind: type) -> list[Event]:
    return [e for e in member.events if isinstance(e, kind)]


def test_three_participants_reach_shared_keys() -> None:
    relay = Relay()
    a, b, c = relay.join("alice"), relay.join("bob"), relay.join("carol")
    members = {"alice": a, "bob": b, "carol": c}
    for pid, member in members.items():
        kid, key = member.session.send_key()
        for other_pid, other in members.items():
            if other is member:
                continue
            assert other.session.receive_keys().get(kid) == key
            assert other.session.verified(pid)
            code = other.session.safety_code(pid)
            assert code is not None and code == member.session.safety_code(other_pid)
            assert len(code.split()) == 6 and all(len(g) == 5 for g in code.split())
        assert not events_of(member, PeerUnverified)
        assert not events_of(member, BlobRejected)
        frame = member.send(f"hello from {pid}".encode())
        for other in members.values():
            if other is not member:
                assert other.can_read(frame, f"hello from {pid}".encode())
    # Different pairs have different codes, and no blob carries a sender key in the clear.
    assert a.session.safety_code("bob") != a.session.safety_code("carol")
    keys = [m.session.send_key()[1] for m in members.values()]
    assert not any(key in blob for _, _, blob in relay.seen for key in keys)


def test_wrong_passphrase_gets_no_keys_and_cannot_verify() -> None:
    relay = Relay()
    a, b = relay.join("alice"), relay.join("bob")
    mallory = relay.join("mallory", passphrase="Correct horse battery staple")
    assert mallory.session.receive_keys() == {}
    for member in (a, b):
        assert not member.session.verified("mallory")
        unverified = events_of(member, PeerUnverified)
        assert [e.pid for e in unverified] == ["mallory"]  # type: ignore[attr-defined]
        assert "cannot verify" in unverified[0].reason  # type: ignore[attr-defined]
        assert make_kids_of(mallory) & set(member.session.receive_keys()) == set()
    assert {e.pid for e in events_of(mallory, PeerUnverified)} == {"alice", "bob"}  # type: ignore[attr-defined]
    assert not mallory.session.verified("alice")
    frame = a.send(b"secret")
    assert b.can_read(frame, b"secret")
    assert not mallory.can_read(frame, b"secret")
    # Alice and Bob still verify each other.
    assert a.session.verified("bob") and b.session.verified("alice")


def make_kids_of(member: Member) -> set[int]:
    return {member.session.send_key()[0]}


def test_departed_participant_cannot_decrypt_after_rotation() -> None:
    relay = Relay()
    a, b, c = relay.join("alice"), relay.join("bob"), relay.join("carol")
    before = a.send(b"before the leave")
    assert c.can_read(before, b"before the leave")
    c.sync_keys()  # carol keeps every key she had
    old_kid = a.session.send_key()[0]
    relay.leave("carol")
    # Both stayers acknowledged: alice switched without waiting for the timeout.
    new_kid, new_key = a.session.send_key()
    assert new_kid != old_kid and ek.kid_epoch(new_kid) == ek.kid_epoch(old_kid) + 1
    assert SendKeyChanged(new_kid) in a.events
    after = a.send(b"after the leave")
    assert b.can_read(after, b"after the leave")
    assert not c.can_read(after, b"after the leave")
    # Nor could carol ratchet her way there: the new key is fresh, not derived.
    old_key = c.session.receive_keys()[old_kid]
    assert new_key not in {old_key, ek.ratchet(old_key), ek.ratchet(ek.ratchet(old_key))}
    assert "carol" not in a.session.peers()


def test_newcomer_cannot_decrypt_frames_before_its_join() -> None:
    relay = Relay()
    a, b = relay.join("alice"), relay.join("bob")
    old = [a.send(b"early %d" % i) for i in range(3)]
    old_kid = a.session.send_key()[0]
    old_b = b.send(b"bob early")
    blobs_before = len(relay.seen)
    c = relay.join("carol")
    for i, frame in enumerate(old):
        assert not c.can_read(frame, b"early %d" % i)
    assert not c.can_read(old_b, b"bob early")
    new = a.send(b"after carol joined")
    assert c.can_read(new, b"after carol joined")
    assert b.can_read(new, b"after carol joined")  # bob followed the ratchet on his own
    # No new key went from alice to bob: the ratchet needs no message.
    assert not [s for s, to, blob in relay.seen[blobs_before:] if (s, to) == ("alice", "bob")]
    # A frame alice sent under the old epoch just before she processed the join, still in
    # flight: bob decrypts it, carol does not.
    in_flight = a.ctx.protect(old_kid, b"in flight")
    assert b.can_read(in_flight, b"in flight")
    assert not c.can_read(in_flight, b"in flight")


def test_join_ratchet_lookahead_tolerates_event_skew() -> None:
    relay = Relay()
    a, b = relay.join("alice"), relay.join("bob")
    # Alice processes two joins before bob processes either.
    a.session.on_participant_joined("x", relay.now)
    a.session.on_participant_joined("y", relay.now)
    a.session.outgoing()
    frame = a.send(b"ahead")
    assert ek.kid_epoch(a.session.send_key()[0]) == 3
    assert b.can_read(frame, b"ahead")


def test_rotation_activates_after_timeout_without_acknowledgement() -> None:
    relay = Relay()
    a, _b, _c = relay.join("alice"), relay.join("bob"), relay.join("carol")
    old_kid = a.session.send_key()[0]
    relay.tamper = lambda src, to, blob: None if src == "bob" else blob  # bob never answers
    relay.leave("carol")
    assert a.session.send_key()[0] == old_kid  # still waiting for bob's acknowledgement
    relay.tick(ek.ACTIVATION_TIMEOUT / 2)
    assert a.session.send_key()[0] == old_kid
    relay.tick(ek.ACTIVATION_TIMEOUT)
    assert a.session.send_key()[0] != old_kid


def test_join_during_pending_rotation() -> None:
    relay = Relay()
    a, b, _c = relay.join("alice"), relay.join("bob"), relay.join("carol")
    relay.tamper = lambda src, to, blob: None if (src, to) == ("bob", "alice") else blob
    relay.leave("carol")
    old_kid = a.session.send_key()[0]
    relay.tamper = None
    d = relay.join("dave")
    relay.tick(ek.ACTIVATION_TIMEOUT)
    kid = a.session.send_key()[0]
    assert ek.kid_epoch(kid) == ek.kid_epoch(old_kid) + 2  # fresh key, then one ratchet
    frame = a.send(b"to everyone")
    assert b.can_read(frame, b"to everyone")
    assert d.can_read(frame, b"to everyone")


def test_retired_keys_expire() -> None:
    relay = Relay()
    a, b, _c = relay.join("alice"), relay.join("bob"), relay.join("carol")
    old_kid = a.session.send_key()[0]
    relay.leave("carol")
    assert old_kid in b.session.receive_keys()  # frames in flight still decrypt
    relay.tick(ek.RETIRED_KEY_GRACE + 0.1)
    assert old_kid not in b.session.receive_keys()
    assert a.session.send_key()[0] in b.session.receive_keys()


# --- hostile input ---------------------------------------------------------------------------


def _flip(index: int) -> Callable[[bytes], bytes]:
    def flip(blob: bytes) -> bytes:
        out = bytearray(blob)
        out[index % len(out)] ^= 0x40
        return bytes(out)

    return flip


def test_tampered_key_blob_before_verification_cannot_verify() -> None:
    relay = Relay()
    a = relay.join("alice")

    def tamper(src: str, to: str, blob: bytes) -> bytes:
        return _flip(-1)(blob) if blob[1] == ek.MSG_KEY and src == "bob" else blob

    relay.tamper = tamper
    b = relay.join("bob")
    assert not a.session.verified("bob")
    assert [type(e) for e in a.events if isinstance(e, PeerUnverified)] == [PeerUnverified]
    assert b.session.send_key()[0] not in a.session.receive_keys()


def test_tampered_blobs_after_verification_are_rejected() -> None:
    relay = Relay()
    a, b = relay.join("alice"), relay.join("bob")
    delivered = [
        blob
        for src, to, blob in relay.seen
        if (src, to) == ("alice", "bob") and blob[1] == ek.MSG_KEY
    ]
    damaged = 0

    def tamper(src: str, to: str, blob: bytes) -> bytes:
        nonlocal damaged
        if (src, to) == ("alice", "bob") and blob[1] == ek.MSG_KEY and not damaged:
            damaged += 1
            return _flip(20)(blob)
        return blob

    relay.tamper = tamper
    relay.join("carol")
    old_kid = a.session.send_key()[0]
    relay.leave("carol")  # alice sends bob a fresh key, which the relay damages
    rejected = events_of(b, BlobRejected)
    assert rejected and "authentication" in rejected[0].reason  # type: ignore[attr-defined]
    assert b.session.verified("alice")  # a damaged blob does not undo verification
    assert a.session.send_key()[0] == old_kid  # alice waits for bob's acknowledgement
    bob_keys = b.session.receive_keys()
    # An old authentic blob replayed by the relay is refused too.
    events = b.session.handle_blob("alice", delivered[0], relay.now)
    assert [e.reason for e in events if isinstance(e, BlobRejected)] == [
        "replayed or reordered blob"
    ]
    # Alice never got bob's acknowledgement: after the timeout she switches and sends the
    # key once more, and bob decrypts again.
    relay.tick(ek.ACTIVATION_TIMEOUT)
    relay.pump()
    fresh_kid, fresh_key = a.session.send_key()
    assert ek.kid_epoch(fresh_kid) == ek.kid_epoch(old_kid) + 1
    assert bob_keys.get(fresh_kid) != fresh_key
    assert b.session.receive_keys()[fresh_kid] == fresh_key
    assert b.can_read(a.send(b"still here"), b"still here")


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "too short"),
        (b"\x01", "too short"),
        (bytes(300), "over the 256-byte limit"),
        (b"\x02\x01" + bytes(65), "version"),
        (b"\x01\x09" + bytes(65), "unknown blob type"),
        (b"\x01\x01" + bytes(10), "wrong size"),
        (b"\x01\x02" + bytes(10), "wrong size"),
        (b"\x01\x03" + bytes(100), "wrong size"),
        (b"\x01\x01" + bytes(65), "second hello"),
    ],
)
def test_garbage_blobs_are_rejected_with_a_reason(blob: bytes, reason: str) -> None:
    relay = Relay()
    a, _b = relay.join("alice"), relay.join("bob")
    keys = a.session.receive_keys()
    events = a.session.handle_blob("bob", blob, relay.now)
    assert len(events) == 1 and isinstance(events[0], BlobRejected)
    assert reason in events[0].reason
    assert a.session.receive_keys() == keys and a.session.verified("bob")


@pytest.mark.parametrize(
    "spake_msg", [b"\x00" * 33, b"S" + b"\xff" * 32, b"A" + bytes(range(32)), b"S" + bytes(32)]
)
def test_hostile_hello_cannot_verify_without_crashing(spake_msg: bytes) -> None:
    a = E2eeSession("alice", MEETING, PASSPHRASE)
    a.on_participant_joined("bob", 0.0)
    b = E2eeSession("bob", MEETING, PASSPHRASE)
    events = a.handle_blob("bob", b"\x01\x01" + b.public_key + spake_msg, 0.0)
    assert len(events) == 1 and isinstance(events[0], PeerUnverified)
    assert "cannot verify" in events[0].reason and not a.verified("bob")
    # A low-order X25519 point is refused the same way.
    c = E2eeSession("carol", MEETING, PASSPHRASE)
    c.on_participant_joined("bob", 0.0)
    b.on_participant_joined("carol", 0.0)
    [(_, hello)] = b.outgoing()
    events = c.handle_blob("bob", hello[:2] + bytes(32) + hello[34:], 0.0)
    assert isinstance(events[0], PeerUnverified) and "bad key exchange" in events[0].reason


def test_blobs_from_strangers_and_ourselves() -> None:
    relay = Relay()
    a = relay.join("alice")
    assert isinstance(a.session.handle_blob("alice", b"\x01\x02" + bytes(64), 0)[0], BlobRejected)
    assert isinstance(a.session.handle_blob("zed", b"\x01\x02" + bytes(64), 0)[0], BlobRejected)


def test_hello_before_the_join_event_is_kept() -> None:
    a = E2eeSession("alice", MEETING, PASSPHRASE)
    b = E2eeSession("bob", MEETING, PASSPHRASE)
    b.on_participant_joined("alice", 0.0, initial=True)
    [(to, hello)] = b.outgoing()
    assert to == "alice"
    assert a.handle_blob("bob", hello, 0.0) == []  # alice has not seen bob join yet
    a.on_participant_joined("bob", 0.0)
    for _ in range(4):
        for _to, blob in a.outgoing():
            b.handle_blob("alice", blob, 0.0)
        for _to, blob in b.outgoing():
            a.handle_blob("bob", blob, 0.0)
    assert a.verified("bob") and b.verified("alice")
    assert a.send_key()[0] in b.receive_keys()


# --- a malicious relay -----------------------------------------------------------------------


def test_relay_swapping_identity_keys_is_detected() -> None:
    """The server substitutes its own X25519 key but cannot redo SPAKE2 without the
    passphrase: the pairwise keys differ, nobody verifies, and the safety codes differ."""
    relay = Relay()
    a = relay.join("alice")
    evil = E2eeSession("evil", MEETING, "not the passphrase")

    def tamper(src: str, to: str, blob: bytes) -> bytes:
        if blob[1] == ek.MSG_HELLO:
            return blob[:2] + evil.public_key + blob[34:]
        return blob

    relay.tamper = tamper
    b = relay.join("bob")
    assert not a.session.verified("bob") and not b.session.verified("alice")
    assert events_of(a, PeerUnverified) and events_of(b, PeerUnverified)
    assert a.session.safety_code("bob") != b.session.safety_code("alice")
    assert b.session.send_key()[0] not in a.session.receive_keys()
    assert a.session.send_key()[0] not in b.session.receive_keys()


def _man_in_the_middle(passphrase: str) -> tuple[E2eeSession, E2eeSession]:
    """The relay runs a session towards each side, posing as the other."""
    alice = E2eeSession("alice", MEETING, PASSPHRASE)
    bob = E2eeSession("bob", MEETING, PASSPHRASE)
    as_bob = E2eeSession("bob", MEETING, passphrase)  # what alice talks to
    as_alice = E2eeSession("alice", MEETING, passphrase)  # what bob talks to
    alice.on_participant_joined("bob", 0.0)
    as_bob.on_participant_joined("alice", 0.0, initial=True)
    bob.on_participant_joined("alice", 0.0, initial=True)
    as_alice.on_participant_joined("bob", 0.0)
    wiring = [(alice, as_bob, "alice"), (as_bob, alice, "bob"), (bob, as_alice, "bob")]
    wiring.append((as_alice, bob, "alice"))
    for _ in range(6):
        for source, target, name in wiring:
            for _to, blob in source.outgoing():
                target.handle_blob(name, blob, 0.0)
    return alice, bob


def test_relay_without_the_passphrase_cannot_play_man_in_the_middle() -> None:
    alice, bob = _man_in_the_middle(passphrase="a guess")
    assert not alice.verified("bob") and not bob.verified("alice")
    assert alice.receive_keys() == {} and bob.receive_keys() == {}


def test_safety_codes_expose_a_relay_that_knows_the_passphrase() -> None:
    """If the relay colludes with someone who knows the passphrase, the PAKE passes, but the
    codes Alice and Bob read to each other differ."""
    alice, bob = _man_in_the_middle(passphrase=PASSPHRASE)
    assert alice.verified("bob") and bob.verified("alice")  # the PAKE alone is fooled
    code_at_alice, code_at_bob = alice.safety_code("bob"), bob.safety_code("alice")
    assert code_at_alice is not None and code_at_bob is not None
    assert code_at_alice != code_at_bob
    # Without a relay the codes agree (the control for the assertion above).
    relay = Relay()
    a, b = relay.join("alice"), relay.join("bob")
    assert a.session.safety_code("bob") == b.session.safety_code("alice")


def test_session_arguments_are_validated() -> None:
    with pytest.raises(ek.E2eeError):
        E2eeSession("alice", MEETING, "")
    with pytest.raises(ek.E2eeError):
        E2eeSession("x" * 200, MEETING, PASSPHRASE)
    with pytest.raises(ek.E2eeError):
        E2eeSession("alice", "", PASSPHRASE)


def test_passphrase_is_normalized_and_safety_code_symmetric() -> None:
    relay = Relay()
    relay.join("alice", passphrase="caf\u00e9")
    b = relay.join("bob", passphrase="cafe\u0301")  # the same word, decomposed
    assert b.session.verified("alice")
    assert ek.safety_code("m", b"a" * 32, b"b" * 32) == ek.safety_code("m", b"b" * 32, b"a" * 32)
    assert ek.safety_code("m", b"a" * 32, b"b" * 32) != ek.safety_code("n", b"a" * 32, b"b" * 32)


@functools.cache
def _paired_alice() -> E2eeSession:
    relay = Relay()
    alice = relay.join("alice")
    relay.join("bob")
    return alice.session


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([ek.MSG_HELLO, ek.MSG_KEY, ek.MSG_ACK, 0, 7]),
    body=st.binary(max_size=300),
    version=st.sampled_from([1, 1, 1, 0, 2]),
)
def test_random_blobs_never_raise_nor_change_keys(kind: int, version: int, body: bytes) -> None:
    session = _paired_alice()
    keys = session.receive_keys()
    events = session.handle_blob("bob", bytes((version, kind)) + body, 1.0)
    assert all(isinstance(e, BlobRejected) for e in events)
    assert session.receive_keys() == keys and session.verified("bob")


def test_sender_of_maps_kids_to_peers() -> None:
    relay = Relay()
    a, b = relay.join("alice"), relay.join("bob")
    assert a.session.sender_of(b.session.send_key()[0]) == "bob"
    assert a.session.sender_of(a.session.send_key()[0]) is None
    assert a.session.sender_of(12345) is None


def test_verified_event_carries_the_code() -> None:
    relay = Relay()
    a, b = relay.join("alice"), relay.join("bob")
    [event] = events_of(a, PeerVerified)
    assert event == PeerVerified("bob", a.session.safety_code("bob") or "")
    assert b.session.verified("alice")
