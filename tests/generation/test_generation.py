"""Generation on CPU with tiny models: the converted DiT inside WanPipeline, the recurrent sampler,
video files, and `rehyat generate` on a local folder."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from tiny_pipeline import VIDEO, prompt_embeds, tiny_pipeline

from rehyat import ReHyAtConfig, convert_wan, save_rehyat
from rehyat.cli import main
from rehyat.generation import (
    generate_latents,
    generate_video,
    latent_shape,
    make_scheduler,
    write_video,
)

from conftest import rel_err

SHAPE = latent_shape(1, 16, **VIDEO)


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline(with_text_encoder=False)
    convert_wan(pipe.transformer, ReHyAtConfig(chunk_frames=3, overlap_frames=1, feature_init="random"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_latent_shape():
    assert SHAPE == (1, 16, 7, 8, 8)
    assert latent_shape(1, 16, 81, 480, 832) == (1, 16, 21, 60, 104)
    with pytest.raises(ValueError, match="num_frames"):
        latent_shape(1, 16, 80, 480, 832)
    with pytest.raises(ValueError, match="multiples of 16"):
        latent_shape(1, 16, 81, 488, 832)


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_recurrent_sampler_reproduces_wan_pipeline(pipe, guidance):
    """The converted transformer runs unchanged in WanPipeline (parallel form, prompt_embeds given); the
    recurrent sampler with the same noise gives the same latents."""
    embeds, negative = prompt_embeds()
    parallel = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=3,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **VIDEO,
    ).frames
    recurrent = generate_latents(
        pipe.transformer,
        embeds,
        negative,
        scheduler=pipe.scheduler,
        latent_shape=SHAPE,
        num_inference_steps=3,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert recurrent.shape == parallel.shape == SHAPE
    assert rel_err(recurrent, parallel) < 1e-4


def test_wan_pipeline_decodes_a_video_with_the_converted_transformer(pipe):
    embeds, negative = prompt_embeds()
    video = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=2,
        output_type="np",
        **VIDEO,
    ).frames
    assert video.shape == (1, 25, 64, 64, 3) and np.isfinite(video).all()


def test_generate_video_writes_mp4_and_gif(pipe, tmp_path):
    embeds, negative = prompt_embeds()
    frames = generate_video(
        pipe,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        progress=False,
        **VIDEO,
    )
    assert frames.shape == (1, 25, 64, 64, 3) and frames.dtype == np.uint8
    mp4 = write_video(frames[0], tmp_path / "out.mp4", fps=8)
    assert len(imageio.mimread(mp4)) == 25
    gif = write_video(frames[0], tmp_path / "out.gif")
    assert np.asarray(imageio.mimread(gif)).shape[:3] == (25, 64, 64)
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        write_video(frames[0], tmp_path / "out.avi")
    with pytest.raises(ValueError, match="uint8"):
        write_video(frames[0].astype(np.float32), tmp_path / "x.mp4")


def test_euler_scheduler_and_errors(pipe):
    embeds, negative = prompt_embeds()
    latents = generate_latents(
        pipe.transformer,
        embeds,
        negative,
        scheduler=make_scheduler("euler", 5.0),
        latent_shape=SHAPE,
        num_inference_steps=2,
        progress=False,
    )
    assert torch.isfinite(latents).all()
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        generate_latents(pipe.transformer, embeds, scheduler=pipe.scheduler, latent_shape=SHAPE)
    with pytest.raises(ValueError, match="scheduler kind"):
        make_scheduler("ddim")


def test_generate_cli_on_a_local_wan_folder(tmp_path):
    """A folder as WanPipeline.save_pretrained writes it (tiny UMT5 + offline tokenizer), a ReHyAt
    checkpoint beside it, and `rehyat generate` writing an MP4."""
    full = tiny_pipeline(with_text_encoder=True)
    full.save_pretrained(tmp_path / "wan")
    convert_wan(full.transformer, ReHyAtConfig(chunk_frames=2, overlap_frames=1))
    save_rehyat(full.transformer, tmp_path / "rehyat")
    out = tmp_path / "video.mp4"
    args = ["generate", "--model", str(tmp_path / "wan"), "--prompt", "a cat on the moon"]
    args += ["--frames", "25", "--height", "64", "--width", "64", "--steps", "2", "--output", str(out)]
    assert main([*args, "--rehyat", str(tmp_path / "rehyat")]) == 0
    assert len(imageio.mimread(out)) == 25
    first = imageio.mimread(out)
    assert main([*args, "--rehyat", str(tmp_path / "rehyat"), "--chunks-per-call", "3"]) == 0
    again = imageio.mimread(out)  # the same video (to float rounding, through the MP4 encoder)
    assert len(again) == 25 and np.abs(np.stack(again).astype(float) - np.stack(first)).mean() < 0.5
    assert main([*args, "--frames", "24"]) == 2  # bad frame count: clear error, exit code 2
