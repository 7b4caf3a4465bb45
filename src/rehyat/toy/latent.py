"""The toy world's latent with Wan's temporal structure: a fixed orthonormal packer, four video frames
to a latent frame.

Wan2.1's causal VAE encodes frame 0 alone and then every four frames into one latent frame (81 video
frames → 21 latent frames) and 8×8 px into one latent pixel. :class:`ToyLatent` does the same to a toy
clip [3, F, H, W] with F = 1 + 4k: frame 0 is repeated four times, then every block of 4 frames × 2×2 px
× 3 colours (48 values) is written in an orthonormal basis: the 4-point DCT-II over time times the 2-point
Haar (sum and difference) over each spatial axis, per colour. The basis functions are ordered by total
frequency order (temporal index + the two spatial ones: 0 for the block mean, 1 for the gradients over
time, y and x, and so on) and the first ``channels`` are kept: 3, 12, 24, 36, 45 or 48 channels, every
order up to 0, 1, 2, 3, 4 or 5.

Why a fixed basis and not a trained autoencoder: it is exact (with all 48 channels ``decode(encode(x))``
is ``x`` to float rounding: at most 5e-7 in float32, 1e-15 in float64, on third-world clips), costs
nothing to train, works at any resolution and length, and is orthonormal, so white noise in the latent is
white noise in pixels: flow matching on it is pixel-space flow matching on 4×2×2 blocks (on the subspace
the kept channels span), and the teacher's noise schedule and flow shift keep their meaning. A trained
autoencoder could compress further, but its errors would become part of every ToyBench reading.

Why 24 channels by default (measured on third-world clips; ``tests/toy/test_toy_latent.py`` pins
the shape of it): the spectrum of anti-aliased edges decays slowly, so any truncation is lossy — PSNR of
the reconstruction over 200 clips: 3 channels 24.7 dB, 12 30.6 dB, 24 35.0 dB, 36 39.8 dB, 45 48.8 dB —
yet ToyBench reads 24-channel reconstructions as it reads the clips (48 clips: every attribute 100 %,
motion smoothness 99.9 against 100, size drift 0.003 against 0.001; SSIM 0.991), and a width the tiny
teacher can carry matters more: with its 2×2 patches a token holds 4 × channels values, which its
hidden width of 128 must pass from input to output (the flow-matching target holds the noise in every
value). All 48 channels make 192 values per token, more than that width; 24 make 96 (Wan2.1: 16
channels, 64 values per token, width 1536). ``ToyLatent(48)`` is the exact packer for a wider model.
Alternatives measured (top channels by energy, 200 clips): an opponent-colour basis (luma, two chroma)
instead of RGB gains at most 0.3 dB; Haar over time instead of the DCT loses 0.9–1.7 dB; ordering the
channels by measured energy instead of by frequency gains 1.1 dB at 24 channels but would tie the
latent to one set of clips.

The first latent frame holds frame 0 alone; :meth:`ToyLatent.decode` returns the mean of its four
decoded frames (the least-squares frame 0 of a latent that is not exactly repeated in time).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator

import torch
from torch import Tensor

from rehyat.toy.world import PACKED_WORLD, ToyPrompt, World, render, sample_prompt

#: Video frames per latent frame (after the first, which holds frame 0 alone) and pixels per latent
#: pixel along each spatial axis.
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 2
COLOURS = 3
BLOCK = COLOURS * TEMPORAL_STRIDE * SPATIAL_STRIDE**2  # 48 values per latent pixel
#: Channel counts that keep every basis function up to a frequency order (0, 1, ..., 5).
CHANNEL_CHOICES = (3, 12, 24, 36, 45, 48)
DEFAULT_CHANNELS = 24
#: Training clips: 81 video frames (21 latent frames, Wan2.1's 5 s); long videos 4× the latent length.
CLIP_LATENT_FRAMES = 21
LONG_LATENT_FRAMES = 4 * CLIP_LATENT_FRAMES


def latent_frames(video_frames: int) -> int:
    """Latent frames of a clip of ``video_frames`` = 1 + 4k frames (81 → 21); ValueError otherwise."""
    if video_frames < 1 or (video_frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(
            f"a clip needs 1 + {TEMPORAL_STRIDE}k video frames (e.g. 81 → 21 latent frames), got {video_frames}"
        )
    return 1 + (video_frames - 1) // TEMPORAL_STRIDE


def video_frames(latent_frames: int) -> int:
    """Video frames of ``latent_frames`` latent frames (21 → 81, 84 → 333)."""
    if latent_frames < 1:
        raise ValueError(f"need at least one latent frame, got {latent_frames}")
    return 1 + TEMPORAL_STRIDE * (latent_frames - 1)


def _dct(n: int) -> Tensor:
    """Orthonormal DCT-II matrix [n, n] (row k: frequency k) in float64."""
    j = torch.arange(n, dtype=torch.float64)
    rows = torch.stack([torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) for k in range(n)])
    rows[0] *= 1 / math.sqrt(n)
    rows[1:] *= math.sqrt(2 / n)
    return rows


def packing_basis(channels: int = BLOCK) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
    """The first ``channels`` rows [channels, 48] (float64, orthonormal) of the packer's basis over a
    block's values (flattened as colour, time, y, x) and each row's (colour, temporal frequency, y
    frequency, x frequency), ordered by total frequency order, then temporal, y, x frequency, colour."""
    if channels not in CHANNEL_CHOICES:
        raise ValueError(
            f"channels must keep whole frequency orders: one of {', '.join(map(str, CHANNEL_CHOICES))}, "
            f"got {channels}"
        )
    time, space = _dct(TEMPORAL_STRIDE), _dct(SPATIAL_STRIDE)  # the 2-point DCT is Haar
    colour = torch.eye(COLOURS, dtype=torch.float64)
    keys = sorted(
        itertools.product(
            range(COLOURS), range(TEMPORAL_STRIDE), range(SPATIAL_STRIDE), range(SPATIAL_STRIDE)
        ),
        key=lambda key: (key[1] + key[2] + key[3], key[1], key[2], key[3], key[0]),
    )[:channels]
    rows = [
        torch.einsum("c,t,y,x->ctyx", colour[c], time[k], space[a], space[b]).flatten() for c, k, a, b in keys
    ]
    return torch.stack(rows), keys


class ToyLatent:
    """Packs toy clips [3, F, H, W] (or batches [B, 3, F, H, W]) in [-1, 1] into latents
    [channels, 1 + (F − 1)/4, H/2, W/2] and back (see the module doc). Any device and float dtype; the
    basis follows the input."""

    def __init__(self, channels: int = DEFAULT_CHANNELS) -> None:
        self.channels = channels
        self.basis, self.frequencies = packing_basis(channels)

    def _basis(self, like: Tensor) -> Tensor:
        if not like.is_floating_point():
            raise ValueError(f"expected a floating-point tensor, got {like.dtype}")
        return self.basis.to(device=like.device, dtype=like.dtype)

    def encode(self, video: Tensor) -> Tensor:
        """Latent [(B,) channels, T, H/2, W/2] of a clip [(B,) 3, F, H, W] with F = 1 + 4(T − 1)."""
        batched = video.dim() == 5
        if video.dim() not in (4, 5) or video.shape[-4] != COLOURS:
            raise ValueError(
                f"expected a clip [3, F, H, W] or a batch [B, 3, F, H, W], got {list(video.shape)}"
            )
        clip = video if batched else video[None]
        b, _, f, h, w = clip.shape
        t = latent_frames(f)
        if h % SPATIAL_STRIDE or w % SPATIAL_STRIDE:
            raise ValueError(f"frame size must be a multiple of {SPATIAL_STRIDE} px, got {h}×{w}")
        clip = torch.cat([clip[:, :, :1].expand(-1, -1, TEMPORAL_STRIDE, -1, -1), clip[:, :, 1:]], 2)
        s = SPATIAL_STRIDE
        blocks = clip.reshape(b, COLOURS, t, TEMPORAL_STRIDE, h // s, s, w // s, s)
        blocks = blocks.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t, h // s, w // s, BLOCK)
        latent = (blocks @ self._basis(clip).T).permute(0, 4, 1, 2, 3).contiguous()
        return latent if batched else latent[0]

    def decode(self, latent: Tensor) -> Tensor:
        """Clip [(B,) 3, 1 + 4(T − 1), 2h, 2w] of a latent [(B,) channels, T, h, w]."""
        batched = latent.dim() == 5
        if latent.dim() not in (4, 5) or latent.shape[-4] != self.channels:
            raise ValueError(
                f"expected a latent [{self.channels}, T, h, w] or a batch of them, got {list(latent.shape)}"
            )
        z = latent if batched else latent[None]
        b, _, t, h, w = z.shape
        s = SPATIAL_STRIDE
        blocks = z.permute(0, 2, 3, 4, 1) @ self._basis(z)  # [B, T, h, w, 48]
        clip = blocks.reshape(b, t, h, w, COLOURS, TEMPORAL_STRIDE, s, s).permute(0, 4, 1, 5, 2, 6, 3, 7)
        clip = clip.reshape(b, COLOURS, t * TEMPORAL_STRIDE, h * s, w * s)
        first = clip[:, :, :TEMPORAL_STRIDE].mean(2, keepdim=True)
        clip = torch.cat([first, clip[:, :, TEMPORAL_STRIDE:]], 2).contiguous()
        return clip if batched else clip[0]


def latent_shape(
    num_latent_frames: int, height: int, width: int, channels: int = DEFAULT_CHANNELS
) -> tuple[int, int, int, int]:
    """[channels, T, h, w] of ``num_latent_frames`` latent frames for frames of ``height``×``width`` px."""
    return (channels, num_latent_frames, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE)


def latent_training_pairs(
    count: int,
    seed: int,
    *,
    world: World = PACKED_WORLD,
    num_latent_frames: int = CLIP_LATENT_FRAMES,
    packer: ToyLatent | None = None,
) -> Iterator[tuple[Tensor, ToyPrompt]]:
    """``count`` (latent [channels, T, H/2, W/2], prompt) pairs: random prompts (``random.Random(seed)``)
    rendered by ``world`` at its frame size, ``video_frames(num_latent_frames)`` frames long (81 for 21),
    clip ``i`` from render seed ``seed · 1_000_003 + i`` (as the teacher's pixel clips), then packed.

    The prompt is returned as a :class:`ToyPrompt`; the caller embeds it (the teacher's text encoder)."""
    if world.frames_per_latent != TEMPORAL_STRIDE:
        raise ValueError(
            f"the {world.name} world has {world.frames_per_latent} frame(s) per latent frame; this latent packs "
            f"{TEMPORAL_STRIDE} (the packed world's)"
        )
    packer = ToyLatent() if packer is None else packer
    rng = random.Random(seed)
    frames = video_frames(num_latent_frames)
    for index in range(count):
        prompt = sample_prompt(rng)
        clip = render(prompt, frames, world.height, world.width, seed=seed * 1_000_003 + index, world=world)
        yield packer.encode(clip), prompt
