"""Latent dataset folders: round trip, per-rank sample order, clear errors for damaged folders."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import LATENT_SHAPE, PROMPT_SHAPE, tiny_dataset

from rehyat.training.data import LatentDataset, SampleOrder, write_latent_dataset


def test_round_trip_across_shards(tmp_path):
    gen = torch.Generator().manual_seed(0)
    pairs = [
        (torch.randn(*LATENT_SHAPE, generator=gen), torch.randn(*PROMPT_SHAPE, generator=gen))
        for _ in range(5)
    ]
    write_latent_dataset(tmp_path / "d", pairs, shard_size=2)
    dataset = LatentDataset(tmp_path / "d")
    assert len(dataset) == 5 and len(list((tmp_path / "d").glob("shard-*.safetensors"))) == 3
    for i, (latent, prompt) in enumerate(pairs):
        assert torch.equal(dataset[i][0], latent) and torch.equal(dataset[i][1], prompt)
    latents, prompts = dataset.batch([4, 0])
    assert latents.shape == (2, *LATENT_SHAPE) and torch.equal(prompts[0], pairs[4][1])


def test_sample_order_is_disjoint_across_ranks_and_covers_each_epoch():
    order = SampleOrder(12, seed=3, micro_batch=2, accumulation=3, world=2)  # 12 samples per step
    for step in range(3):
        seen = [i for m in range(3) for r in range(2) for i in order.indices(step, m, r)]
        assert sorted(seen) == list(range(12))  # one step = one epoch here: every sample once
    assert order.indices(0, 0, 0) == SampleOrder(12, 3, 2, 3, 2).indices(0, 0, 0)
    assert order.indices(0, 0, 0) != order.indices(1, 0, 0)  # reshuffled every epoch


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        LatentDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="it is empty"):
        LatentDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="share one shape"):
        write_latent_dataset(
            tmp_path / "mixed",
            [
                (torch.zeros(*LATENT_SHAPE), torch.zeros(*PROMPT_SHAPE)),
                (torch.zeros(16, 5, 8, 8), torch.zeros(*PROMPT_SHAPE)),
            ],
        )
    folder = tiny_dataset(tmp_path / "d", samples=4, shard_size=2)
    with pytest.raises(ValueError, match="already holds a dataset"):
        tiny_dataset(folder)

    shard = folder / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"shard-00001\.safetensors is damaged or truncated"):
        LatentDataset(folder)
    shard.write_bytes(data)

    index = json.loads((folder / "index.json").read_text())
    index["latent_shape"][1] = 7
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=r"latents has shape \(2, 16, 4, 8, 8\), the index says \(2, 16, 7, 8, 8\)"
    ):
        LatentDataset(folder)
