"""Stage 2's speed options change nothing it learns: batches read one step ahead are the batches the
sample order names, in order, and a run with compiled blocks trains the weights eager training does."""

from __future__ import annotations

import threading

import pytest
import torch
from finetune_helpers import tiny_config, tiny_dataset

from rehyat.training.data import LatentDataset, SampleOrder
from rehyat.training.finetune import finetune
from rehyat.training.prefetch import StepBatches


def test_prefetched_batches_are_the_sample_orders_in_order(tmp_path):
    dataset = LatentDataset(tiny_dataset(tmp_path / "data", samples=7))
    order = SampleOrder(len(dataset), seed=3, micro_batch=2, accumulation=2, world=2)
    with StepBatches(dataset, order, rank=1, accumulation=2, device="cpu", start=2, stop=6) as batches:
        steps = list(batches)
    assert len(steps) == 4
    for step, micro_batches in zip(range(2, 6), steps, strict=True):
        assert len(micro_batches) == 2
        for micro, batch in enumerate(micro_batches):
            indices = order.indices(step, micro, 1)
            latents, prompts = dataset.batch(indices)
            assert batch.indices == indices
            assert torch.equal(batch.latents, latents) and torch.equal(batch.prompt_embeds, prompts)
            assert batch.conditioning == {}


def test_a_failed_read_raises_at_the_step_that_needed_it(tmp_path, monkeypatch):
    dataset = LatentDataset(tiny_dataset(tmp_path / "data"))
    order = SampleOrder(len(dataset), seed=0, micro_batch=1, accumulation=1, world=1)
    real, reads = dataset.batch, []

    def fail_on_the_third(indices):
        reads.append(indices)
        if len(reads) == 3:
            raise ValueError("shard damaged")
        return real(indices)

    monkeypatch.setattr(dataset, "batch", fail_on_the_third)
    batches = StepBatches(dataset, order, rank=0, accumulation=1, device="cpu", start=0, stop=5)
    next(batches), next(batches)
    with pytest.raises(ValueError, match="shard damaged"):
        next(batches)
    batches.close()


def test_closing_early_stops_the_reader_thread(tmp_path):
    dataset = LatentDataset(tiny_dataset(tmp_path / "data"))
    order = SampleOrder(len(dataset), seed=0, micro_batch=2, accumulation=1, world=1)
    before = threading.active_count()
    batches = StepBatches(dataset, order, rank=0, accumulation=1, device="cpu", start=0, stop=100)
    next(batches)
    batches.close()
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("rehyat-batches")]


def test_compiled_blocks_train_the_weights_eager_training_does(tmp_path):
    """Two steps with model.compile=true end at eager's weights (to rounding), under the same names, and
    a resume may turn compilation off."""
    data = tiny_dataset(tmp_path / "data")
    eager = finetune(tiny_config(tmp_path / "eager", data, steps=2, save="false")).model.state_dict()
    torch._dynamo.reset()
    run = tiny_config(tmp_path / "compiled", data, steps=2, checkpoint_every=1, **{"model.compile": "true"})
    compiled = finetune(run).model
    assert compiled.blocks[0]._compiled_call_impl is not None
    state = compiled.state_dict()
    assert state.keys() == eager.keys()
    for name, value in eager.items():
        torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    torch._dynamo.reset()
    finetune(tiny_config(tmp_path / "compiled", data, steps=3, checkpoint_every=1))
