"""Latent dataset folders: round trip, per-rank sample order, clear errors for damaged folders."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import LATENT_SHAPE, PROMPT_SHAPE, tiny_dataset

from rehyat.training.data import (
    LatentDataset,
    SampleOrder,
    build_latent_dataset,
    prepare_video,
    write_latent_dataset,
)


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


def test_conditioning_tensors_round_trip_beside_the_pairs(tmp_path):
    """A family's other per-sample inputs (HunyuanVideo's pooled CLIP projection) are named tensors."""
    gen = torch.Generator().manual_seed(0)
    samples = [
        (torch.randn(*LATENT_SHAPE, generator=gen), torch.randn(*PROMPT_SHAPE, generator=gen), {"pooled": p})
        for p in torch.randn(5, 3, generator=gen)
    ]
    write_latent_dataset(tmp_path / "d", samples, shard_size=2)
    dataset = LatentDataset(tmp_path / "d")
    assert dataset.conditioning_shapes == {"pooled": (3,)}
    assert torch.equal(
        dataset.conditioning([4, 0])["pooled"],
        torch.stack([samples[4][2]["pooled"], samples[0][2]["pooled"]]),
    )
    assert torch.equal(dataset[1][1], samples[1][1])  # the pairs read as before
    assert tiny_dataset(tmp_path / "plain") and LatentDataset(tmp_path / "plain").conditioning([0]) == {}
    with pytest.raises(ValueError, match="share one shape"):  # every sample has the same conditioning
        write_latent_dataset(tmp_path / "mixed", [samples[0], samples[1][:2]])


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


def test_build_latent_dataset_encodes_videos_with_the_wan_vae(tmp_path):
    import imageio.v3 as iio
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    gen = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (6, 20, 24, 3), dtype=torch.uint8, generator=gen)
    iio.imwrite(tmp_path / "clip.mp4", clip.numpy(), fps=8)
    embeds = [torch.randn(*PROMPT_SHAPE, generator=gen) for _ in range(2)]
    kwargs = dict(num_frames=5, height=16, width=16)
    folder = build_latent_dataset(
        tmp_path / "d", [clip, tmp_path / "clip.mp4"], vae, prompt_embeds=embeds, **kwargs
    )

    dataset = LatentDataset(folder)
    assert (
        len(dataset) == 2 and dataset.latent_shape == (16, 2, 2, 2) and torch.equal(dataset[1][1], embeds[1])
    )
    video = prepare_video(clip, **kwargs)
    assert video.shape == (1, 3, 5, 16, 16) and video.min() >= -1 and video.max() <= 1
    z = vae.encode(video).latent_dist.mode()[0]
    mean, std = (torch.tensor(vae.config[k]).view(-1, 1, 1, 1) for k in ("latents_mean", "latents_std"))
    assert torch.allclose(dataset[0][0], (z - mean) / std, atol=1e-5)  # WanPipeline's normalisation
    with pytest.raises(ValueError, match="4k \\+ 1"):
        prepare_video(clip, num_frames=4, height=16, width=16)


def test_build_latent_dataset_stores_precomputed_conditioning(tmp_path):
    """Precomputed embeddings carry the family's other prompt tensors (HunyuanVideo's pooled projection
    and mask) into the dataset, as encoded prompts do; malformed conditioning fails before any write."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    gen = torch.Generator().manual_seed(0)
    clips = [torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8, generator=gen) for _ in range(2)]
    embeds = [torch.randn(*PROMPT_SHAPE, generator=gen) for _ in range(2)]
    extra = [
        {
            "pooled_prompt_embeds": torch.randn(6, generator=gen),
            "prompt_attention_mask": torch.ones(PROMPT_SHAPE[0]),
        }
        for _ in range(2)
    ]
    kwargs = dict(num_frames=5, height=16, width=16)
    folder = build_latent_dataset(
        tmp_path / "d", clips, vae, prompt_embeds=embeds, conditioning=extra, **kwargs
    )
    dataset = LatentDataset(folder)
    stored = dataset.conditioning([0, 1])
    assert set(stored) == {"pooled_prompt_embeds", "prompt_attention_mask"}
    assert torch.equal(
        stored["pooled_prompt_embeds"], torch.stack([e["pooled_prompt_embeds"] for e in extra])
    )
    with pytest.raises(ValueError, match="one conditioning mapping per video: 1 for 2"):
        build_latent_dataset(
            tmp_path / "e", clips, vae, prompt_embeds=embeds, conditioning=extra[:1], **kwargs
        )
    with pytest.raises(ValueError, match=r"conditioning\[1\]\['pooled_prompt_embeds'\] must be a tensor"):
        bad = [extra[0], {"pooled_prompt_embeds": [1.0]}]
        build_latent_dataset(tmp_path / "e", clips, vae, prompt_embeds=embeds, conditioning=bad, **kwargs)
    assert not (tmp_path / "e").exists()


def test_shards_must_lie_inside_the_dataset_folder_and_be_listed_once(tmp_path):
    elsewhere = tiny_dataset(tmp_path / "elsewhere", samples=2, shard_size=2)
    folder = tiny_dataset(tmp_path / "d", samples=2, shard_size=2)
    (folder / "link.safetensors").symlink_to(elsewhere / "shard-00000.safetensors")
    index = json.loads((folder / "index.json").read_text())

    def with_shards(*names, samples=2):
        index["shards"] = [{"file": name, "samples": samples} for name in names]
        index["samples"] = max(samples * len(names), 1)
        (folder / "index.json").write_text(json.dumps(index))
        return folder

    outside = [
        "../elsewhere/shard-00000.safetensors",
        str(elsewhere / "shard-00000.safetensors"),
        "link.safetensors",  # a link inside the folder to a file outside it
    ]
    for name in outside:
        with pytest.raises(ValueError, match=r"outside the dataset folder"):
            LatentDataset(with_shards(name))
    with pytest.raises(ValueError, match=r"lists shard \./shard-00000\.safetensors twice"):
        LatentDataset(with_shards("shard-00000.safetensors", "./shard-00000.safetensors"))
    with pytest.raises(ValueError, match=r"shards\[0\]\.samples must be >= 1"):
        LatentDataset(with_shards("shard-00000.safetensors", samples=0))
    assert len(LatentDataset(with_shards("shard-00000.safetensors"))) == 2
