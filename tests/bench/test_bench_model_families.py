"""``rehyat bench model --family ...`` on a CPU at --size tiny: the whole benchmark of every family runs
(original, parallel and recurrent rows, parity), writes its results beside Wan's, and the parity it
measures holds (one chunk equals the original, recurrent equals parallel)."""

from __future__ import annotations

import json

import pytest

from rehyat.cli import main
from rehyat.experiments.bench_model import bench_architecture, build_model, forward_inputs, stem


@pytest.mark.parametrize("family", ["wan", "skyreels-v2", "ltx-video", "hunyuan-video", "cogvideox"])
def test_bench_model_runs_each_family_on_a_cpu(family, tmp_path):
    args = ["bench", "model", "--family", family, "--size", "tiny", "--device", "cpu", "--frames", "2"]
    assert main([*args, "--quick", "--out", str(tmp_path), "--set", "reps=1"]) == 0
    payload = json.loads((tmp_path / f"{stem(family)}.json").read_text())
    assert payload["family"] == family and payload["dtype"] == "fp32"
    rows = {r["row"]: r for r in payload["results"]}
    assert sorted(rows) == ["original", "parallel", "recurrent"] and all(r["ms"] > 0 for r in rows.values())
    video = {"ltx-video": 9}.get(family, 5)  # 2 latent frames: 8 or 4 video frames after the first
    assert rows["recurrent"]["video_frames"] == video and rows["recurrent"]["tokens"] == 2 * 16
    parity = payload["parity"]
    assert parity[0]["recurrent_vs_parallel"] < 1e-4 and parity[1]["one_chunk_vs_original"] < 1e-5
    text = (tmp_path / f"{stem(family)}.md").read_text()
    assert "(tiny config) DiT forward" in text and "| 2 |" in text
    assert main(["bench", "model", "--family", family, "--render-only", "--out", str(tmp_path)]) == 0


def _pipeline_call(family, model) -> dict:
    """The keyword arguments the family's diffusers pipeline passes to ``model`` (one step, batch 1, a
    13-frame 64×64 video: 4 latent frames of 8×8; no text encoder or VAE, embeddings given)."""
    import torch
    from diffusers import (
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
    )

    seen = {}
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    text = dict(prompt_embeds=torch.randn(1, 6, 16))
    if family == "hunyuan-video":
        pipe = HunyuanVideoPipeline(None, None, model, None, FlowMatchEulerDiscreteScheduler(), None, None)
        text.update(pooled_prompt_embeds=torch.randn(1, 8), prompt_attention_mask=torch.ones(1, 6))
    else:
        pipe = CogVideoXPipeline(None, None, None, model, CogVideoXDDIMScheduler())
        text.update(max_sequence_length=6, guidance_scale=1.0)  # no CFG: batch 1
    pipe.set_progress_bar_config(disable=True)
    pipe(**text, num_frames=13, height=64, width=64, num_inference_steps=1, output_type="latent")
    return {k: v for k, v in seen.items() if v is not None and k not in ("attention_kwargs", "return_dict")}


@pytest.mark.parametrize("family", ["hunyuan-video", "cogvideox"])
def test_the_joint_families_are_called_as_their_pipelines_call_them(family):
    """The benchmark's forward arguments are the pipeline's: the same names, shapes and dtypes (HunyuanVideo's
    prompt mask, pooled projection and guidance; CogVideoX's [B, F, C, H, W] latent and its RoPE tables,
    equal to the pipeline's)."""
    import torch

    arch = bench_architecture(family, "tiny")
    model = build_model("cpu", torch.float32, arch=arch)
    ours = forward_inputs(model, arch, 4, "cpu", torch.float32)
    theirs = _pipeline_call(family, model)
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        if isinstance(value, tuple):  # RoPE tables: the pipeline's own
            assert all(torch.equal(a, b) for a, b in zip(ours[name], value, strict=True)), name
            continue
        assert ours[name].shape == value.shape, name
        if name != "timestep":  # CogVideoX's scheduler counts in integers
            assert ours[name].dtype == value.dtype, name
    if family == "hunyuan-video":
        assert ours["encoder_attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0]]  # a quarter: the prompt
        assert ours["guidance"].item() == theirs["guidance"].item() == 6000.0


def test_bench_model_needs_a_device_it_can_use(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert main(["bench", "model", "--family", "ltx-video", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bench_model_checks_chunks_per_call_before_it_measures(tmp_path, capsys):
    args = ["bench", "model", "--size", "tiny", "--device", "cpu", "--out", str(tmp_path)]
    assert main([*args, "--set", "chunks_per_call=0"]) == 2
    assert "chunks_per_call" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing measured or written
    assert main([*args, "--family", "hunyuan-video", "--set", "chunks_per_call=2"]) == 2
    assert "runs one chunk per call in the recurrent row" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("family", ["wan", "hunyuan-video"])
def test_parity_frees_each_model_before_the_next(family, monkeypatch):
    """A converted model is kept alive by reference cycles (hooks, runtime), not by refcounts: the
    float32 model must be gone before the bfloat16 one is built, or a 13B family cannot fit both."""
    import gc
    import weakref

    from rehyat.experiments import bench_model
    from rehyat.models.architectures import architecture

    built = []

    def tracked(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(bench_model, "build_model", tracked)
    gc.collect()
    gc.disable()  # only the benchmark's own collection may free them
    try:
        rows = bench_model.run_parity(
            2, arch=architecture({"wan": "tiny"}.get(family, f"tiny-{family}")), device="cpu"
        )
        assert built and all(ref() is None for ref in built) and "error" not in rows[0]
    finally:
        gc.enable()
