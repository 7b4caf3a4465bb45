"""The exported recurrent step: the PyTorch step modules, ONNX Runtime parity over a whole video (chunk
outputs and every block's state), the numpy samplers, weight quantisation and errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from rehyat import ReHyAtConfig, convert_wan, recurrent_forward
from rehyat.export import (
    ExportedStep,
    StepSignature,
    chunk_schedule,
    euler_schedule,
    export_dit_step,
    export_full_block,
    read_manifest,
    sample_latents,
    unipc_schedule,
)
from rehyat.export.exporter import QuantizedLinear, quantize_weights
from rehyat.export.step import DiTStep, state_outputs
from rehyat.generation.sampler import generate_latents, make_scheduler
from rehyat.models import rotary_for_frames
from rehyat.models.wan import rotary_at_frames
from rehyat.models.wan_configs import tiny_wan_config

pytest.importorskip("onnxruntime")

FRAMES, SIZE, TEXT = 7, 8, 6  # 7 latent frames of 8×8 (16 tokens after 2×2 patches): a short last chunk


def tiny_converted(layers: int = 2, **config) -> WanTransformer3DModel:
    torch.manual_seed(0)
    model = WanTransformer3DModel(**tiny_wan_config(num_layers=layers)).eval()
    return convert_wan(model, ReHyAtConfig(feature_init="random", **config)).eval()


def inputs(batch: int, frames: int = FRAMES, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 16, frames, SIZE, SIZE, generator=gen)
    timestep = torch.tensor([700.0, 300.0][:batch])
    context = torch.randn(batch, TEXT, 32, generator=gen)
    return latents, timestep, context


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-block tiny DiT (Tc = 3, To = 1, random φ) exported for 7-frame videos, batch 2."""
    model = tiny_converted()
    folder = export_dit_step(
        model,
        tmp_path_factory.mktemp("onnx"),
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        text_tokens=TEXT,
        batch=2,
    )
    return model, folder


def test_chunk_schedule():
    assert [(s, g.name) for s, g in chunk_schedule(7, 3, 1)] == [
        (0, "step_first_f3"),
        (3, "step_c1_f3"),
        (6, "step_c1_f1"),
    ]
    assert [g.name for _, g in chunk_schedule(4, 1, 2)] == [
        "step_first_f1",
        "step_c1_f1",
        "step_c2_f1",
        "step_c2_f1",
    ]
    assert [g.name for _, g in chunk_schedule(5, 2, 0)] == ["step_first_f2", "step_c0_f2", "step_c0_f1"]
    assert chunk_schedule(5, 2, 0)[1][1].state_inputs() == ("kv", "z")
    assert [g.name for _, g in chunk_schedule(2, 5, 1)] == ["step_first_f2"]
    with pytest.raises(ValueError, match="chunk_frames"):
        chunk_schedule(4, 0, 1)


