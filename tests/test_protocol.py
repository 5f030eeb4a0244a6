"""The signaling codec and the token bucket: pure functions, no I/O."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from confero.protocol import signaling as sig
from confero.protocol.token_bucket import TokenBucket

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=sig.MAX_NAME_CHARS
)


@given(request_id=st.integers(0, 2**53), name=names,
       token=st.none() | st.text("abcXYZ019_-", min_size=32, max_size=64))
def test_hello_round_trips(request_id: int, name: str, token: str | None) -> None:
    hello = sig.Hello(id=request_id, version=sig.PROTOCOL_VERSION, name=name, resume_token=token)
    assert sig.decode_request(sig.encode(hello)) == hello


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_decoding_never_raises_anything_but_protocol_error(data: bytes | str) -> None:
    try:
        sig.decode_request(data)
    except sig.ProtocolError as exc:
        assert exc.code in set(sig.ErrorCode)
        assert exc.message


@given(st.dictionaries(st.sampled_from(["type", "id", "text", "name", "version", "title",
                                        "meeting_id", "password", "resume_token"]),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=50)
                       | st.sampled_from(sorted(sig.REQUEST_TYPES))))
def test_random_objects_decode_or_fail_cleanly(obj: dict[str, object]) -> None:
    try:
        request = sig.decode_request(msgspec.json.encode(obj))
    except sig.ProtocolError as exc:
        assert exc.code != sig.ErrorCode.BAD_JSON
    else:
        assert isinstance(request, sig.Request)


def test_limits_are_enforced_by_the_schema() -> None:
    too_long = "x" * (sig.MAX_CHAT_CHARS + 1)
    with pytest.raises(sig.ProtocolError) as err:
        sig.decode_request(sig.encode(sig.SendChat(id=1, text="x")).replace(b'"x"',
                                                                        f'"{too_long}"'.encode()))
    assert err.value.code == sig.ErrorCode.INVALID_FIELD and err.value.request_id == 1
    assert "length" in err.value.message


def test_server_messages_round_trip_for_the_client() -> None:
    message = sig.ChatMessage(meeting_id="abc", seq=3, sender="a", sender_id="p", text="t", ts=1.5)
    event = sig.ChatEvent(message=message)
    assert sig.decode_server_message(sig.encode(event)) == event
    error = sig.Error(id=None, code="from_the_future", message="newer server")
    assert sig.decode_server_message(sig.encode(error)) == error


def test_token_bucket_bursts_then_paces() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.05)  # half a token
    assert bucket.allow(0.1)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_token_bucket_ignores_a_clock_that_steps_back() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=100.0)
    assert bucket.allow(100.0)
    assert not bucket.allow(50.0)
    assert not bucket.allow(100.5)
    assert bucket.allow(101.0)


async def test_pacer_skips_missed_ticks_instead_of_bursting() -> None:
    from confero.pacing import Pacer

    pacer = Pacer(0.02, resync_after=5)
    clock = {"now": pacer._next}
    pacer._loop = type("FakeLoop", (), {"time": lambda self: clock["now"]})()  # type: ignore[assignment]
    clock["now"] += 0.05  # 2.5 ticks late: within the allowance, catch up tick by tick
    await pacer.wait()
    assert pacer.resyncs == 0 and pacer._next == pytest.approx(clock["now"] - 0.03)
    clock["now"] += 1.0  # a stall of 50 ticks: skip ahead once
    await pacer.wait()
    assert pacer.resyncs == 1 and pacer._next == clock["now"]
