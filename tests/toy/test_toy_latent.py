"""The toy latent: Wan's temporal layout (frame 0 alone, then groups of 4), an exact orthonormal packer
with all 48 channels, a projection with fewer, and (latent, prompt) training pairs of the third world."""

from __future__ import annotations

import random

import pytest
import torch

from rehyat.toy.latent import (
    BLOCK,
    CHANNEL_CHOICES,
    DEFAULT_CHANNELS,
    ToyLatent,
    latent_frames,
    latent_shape,
    latent_training_pairs,
    packing_basis,
    video_frames,
)
from rehyat.toy.toybench import evaluate_videos, psnr
from rehyat.toy.world import ONE_FRAME_WORLD, PACKED_WORLD, render, sample_prompt


def noise(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_wan_frame_counts():
    assert [latent_frames(f) for f in (1, 5, 81, 333)] == [1, 2, 21, 84]
    assert [video_frames(t) for t in (1, 2, 21, 84)] == [1, 5, 81, 333]
    for bad in (0, 2, 4, 80):
        with pytest.raises(ValueError, match="1 \\+ 4k"):
            latent_frames(bad)
    with pytest.raises(ValueError, match="at least one"):
        video_frames(0)
    assert latent_shape(21, 32, 32) == (DEFAULT_CHANNELS, 21, 16, 16)


def test_basis_is_orthonormal_and_ordered_by_frequency():
    basis, keys = packing_basis()
    assert basis.shape == (BLOCK, BLOCK) == (48, 48)
    assert torch.allclose(basis @ basis.T, torch.eye(48, dtype=torch.float64), atol=1e-12)
    orders = [k + a + b for _, k, a, b in keys]
    assert orders == sorted(orders)
    assert [orders.count(n) for n in range(6)] == [3, 9, 12, 12, 9, 3]
    assert [sum(orders.count(n) for n in range(m + 1)) for m in range(6)] == list(CHANNEL_CHOICES)
    # The first three channels are the block means of red, green and blue: 4 × the mean value.
    block = torch.rand(3, 4, 2, 2, dtype=torch.float64)
    assert torch.allclose(basis[:3] @ block.flatten(), 4 * block.mean((1, 2, 3)))
    for bad in (0, 16, 49):
        with pytest.raises(ValueError, match="whole frequency orders"):
            ToyLatent(bad)


@pytest.mark.parametrize(("frames", "height", "width"), [(1, 2, 2), (9, 8, 12), (13, 6, 4)])
def test_all_channels_round_trip_exactly(frames, height, width):
    packer = ToyLatent(48)
    video = noise(3, frames, height, width).clamp(-1, 1)
    latent = packer.encode(video)
    assert latent.shape == (48, latent_frames(frames), height // 2, width // 2)
    assert (packer.decode(latent) - video).abs().max() < 1e-6
    batch = torch.stack([video, -video])
    assert torch.allclose(packer.decode(packer.encode(batch)), batch, atol=1e-6)
    double = video.double()
    assert (packer.decode(packer.encode(double)) - double).abs().max() < 1e-13


def test_fewer_channels_project():
    """With fewer channels, encode ∘ decode is the identity on latents and decode ∘ encode a projection:
    white noise in the latent decodes to pixels of the same total energy (the basis is orthonormal)."""
    for channels in CHANNEL_CHOICES:
        packer = ToyLatent(channels)
        latent = noise(2, channels, 3, 4, 4, seed=channels, dtype=torch.float64)
        # The first latent frame holds frame 0 repeated: only its temporally constant channels survive.
        latent[:, [k > 0 for _, k, _, _ in packer.frequencies], 0] = 0
        video = packer.decode(latent)
        assert torch.allclose(packer.encode(video), latent, atol=1e-12)
        projected = packer.decode(packer.encode(video))
        assert torch.allclose(projected, video, atol=1e-12)
        energy = video[:, :, 1:].pow(2).sum() + 4 * video[:, :, 0].pow(2).sum()
        assert energy == pytest.approx(float(latent.pow(2).sum()))


def test_latent_frames_are_causal_groups_of_four():
    """Latent frame 0 encodes video frame 0 alone (its temporal channels are zero), latent frame j ≥ 1
    frames 4j − 3 .. 4j, so a change to one video frame reaches exactly one latent frame."""
    packer = ToyLatent(24)
    video = noise(3, 13, 8, 8)
    latent = packer.encode(video)
    temporal = [k > 0 for _, k, _, _ in packer.frequencies]
    assert latent[temporal, 0].abs().max() < 1e-6 < latent[temporal, 1].abs().max()
    for frame, touched in ((0, 0), (1, 1), (4, 1), (5, 2), (12, 3)):
        changed = video.clone()
        changed[:, frame] += 0.5
        differs = (packer.encode(changed) - latent).abs().amax((0, 2, 3)) > 1e-6
        assert differs.tolist() == [t == touched for t in range(4)]


def test_bad_inputs():
    packer = ToyLatent()
    with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
        packer.encode(torch.zeros(4, 5, 8, 8))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        packer.encode(torch.zeros(3, 4, 8, 8))
    with pytest.raises(ValueError, match="multiple of 2"):
        packer.encode(torch.zeros(3, 5, 7, 8))
    with pytest.raises(ValueError, match="floating-point"):
        packer.encode(torch.zeros(3, 5, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"latent \[24, T, h, w\]"):
        packer.decode(torch.zeros(48, 2, 4, 4))


@pytest.fixture(scope="module")
def third_world_clips():
    rng = random.Random(5)
    prompts = [sample_prompt(rng) for _ in range(8)]
    return torch.stack([render(p, seed=i, world=PACKED_WORLD) for i, p in enumerate(prompts)]), prompts


def test_default_channels_keep_what_toybench_reads(third_world_clips):
    """The measurement behind the default (module doc): PSNR of reconstructions after truncation, and
    ToyBench reading 24-channel reconstructions of third-world clips exactly as the clips."""
    videos, prompts = third_world_clips
    quality = {}
    for channels in (12, 24, 36):
        packer = ToyLatent(channels)
        restored = packer.decode(packer.encode(videos[:4]))
        quality[channels] = sum(psnr(a, b) for a, b in zip(restored, videos[:4], strict=True)) / 4
    assert 30 < quality[12] < 34 < quality[24] < 40 < quality[36] < 47
    packer = ToyLatent()
    restored = packer.decode(packer.encode(videos))
    truth, packed = (
        evaluate_videos(videos, prompts, world=PACKED_WORLD),
        evaluate_videos(restored, prompts, world=PACKED_WORLD),
    )
    for name in ("adherence", "speed_accuracy", "background_accuracy", "object_presence"):
        assert truth[name] == packed[name] == 100, name
    assert packed["motion_smoothness"] > truth["motion_smoothness"] - 3
    assert packed["size_drift"] < truth["size_drift"] + 0.005


def test_training_pairs_are_packed_third_world_clips():
    pairs = list(latent_training_pairs(3, seed=7, num_latent_frames=6))
    assert [tuple(latent.shape) for latent, _ in pairs] == [(24, 6, 16, 16)] * 3
    rng = random.Random(7)
    packer = ToyLatent()
    for index, (latent, prompt) in enumerate(pairs):
        assert prompt == sample_prompt(rng)
        clip = render(prompt, 21, seed=7 * 1_000_003 + index, world=PACKED_WORLD)
        assert torch.equal(latent, packer.encode(clip))
    again = next(latent_training_pairs(1, seed=7, num_latent_frames=6))
    assert torch.equal(again[0], pairs[0][0])
    full = next(latent_training_pairs(1, seed=0, packer=ToyLatent(12)))[0]
    assert full.shape == (12, 21, 16, 16)
    with pytest.raises(ValueError, match="the one-frame world has 1 frame"):
        next(latent_training_pairs(1, seed=0, world=ONE_FRAME_WORLD))
