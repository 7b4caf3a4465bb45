"""`rehyat generate` and the generation library refuse bad arguments and broken folders before any work:
one line on stderr and exit code 2 (a ValueError in the library), never a traceback, never after the
video was denoised."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from tiny_pipeline import VIDEO, tiny_pipeline

import rehyat.generation.pipeline as pipeline_module
import rehyat.generation.sampler as sampler_module
from rehyat.cli import main
from rehyat.generation import generate_latents, generate_video, load_pipeline, write_video


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A WanPipeline folder as save_pretrained writes it (tiny models, offline tokenizer)."""
    folder = tmp_path_factory.mktemp("generate") / "wan"
    tiny_pipeline(with_text_encoder=True).save_pretrained(folder)
    return folder


@pytest.fixture
def no_work(monkeypatch):
    """Loading the pipeline or generating fails the test: every check must come before them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(pipeline_module, "load_pipeline", forbidden)
    monkeypatch.setattr(sampler_module, "generate_video", forbidden)


def _argv(model, output, *extra) -> list[str]:
    return [
        "generate",
        "--model",
        str(model),
        "--prompt",
        "a cat on the moon",
        "--frames",
        "5",
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--output",
        str(output),
        *extra,
    ]


def _one_line_error(capsys, match: str, *, alone: bool = True) -> str:
    """stderr ends in one error line matching ``match`` (and, with ``alone``, holds nothing else: no
    notice, no progress bar, no traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 or not alone, lines
    assert lines[-1].startswith("rehyat generate: error: "), lines[-1]
    assert re.search(match, lines[-1]), lines[-1]
    return lines[-1]


@pytest.mark.parametrize(
    "extra,match",
    [
        (lambda tmp: ["--output", tmp / "video.avi"], r"--output: output must end in \.mp4 or \.gif"),
        (lambda tmp: ["--output", tmp / "missing" / "video.mp4"], r"--output: .*missing does not exist"),
        (lambda tmp: ["--output", tmp / "file" / "video.mp4"], r"--output: .*file is not a folder"),
        (lambda tmp: ["--output", tmp / "folder.mp4"], r"--output: .*folder\.mp4 is a folder"),
        (lambda tmp: ["--fps", "0"], "--fps must be >= 1"),
        (lambda tmp: ["--steps", "0"], "--steps must be >= 1"),
        (lambda tmp: ["--guidance", "-1"], "--guidance must be >= 0"),
        (lambda tmp: ["--guidance", "nan"], "--guidance must be finite"),
        (lambda tmp: ["--guidance", "inf"], "--guidance must be finite"),
        (lambda tmp: ["--frames", "24"], r"--frames must be 4k \+ 1"),
        (lambda tmp: ["--frames", "0"], "--frames must be >= 1"),
        (lambda tmp: ["--frames", "-3"], "--frames must be >= 1"),
        (lambda tmp: ["--height", "72"], "--height must be a positive multiple of 16"),
        (lambda tmp: ["--width", "0"], "--width must be >= 1"),
        (lambda tmp: ["--width", "-16"], "--width must be >= 1"),
        (lambda tmp: ["--shift", "0"], "--shift must be > 0"),
        (lambda tmp: ["--shift", "nan"], "--shift must be finite"),
        (lambda tmp: ["--seed", str(2**64)], "--seed must be <="),
        (lambda tmp: ["--chunk-frames", "0"], "chunk_frames must be >= 1"),
        (lambda tmp: ["--overlap-frames", "-1"], "overlap_frames must be >= 0"),
        (lambda tmp: ["--chunks-per-call", "0"], "--chunks-per-call must be >= 1"),
        (lambda tmp: ["--device", "cudax"], r"--device: device 'cudax' is not a device torch knows"),
        (lambda tmp: ["--device", "cuda:99"], r"--device: device 'cuda:99': "),
        (lambda tmp: ["--device", "meta"], "--device: device must be cpu, cuda"),
        (lambda tmp: ["--rehyat", tmp / "nowhere"], r"ReHyAt checkpoint folder .*nowhere does not exist"),
        (lambda tmp: ["--rehyat", tmp / "ckpt", "--chunk-frames", "2"], "for converting without --rehyat"),
        (lambda tmp: ["--rehyat", tmp / "ckpt"], r"ckpt.rehyat_config\.json is not valid JSON"),
    ],
)
def test_bad_arguments_fail_before_any_work(wan, tmp_path, capsys, no_work, extra, match):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "rehyat_config.json").write_text('{"format": "reh')
    argv = _argv(wan, tmp_path / "video.mp4", *map(str, extra(tmp_path)))
    assert main(argv) == 2
    _one_line_error(capsys, match)
    assert not (tmp_path / "video.mp4").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_an_output_folder_that_is_not_writable_fails_before_any_work(wan, tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(_argv(wan, locked / "video.mp4")) == 2
    finally:
        locked.chmod(0o700)
    _one_line_error(capsys, "is not writable")


def _broken(wan, tmp_path, edit):
    folder = tmp_path / "wan"
    shutil.copytree(wan, folder)
    edit(folder)
    return folder


def _index(folder, **changes):
    path = folder / "model_index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda f: (f / "model_index.json").write_text("{not json"), r"model_index\.json is not valid JSON"),
        (lambda f: (f / "model_index.json").write_text("[1]"), r"model_index\.json must hold a JSON object"),
        (
            lambda f: (f / "model_index.json").write_bytes(b"\xff\xfe{"),
            r"model_index\.json is not valid JSON",
        ),
        (
            lambda f: (f / "model_index.json").unlink(),
            r"not a diffusers pipeline folder \(no model_index\.json\)",
        ),
        (lambda f: _index(f, _class_name="StableDiffusionPipeline"), "not a WanPipeline"),
        (lambda f: _index(f, vae="AutoencoderKLWan"), r"vae must be a \[library, class\] pair"),
        (lambda f: _index(f, text_encoder=[None, None]), "has no text_encoder: a text prompt needs one"),
        (lambda f: shutil.rmtree(f / "vae"), "has no vae/ folder"),
        (lambda f: shutil.rmtree(f / "tokenizer"), "has no tokenizer/ folder"),
        (lambda f: (f / "scheduler" / "scheduler_config.json").unlink(), "has no scheduler_config.json"),
        (lambda f: shutil.rmtree(f), r"model folder .*wan does not exist"),
    ],
)
def test_broken_model_folders_fail_before_any_work(wan, tmp_path, capsys, no_work, edit, match):
    folder = _broken(wan, tmp_path, edit)
    assert main(_argv(folder, tmp_path / "video.mp4")) == 2
    _one_line_error(capsys, match)


