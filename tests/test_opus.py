"""libopus through ctypes: round trip, PLC and in-band FEC, state copies, bad input."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from confero.media.opus import FRAME_SAMPLES, Decoder, Encoder, OpusError, Samples


def harmonics(f0: float, frames: int, start: int = 0) -> Samples:
    """A voiced-like signal (a fundamental and six harmonics), ``frames`` x 20 ms."""
    t = (np.arange(frames * FRAME_SAMPLES) + start) / 48_000
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    return (6000 * wave).astype(np.int16)


def frames_of(signal: Samples) -> list[Samples]:
    return list(signal.reshape(-1, FRAME_SAMPLES))


def correlation(a: Samples, b: Samples) -> float:
    x, y = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


def test_round_trip_keeps_the_signal() -> None:
    frames = frames_of(harmonics(180, 30))
    encoder, decoder = Encoder(), Decoder()
    out = [decoder.decode(encoder.encode(f)) for f in frames]
    assert all(o.shape == (FRAME_SAMPLES,) and o.dtype == np.int16 for o in out)
    sent, heard = np.concatenate(frames)[4800:-1000], np.concatenate(out)[4800:]
    # the codec delays the signal (lookahead and filters): the best alignment matches
    best = max(correlation(sent, heard[lag:lag + len(sent)]) for lag in range(0, 1000))
    assert best > 0.9
    assert encoder.lookahead > 0


def test_settings_are_applied_to_the_open_encoder() -> None:
    encoder = Encoder(24_000, packet_loss_perc=5)
    assert encoder.fec and encoder.bitrate == 24_000 and encoder.packet_loss_perc == 5
    encoder.set_bitrate(64_000)
    encoder.set_packet_loss_perc(30)
    encoder.set_fec(False)
    assert encoder.bitrate == 64_000 and encoder.packet_loss_perc == 30 and not encoder.fec
    with pytest.raises(ValueError):
        encoder.set_bitrate(1_000_000)
    with pytest.raises(ValueError):
        encoder.set_packet_loss_perc(101)


def _lost_frame_rebuilt(mode: str) -> tuple[Samples, Samples]:
    """Frames 0-39 one pitch, then another: frame 40 (the first new one) is lost."""
    lost = 40
    signal = np.concatenate([harmonics(150, lost), harmonics(230, 10, lost * FRAME_SAMPLES)])
    encoder = Encoder(packet_loss_perc=10)
    packets = [encoder.encode(f) for f in frames_of(signal)]
    reference = Decoder()
    expected = [reference.decode(p) for p in packets][lost]
    decoder = Decoder()
    for packet in packets[:lost]:
        decoder.decode(packet)
    if mode == "fec":
        rebuilt = decoder.decode_fec(packets[lost + 1])
    elif mode == "plc":
        rebuilt = decoder.conceal()
    else:
        rebuilt = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    decoder.decode(packets[lost + 1])  # and the stream goes on
    return rebuilt, expected


def test_fec_rebuilds_a_lost_packet_from_the_next_one() -> None:
    fec = correlation(*_lost_frame_rebuilt("fec"))
    plc = correlation(*_lost_frame_rebuilt("plc"))
    silence = correlation(*_lost_frame_rebuilt("silence"))
    # the lost frame is the first of a new pitch: only the FEC copy knows it
    assert fec > 0.9
    assert fec > plc + 0.3
    assert silence == 0.0


def test_plc_continues_a_steady_signal_better_than_silence() -> None:
    frames = frames_of(harmonics(170, 30))
    encoder = Encoder()
    packets = [encoder.encode(f) for f in frames]
    reference = Decoder()
    expected = [reference.decode(p) for p in packets]
    decoder = Decoder()
    for packet in packets[:20]:
        decoder.decode(packet)
    concealed = decoder.conceal()
    assert correlation(concealed, expected[20]) > 0.8
    assert decoder.concealed == 1


def test_a_copied_encoder_state_continues_exactly() -> None:
    frames = frames_of(harmonics(200, 20))
    original = Encoder()
    for f in frames[:10]:
        original.encode(f)
    twin = original.clone()
    other = Encoder()
    other.copy_state_from(original)
    rest = frames[10:]
    expected = [original.encode(f) for f in rest]
    assert [twin.encode(f) for f in rest] == expected
    assert [other.encode(f) for f in rest] == expected
    assert [Encoder().encode(f) for f in rest] != expected  # a fresh state would differ


def test_bad_input_raises_and_the_decoder_stays_usable() -> None:
    encoder, decoder = Encoder(), Decoder()
    with pytest.raises(ValueError):
        encoder.encode(np.zeros(100, dtype=np.int16))
    with pytest.raises(OpusError):
        decoder.decode(b"")
    with pytest.raises(OpusError):
        decoder.decode(b"\x00" * 2000)
    forty_ms = bytes([0b00000001, 0, 0])  # TOC code 1: two frames in one packet
    with pytest.raises(OpusError):
        decoder.decode(bytes([0x1B << 3 | 1]) + forty_ms)
    for garbage in (b"\xff\xff\xff", bytes(range(256)) * 3):
        with contextlib.suppress(OpusError):
            decoder.decode(garbage)
    good = decoder.decode(encoder.encode(harmonics(200, 1)))
    assert good.shape == (FRAME_SAMPLES,)


def test_play_next_decodes_recovers_conceals_and_goes_idle() -> None:
    from confero.media.audio import play_next
    from confero.protocol.audio_jitter import AudioJitterBuffer

    encoder = Encoder(packet_loss_perc=20)
    packets = [encoder.encode(f) for f in frames_of(harmonics(190, 6))]
    buffer = AudioJitterBuffer(target=1, adaptive=False, idle_after=3)
    for index in (0, 1, 3):  # 2 is lost
        buffer.push(index * FRAME_SAMPLES, packets[index], 0.0)
    buffer.push(4 * FRAME_SAMPLES, b"\xff\xff\xff", 0.0)  # garbage
    decoder = Decoder()
    kinds = []
    for _ in range(8):
        frame, kind = play_next(buffer, decoder)
        kinds.append(kind)
        assert (frame is None) == (kind == "idle")
    assert kinds[:6] == ["decoded", "decoded", "fec", "decoded", "error", "plc"]
    assert "idle" in kinds[6:]


def test_random_packets_never_crash_the_decoder() -> None:
    rng = np.random.default_rng(7)
    decoder = Decoder()
    outcomes = set()
    for _ in range(500):
        payload = rng.integers(0, 256, int(rng.integers(1, 1500)), dtype=np.uint8).tobytes()
        for step in (decoder.decode, decoder.decode_fec):
            try:
                frame = step(payload)
                assert frame.shape == (FRAME_SAMPLES,)
                outcomes.add("frame")
            except OpusError:
                outcomes.add("error")
    assert outcomes == {"frame", "error"}  # both paths taken, nothing else escaped
    assert decoder.conceal().shape == (FRAME_SAMPLES,)
