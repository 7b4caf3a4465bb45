"""Sampling toy videos in batches: each prompt keeps its own seed's noise, so batching changes nothing."""

from __future__ import annotations

import pytest
import torch

from rehyat.models import ReHyAtConfig, convert_wan
from rehyat.toy.evaluate import sample_videos, toy_prompts
from rehyat.toy.model import CLIP, bundled_teacher, load_text_encoder, load_toy_model, prompt_embeddings


@pytest.fixture(scope="module")
def embeds() -> torch.Tensor:
    return prompt_embeddings(load_text_encoder(bundled_teacher()), toy_prompts(3, seed=5))


@pytest.mark.parametrize("recurrent", [False, True], ids=["parallel", "recurrent"])
def test_batched_sampling_matches_one_video_at_a_time(embeds, recurrent):
    torch.manual_seed(0)
    model = load_toy_model(bundled_teacher(), None, torch.device("cpu"))
    if recurrent:
        convert_wan(model, ReHyAtConfig(chunk_frames=2, overlap_frames=1))
    kwargs = dict(frames=5, steps=2, guidance_scale=4.0, first_seed=7, recurrent=recurrent)
    one_by_one = sample_videos(model, embeds, batch_size=1, **kwargs)
    batched = sample_videos(model, embeds, batch_size=2, **kwargs)  # a full batch and a short last one
    assert len(batched) == 3 and batched[0].shape == (3, 5, CLIP["height"], CLIP["width"])
    for a, b in zip(one_by_one, batched, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # The noise follows the prompt's index: the second video alone from seed 8 is the batch's second.
    alone = sample_videos(model, embeds[1:2], **{**kwargs, "first_seed": 8})
    torch.testing.assert_close(batched[1], alone[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])


def test_batch_size_must_be_positive(embeds):
    model = load_toy_model(bundled_teacher(), None, torch.device("cpu"))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        sample_videos(
            model, embeds, frames=2, steps=1, guidance_scale=1.0, first_seed=0, recurrent=False, batch_size=0
        )


def test_evaluate_model_breaks_direction_speed_and_shape_down_by_prompt():
    from rehyat.toy.evaluate import evaluate_model

    metrics = evaluate_model(bundled_teacher(), prompts=6, frames=3, steps=1, seed=5, batch_size=6)
    chosen = toy_prompts(6, 5)
    for name in ("direction", "speed"):
        parts = {speed: sum(p.speed == speed for p in chosen) for speed in ("slow", "fast")}
        assert {f"{name}_{s}" for s, n in parts.items() if n} <= metrics.keys()
        mean = sum(n * metrics[f"{name}_{s}"] for s, n in parts.items() if n) / len(chosen)
        assert mean == pytest.approx(metrics[f"{name}_accuracy"])
    shapes = {p.shape for p in chosen}
    assert {
        k for k in metrics if k.startswith("shape_") and k != "shape_accuracy" and k != "shape_drift"
    } == {f"shape_{s}" for s in shapes}
    mean = sum(sum(p.shape == s for p in chosen) * metrics[f"shape_{s}"] for s in shapes) / len(chosen)
    assert mean == pytest.approx(metrics["shape_accuracy"])
    assert "per_clip" not in metrics
