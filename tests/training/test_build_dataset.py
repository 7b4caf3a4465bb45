"""`rehyat build-dataset` on a tiny pipeline folder of every family: the latents are the family's VAE
encoding normalised as its diffusers pipeline un-normalises before decoding, the prompt tensors are the
pipeline's own ``encode_prompt`` outputs, and `rehyat finetune` trains that family on the dataset."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch
from diffusers import LTXPipeline

from generation.tiny_pipeline import tiny_family_pipeline, tiny_pipeline
from rehyat.cli import main
from rehyat.models.ltx import LTX_VIDEO
from rehyat.settings import load_config
from rehyat.training.data import LatentDataset, prepare_video, read_video
from rehyat.training.finetune import FinetuneConfig, finetune

# family → (frames, height, width): two latent frames of the smallest size its VAE and patch take
VIDEOS = {
    "wan": (5, 32, 32),
    "skyreels-v2": (5, 32, 32),
    "ltx-video": (9, 16, 16),
    "hunyuan-video": (5, 32, 32),
    "cogvideox": (5, 32, 32),
}
PROMPTS = ["a cat on the moon", "a dog"]


def _pipeline(name: str):
    """The family's tiny pipeline; LTX-Video's VAE gets a non-trivial latent mean, std and scale."""
    pipe = tiny_pipeline() if name == "wan" else tiny_family_pipeline(name)
    if name == "ltx-video":
        gen = torch.Generator().manual_seed(1)
        pipe.vae.latents_mean.copy_(torch.randn(pipe.vae.latents_mean.shape, generator=gen))
        pipe.vae.latents_std.copy_(torch.rand(pipe.vae.latents_std.shape, generator=gen) + 0.5)
        pipe.vae.register_to_config(scaling_factor=0.7)
    return pipe


def _expected_latent(name: str, vae, video: torch.Tensor) -> torch.Tensor:
    """The VAE's posterior mean of ``video``, normalised as the family's pipeline expects its latents."""
    with torch.no_grad():
        z = vae.encode(video).latent_dist.mode()
    if name in ("wan", "skyreels-v2"):  # WanPipeline: latents / (1 / std) + mean before decoding
        mean, std = (
            torch.tensor(vae.config[k]).view(1, -1, 1, 1, 1) for k in ("latents_mean", "latents_std")
        )
        z = (z - mean) / std
    elif name == "ltx-video":
        z = LTXPipeline._normalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    else:  # HunyuanVideo divides by scaling_factor before decoding, CogVideoX's video-to-video multiplies
        z = z * vae.config.scaling_factor
    return z[0]


def _expected_prompt(name: str, pipe, prompt: str) -> dict[str, torch.Tensor]:
    """The pipeline's own ``encode_prompt`` at the length its ``__call__`` pads to."""
    if name == "hunyuan-video":
        embeds, pooled, mask = pipe.encode_prompt(prompt, max_sequence_length=256)
        return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, prompt_attention_mask=mask)
    length = {"ltx-video": 128, "cogvideox": 226}.get(name, 512)
    encoded = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=length)
    if name == "ltx-video":
        return dict(prompt_embeds=encoded[0], prompt_attention_mask=encoded[1])
    return dict(prompt_embeds=encoded[0])


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_build_dataset_encodes_as_the_familys_pipeline_and_finetune_trains_on_it(name, tmp_path, capsys):
    pipe = _pipeline(name)
    pipe.save_pretrained(tmp_path / "model")
    frames, height, width = VIDEOS[name]
    gen = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (frames + 2, height + 16, width + 16, 3), dtype=torch.uint8, generator=gen)
    iio.imwrite(tmp_path / "clip.mp4", clip.numpy(), fps=8)
    rows = [{"video": "clip.mp4", "prompt": prompt} for prompt in PROMPTS]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["build-dataset", "--model", tmp_path / "model", "--manifest", tmp_path / "manifest.jsonl"]
    size = ["--height", height, "--width", width, "--device", "cpu"]

    def build(out: str, *extra) -> int:
        return main([str(a) for a in (*argv, "--out", tmp_path / out, *size, *extra)])

    temporal = 8 if name == "ltx-video" else 4
    assert build("bad", "--frames", frames + 1) == 2  # not tk + 1: refused before anything is loaded
    assert f"takes {temporal}k + 1 frames" in capsys.readouterr().err
    assert build("bad", "--frames", frames, "--width", width + 4) == 2
    assert "height and width must be positive multiples" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert build("data", "--frames", frames) == 0

    dataset = LatentDataset(tmp_path / "data")
    video = prepare_video(read_video(tmp_path / "clip.mp4"), frames, height, width, temporal)
    latent = _expected_latent(name, pipe.vae, video)
    assert latent.shape[1] == 2 and dataset.latent_shape == tuple(latent.shape)
    for index, prompt in enumerate(PROMPTS):
        assert torch.allclose(dataset[index][0], latent, atol=1e-5)
        expected = _expected_prompt(name, pipe, prompt)
        stored = {"prompt_embeds": dataset[index][1], **dataset.conditioning([index])}
        assert set(stored) == set(expected)
        for key, value in expected.items():
            assert torch.equal(stored[key].squeeze(0), value[0].detach().float()), key

    if name == "ltx-video":  # training masks the T5 padding as LTXPipeline does
        mask = dataset.conditioning([1])["prompt_attention_mask"]
        latents, prompt_embeds = dataset.batch([1])
        call = LTX_VIDEO.denoiser_inputs(
            pipe.transformer, latents, torch.zeros(1), prompt_embeds, prompt_attention_mask=mask
        )
        assert 0 < mask.sum() < mask.numel() and torch.equal(call["encoder_attention_mask"], mask)

    overrides = {
        "output_dir": tmp_path / "run",
        "data.path": tmp_path / "data",
        "model.path": tmp_path / "model",
        "model.rehyat": '{"chunk_frames": 2, "feature_init": "random"}',
        "model.gradient_checkpointing": "false",
        "steps": 1,
        "mixed_precision": "no",
        "progress": "false",
    }
    config = load_config(FinetuneConfig, None, [f"{k}={v}" for k, v in overrides.items()])
    result = finetune(config)
    assert result.model is not None and (tmp_path / "run" / "final").is_dir()


