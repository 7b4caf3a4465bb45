"""``rehyat generate`` through each family's own diffusers pipeline (SkyReelsV2Pipeline, LTXPipeline,
HunyuanVideoPipeline, CogVideoXPipeline; Wan's in test_generation.py) on tiny models on CPU: a saved
pipeline folder generates a video (the joint families' with a ReHyAt checkpoint folder), and the converted
transformer in the recurrent mode inside the unmodified pipeline gives the parallel form's latents (the
joint families': tests/models/test_joint_families.py)."""

from __future__ import annotations

import imageio.v2 as imageio
import pytest
import torch
from tiny_pipeline import tiny_family_pipeline

from rehyat import ReHyAtConfig, convert, save_rehyat
from rehyat.cli import main
from rehyat.models.hooks import recurrent_mode

from conftest import rel_err

# a video of 3 latent frames of 4×4 tokens in each family
VIDEOS = {
    "skyreels-v2": dict(num_frames=9, height=64, width=64),
    "ltx-video": dict(num_frames=17, height=32, width=32),
    "hunyuan-video": dict(num_frames=9, height=64, width=64),
    "cogvideox": dict(num_frames=9, height=64, width=64),
}
JOINT = ("hunyuan-video", "cogvideox")
by_family = pytest.mark.parametrize("family", sorted(VIDEOS))


@pytest.mark.parametrize("family", sorted(set(VIDEOS) - set(JOINT)))
def test_recurrent_mode_inside_the_familys_pipeline_equals_the_parallel_form(family):
    pipe = tiny_family_pipeline(family)
    convert(pipe.transformer, ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_init="random"))
    pipe.set_progress_bar_config(disable=True)

    def sample():
        generator = torch.Generator().manual_seed(0)
        return pipe(
            prompt="a cat", num_inference_steps=2, generator=generator, output_type="latent", **VIDEOS[family]
        ).frames

    parallel = sample()
    with recurrent_mode(pipe.transformer):
        recurrent = sample()
    assert parallel.shape == recurrent.shape and rel_err(recurrent, parallel) <= 1e-4


@by_family
def test_generate_cli_drives_the_familys_pipeline(family, tmp_path, capsys):
    pipe = tiny_family_pipeline(family)
    pipe.save_pretrained(tmp_path / "model")
    video = VIDEOS[family]
    args = ["generate", "--model", str(tmp_path / "model"), "--prompt", "a cat on the moon", "--steps", "2"]
    args += [
        "--frames",
        str(video["num_frames"]),
        "--height",
        str(video["height"]),
        "--width",
        str(video["width"]),
    ]
    if family in JOINT:  # a ReHyAt checkpoint folder of the family's transformer
        convert(pipe.transformer, ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_init="random"))
        save_rehyat(pipe.transformer, tmp_path / "rehyat")
        args += ["--rehyat", str(tmp_path / "rehyat")]
    else:
        args += ["--chunk-frames", "2"]
    args += ["--device", "cpu", "--output", str(tmp_path / "video.gif")]
    assert main(args) == 0
    frames = imageio.mimread(tmp_path / "video.gif")
    assert len(frames) == video["num_frames"] and frames[0].shape[:2] == (video["height"], video["width"])
    wrong = {
        "skyreels-v2": ("--height", "72", "multiple of 16"),
        "ltx-video": ("--frames", "13", "8k \\+ 1"),
        "hunyuan-video": ("--height", "72", "multiple of 16"),
        "cogvideox": ("--scheduler", "euler", "v-prediction scheduler"),
    }
    flag, value, match = wrong[family]
    assert main([*args, flag, value]) == 2
    assert match.replace("\\", "") in capsys.readouterr().err
    if family in JOINT:  # one chunk per call: refused before the pipeline loads
        assert main([*args, "--chunks-per-call", "2"]) == 2
        assert "joint text–video attention runs one chunk per call" in capsys.readouterr().err
