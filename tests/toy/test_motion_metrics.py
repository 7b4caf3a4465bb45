"""ToyBench's motion metrics (direction and speed accuracy, motion smoothness, size drift) validated on the
third world: near perfect on rendered clips, short and long, and each corruption moves the metric that
should see it — jumps at chunk boundaries, a reversed clip, a frozen clip, pure noise, a growing object."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rehyat.toy.toybench import evaluate_videos, read_back
from rehyat.toy.world import DIRECTIONS, ONE_FRAME_WORLD, PACKED_WORLD, ToyPrompt, render, sample_prompt

MOTION = ("direction_accuracy", "speed_accuracy", "motion_smoothness", "size_drift")
CHUNK = 12  # video frames of a chunk of Tc = 3 latent frames in the third world


def prompts(count: int, seed: int = 0) -> list[ToyPrompt]:
    rng = random.Random(seed)
    return [sample_prompt(rng) for _ in range(count)]


def clips(chosen: list[ToyPrompt], frames: int = 81, offsets=None, scales=None) -> torch.Tensor:
    return torch.stack(
        [
            render(
                p,
                frames,
                seed=i,
                world=PACKED_WORLD,
                offsets=None if offsets is None else offsets(p),
                scales=scales,
            )
            for i, p in enumerate(chosen)
        ]
    )


def score(videos, chosen, world=PACKED_WORLD) -> dict:
    return evaluate_videos(videos, chosen, world=world)


@pytest.fixture(scope="module")
def truth():
    chosen = prompts(16)
    videos = clips(chosen)
    return videos, chosen, score(videos, chosen)


def test_rendered_clips_score_near_perfect(truth):
    _, _, result = truth
    assert result["direction_accuracy"] == result["speed_accuracy"] == result["adherence"] == 100
    assert result["background_accuracy"] == result["object_presence"] == 100  # the trail misleads neither
    assert result["motion_smoothness"] > 97
    assert result["size_drift"] < 0.01


def test_long_videos_score_near_perfect():
    """333 frames (84 latent frames, 4× the training clip): several wraps around the frame."""
    chosen = prompts(6, seed=1)
    result = score(clips(chosen, frames=333), chosen)
    assert result["direction_accuracy"] == result["speed_accuracy"] == result["adherence"] == 100
    assert result["motion_smoothness"] > 97 and result["size_drift"] < 0.01


def chunk_jumps(pixels: float, perpendicular: bool):
    """Offsets that move the object by ``pixels`` more at every chunk start (across or along the motion)."""

    def offsets(prompt: ToyPrompt) -> np.ndarray:
        dx, dy = DIRECTIONS[prompt.direction]
        ux, uy = (-dy, dx) if perpendicular else (dx, dy)
        chunk = np.arange(81) // CHUNK
        return np.stack([ux * pixels * chunk, uy * pixels * chunk], 1).astype(float)

    return offsets


@pytest.mark.parametrize(
    ("pixels", "perpendicular", "ceiling"), [(1, True, 90), (2, True, 75), (4, True, 50), (-2, False, 72)]
)
def test_jumps_at_chunk_boundaries_lower_smoothness_only(truth, pixels, perpendicular, ceiling):
    """A jump of one pixel every 12 frames (6 or 12 px of motion) costs over 10 points;
    direction, speed and size drift stay as they were."""
    _, chosen, clean = truth
    result = score(clips(chosen, offsets=chunk_jumps(pixels, perpendicular)), chosen)
    assert result["motion_smoothness"] < ceiling < clean["motion_smoothness"]
    assert result["direction_accuracy"] == result["speed_accuracy"] == 100
    assert result["size_drift"] == pytest.approx(clean["size_drift"], abs=1e-3)


def test_reversed_clip_flips_direction_only(truth):
    videos, chosen, clean = truth
    result = score(videos.flip(2), chosen)
    assert result["direction_accuracy"] == 0
    assert result["speed_accuracy"] == 100
    assert result["motion_smoothness"] == pytest.approx(clean["motion_smoothness"], abs=1e-9)
    assert result["size_drift"] == pytest.approx(clean["size_drift"], abs=1e-9)
    for clip, reference in zip(result["per_clip"], clean["per_clip"], strict=True):
        (vx, vy), (wx, wy) = clip["readout"]["velocity"], reference["readout"]["velocity"]
        assert vx == pytest.approx(-wx, abs=1e-9) and vy == pytest.approx(-wy, abs=1e-9)


@pytest.mark.parametrize("world", [ONE_FRAME_WORLD, PACKED_WORLD])
def test_frozen_clip_has_no_speed_and_no_smoothness(world):
    chosen = prompts(8, seed=2)
    videos = torch.stack([render(p, seed=i, world=world) for i, p in enumerate(chosen)])
    result = score(videos[:, :, :1].expand_as(videos), chosen, world)
    assert result["direction_accuracy"] == result["speed_accuracy"] == result["motion_smoothness"] == 0
    assert result["shape_accuracy"] == result["colour_accuracy"] == 100  # the object is still there
    assert all(clip["readout"]["velocity_deviation"] == 1 for clip in result["per_clip"])


@pytest.mark.parametrize("world", [ONE_FRAME_WORLD, PACKED_WORLD])
@pytest.mark.parametrize("kind", ["gaussian", "faint", "uniform"])
def test_pure_noise_shows_no_object(world, kind):
    """Noise is no object: no direction, speed or smoothness, the worst size drift, nothing present."""
    chosen = prompts(4, seed=3)
    shape = (len(chosen), 3, world.num_frames, world.height, world.width)
    generator = torch.Generator().manual_seed(0)
    noise = {
        "gaussian": lambda: torch.randn(shape, generator=generator).clamp(-1, 1),
        "faint": lambda: 0.3 * torch.randn(shape, generator=generator),
        "uniform": lambda: torch.rand(shape, generator=generator) * 2 - 1,
    }[kind]()
    result = score(noise, chosen, world)
    assert result["direction_accuracy"] == result["speed_accuracy"] == result["motion_smoothness"] == 0
    assert result["size_drift"] == 1 and result["object_presence"] == result["temporal_consistency"] == 0
    assert result["adherence"] == 0


def test_noise_over_an_object_keeps_it(truth):
    """Heavy noise (σ = 1, 4 dB) over a rendered clip still shows its object moving the prompted way."""
    videos, chosen, _ = truth
    noisy = videos[:4] + torch.randn(videos[:4].shape, generator=torch.Generator().manual_seed(1))
    result = score(noisy, chosen[:4])
    assert result["object_presence"] == result["colour_accuracy"] == result["direction_accuracy"] == 100


def test_growing_object_raises_size_drift_only(truth):
    _, chosen, clean = truth
    growing = score(clips(chosen, scales=np.linspace(1, 1.5, 81)), chosen)
    assert growing["size_drift"] > 0.15 > 10 * clean["size_drift"]
    assert growing["direction_accuracy"] == growing["speed_accuracy"] == 100
    assert growing["motion_smoothness"] > 97
    pulsing = score(clips(chosen, scales=1 + 0.2 * np.sin(np.arange(81) * 2 * np.pi / CHUNK)), chosen)
    assert pulsing["size_drift"] > 0.15


def test_per_clip_scores_back_every_mean(truth):
    """Each motion metric (and adherence, consistency, PSNR, SSIM) has one value per clip under its own
    name, whose mean is the reported metric: what a paired-bootstrap interval between two models needs."""
    videos, chosen, _ = truth
    result = evaluate_videos(videos[:4], chosen[:4], reference=videos[:4].flip(2), world=PACKED_WORLD)
    names = (*MOTION, "adherence", "temporal_consistency", "psnr", "ssim", "shape_accuracy")
    for name in names:
        values = [clip[name] for clip in result["per_clip"]]
        assert all(np.isfinite(values)) and np.mean(values) == pytest.approx(result[name]), name


def test_readout_at_the_world_speeds():
    """Third-world speeds are a quarter of the second's per frame: the readout uses the world's."""
    prompt = ToyPrompt("red", "circle", "right", "fast", "plain")
    video = render(prompt, seed=0, world=PACKED_WORLD)
    assert read_back(video, PACKED_WORLD).speed == "fast"
    assert (
        read_back(video, ONE_FRAME_WORLD).speed == "slow"
    )  # 1 px per frame is under the one-frame world's slow 1.33 px
    assert read_back(render(prompt, seed=0), ONE_FRAME_WORLD).speed == "fast"


def dissolve(video: torch.Tensor) -> torch.Tensor:
    """The object's colour, from a quarter of the clip on, spreads as stripes over a growing region around
    it while the object itself fades: of its hue, but no longer its shape."""
    rgb = (video + 1) / 2
    frames, height, width = rgb.shape[1:]
    chroma = (rgb - rgb.mean(0, keepdim=True)).norm(dim=0)  # [F, H, W]
    colour = rgb[:, 0].flatten(1)[:, chroma[0].flatten().argmax()]
    stripes = (torch.arange(width) // 2 % 2 == 0).float().expand(height, width)
    out = rgb.clone()
    for t in range(frames):
        p = max(0.0, (t - frames / 4) / (3 * frames / 4))
        cover = (chroma[t] > 0.2).float()
        reach = 1 + 2 * round(p * height / 6)
        spread = torch.nn.functional.max_pool2d(cover[None, None], reach, 1, reach // 2)[0, 0]
        alpha = (cover * (1 - p) + spread * stripes * p).clamp(0, 1)
        base = rgb[:, t] * (1 - cover) + rgb[:, t].mean(0, keepdim=True) * cover
        out[:, t] = base * (1 - alpha) + colour[:, None, None] * alpha
    return out * 2 - 1


def fragment(video: torch.Tensor, seed: int) -> torch.Tensor:
    """From a third of the clip on, a growing share (up to 80 %) of 2×2 patches turns grey: fragments."""
    generator = torch.Generator().manual_seed(seed)
    rgb = (video + 1) / 2
    frames, height, width = rgb.shape[1:]
    for t in range(frames):
        p = 0.8 * max(0.0, (t - frames / 3) / (2 * frames / 3))
        holes = (torch.rand(height // 2, width // 2, generator=generator) < p).float()
        holes = holes.repeat_interleave(2, 0).repeat_interleave(2, 1)
        rgb[:, t] = rgb[:, t] * (1 - holes) + rgb[:, t].mean(0, keepdim=True) * holes
    return rgb * 2 - 1


@pytest.mark.parametrize("world", [ONE_FRAME_WORLD, PACKED_WORLD])
def test_dissolving_or_fragmenting_object_loses_consistency(world):
    """An object that dissolves into stripes of its own hue, or falls to pieces, keeps its colour and
    roughly its area, so size and colour drift alone scored it about 70: its shape drift does not let it."""
    chosen = prompts(6, seed=4)
    videos = [render(p, seed=i, world=world) for i, p in enumerate(chosen)]
    clean = score(videos, chosen, world)
    assert clean["temporal_consistency"] > 93 and clean["shape_drift"] < 0.05
    for corrupted in ([dissolve(v) for v in videos], [fragment(v, i) for i, v in enumerate(videos)]):
        result = score(corrupted, chosen, world)
        assert result["shape_drift"] > 0.2
        assert result["temporal_consistency"] < 60 < clean["temporal_consistency"] - 35
        assert result["colour_accuracy"] == 100  # the hue is still there: the failure is the shape


def test_first_frame_out_of_place_shows_in_first_jump(truth):
    """A first frame drawn 4 px off the track (the others in place) shows in the first-frame jump, which
    is near 0 on rendered clips, while smoothness moves by a few points: one frame of 81."""
    _, chosen, clean = truth
    moved = np.zeros((81, 2))
    moved[0] = (4.0, -3.0)
    result = score(clips(chosen, offsets=lambda _: moved), chosen)
    assert clean["first_jump"] < 0.01
    assert result["first_jump"] == pytest.approx(5 / 32, abs=0.02)
    assert 90 < result["motion_smoothness"] < clean["motion_smoothness"]
    assert result["direction_accuracy"] == 100
