"""Non-finite values in training: a NaN in the data stops the run (or is skipped, counted and logged up to
``max_nonfinite_steps``); nothing non-finite is ever checkpointed and the last finite checkpoint stays."""

from __future__ import annotations

import math

import pytest
import torch
from finetune_helpers import LATENT_SHAPE, PROMPT_SHAPE, tiny_config, tiny_overrides

from rehyat.cli import main
from rehyat.training.checkpoint import NonFiniteError, first_nonfinite, latest_checkpoint, load_checkpoint
from rehyat.training.data import SampleOrder, write_latent_dataset
from rehyat.training.finetune import finetune
from rehyat.training.metrics import read_metrics


def nan_dataset(path, nan_at_steps: list[int], samples: int = 8):
    """A tiny dataset whose samples read at the given (0-based) steps of a seed-0, batch-1 run hold a NaN."""
    order = SampleOrder(samples, seed=0, micro_batch=1, accumulation=1, world=1)
    bad = {order.indices(step, 0, 0)[0] for step in nan_at_steps}
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for index in range(samples):
        latent = torch.randn(*LATENT_SHAPE, generator=gen)
        if index in bad:
            latent[0, 0, 0, 0] = float("nan")
        pairs.append((latent, torch.randn(*PROMPT_SHAPE, generator=gen)))
    return write_latent_dataset(path, pairs, shard_size=3)


def test_a_nan_latent_stops_the_run_with_rc_2_and_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    data, out = nan_dataset(tmp_path / "data", nan_at_steps=[2]), tmp_path / "run"
    overrides = tiny_overrides(out, data, steps=6, checkpoint_every=1, keep_checkpoints=1)
    assert main(["finetune", "--set", *overrides]) == 2
    error = capsys.readouterr().err
    assert "step 3: the loss is nan" in error and "max_nonfinite_steps=0" in error
    checkpoint = load_checkpoint(latest_checkpoint(out / "checkpoints"))  # finite, or it would raise
    assert checkpoint.step == 2 and first_nonfinite(checkpoint.model) is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    assert not (out / "final").exists()
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["loss"] == "nan"


def test_non_finite_steps_are_skipped_counted_and_logged_up_to_the_limit(tmp_path):
    data = nan_dataset(tmp_path / "data", nan_at_steps=[1, 3])
    result = finetune(tiny_config(tmp_path / "a", data, steps=4, max_nonfinite_steps=2, ema_decay=0.5))
    records = read_metrics(result.output_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r.get("skipped") for r in records] == [None, "non-finite", None, "non-finite"]
    assert [r["nonfinite_steps"] for r in records] == [0, 1, 1, 2]
    assert all(math.isfinite(r["loss"]) for r in (records[0], records[2]))
    final = load_checkpoint(latest_checkpoint(result.output_dir / "checkpoints"))
    assert first_nonfinite(final.model) is None and first_nonfinite(final.extra["ema"]) is None
    assert final.metadata["nonfinite_steps"] == 2

    with pytest.raises(NonFiniteError, match=r"step 4: the loss is nan.* 2 non-finite steps"):
        finetune(tiny_config(tmp_path / "b", data, steps=4, max_nonfinite_steps=1))
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000002"
    with pytest.raises(ValueError, match=r"max_nonfinite_steps must be >= 0"):
        tiny_config(tmp_path / "c", data, max_nonfinite_steps=-1)
