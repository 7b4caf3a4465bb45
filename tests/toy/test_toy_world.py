"""The toy world: prompt text round trip, deterministic renders, wrap-around motion, value ranges."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from rehyat.toy import BACKGROUNDS, COLOURS, SHAPES, ToyPrompt, all_prompts, render, sample_prompt
from rehyat.toy.world import SIZE_RANGE, object_size, velocity

PROMPT = ToyPrompt("red", "circle", "left", "slow", "striped")


def test_text_and_parse_round_trip_every_prompt():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == 576
    assert all(ToyPrompt.parse(p.text) == p for p in prompts)
    assert PROMPT.text == "a red circle moving left slowly on a striped background"
    assert ToyPrompt.parse("  A Red CIRCLE moving   left slowly on a striped background ") == PROMPT


@pytest.mark.parametrize(
    "text",
    [
        "a red circle moving left",
        "a pink circle moving left slowly on a striped background",
        "a red circle moving left gently on a striped background",
        "a red hexagon moving left slowly on a striped background",
    ],
)
def test_parse_rejects_bad_prompts(text):
    with pytest.raises(ValueError):
        ToyPrompt.parse(text)


def test_prompt_validates_attributes():
    with pytest.raises(ValueError, match="unknown direction"):
        ToyPrompt("red", "circle", "sideways", "slow", "plain")


def test_sample_prompt_is_deterministic_and_covers_the_grid():
    a = [sample_prompt(random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(0)
    seen = [sample_prompt(rng) for _ in range(400)]
    assert {p.colour for p in seen} == set(COLOURS)
    assert {p.shape for p in seen} == set(SHAPES)
    assert {p.background for p in seen} == set(BACKGROUNDS)


def test_render_is_deterministic_float32_in_range():
    video = render(PROMPT, 12, 32, 24, seed=5)
    assert video.shape == (3, 12, 32, 24) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert torch.equal(video, render(PROMPT.text, 12, 32, 24, seed=5))
    assert not torch.equal(video, render(PROMPT, 12, 32, 24, seed=6))


def test_only_the_object_is_chromatic_and_it_has_the_seeded_area():
    for seed, (shape, area) in enumerate((("circle", torch.pi / 4), ("square", 1.0), ("triangle", 0.5))):
        video = (render(ToyPrompt("green", shape, "up", "fast", "checkered"), 8, 32, 32, seed=seed) + 1) / 2
        alpha = video.amax(0) - video.amin(0)  # chroma equals coverage for a pure hue over grey
        extent = object_size(np.random.default_rng(seed).random(3)[2], 32, 32)
        assert torch.allclose(alpha.sum((1, 2)), torch.full((8,), area * extent**2), rtol=0.03)


def test_size_is_random_per_video_within_the_range_and_constant_in_time():
    areas = []
    for seed in range(40):
        video = (render(ToyPrompt("red", "square", "left", "slow", "plain"), 6, 32, 32, seed=seed) + 1) / 2
        area = (video.amax(0) - video.amin(0)).sum((1, 2))
        assert torch.allclose(area, area[0].expand(6), rtol=0.02)  # fixed within a clip (up to anti-aliasing)
        areas.append(float(area[0]))
    low, high = (bound * 32 for bound in SIZE_RANGE)
    assert low**2 * 0.97 <= min(areas) and max(areas) <= high**2 * 1.03
    assert max(areas) - min(areas) > 0.5 * (high**2 - low**2)  # the draws spread over the range


def test_motion_wraps_around_with_constant_velocity():
    """A long clip (many wraps) is a pure translation: frame t equals frame 0 rolled by t·v when v is whole."""
    prompt = ToyPrompt("blue", "triangle", "right", "fast", "plain")
    video = render(prompt, 80, 24, 24, seed=2)
    vx, vy = velocity(prompt, 24, 24)
    assert (vx, vy) == (2.0, 0.0)  # whole pixels at the training size
    for t in (1, 17, 79):
        assert torch.allclose(video[:, t], torch.roll(video[:, 0], int(vx * t), dims=2), atol=1e-5)
    up = ToyPrompt("blue", "square", "up", "slow", "plain")
    assert velocity(up, 24, 24) == (0.0, -1.0)
    video = render(up, 30, 24, 24, seed=2)
    assert torch.allclose(video[:, 24], video[:, 0], atol=1e-5)  # one full wrap in 24 frames


def test_render_rejects_bad_sizes():
    with pytest.raises(ValueError, match="8×8"):
        render(PROMPT, 4, 4, 32)


def test_a_seed_keeps_the_start_position_it_had_before_sizes_were_random():
    """The start is still the seed's first two uniform draws (the size is the third)."""
    for seed in (0, 7, 123):
        video = (render(ToyPrompt("red", "square", "right", "slow", "plain"), 1, 32, 32, seed=seed) + 1) / 2
        alpha = (video.amax(0) - video.amin(0))[0].double()  # [H, W] coverage of frame 0
        start = np.random.default_rng(seed).random(2) * 32  # the old draw: random(2) * (width, height)
        for axis, expected in ((1, start[0]), (0, start[1])):
            angle = 2 * np.pi * (torch.arange(32, dtype=torch.float64) + 0.5) / 32
            profile = alpha.sum(1 - axis)
            centre = float(torch.atan2((profile * angle.sin()).sum(), (profile * angle.cos()).sum()))
            assert abs(math.remainder(centre % (2 * np.pi) * 32 / (2 * np.pi) - expected, 32)) < 0.05