def test_build_dataset_names_the_supported_pipelines(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "manifest.jsonl").write_text('{"video": "clip.mp4", "prompt": "a cat"}\n')
    argv = ["build-dataset", "--model", tmp_path / "model", "--manifest", tmp_path / "manifest.jsonl"]
    assert main([str(a) for a in (*argv, "--out", tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model_index.json is for 'StableDiffusionPipeline'" in lines[0]
    pipelines = (
        "WanPipeline",
        "SkyReelsV2Pipeline",
        "LTXPipeline",
        "HunyuanVideoPipeline",
        "CogVideoXPipeline",
    )
    assert all(pipeline in lines[0] for pipeline in pipelines)


def test_a_temporal_patch_needs_a_multiple_of_it_in_latent_frames(tmp_path):
    """CogVideoX 1.5 patches 2 latent frames per token: a frame count that gives an odd number of latent
    frames is refused before anything loads, naming the transformer's config."""
    from rehyat.training.data import check_video_size

    folder = tmp_path / "cogvideox-1.5"
    for name, config in (
        ("model_index.json", {"_class_name": "CogVideoXPipeline"}),
        ("vae/config.json", {"temporal_compression_ratio": 4, "block_out_channels": [8, 8, 8, 8]}),
        ("transformer/config.json", {"patch_size": 2, "patch_size_t": 2}),
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(config))
    check_video_size(folder, 5, 32, 32)  # 2 latent frames
    with pytest.raises(
        ValueError,
        match=r"transformer.config\.json: the transformer patches 2 latent frames.* 9 frames give 3",
    ):
        check_video_size(folder, 9, 32, 32)