def test_rotary_at_matches_rotary_for_frames():
    model = tiny_converted(layers=1)
    for start, stop in ((0, 3), (4, 7)):
        expected = rotary_for_frames(model.rope, start, stop, 4, 4)
        got = rotary_at_frames(model.rope, torch.arange(start, stop), 4, 4)
        for e, g in zip(expected, got, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("chunk, overlap", [(3, 1), (1, 2), (2, 0)])
def test_step_modules_chain_to_the_recurrent_forward(chunk, overlap):
    """DiTStep chunk by chunk, states passed as tensors, equals recurrent_forward (To > Tc, To = 0 too)."""
    model = tiny_converted(chunk_frames=chunk, overlap_frames=overlap)
    latents, timestep, context = inputs(2)
    with torch.no_grad():
        expected = recurrent_forward(model, latents, timestep, context)
        state, outputs = (), []
        for start, signature in chunk_schedule(FRAMES, chunk, overlap):
            step = DiTStep(model, signature, SIZE, SIZE)
            piece = latents[:, :, start : start + signature.frames]
            result = step(piece, timestep, context, torch.tensor([start]), *state)
            assert len(result) == 1 + len(state_outputs(overlap)) * len(model.blocks)
            outputs.append(result[0])
            state = result[1:]
    assert rel(torch.cat(outputs, dim=2), expected) < 1e-5


def test_runtime_matches_pytorch_over_a_whole_video(exported):
    """Every chunk's output and every block's state on ONNX Runtime equal the PyTorch step (≤ 1e-4
    relative), and the whole video equals recurrent_forward."""
    model, folder = exported
    latents, timestep, context = inputs(2)
    runner = ExportedStep(folder)
    assert runner.runtime == "onnxruntime"
    assert sorted(runner.graphs) == ["step_c1_f1", "step_c1_f3", "step_first_f3"]
    state, outputs = (), []
    with torch.no_grad():
        for chunk in runner.chunks(latents.numpy(), timestep.numpy(), context.numpy()):
            signature = StepSignature(
                **{k: runner.graphs[chunk.graph][k] for k in ("cached", "frames", "first")}
            )
            piece = latents[:, :, chunk.start : chunk.start + signature.frames]
            result = DiTStep(model, signature, SIZE, SIZE)(
                piece, timestep, context, torch.tensor([chunk.start]), *state
            )
            assert rel(chunk.output, result[0]) <= 1e-4
            assert len(chunk.state) == len(result) - 1
            for got, want in zip(chunk.state, result[1:], strict=True):
                assert got.shape == tuple(want.shape)
                assert rel(got, want) <= 1e-4
            state = result[1:]
            outputs.append(chunk.output)
        expected = recurrent_forward(model, latents, timestep, context)
    assert rel(np.concatenate(outputs, axis=2), expected) <= 1e-4
    # The state has a fixed size: the same shapes after every full chunk.
    manifest = read_manifest(folder)
    assert manifest["state"] == {"heads": 2, "head_dim": 12, "feature_dim": 24}


def test_numpy_sampler_on_the_runtime_matches_the_pytorch_sampler(exported):
    """A short UniPC + CFG sampling loop in numpy on the runtime equals generate_latents with the
    recurrent forward in PyTorch."""
    model, folder = exported
    noise, _, context = inputs(1, seed=5)
    expected = generate_latents(
        model,
        context,
        torch.zeros_like(context),
        scheduler=make_scheduler("unipc", 3.0),
        latent_shape=tuple(noise.shape),
        num_inference_steps=3,
        guidance_scale=4.0,
        latents=noise,
        progress=False,
    )
    runner = ExportedStep(folder)
    got = sample_latents(
        runner.forward,
        noise.numpy(),
        context.numpy(),
        np.zeros_like(context.numpy()),
        steps=3,
        guidance_scale=4.0,
    )
    assert rel(got, expected) <= 1e-3


def test_no_overlap_runs_on_the_runtime(tmp_path):
    """To = 0: later chunks take only kv, z (no empty cached-frame inputs) and match recurrent_forward."""
    model = tiny_converted(layers=1, chunk_frames=2, overlap_frames=0)
    folder = export_dit_step(
        model, tmp_path, num_frames=4, height=SIZE, width=SIZE, text_tokens=TEXT, batch=1
    )
    runner = ExportedStep(folder)
    assert [spec["name"] for spec in runner.graphs["step_c0_f2"]["inputs"]][4:] == ["b0.kv", "b0.z"]
    latents, timestep, context = inputs(1, frames=4)
    with torch.no_grad():
        expected = recurrent_forward(model, latents, timestep, context)
    assert rel(runner.forward(latents.numpy(), timestep.numpy(), context.numpy()), expected) <= 1e-4


def test_a_length_without_its_graphs_is_an_error(exported):
    _, folder = exported
    runner = ExportedStep(folder)
    latents, timestep, context = inputs(2, frames=8)  # last chunk of 2 frames: not exported
    with pytest.raises(ValueError, match=r"no graph for a chunk after 1 cached frame\(s\) of 2 frame"):
        runner.forward(latents.numpy(), timestep.numpy(), context.numpy())
    with pytest.raises(ValueError, match="input latents must be"):
        runner.run(
            "step_first_f3",
            [np.zeros((2, 16, 2, SIZE, SIZE)), timestep.numpy(), context.numpy(), np.array([0])],
        )
    with pytest.raises(ValueError, match="not an export folder"):
        ExportedStep(folder / "missing")


@pytest.mark.parametrize("schedule", ["euler", "unipc"])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_numpy_schedules_reproduce_diffusers(schedule, steps):
    scheduler = make_scheduler(schedule, 3.0)
    scheduler.set_timesteps(steps)
    timesteps, sigmas = (euler_schedule if schedule == "euler" else unipc_schedule)(steps, 3.0)
    np.testing.assert_allclose(timesteps, scheduler.timesteps.float().numpy(), rtol=1e-6)
    np.testing.assert_allclose(sigmas, scheduler.sigmas.numpy(), rtol=1e-6)
    weight = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32) * 0.3

    def model(x, t, c):
        scale = (t / 1000)[:, None, None, None, None]
        return (
            np.tanh(np.einsum("bcfhw,cd->bdfhw", x, weight)) * scale
            + c.mean(axis=(1, 2))[:, None, None, None, None]
        )

    noise = np.random.default_rng(1).standard_normal((1, 4, 2, 3, 3)).astype(np.float32)
    cond, uncond = np.ones((1, 2, 3), np.float32), np.zeros((1, 2, 3), np.float32)
    got = sample_latents(model, noise, cond, uncond, steps=steps, guidance_scale=4.0, schedule=schedule)
    scheduler.set_begin_index(0)
    latents = torch.from_numpy(noise)
    for t in scheduler.timesteps:
        tt = np.full(1, float(t), np.float32)
        c, u = (torch.from_numpy(model(latents.numpy(), tt, ctx)) for ctx in (cond, uncond))
        latents = scheduler.step(u + 4.0 * (c - u), t, latents, return_dict=False)[0]
    np.testing.assert_allclose(got, latents.numpy(), rtol=1e-5, atol=1e-5)