@pytest.mark.parametrize(
    "damaged", ["vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors"]
)
def test_damaged_component_weights_are_a_one_line_error(wan, tmp_path, capsys, damaged):
    def truncate(folder):
        path = folder / damaged
        path.write_bytes(path.read_bytes()[:1000])

    folder = _broken(wan, tmp_path, truncate)
    assert main(_argv(folder, tmp_path / "video.mp4")) == 2
    _one_line_error(capsys, rf"cannot load the Wan pipeline in .*wan: .*{damaged.split('/')[0]}", alone=False)


def test_load_pipeline_checks_device_folder_and_scheduler_first(wan, tmp_path, monkeypatch):
    from diffusers import AutoencoderKLWan

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded before the checks")

    monkeypatch.setattr(AutoencoderKLWan, "from_pretrained", forbidden)
    with pytest.raises(ValueError, match="'cudax' is not a device"):
        load_pipeline(wan, device="cudax")
    with pytest.raises(ValueError, match=r"no model_index\.json"):
        load_pipeline(tmp_path)
    with pytest.raises(ValueError, match="scheduler must be"):
        load_pipeline(wan, scheduler="ddim")
    with pytest.raises(ValueError, match="flow_shift must be > 0"):
        load_pipeline(wan, flow_shift=0.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(guidance_scale=float("nan")), "guidance_scale must be finite"),
        (dict(guidance_scale=-2.0), "guidance_scale must be >= 0"),
        (dict(num_inference_steps=0), "num_inference_steps must be >= 1"),
        (dict(num_inference_steps=2.5), "num_inference_steps must be an int"),
    ],
)
def test_sampling_arguments_are_checked_before_any_work(kwargs, match):
    """A NaN guidance compared false with 1 and silently sampled without CFG; both entry points check
    before touching the pipeline or the transformer (None here)."""
    with pytest.raises(ValueError, match=match):
        generate_video(None, "a cat", **VIDEO, **kwargs)
    with pytest.raises(ValueError, match=match):
        generate_latents(None, torch.zeros(1, 6, 32), scheduler=None, latent_shape=(1, 16, 7, 8, 8), **kwargs)


