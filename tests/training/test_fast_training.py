"""Stage 2's speed options change nothing it learns: batches read one step ahead are the batches the
sample order names, in order, a preloaded dataset gives the samples the files hold, and a run with
compiled blocks or a preloaded dataset trains the weights the plain run does."""

from __future__ import annotations

import importlib
import threading

import pytest
import torch
from finetune_helpers import tiny_config, tiny_dataset

from rehyat.training.data import (
    LatentDataset,
    PreloadedDataset,
    SampleOrder,
    preload_refusal,
    write_latent_dataset,
)
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


def test_a_preloaded_dataset_gives_the_samples_the_shards_hold(tmp_path):
    gen = torch.Generator().manual_seed(0)
    samples = [
        (
            torch.randn(2, 3, 4, 4, generator=gen),
            torch.randn(5, 6, generator=gen),
            {"mask": torch.rand(5) > 0.5},
        )
        for _ in range(7)
    ]
    dataset = LatentDataset(write_latent_dataset(tmp_path / "data", samples, shard_size=3))
    preloaded = PreloadedDataset(dataset, "cpu")
    assert len(preloaded) == 7 and preloaded.conditioning_shapes == {"mask": (5,)}
    indices = [6, 0, 3, 3, 5]  # across the three shards, one twice
    for got, want in zip(preloaded.batch(indices), dataset.batch(indices), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(preloaded.conditioning(indices)["mask"], dataset.conditioning(indices)["mask"])
    order = SampleOrder(7, seed=1, micro_batch=2, accumulation=1, world=1)
    with StepBatches(preloaded, order, rank=0, accumulation=1, device="cpu", start=0, stop=4) as batches:
        for step, (batch,) in enumerate(batches):
            assert torch.equal(batch.latents, dataset.batch(order.indices(step, 0, 0))[0])


def test_preloading_refuses_a_dataset_larger_than_half_the_free_memory(tmp_path):
    dataset = LatentDataset(tiny_dataset(tmp_path / "data", samples=4))
    need = 4 * (torch.Size(dataset.latent_shape).numel() + torch.Size(dataset.prompt_shape).numel()) * 4
    assert preload_refusal(dataset, torch.device("cuda"), free=2 * need) is None
    refusal = preload_refusal(dataset, torch.device("cuda"), free=2 * need - 1)
    assert refusal is not None and refusal.startswith(f"data.preload: dataset {dataset.path} takes 0.0 GiB")
    assert refusal.endswith("set data.preload=false")
    assert preload_refusal(dataset, torch.device("cpu")) is None


def test_a_preloaded_run_trains_the_weights_a_reading_run_does(tmp_path, monkeypatch):
    trainer = importlib.import_module(
        "rehyat.training.finetune.trainer"
    )  # the package's name is a function too
    made = []

    class Recorded(PreloadedDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(trainer, "PreloadedDataset", Recorded)
    data = tiny_dataset(tmp_path / "data")
    reading = finetune(tiny_config(tmp_path / "reading", data, steps=2, save="false")).model.state_dict()
    assert not made
    run = tiny_config(tmp_path / "preloaded", data, steps=2, save="false", **{"data.preload": "true"})
    preloaded = finetune(run).model.state_dict()
    assert len(made) == 1
    for name, value in reading.items():
        assert torch.equal(preloaded[name], value), name
