"""rehyat.models.convert on the joint text–video attention families (docs/method.md §6.1): HunyuanVideo
(dual- and single-stream blocks, padded text masked) and CogVideoX (5B layout with RoPE, 2B's position
embeddings, 1.5's two latent frames per token), on tiny configs: one chunk equals the original model, the
recurrent form equals the parallel form over chunk entries, both attend exactly as the design's dense
definition, chunk entries carry the whole video's positions, checkpoints round-trip, what is not served
errors."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_joint import FRAMES, JOINT, SIZE, run

from rehyat import ReHyAtConfig, load_rehyat, save_rehyat
from rehyat.attention import AttentionStats
from rehyat.attention.hybrid.common import DENOMINATOR_EPS
from rehyat.models import convert, converted_blocks, family_of, feature_maps, read_rehyat_config
from rehyat.models.adapter import ReHyAtRuntime
from rehyat.models.cogvideox import COGVIDEOX, cogvideox_rotary
from rehyat.models.hooks import (
    apply_recurrent,
    compile_recurrent,
    is_recurrent,
    recurrent_mode,
    remove_recurrent,
)
from rehyat.models.hunyuan_video import HUNYUAN_VIDEO
from rehyat.models.joint import JointPlan, ReHyAtJointAttnProcessor

from conftest import rel_err

by_name = pytest.mark.parametrize("family", JOINT, ids=str)
HUNYUAN, COG_5B, COG_2B, COG_15 = JOINT


def converted(model, **config):
    return convert(copy.deepcopy(model), ReHyAtConfig(**config))


@by_name
def test_one_chunk_equals_the_original_model(family):
    model = family.build()
    inputs = family.inputs_for(model, batch=2)
    reference = run(model, inputs)
    for config in (dict(chunk_frames=FRAMES), dict(chunk_frames=FRAMES + 3, feature_init="random")):
        assert rel_err(run(converted(model, **config), inputs), reference) < 1e-5
    assert rel_err(run(converted(model, chunk_frames=2), inputs), reference) > 1e-3


# Every geometry on HunyuanVideo and CogVideoX-5B (To < Tc, To > Tc, Tc = 1 without overlap), Tc=3, To=1 on
# the other layouts.
RECURRENT = [(f, c, o) for f in (HUNYUAN, COG_5B) for c, o in ((3, 1), (2, 3), (1, 0))] + [
    (f, 3, 1) for f in (COG_2B, COG_15)
]


@pytest.mark.parametrize("family,chunk,overlap", RECURRENT, ids=str)
def test_recurrent_equals_parallel(family, chunk, overlap):
    net = converted(family.build(), chunk_frames=chunk, overlap_frames=overlap, feature_init="random")
    inputs = family.inputs_for(net, batch=2)
    parallel = run(net, inputs)
    seen = []

    def count(module, args, kwargs):
        seen.append(tuple((args[0] if args else kwargs["hidden_states"]).shape[:2]))

    adapter = family_of(net)
    attentions = [adapter.attention(net, i) for i in range(len(adapter.blocks(net)))]
    handles = [attn.register_forward_pre_hook(count, with_kwargs=True) for attn in attentions]
    chunks = -(-FRAMES // chunk)
    assert seen == [] and run(net, inputs) is not None
    folded = {shape for shape in seen}  # the parallel form: full chunks folded into the batch
    assert (2 * (FRAMES // chunk), chunk * SIZE * SIZE) in folded
    seen.clear()
    with recurrent_mode(net):
        recurrent = run(net, inputs)
    for handle in handles:
        handle.remove()
    assert recurrent.shape == parallel.shape
    assert rel_err(recurrent, parallel) <= 1e-4
    assert len(seen) == chunks * len(attentions) and max(n for _, n in seen) == chunk * SIZE * SIZE
    assert {b for b, _ in seen} == {2}  # one chunk of each batch element at a time
    assert rel_err(run(net, inputs), parallel) == 0  # the parallel form is back


def _dense_joint(q, k, v, fq, fk, text, frame_tokens, chunk_frames, overlap, scale):
    """The design written out (docs/method.md §6.1, one chunk's rows at a time, N×N style): chunk t's rows —
    its own text copy's queries and its video queries — take softmax over [its text ‖ frames of its window]
    and linear attention over the frames before the window."""
    qt, fqt, kt, vt, mask = text  # [n, B, L, H, D] per chunk
    frames = q.shape[1] // frame_tokens
    video, text_out = [], []
    for t, start in enumerate(range(0, frames, chunk_frames)):
        stop = min(start + chunk_frames, frames)
        low = max(start - overlap, 0)
        rows = slice(start * frame_tokens, stop * frame_tokens)
        queries = torch.cat([qt[t], q[:, rows]], dim=1).double()
        features = torch.cat([fqt[t], fq[:, rows]], dim=1).double()
        keys = torch.cat([kt[t], k[:, low * frame_tokens : stop * frame_tokens]], dim=1).double()
        values = torch.cat([vt[t], v[:, low * frame_tokens : stop * frame_tokens]], dim=1).double()
        attend = torch.cat([mask[t], mask.new_ones(mask.shape[1], keys.shape[1] - mask.shape[2])], dim=1)
        s = torch.einsum("bqhd,bkhd->bhqk", queries, keys) * scale
        s = s.masked_fill(~attend[:, None, None, :], float("-inf"))
        w = torch.exp(s - s.amax(dim=-1, keepdim=True))
        ns = w.sum(-1)
        linear = slice(0, low * frame_tokens)
        wl = torch.einsum("bqhf,bkhf->bhqk", features, fk[:, linear].double())
        out = torch.einsum("bhqk,bkhd->bqhd", w, values) + torch.einsum(
            "bhqk,bkhd->bqhd", wl, v[:, linear].double()
        )
        den = torch.maximum(ns + wl.sum(-1), DENOMINATOR_EPS * ns)
        out = out / den.transpose(1, 2).unsqueeze(-1)
        text_out.append(out[:, : qt.shape[2]])
        video.append(out[:, qt.shape[2] :])
    return torch.cat(video, dim=1), torch.stack(text_out)


@pytest.mark.parametrize("chunk,overlap", [(3, 1), (2, 3), (1, 0), (7, 0), (4, 2)], ids=str)
def test_the_attention_is_the_designs_dense_definition(chunk, overlap):
    """Parallel form over chunk entries and the step, at the layer: the design's sets, text masked."""
    torch.manual_seed(0)
    B, T, S, L, H, D, F = 2, 7, 3, 4, 2, 4, 6
    q, k, v = (torch.randn(B, T * S, H, D) for _ in range(3))
    fq, fk = (torch.randn(B, T * S, H, F).abs() * 0.1 for _ in range(2))
    n = -(-T // chunk)
    qt, kt, vt = (torch.randn(n, B, L, H, D) for _ in range(3))
    fqt = torch.randn(n, B, L, H, F).abs() * 0.1
    mask = torch.ones(n, B, L, dtype=torch.bool)
    mask[:, 1, -2:] = False
    scale = D**-0.5
    video_ref, text_ref = _dense_joint(q, k, v, fq, fk, (qt, fqt, kt, vt, mask), S, chunk, overlap, scale)

    config = ReHyAtConfig(chunk_frames=chunk, overlap_frames=overlap)
    runtime = ReHyAtRuntime(config=config, blocks=[], joint=JointPlan())
    processor = ReHyAtJointAttnProcessor(runtime, AttentionStats())
    full = T // chunk
    entries = lambda x: x[:, : full * chunk * S].unflatten(1, (full, -1)).transpose(0, 1).flatten(0, 1)  # noqa: E731
    text = tuple(x[:full].flatten(0, 1) for x in (qt, fqt, kt, vt, mask))
    runtime.grid, runtime.joint.starts = (chunk, 1, S), [t * chunk for t in range(full)]
    runtime.joint.keep_state = full * chunk < T
    video, text_out = processor._folded(*(entries(x) for x in (q, k, v, fq, fk)), text, S, scale)
    video = video.unflatten(0, (full, B)).transpose(0, 1).flatten(1, 2)
    assert rel_err(video, video_ref[:, : full * chunk * S]) < 1e-5
    assert rel_err(text_out.unflatten(0, (full, B)), text_ref[:full]) < 1e-5
    if runtime.joint.keep_state:  # the shorter last chunk steps from the state the entries left
        rows = slice(full * chunk * S, None)
        last = tuple(x[full] for x in (qt, fqt, kt, vt, mask))
        video, text_out, _ = processor._attend(
            q[:, rows], k[:, rows], v[:, rows], fq[:, rows], fk[:, rows], last, processor.state, S, scale
        )
        assert rel_err(video, video_ref[:, rows]) < 1e-5
        assert rel_err(text_out, text_ref[full]) < 1e-5
    assert processor.stats.total_rows > 0


def test_chunk_entries_carry_the_whole_videos_positions():
    """Folded entries and recurrent chunks see the RoPE rows (HunyuanVideo's rope, CogVideoX's tables) and
    the position embeddings (CogVideoX-2B) of their absolute frames in the whole video."""
    tokens, got = SIZE * SIZE, []
    for family in (HUNYUAN, COG_5B):
        net = converted(family.build(), chunk_frames=3)
        inputs = family.inputs_for(net, batch=2)
        whole = net.rope(inputs["hidden_states"]) if family is HUNYUAN else inputs["image_rotary_emb"]
        got.clear()
        attn = family_of(net).attention(net, 0)
        handle = attn.register_forward_pre_hook(
            lambda m, a, kw: got.append(kw["image_rotary_emb"][0]), with_kwargs=True
        )
        run(net, inputs)
        with recurrent_mode(net):
            run(net, inputs)
        handle.remove()
        folded, last, *chunks = got
        assert folded.shape == (2 * 2, 3 * tokens, whole[0].shape[-1])  # 2 full chunks × batch 2
        for t in range(2):
            for b in range(2):
                assert torch.equal(folded[2 * t + b], whole[0][3 * t * tokens : 3 * (t + 1) * tokens])
        assert torch.equal(last, whole[0][6 * tokens :])
        assert torch.equal(torch.cat(chunks), whole[0])
    net = converted(COG_2B.build(), chunk_frames=3)
    inputs = COG_2B.inputs_for(net, batch=2)
    whole = net.patch_embed(inputs["encoder_hidden_states"], inputs["hidden_states"])
    net.patch_embed.register_forward_hook(lambda m, a, out: got.append(out))
    got.clear()
    run(net, inputs)
    folded, last = got
    text_rows = inputs["encoder_hidden_states"].shape[1]
    for t in range(2):
        rows = torch.cat(
            [whole[:, :text_rows], whole[:, text_rows + 3 * t * tokens : text_rows + 3 * (t + 1) * tokens]], 1
        )
        assert torch.allclose(folded[2 * t : 2 * t + 2], rows, atol=1e-6)
    assert torch.allclose(
        last, torch.cat([whole[:, :text_rows], whole[:, text_rows + 6 * tokens :]], 1), atol=1e-6
    )


@by_name
def test_checkpoint_round_trip(family, tmp_path):
    config = ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_init="random")
    net = convert(family.build(), config)
    save_rehyat(net, tmp_path / "rehyat")
    assert read_rehyat_config(tmp_path / "rehyat") == config
    fresh = load_rehyat(family.build(), tmp_path / "rehyat")
    adapter = family_of(fresh)
    assert converted_blocks(fresh) == list(range(len(adapter.blocks(fresh))))
    inputs = family.inputs_for(net)
    assert torch.equal(run(fresh, inputs), run(net, inputs))
    with torch.no_grad():
        next(feature_maps(net)[1][0].parameters()).add_(1.0)
        adapter.attention(net, 0).to_q.weight.add_(0.1)
    save_rehyat(net, tmp_path / "tuned", include_base_weights=True)
    tuned = load_rehyat(family.build(), tmp_path / "tuned")
    assert torch.equal(run(tuned, inputs), run(net, inputs))


def test_hunyuan_video_blocks_are_dual_then_single_stream():
    net = convert(HUNYUAN.build())
    assert HUNYUAN_VIDEO.attention_path(0, net) == "transformer_blocks.0.attn"
    assert HUNYUAN_VIDEO.attention_path(1, net) == "single_transformer_blocks.0.attn"
    names = [name for name in net.state_dict() if "rehyat_phi_q" in name]
    assert {name.split(".rehyat_phi_q")[0] for name in names} == {
        "transformer_blocks.0.attn",
        "single_transformer_blocks.0.attn",
    }


def test_the_parallel_form_trains():
    net = converted(COG_5B.build(), chunk_frames=3, overlap_frames=1, feature_init="random")
    inputs = COG_5B.inputs_for(net, batch=2)
    net(**inputs, return_dict=False)[0].square().mean().backward()
    phi_q = feature_maps(net)[1][0]
    grads = [p.grad for p in phi_q.parameters()] + [family_of(net).attention(net, 0).to_q.weight.grad]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_what_is_not_served_errors():
    for config, message in (
        (dict(blocks=[0]), "every block"),
        (dict(attention="local"), "causal ReHyAt only"),
        (dict(causal=False), "causal ReHyAt only"),
        (dict(anchor_frames=1), "anchor"),
    ):
        model = COG_5B.build()
        with pytest.raises(ValueError, match=message):
            convert(model, ReHyAtConfig(**config))
        assert converted_blocks(model) == []  # nothing changed
    hunyuan = HUNYUAN.build()
    hunyuan.register_to_config(image_condition_type="token_replace")
    with pytest.raises(ValueError, match="token_replace"):
        convert(hunyuan)
    net = convert(COG_15.build())
    inputs = COG_15.inputs_for(net)
    with pytest.raises(ValueError, match="patches 2 latent frames"):
        run(net, {**inputs, "hidden_states": inputs["hidden_states"][:, :-1]})
    with pytest.raises(ValueError, match="no latent frames"):
        run(net, {**inputs, "hidden_states": inputs["hidden_states"][:, :0]})
    net.enable_gradient_checkpointing()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        net(**inputs, return_dict=False)
    assert HUNYUAN_VIDEO.temporal_compression == COGVIDEOX.temporal_compression == 4
    assert cogvideox_rotary(convert(COG_2B.build()), FRAMES, 8, 8) is None


@pytest.mark.parametrize("family", [HUNYUAN, COG_5B, COG_15], ids=str)
def test_compile_recurrent_serves_positions_given_as_tensors(family):
    """CogVideoX 5B and 1.5 take their RoPE tables as inputs, cut per chunk outside the compiled forward;
    HunyuanVideo's are made at the chunk's position given as a tensor: one graph per chunk shape however
    long the video, equal to the parallel form."""
    from torch._dynamo.utils import counters

    config = ReHyAtConfig(chunk_frames=1, overlap_frames=1)
    reference = convert(family.build(), config)
    net = compile_recurrent(convert(family.build(), config), backend="eager")
    torch._dynamo.reset()
    counters.clear()
    for frames in (3, 5):  # post-patch frames
        inputs = family.inputs_for(net, frames=frames)
        with torch._dynamo.config.patch(error_on_recompile=frames > 3):
            compiled = run(net, inputs)
        assert rel_err(compiled, run(reference, inputs)) <= 1e-5
    assert counters["stats"]["unique_graphs"] == 2  # the first chunk, the steady chunk
    remove_recurrent(net)


@pytest.mark.parametrize("family", [COG_2B], ids=str)
def test_compile_recurrent_refuses_positions_computed_inside_the_forward(family):
    """CogVideoX-2B's position embeddings of the whole video are added at each chunk's Python-int frames
    inside the forward: compiled, every chunk position would recompile."""
    net = convert(family.build())
    with pytest.raises(
        ValueError, match=r"compile_recurrent does not serve .* each chunk position would recompile"
    ):
        compile_recurrent(net, backend="eager")
    assert not is_recurrent(net)  # nothing applied
    inputs = family.inputs_for(net)
    with recurrent_mode(net):  # the eager recurrent mode does serve them
        assert run(net, inputs) is not None
    with pytest.raises(ValueError, match=r"joint-attention families .* one chunk per call"):
        apply_recurrent(net, chunks_per_call=2)
    assert not is_recurrent(net)


def _pipeline(family, model):
    """The family's diffusers pipeline around ``model``, without text encoders or VAE (prompt embeddings are
    given, latents come out), and its call's keyword arguments for a 13-frame 64×64 video (4 latent frames
    of 4×4 tokens; CogVideoX 1.5: 25 frames, 7 latent frames rounded up to 8, 2 per token)."""
    from diffusers import (
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
    )

    gen = torch.Generator().manual_seed(0)
    video = dict(num_frames=25 if family is COG_15 else 13, height=64, width=64, output_type="latent")
    if family is HUNYUAN:
        pipe = HunyuanVideoPipeline(
            text_encoder=None,
            tokenizer=None,
            transformer=model,
            vae=None,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            text_encoder_2=None,
            tokenizer_2=None,
        )
        mask = torch.ones(1, 6)
        mask[:, -2:] = 0
        prompt = dict(
            prompt_embeds=torch.randn(1, 6, 16, generator=gen),
            pooled_prompt_embeds=torch.randn(1, 8, generator=gen),
            prompt_attention_mask=mask,
        )
    else:
        pipe = CogVideoXPipeline(
            tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=CogVideoXDDIMScheduler()
        )
        prompt = dict(
            prompt_embeds=torch.randn(1, 6, 16, generator=gen),
            negative_prompt_embeds=torch.randn(1, 6, 16, generator=gen),  # CFG: batch 2
            max_sequence_length=6,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**prompt, **video}


@by_name
def test_recurrent_mode_inside_the_familys_pipeline_equals_the_parallel_form(family):
    """HunyuanVideoPipeline and CogVideoXPipeline, unmodified (their RoPE tables, guidance, CFG batch)."""
    model = convert(family.build(), ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_init="random"))
    pipe, call = _pipeline(family, model)

    def sample():
        return pipe(**call, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames

    parallel = sample()
    with recurrent_mode(model):
        recurrent = sample()
    assert parallel.shape == recurrent.shape and rel_err(recurrent, parallel) <= 1e-4