def test_write_video_checks_before_creating_folders(tmp_path):
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        write_video(frames, tmp_path / "new" / "video.avi")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="fps must be finite"):
        write_video(frames, tmp_path / "video.gif", fps=float("nan"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        write_video(frames, tmp_path / "file" / "video.gif")
    assert write_video(frames, tmp_path / "a" / "b" / "video.gif").is_file()  # parents are created


def _config(folder, component, **changes):
    path = folder / component / "config.json"
    config = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


def test_the_size_multiple_comes_from_the_folders_vae_and_patch(wan, tmp_path, capsys, no_work):
    """Wan2.2-TI2V-5B: a VAE of spatial stride 16 with the patch 2 takes multiples of 32, not the table's 16;
    the VAE's temporal stride sets the frames; a config without the fields falls back to the table."""
    assert pipeline_module.pipeline_geometry(wan) == (4, 16)  # the tiny Wan VAE: stride 8, patch 2
    ti2v = _broken(wan, tmp_path, lambda f: _config(f, "vae", scale_factor_spatial=16))
    assert pipeline_module.pipeline_geometry(ti2v) == (4, 32)
    assert main(_argv(ti2v, tmp_path / "video.mp4", "--height", "48")) == 2
    _one_line_error(capsys, "--height must be a positive multiple of 32")
    _config(ti2v, "transformer", patch_size=[1, 4, 4])
    assert pipeline_module.pipeline_geometry(ti2v) == (4, 64)
    _config(ti2v, "vae", scale_factor_temporal=8)
    assert pipeline_module.pipeline_geometry(ti2v) == (8, 64)
    no_transformer = tmp_path / "no_transformer"  # a folder for build-dataset: the published patch, 2
    shutil.copytree(ti2v, no_transformer)
    shutil.rmtree(no_transformer / "transformer")
    assert pipeline_module.pipeline_geometry(no_transformer) == (8, 32)
    older = tmp_path / "older"
    shutil.copytree(wan, older)
    _config(older, "vae", scale_factor_spatial=None, scale_factor_temporal=None)
    assert pipeline_module.pipeline_geometry(older) == (4, 16)  # the table's WanPipeline row
    _config(older, "transformer", patch_size=None)
    _config(older, "vae", scale_factor_spatial=16)
    assert pipeline_module.pipeline_geometry(older) == (4, 16)  # no patch: the table's multiple
    _config(older, "vae", scale_factor_spatial="16")
    with pytest.raises(ValueError, match=r"vae.config\.json: scale_factor_spatial must be a positive int"):
        pipeline_module.pipeline_geometry(older)


def test_the_ltx_size_multiple_comes_from_its_vae_ratios(tmp_path):
    """LTX's VAE: spatial_compression_ratio / temporal_compression_ratio, or (None, as diffusers saves them
    when unset) its patch × 2^(scaling stages) as diffusers computes them."""
    from tiny_pipeline import tiny_family_pipeline

    folder = tmp_path / "ltx"
    tiny_family_pipeline("ltx-video").save_pretrained(folder)
    assert pipeline_module.pipeline_geometry(folder) == (8, 8)  # 3 of 4 stages scale, patch 1
    _config(folder, "vae", spatial_compression_ratio=32, temporal_compression_ratio=8)
    assert pipeline_module.pipeline_geometry(folder) == (8, 32)  # LTX-Video 2B's