def test_quantized_weights_stay_close():
    model = tiny_converted(layers=1)
    latents, timestep, context = inputs(1)
    with torch.no_grad():
        reference = recurrent_forward(model, latents, timestep, context)
        for kind, tolerance in (("fp16", 1e-3), ("int8", 5e-2)):
            quantized = quantize_weights(model, kind)
            assert any(isinstance(m, QuantizedLinear) for m in quantized.modules())
            assert not any(isinstance(m, QuantizedLinear) for m in model.modules())  # a copy
            assert rel(recurrent_forward(quantized, latents, timestep, context), reference) < tolerance
    assert quantize_weights(model, "fp32") is model
    with pytest.raises(ValueError, match="weights must be one of"):
        quantize_weights(model, "int4")


def test_full_block_graph_takes_any_length(tmp_path):
    """The baseline graph (original block, full softmax head by head) has a dynamic token count and
    equals the original block (SDPA) at several lengths."""
    import onnxruntime

    torch.manual_seed(0)
    model = WanTransformer3DModel(**tiny_wan_config(num_layers=1)).eval()
    folder = export_full_block(model, tmp_path, rows=4, cols=4, text_tokens=TEXT)
    session = onnxruntime.InferenceSession(str(folder / "full.onnx"))
    for frames in (1, 4):
        hidden, modulation, context = (
            torch.randn(1, frames * 16, 24),
            torch.randn(1, 6, 24) * 0.1,
            torch.randn(1, TEXT, 24),
        )
        cos, sin = rotary_at_frames(model.rope, torch.arange(frames), 4, 4)
        feeds = dict(hidden=hidden, timestep_proj=modulation, context=context, cos=cos, sin=sin)
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        with torch.no_grad():
            expected = model.blocks[0](hidden, context, modulation, (cos, sin))
        assert rel(got, expected) <= 1e-5


def test_export_refuses_what_has_no_recurrent_step(tmp_path):
    torch.manual_seed(0)
    plain = WanTransformer3DModel(**tiny_wan_config(num_layers=1)).eval()
    with pytest.raises(ValueError, match="converted with convert_wan"):
        export_dit_step(plain, tmp_path, num_frames=3, height=SIZE, width=SIZE, text_tokens=TEXT)
    partial = convert_wan(copy.deepcopy(WanTransformer3DModel(**tiny_wan_config())), ReHyAtConfig(blocks=[0]))
    with pytest.raises(ValueError, match="every block converted"):
        export_dit_step(partial, tmp_path, num_frames=3, height=SIZE, width=SIZE, text_tokens=TEXT)
    with pytest.raises(ValueError, match="anchor_frames=1 is not supported") as error:
        export_dit_step(
            tiny_converted(1, anchor_frames=1),
            tmp_path,
            num_frames=3,
            height=SIZE,
            width=SIZE,
            text_tokens=TEXT,
        )
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="first_chunk_frames=2 is not supported"):
        first = tiny_converted(1, chunk_frames=1, overlap_frames=1, first_chunk_frames=2)
        export_dit_step(first, tmp_path, num_frames=3, height=SIZE, width=SIZE, text_tokens=TEXT)
    with pytest.raises(ValueError, match="runtime must be one of"):
        export_dit_step(
            tiny_converted(1),
            tmp_path,
            num_frames=3,
            height=SIZE,
            width=SIZE,
            text_tokens=TEXT,
            runtime="tflite",
        )
