"""RFC 2198 redundant audio payloads: round trip, limits, and garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confero.protocol import red

OPUS = 111


def test_round_trip_with_one_and_two_redundant_blocks() -> None:
    payload = red.encode(b"now", OPUS, [(960, b"before")])
    assert payload[0] == 0x80 | OPUS and payload[4] == OPUS  # one 4-byte header, then F=0
    assert red.decode(payload) == [red.Block(OPUS, 960, b"before"), red.Block(OPUS, 0, b"now")]
    two = red.decode(red.encode(b"c", OPUS, [(1920, b"a"), (960, b"bb")]))
    assert [(b.offset, b.data) for b in two] == [(1920, b"a"), (960, b"bb"), (0, b"c")]


def test_blocks_that_do_not_fit_are_left_out_not_sent_broken() -> None:
    assert red.decode(red.encode(b"p", OPUS, [(960, bytes(1024))])) == [red.Block(OPUS, 0, b"p")]
    assert red.decode(red.encode(b"p", OPUS, [(1 << 14, b"x")])) == [red.Block(OPUS, 0, b"p")]
    assert red.decode(red.encode(b"p", OPUS, [(960, b"")])) == [red.Block(OPUS, 0, b"p")]


@pytest.mark.parametrize("payload", [
    b"",  # no header at all
    bytes([0x80 | OPUS, 0, 0]),  # truncated block header
    bytes([0x80 | OPUS, 15, 0, 10, OPUS]) + b"short",  # block longer than the payload
    bytes([0x80 | OPUS, 0, 0, 1, OPUS, 7]),  # offset 0 for a redundant block
    bytes([0x80 | OPUS, 15, 0, 1] * 3 + [OPUS]) + b"abc",  # more blocks than accepted
])
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(red.RedError):
        red.decode(payload)


def test_a_block_of_another_payload_type_is_refused_when_one_is_expected() -> None:
    payload = red.encode(b"now", OPUS, [(960, b"before")])
    assert len(red.decode(payload, OPUS)) == 2
    with pytest.raises(red.RedError):
        red.decode(payload, 96)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_red_error_only(data: bytes) -> None:
    try:
        blocks = red.decode(data)
    except red.RedError:
        return
    assert blocks and blocks[-1].offset == 0
    assert sum(len(b.data) for b in blocks) <= len(data)


@given(st.binary(min_size=1, max_size=1023), st.binary(max_size=1500),
       st.integers(1, (1 << 14) - 1))
def test_encode_then_decode_gives_back_the_frames(previous: bytes, primary: bytes,
                                                   offset: int) -> None:
    blocks = red.decode(red.encode(primary, OPUS, [(offset, previous)]))
    assert blocks == [red.Block(OPUS, offset, previous), red.Block(OPUS, 0, primary)]


def test_a_redundant_copy_fills_a_hole_but_never_starts_a_talkspurt_early() -> None:
    """In the jitter buffer: a copy that arrives while playing fills the hole its
    original left; one that reaches an idle buffer (the frame before a talkspurt's first)
    is ignored, or the talkspurt would start a frame later than it needs to."""
    from confero.protocol.audio_jitter import AudioJitterBuffer

    idle = AudioJitterBuffer(target=1, adaptive=False)
    idle.push(960, b"previous", 0.0, redundant=True)
    idle.push(1920, b"first", 0.0)
    assert idle.pop() == b"first" and idle.recovered == 0
    playing = AudioJitterBuffer(target=1, adaptive=False)
    playing.push(0, b"a", 0.0)
    assert playing.pop() == b"a"
    playing.push(1920, b"c", 0.04)  # 960 was lost ...
    playing.push(960, b"b", 0.04, redundant=True)  # ... and came again with c
    assert [playing.pop(), playing.pop()] == [b"b", b"c"] and playing.recovered == 1
    assert playing.late == 0


def test_a_lossy_path_gets_two_earlier_frames_and_two_losses_in_a_row_cost_nothing() -> None:
    """On a path with 2 % loss or more (and an estimate that affords it), each packet
    carries the two frames before it: a listener that lost two packets in a row gets both
    frames back from the third, and plays on without concealing anything."""
    from confero.protocol.audio_jitter import LOST, AudioJitterBuffer

    assert red.copies_for(0.0, 1_000_000) == 1
    assert red.copies_for(0.05, 1_000_000) == 2
    assert red.copies_for(0.05, 200_000) == 1  # a slow link: the copy would crowd video
    history = red.RedHistory()
    sent = []
    for index in range(6):
        wrapped = history.wrap(index * 960, bytes([index]), OPUS, red.copies_for(0.05, 1e6))
        sent.append(wrapped)
    assert sent[0] is None  # the first frame has nothing before it: sent plain
    assert [len(red.decode(p)) for p in sent[1:]] == [2, 3, 3, 3, 3]
    assert red.decode(sent[4]) == [red.Block(OPUS, 1920, b"\x02"), red.Block(OPUS, 960, b"\x03"),
                                   red.Block(OPUS, 0, b"\x04")]
    buffer = AudioJitterBuffer(target=1, adaptive=False)
    buffer.push(0, b"\x00", 0.0)
    buffer.push(960, red.decode(sent[1])[-1].data, 0.02)
    played = [buffer.pop(), buffer.pop()]
    # packets 2 and 3 are lost; 4 brings them back
    for block in red.decode(sent[4]):
        buffer.push(4 * 960 - block.offset, block.data, 0.08, redundant=block.offset > 0)
    played += [buffer.pop(), buffer.pop(), buffer.pop()]
    assert played == [b"\x00", b"\x01", b"\x02", b"\x03", b"\x04"]
    assert LOST not in played and buffer.recovered == 2
    history.clear()  # a new talkspurt: nothing from before it is sent again
    assert history.wrap(9600, b"new", OPUS, 2) is None
