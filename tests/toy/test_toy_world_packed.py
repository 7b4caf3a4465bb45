"""The packed toy world: Wan-length clips, quarter speeds per frame, and an achromatic trail that lies
behind the object (so a single frame shows which way it moves) and leaves the object itself untouched."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rehyat.toy.world import PACKED_WORLD, ToyPrompt, World, render, velocity

PROMPT = ToyPrompt("red", "circle", "right", "fast", "plain")


def test_third_world_defaults():
    video = render(PROMPT, seed=1, world=PACKED_WORLD)
    assert video.shape == (3, 81, 32, 32) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert torch.equal(video, render(PROMPT.text, 81, 32, 32, seed=1, world=PACKED_WORLD))
    # Half a pixel and a pixel per frame: one and two latent pixels per latent frame of 4 frames.
    assert velocity(PROMPT, 32, 32, PACKED_WORLD) == (1.0, 0.0)
    assert velocity(dataclasses.replace(PROMPT, speed="slow", direction="up"), 32, 32, PACKED_WORLD) == (
        0.0,
        -0.5,
    )
    assert render(PROMPT, seed=1).shape == (3, 16, 32, 32)  # the second world stays the default


def test_world_checks_its_settings():
    with pytest.raises(ValueError, match="slow < fast"):
        World("bad", 0.1, 0.05, 8, 16, 16)
    with pytest.raises(ValueError, match="trail"):
        World("bad", 0.01, 0.02, 8, 16, 16, trail=1.0)
    with pytest.raises(ValueError, match="frames_per_latent"):
        World("bad", 0.01, 0.02, 8, 16, 16, frames_per_latent=0)


def chroma(video: torch.Tensor) -> torch.Tensor:
    rgb = (video + 1) / 2
    return rgb - rgb.mean(0, keepdim=True)


def test_trail_is_achromatic_and_behind_the_object():
    plain = dataclasses.replace(PACKED_WORLD, trail=0.0, trail_depth=0.0)
    for direction, axis, sign in (("right", 2, 1), ("left", 2, -1), ("down", 1, 1), ("up", 1, -1)):
        prompt = dataclasses.replace(PROMPT, direction=direction)
        video, bare = render(prompt, seed=3, world=PACKED_WORLD), render(prompt, seed=3, world=plain)
        assert torch.allclose(chroma(video), chroma(bare), atol=1e-6)  # the object is untouched
        shadow = (bare - video).mean(0)  # [F, H, W]: how far the trail darkens each pixel
        assert shadow.min() > -1e-6 and shadow.amax((1, 2)).min() > 0.2  # every frame, frame 0 too
        # The shadow's centre lies behind the object's (wrap-aware, along the motion).
        coverage = chroma(bare).norm(dim=0)
        extent = video.shape[axis + 1]
        angle = 2 * np.pi * (torch.arange(extent) + 0.5) / extent
        profile_dims = (2,) if axis == 1 else (1,)

        def centre(weights, angle=angle, profile_dims=profile_dims):
            profile = weights.sum(profile_dims)  # [F, extent]
            return torch.atan2((profile * angle.sin()).sum(1), (profile * angle.cos()).sum(1))

        lag = torch.remainder(centre(coverage) - centre(shadow) + np.pi, 2 * np.pi) - np.pi
        assert (sign * lag > 0.3).all(), direction  # > 1.5 px behind in every frame


def test_trail_is_longer_behind_a_faster_object():
    lengths = {}
    for speed in ("slow", "fast"):
        prompt = dataclasses.replace(PROMPT, speed=speed, shape="square")
        bare = render(prompt, seed=0, world=dataclasses.replace(PACKED_WORLD, trail=0.0, trail_depth=0.0))
        shadow = (bare - render(prompt, seed=0, world=PACKED_WORLD)).mean(0)
        lengths[speed] = float((shadow > 0.02).sum((1, 2)).float().mean())
    assert lengths["fast"] > 1.6 * lengths["slow"]


def test_offsets_and_scales_move_and_resize_the_object():
    frames = 9
    base = render(PROMPT, frames, seed=2, world=PACKED_WORLD)
    offsets = np.zeros((frames, 2))
    offsets[5:, 1] = 3.0  # three pixels down from frame 5 on
    moved = render(PROMPT, frames, seed=2, world=PACKED_WORLD, offsets=offsets)
    assert torch.equal(moved[:, :5], base[:, :5])
    assert torch.allclose(chroma(moved[:, 5:]), torch.roll(chroma(base[:, 5:]), 3, dims=2), atol=1e-5)
    scaled = render(PROMPT, frames, seed=2, world=PACKED_WORLD, scales=np.linspace(1, 1.5, frames))
    area = chroma(scaled).norm(dim=0).sum((1, 2))
    assert float(area[-1] / area[0]) == pytest.approx(2.25, rel=0.03)
    with pytest.raises(ValueError, match=r"offsets must have shape \[9, 2\]"):
        render(PROMPT, frames, world=PACKED_WORLD, offsets=np.zeros((frames, 3)))
    with pytest.raises(ValueError, match=r"scales must have shape \[9\]"):
        render(PROMPT, frames, world=PACKED_WORLD, scales=np.ones(8))


@pytest.mark.parametrize(("saved", "space"), [("packed", "packed"), ("v3", "packed"), ("v2", "one-frame")])
def test_a_saved_toy_world_json_loads_by_its_name_or_its_former_name(tmp_path, saved, space):
    """Folders written before the worlds had descriptive names (``{"world": "v3"}``) still load."""
    import json

    from rehyat.toy.model import SPACE_FILE, toy_space

    (tmp_path / SPACE_FILE).write_text(json.dumps({"world": saved}) + "\n")
    assert toy_space(tmp_path).name == space


@pytest.mark.parametrize(("former", "current"), [("V2", "ONE_FRAME_WORLD"), ("V3", "PACKED_WORLD")])
def test_the_worlds_former_names_still_import_with_a_deprecation_warning(former, current):
    from rehyat.toy import world

    namespace: dict = {}
    with pytest.warns(DeprecationWarning, match=f"rehyat.toy.world.{former} is deprecated: use .*{current}"):
        exec(f"from rehyat.toy.world import {former}", namespace)
    assert namespace[former] is getattr(world, current)
    with pytest.raises(AttributeError, match="no_such_world"):
        world.no_such_world  # noqa: B018
