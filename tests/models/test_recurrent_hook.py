"""The recurrent mode through diffusers' hooks: an unmodified WanPipeline.__call__ generates recurrently,
equal to the former hand-written chunk-by-chunk forward and sampler (kept here as the reference) and
to the parallel form; fresh states per call (per step and CFG branch); diffusers' forward sees one
chunk at a time; the hooks come off cleanly; torch.compile(fullgraph=True) of the recurrent form."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.hooks import HookRegistry
from tiny_wan import converted, run, tiny_inputs, tiny_wan

import rehyat.models.adapter as adapter
from generation.tiny_pipeline import VIDEO, prompt_embeds, tiny_pipeline
from rehyat import ReHyAtConfig, convert_wan
from rehyat.models import rehyat_runtime, rotary_for_frames
from rehyat.models.hooks import (
    CHUNKED_FORWARD_HOOK,
    CHUNKWISE_FFN_HOOK,
    ROTARY_HOOK,
    apply_recurrent,
    is_recurrent,
    recurrent_mode,
    remove_recurrent,
)

from conftest import rel_err


def reference_recurrent_forward(transformer, hidden_states, timestep, context):
    """The chunk-by-chunk forward that rehyat.recurrent_forward used to be (a copy of diffusers' forward
    with the chunk loop inside), as the reference the hooks must reproduce."""
    runtime = rehyat_runtime(transformer)
    batch, _, _, height, width = hidden_states.shape
    p_t, p_h, p_w = transformer.config.patch_size
    frames, rows, cols = hidden_states.shape[2] // p_t, height // p_h, width // p_w
    temb, timestep_proj, context, _ = transformer.condition_embedder(timestep, context, None)
    timestep_proj = timestep_proj.unflatten(1, (6, -1))
    shift, scale = (transformer.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    output = None
    for block in transformer.blocks:
        block.attn1.processor.state = None
    runtime.streaming, runtime.grid = True, (frames, rows, cols)
    try:
        for start in range(0, frames, runtime.config.chunk_frames):
            stop = min(start + runtime.config.chunk_frames, frames)
            rotary = rotary_for_frames(transformer.rope, start, stop, rows, cols)
            x = transformer.patch_embedding(hidden_states[:, :, start * p_t : stop * p_t])
            x = x.flatten(2).transpose(1, 2).contiguous()
            for block in transformer.blocks:
                x = block(x, context, timestep_proj, rotary)
            x = (transformer.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
            x = transformer.proj_out(x)
            x = x.reshape(batch, stop - start, rows, cols, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
            x = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
            if output is None:
                output = x.new_empty(batch, x.shape[1], frames * p_t, rows * p_h, cols * p_w)
            output[:, :, start * p_t : stop * p_t] = x
    finally:
        runtime.streaming, runtime.grid = False, None
        for block in transformer.blocks:
            block.attn1.processor.state = None
    return output


@torch.no_grad()
def reference_sampler(transformer, scheduler, embeds, negative, latents, steps, guidance):
    """The denoising loop of the former rehyat sampler (a copy of WanPipeline.__call__'s)."""
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)
    for t in scheduler.timesteps:
        timestep = t.expand(latents.shape[0])
        noise = reference_recurrent_forward(transformer, latents, timestep, embeds)
        if guidance > 1:
            uncond = reference_recurrent_forward(transformer, latents, timestep, negative)
            noise = uncond + guidance * (noise - uncond)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline(with_text_encoder=False)
    convert_wan(pipe.transformer, ReHyAtConfig(chunk_frames=3, overlap_frames=1, feature_init="random"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, guidance: float, steps: int = 3):
    embeds, negative = prompt_embeds()
    return pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        return_dict=False,
        **VIDEO,
    )[0]


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_unmodified_wan_pipeline_generates_recurrently(pipe, guidance):
    parallel = _generate(pipe, guidance)
    apply_recurrent(pipe.transformer)
    try:
        recurrent = _generate(pipe, guidance)
    finally:
        remove_recurrent(pipe.transformer)
    embeds, negative = prompt_embeds()
    noise = torch.randn(parallel.shape, generator=torch.Generator().manual_seed(0))
    reference = reference_sampler(pipe.transformer, pipe.scheduler, embeds, negative, noise, 3, guidance)
    assert rel_err(recurrent, reference) <= 1e-4
    assert rel_err(recurrent, parallel) <= 1e-4
    assert torch.equal(_generate(pipe, guidance), parallel)  # hooks off: the parallel form again


