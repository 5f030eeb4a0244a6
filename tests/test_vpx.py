"""The ctypes libvpx encoder: decodable output, live bitrate, temporal layers, ABI check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from confero.media.video import Vp8Decoder, luma_plane, make_video_encoder
from confero.media.vpx import (
    LIBVPX_1_16,
    EncodedFrame,
    ReopeningVp8Encoder,
    VpxAbiError,
    VpxVp8Encoder,
)

W, H, FPS = 320, 240, 30


class NoisySource:
    """Planes with a scrolling texture and a patch of fresh noise: there is always more
    detail than the target rate pays for, as with a real camera, but motion to predict."""

    def __init__(self, width: int = W, height: int = H, seed: int = 1) -> None:
        self.w, self.h = width, height
        self.rng = np.random.default_rng(seed)
        blocks = self.rng.integers(0, 256, (height // 4, width // 4), dtype=np.uint8)
        self.texture = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
        self.count = 0

    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = np.roll(self.texture, self.count * 4, axis=1)
        patch = self.h // 8
        y[:patch, : self.w // 2] = self.rng.integers(0, 256, (patch, self.w // 2),
                                                     dtype=np.uint8)
        self.count += 1
        u = np.full((self.h // 2, self.w // 2), 100, dtype=np.uint8)
        v = np.full((self.h // 2, self.w // 2), 160, dtype=np.uint8)
        return y, u, v


def encode_stream(
    encoder: VpxVp8Encoder, frames: int, seed: int = 1, start: int = 0
) -> list[EncodedFrame]:
    source = NoisySource(encoder.width, encoder.height, seed)
    out: list[EncodedFrame] = []
    for i in range(start, start + frames):
        out.extend(encoder.encode(source.planes(), i * 3000))
    return out


def decode_all(frames: list[EncodedFrame]) -> tuple[list[np.ndarray], int]:
    decoder = Vp8Decoder()
    lumas = []
    for frame in frames:
        picture = decoder.decode(frame.data)
        assert picture is not None
        lumas.append(luma_plane(picture).copy())
    return lumas, decoder.errors


def test_encodes_decodable_vp8_from_frames_and_planes() -> None:
    from confero.media.video import SyntheticCamera

    encoder = VpxVp8Encoder(W, H, FPS, 800_000)
    camera = SyntheticCamera("alice", W, H)
    frames = []
    for i in range(10):
        frames += encoder.encode(camera.frame(i), i * 3000)
    frames += encode_stream(encoder, 10, start=10)  # the rate control may skip a few
    assert len(frames) >= 15
    assert frames[0].keyframe and not any(f.keyframe for f in frames[1:])
    lumas, errors = decode_all(frames)
    assert errors == 0 and len(lumas) == len(frames)
    assert lumas[0].shape == (H, W)
    forced = encoder.encode(NoisySource().planes(), 21 * 3000, force_keyframe=True)
    assert forced and forced[0].keyframe


def bits_per_second(frames: list[list[EncodedFrame]]) -> float:
    return sum(len(f.data) for frame in frames for f in frame) * 8 * FPS / len(frames)


@pytest.mark.parametrize("layers", [1, 3])
def test_bitrate_change_follows_without_keyframe(layers: int) -> None:
    encoder = VpxVp8Encoder(640, 480, FPS, 2_000_000, temporal_layers=layers)
    source = NoisySource(640, 480)
    per_frame: list[list[EncodedFrame]] = []
    for i in range(4 * FPS):
        if i == 2 * FPS:
            encoder.set_bitrate(300_000)
        per_frame.append(encoder.encode(source.planes(), i * 3000))
    before = bits_per_second(per_frame[FPS : 2 * FPS])
    after = bits_per_second(per_frame[2 * FPS + 10 : 3 * FPS + 10])  # within ~1 s
    settled = bits_per_second(per_frame[3 * FPS :])
    assert before > 1_500_000, before
    assert after < 500_000, after
    assert 150_000 < settled < 450_000, settled
    keyframes = [i for i, frame in enumerate(per_frame) for f in frame if f.keyframe]
    assert keyframes == [0]
    assert encoder.keyframes == 1


def test_three_layer_pattern_and_sync_flags() -> None:
    encoder = VpxVp8Encoder(W, H, FPS, 1_000_000, temporal_layers=3)
    source = NoisySource()
    seen = []
    for i in range(9):
        out = encoder.encode(source.planes(), i * 3000)
        assert len(out) == 1
        seen.append((out[0].keyframe, out[0].temporal_id, out[0].layer_sync))
    assert seen[:5] == [(True, 0, True), (False, 2, True), (False, 1, True),
                        (False, 2, False), (False, 0, False)]
    assert [tid for _, tid, _ in seen] == [0, 2, 1, 2, 0, 2, 1, 2, 0]
    # a forced keyframe in mid-period restarts the pattern as TL0
    encoder.encode(source.planes(), 9 * 3000)  # TL2
    key = encoder.encode(source.planes(), 10 * 3000, force_keyframe=True)
    assert key[0].keyframe and key[0].temporal_id == 0
    after = encoder.encode(source.planes(), 11 * 3000)
    assert after[0].temporal_id == 2 and after[0].layer_sync


@pytest.mark.parametrize("max_tid", [0, 1])
def test_dropping_upper_layers_decodes_identically(max_tid: int) -> None:
    encoder = VpxVp8Encoder(W, H, FPS, 1_000_000, temporal_layers=3)
    frames = encode_stream(encoder, 60)
    assert encoder.keyframes == 1 and len(frames) >= 50
    full, errors = decode_all(frames)
    assert errors == 0
    kept = [i for i, f in enumerate(frames) if f.temporal_id <= max_tid]
    assert len(kept) < len(frames)
    reduced, errors = decode_all([frames[i] for i in kept])
    assert errors == 0
    # bit-identical to the full decode: nothing kept referenced a dropped frame
    for picture, i in zip(reduced, kept, strict=True):
        assert np.array_equal(picture, full[i]), i


def test_dropping_frames_of_a_single_layer_stream_corrupts() -> None:
    """The control for the test above: without layers, dropped frames are referenced."""
    encoder = VpxVp8Encoder(W, H, FPS, 1_000_000, temporal_layers=1)
    frames = encode_stream(encoder, 30)
    full, _ = decode_all(frames)
    kept = [0] + [i for i in range(1, len(frames)) if i % 2 == 0]
    reduced, _ = decode_all([frames[i] for i in kept])
    assert any(not np.array_equal(p, full[i]) for p, i in zip(reduced, kept, strict=True))


def test_abi_check_rejects_a_wrong_offset() -> None:
    offsets = dict(LIBVPX_1_16.offsets)
    offsets["rc_target_bitrate"] += 4
    bad = dataclasses.replace(LIBVPX_1_16, offsets=offsets)
    with pytest.raises(VpxAbiError, match="rc_target_bitrate"):
        VpxVp8Encoder(W, H, layout=bad)
    wrong_abi = dataclasses.replace(LIBVPX_1_16, abi_version=LIBVPX_1_16.abi_version + 1)
    with pytest.raises(VpxAbiError, match="init"):
        VpxVp8Encoder(W, H, layout=wrong_abi)


def test_factory_prefers_libvpx_and_falls_back_on_abi_mismatch() -> None:
    good = make_video_encoder(W, H, FPS, 500_000, temporal_layers=3)
    assert isinstance(good, VpxVp8Encoder) and good.temporal_layers == 3
    offsets = dict(LIBVPX_1_16.offsets)
    offsets["g_w"] = offsets["g_h"]
    fallback = make_video_encoder(W, H, FPS, 500_000, layout=dataclasses.replace(
        LIBVPX_1_16, offsets=offsets))
    assert isinstance(fallback, ReopeningVp8Encoder)
    source = NoisySource()
    frames = []
    for i in range(5):
        frames += fallback.encode(source.planes(), i * 3000)
    fallback.set_bitrate(200_000)
    assert fallback.reopens == 1
    frames += fallback.encode(source.planes(), 5 * 3000)
    assert frames[0].keyframe and frames[-1].keyframe  # re-opening costs a keyframe
    _, errors = decode_all(frames)
    assert errors == 0


def test_reconfigure_changes_size() -> None:
    encoder = VpxVp8Encoder(W, H, FPS, 500_000, temporal_layers=3)
    encode_stream(encoder, 3)
    encoder.reconfigure(160, 120, 15)
    frames = encode_stream(encoder, 3, start=3)
    assert frames[0].keyframe and frames[0].temporal_id == 0
    lumas, errors = decode_all(frames)
    assert errors == 0 and lumas[0].shape == (120, 160)
    with pytest.raises(ValueError):
        encoder.encode(NoisySource().planes(), 0)  # 320x240 planes into 160x120


def test_keyframe_dimensions_of_a_real_keyframe() -> None:
    from confero.protocol.vp8 import keyframe_dimensions, packetize

    encoder = VpxVp8Encoder(W, H, FPS, 500_000, temporal_layers=3)
    frames = encode_stream(encoder, 2)
    key, delta = packetize(frames[0].data, 1, temporal=(0, False, 0)), packetize(
        frames[1].data, 2, temporal=(2, True, 0))
    assert keyframe_dimensions(key[0]) == (W, H)
    assert keyframe_dimensions(delta[0]) is None


def test_bad_sizes_are_refused_before_closing() -> None:
    with pytest.raises(ValueError):
        VpxVp8Encoder(321, 240)
    encoder = VpxVp8Encoder(W, H)
    with pytest.raises(ValueError):
        encoder.reconfigure(160, 121, 30)
    assert encode_stream(encoder, 1)  # still open and working
