"""ToyBench validated on ground truth: the renderer's own clips score ~100, and each corruption lowers the
metric that should see it (and leaves the others alone)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rehyat.toy import ToyPrompt, render, sample_prompt
from rehyat.toy.toybench import evaluate_videos, psnr, read_back, ssim

ATTRIBUTES = (
    "colour_accuracy",
    "shape_accuracy",
    "direction_accuracy",
    "speed_accuracy",
    "background_accuracy",
)


def clips(count: int, frames: int, size: int, seed: int = 0) -> tuple[torch.Tensor, list[ToyPrompt]]:
    rng = random.Random(seed)
    prompts = [sample_prompt(rng) for _ in range(count)]
    return torch.stack([render(p, frames, size, size, seed=seed + i) for i, p in enumerate(prompts)]), prompts


@pytest.fixture(scope="module")
def truth():
    return clips(36, 16, 32)


@pytest.mark.parametrize(("frames", "size"), [(16, 32), (16, 16), (24, 48), (96, 32)])  # 96 = 6× training
def test_ground_truth_scores_full_marks(frames, size):
    videos, prompts = clips(24, frames, size, seed=frames + size)
    result = evaluate_videos(videos, prompts)
    assert result["adherence"] == 100
    assert all(result[name] == 100 for name in ATTRIBUTES)
    assert result["object_presence"] == 100
    assert result["temporal_consistency"] > 96  # 16×16 px: objects of 5–7 px, shape drift 0.015
    assert result["motion_smoothness"] > 88
    assert (result["clips"], result["frames"], result["height"]) == (24, frames, size)


def test_every_attribute_value_reads_back():
    prompts = [
        ToyPrompt(colour, shape, direction, speed, background)
        for colour, shape, direction, speed, background in zip(
            ["red", "yellow", "green", "cyan", "blue", "magenta"] * 2,
            ["circle", "square", "triangle"] * 4,
            ["left", "right", "up", "down"] * 3,
            ["slow", "fast"] * 6,
            ["plain", "striped", "checkered", "gradient"] * 3,
            strict=True,
        )
    ]
    for i, prompt in enumerate(prompts):
        readout = read_back(render(prompt, 16, 32, 32, seed=i))
        assert (readout.colour, readout.shape, readout.direction, readout.speed, readout.background) == (
            prompt.colour,
            prompt.shape,
            prompt.direction,
            prompt.speed,
            prompt.background,
        )


def test_wrong_colour_fails_only_colour(truth):
    videos, prompts = truth
    result = evaluate_videos(videos[:, [2, 0, 1]], prompts)  # rotates every hue by 120°, greys unchanged
    assert result["colour_accuracy"] == 0
    assert result["shape_accuracy"] == result["direction_accuracy"] == 100
    assert result["adherence"] == pytest.approx(200 / 3)


def test_reversed_motion_fails_only_direction(truth):
    videos, prompts = truth
    result = evaluate_videos(videos.flip(2), prompts)
    assert result["direction_accuracy"] == 0
    assert result["colour_accuracy"] == result["shape_accuracy"] == result["speed_accuracy"] == 100


def test_frozen_frames(truth):
    videos, prompts = truth
    frozen = evaluate_videos(videos[:, :, :1].expand_as(videos), prompts)
    assert frozen["direction_accuracy"] == frozen["speed_accuracy"] == 0
    assert frozen["colour_accuracy"] == frozen["shape_accuracy"] == 100
    # Moving, then stopped halfway: the direction is still right but the motion is far from constant.
    stopped = torch.cat([videos[:, :, :8], videos[:, :, 7:8].expand(-1, -1, 8, -1, -1)], dim=2)
    result = evaluate_videos(stopped, prompts)
    assert result["direction_accuracy"] == 100
    assert result["motion_smoothness"] < 40 < 90 < evaluate_videos(videos, prompts)["motion_smoothness"]


def test_shuffled_frames_are_not_smooth(truth):
    videos, prompts = truth
    shuffled = videos[:, :, torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    assert evaluate_videos(shuffled, prompts)["motion_smoothness"] < 10


def test_noise_lowers_fidelity_and_smoothness_not_adherence(truth):
    videos, prompts = truth
    generator = torch.Generator().manual_seed(0)
    mild = evaluate_videos(videos + 0.1 * torch.randn(videos.shape, generator=generator), prompts, videos)
    moderate = evaluate_videos(videos + 0.2 * torch.randn(videos.shape, generator=generator), prompts, videos)
    heavy = evaluate_videos(videos + 0.6 * torch.randn(videos.shape, generator=generator), prompts, videos)
    assert mild["adherence"] == moderate["adherence"] == 100  # PSNR 26 and 20 dB
    assert (
        heavy["colour_accuracy"] == heavy["direction_accuracy"] == 100
    )  # 10 dB: shapes blur, not hue or motion
    assert 100 > mild["psnr"] > heavy["psnr"] + 10
    assert 1 > mild["ssim"] > heavy["ssim"] + 0.3
    assert heavy["motion_smoothness"] < mild["motion_smoothness"] - 25


def test_colour_flicker_and_vanishing_lower_temporal_consistency(truth):
    videos, prompts = truth
    clean = evaluate_videos(videos, prompts)
    gain = torch.where(torch.arange(16) % 2 == 0, 1.0, 0.5)[None, None, :, None, None]
    flicker = evaluate_videos((videos + 1) * gain - 1, prompts)  # object and background dim every other frame
    assert flicker["colour_drift"] > 5 * clean["colour_drift"]
    assert flicker["temporal_consistency"] < clean["temporal_consistency"] - 10
    vanishing = videos.clone()
    vanishing[:, :, 8:] = vanishing[:, :, 8:].mean(0, keepdim=True)  # grey: no object in the second half
    result = evaluate_videos(vanishing, prompts)
    assert result["object_presence"] == 50
    assert result["temporal_consistency"] <= 50


def test_a_grey_video_has_no_object():
    grey = torch.zeros(3, 16, 32, 32)
    readout = read_back(grey)
    assert readout.colour is readout.shape is readout.direction is None and readout.presence == 0
    result = evaluate_videos([grey], ["a red circle moving left slowly on a plain background"])
    assert result["adherence"] == result["temporal_consistency"] == result["motion_smoothness"] == 0
    assert readout.background == "plain" and result["background_accuracy"] == 100  # uniform grey is plain


def test_ssim_matches_the_reference_implementation():
    a = render("a red circle moving left slowly on a striped background", 8, 32, 32, seed=0)
    b = render("a blue square moving up quickly on a checkered background", 8, 32, 32, seed=1)
    # torchmetrics 1.9.0 structural_similarity_index_measure(data_range=2, return_full_image=True) on the
    # frames, its map cropped by the window radius (5 px) to the valid region, in float64.
    assert ssim(a, b) == pytest.approx(0.04244261266677236, abs=1e-9)
    assert ssim(a, torch.roll(a, 1, dims=3) * 0.9) == pytest.approx(0.3667039410783344, abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(ssim(b, a))


def test_psnr_and_ssim_checks():
    a = render("a red circle moving left slowly on a striped background", 4, 32, 32)
    assert psnr(a, a) == 100
    assert psnr(a, a + 0.02) == pytest.approx(10 * torch.log10(torch.tensor(4 / 0.02**2)).item())
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(a, a[:, :2])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(a[..., :8], a[..., :8])
    with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
        psnr(a[0], a[0])


def test_evaluate_videos_inputs_and_json(truth):
    videos, prompts = truth
    result = evaluate_videos(list(videos[:3]), [p.text for p in prompts[:3]], reference=videos[:3])
    assert result["psnr"] == 100 and result["ssim"] == pytest.approx(1.0)
    assert len(result["per_clip"]) == 3 and result["per_clip"][0]["prompt"] == prompts[0].text
    json.dumps(result, allow_nan=False)
    with pytest.raises(ValueError, match="one prompt per video"):
        evaluate_videos(videos[:3], prompts[:2])
    with pytest.raises(ValueError, match="one reference per video"):
        evaluate_videos(videos[:3], prompts[:3], reference=videos[:2])