def test_every_call_sweeps_the_chunks_from_fresh_states(pipe, monkeypatch):
    """Per transformer call (one step of one CFG branch) each block starts one stream (state None) and
    steps once per chunk; diffusers' forward (its patch embedding) only ever sees one chunk."""
    starts, steps, embedded = [], [], []
    step = adapter.attend_step

    def spy(*args, **kwargs):
        (starts if args[5] is None else steps).append(args[0].shape[1])
        return step(*args, **kwargs)

    monkeypatch.setattr(adapter, "attend_step", spy)
    handle = pipe.transformer.patch_embedding.register_forward_pre_hook(
        lambda module, args: embedded.append(args[0].shape[2])
    )
    try:
        with recurrent_mode(pipe.transformer):
            _generate(pipe, guidance=5.0, steps=2)
    finally:
        handle.remove()
    calls, blocks, chunks = 2 * 2, 2, 3  # 2 steps × (cond, uncond); 7 latent frames in chunks of 3
    assert len(starts) == calls * blocks and len(steps) == calls * blocks * (chunks - 1)
    assert embedded == [3, 3, 1] * calls


def test_hooks_are_diffusers_hooks_and_come_off_cleanly():
    net = converted(tiny_wan(num_layers=2), chunk_frames=3, overlap_frames=1)
    hidden, timestep, context = tiny_inputs()
    parallel = run(net, hidden, timestep, context)
    apply_recurrent(net)
    assert is_recurrent(net)
    assert HookRegistry.check_if_exists_or_initialize(net).get_hook(CHUNKED_FORWARD_HOOK) is not None
    assert HookRegistry.check_if_exists_or_initialize(net.rope).get_hook(ROTARY_HOOK) is not None
    for block in net.blocks:
        assert HookRegistry.check_if_exists_or_initialize(block.ffn).get_hook(CHUNKWISE_FFN_HOOK) is not None
    with pytest.raises(ValueError, match="already applied"):
        apply_recurrent(net)
    output = net(hidden, timestep, context)  # return_dict=True, as diffusers returns it
    assert rel_err(output.sample, parallel) <= 1e-4
    with recurrent_mode(net):  # already on: left on
        pass
    assert is_recurrent(net)
    remove_recurrent(net)
    assert not is_recurrent(net)
    assert all("forward" not in vars(m) for m in (net, net.rope, *(b.ffn for b in net.blocks)))
    assert torch.equal(run(net, hidden, timestep, context), parallel)


def test_apply_refuses_models_without_a_recurrent_form():
    model = tiny_wan(num_layers=2)
    with pytest.raises(ValueError, match="converted with convert_wan"):
        apply_recurrent(model)
    with pytest.raises(ValueError, match=r"blocks \[1\] still run full softmax"):
        apply_recurrent(converted(model, blocks=[0]))
    with pytest.raises(ValueError, match="causal"):
        apply_recurrent(converted(model, causal=False))
    assert not is_recurrent(model)


def test_compiled_recurrent_form_has_no_graph_break():
    """torch.compile(fullgraph=True) traces the hooked forward (chunk loop, states, RoPE and FFN hooks)
    as one graph; it equals eager."""
    net = apply_recurrent(converted(tiny_wan(num_layers=1), chunk_frames=2, overlap_frames=1))
    hidden, timestep, context = tiny_inputs(frames=5)

    def forward(hidden, timestep, context):
        return net(hidden, timestep, context, return_dict=False)[0]

    with torch.no_grad():
        eager = forward(hidden, timestep, context)
        explained = torch._dynamo.explain(forward)(hidden, timestep, context)
        torch._dynamo.reset()
        compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")(hidden, timestep, context)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    assert rel_err(compiled, eager) <= 1e-5
    assert all(block.attn1.processor.state is None for block in net.blocks)
