"""rehyat.models.convert on every family beside Wan2.1 (Wan2.2-TI2V, SkyReels-V2 incl. diffusion forcing,
LTX-Video with its three ways of giving RoPE positions), on tiny configs: one chunk equals the original
model, the recurrent form equals the parallel causal form, checkpoints round-trip through one ReHyAt
folder; plus the dispatch itself."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_families import FAMILIES, FRAMES, SIZE, run

from rehyat import ReHyAtConfig, convert_wan, load_rehyat, save_rehyat
from rehyat.models import FAMILIES as ADAPTERS
from rehyat.models import (
    ReHyAtWanAttnProcessor,
    convert,
    converted_blocks,
    family_of,
    feature_maps,
    read_rehyat_config,
    supported_classes,
)
from rehyat.models.hooks import recurrent_mode
from rehyat.models.ltx import LTX_VIDEO, ReHyAtLTXAttnProcessor

from conftest import rel_err

by_name = pytest.mark.parametrize("family", FAMILIES, ids=str)


def converted(model, **config):
    return convert(copy.deepcopy(model), ReHyAtConfig(**config))


@by_name
def test_one_chunk_equals_the_original_model(family):
    model = family.build()
    inputs = family.inputs(batch=2)
    reference = run(model, inputs)
    for config in (dict(chunk_frames=FRAMES), dict(chunk_frames=FRAMES + 3, feature_init="random")):
        assert rel_err(run(converted(model, **config), inputs), reference) < 1e-5
    chunked = run(converted(model, chunk_frames=2), inputs)  # the conversion does change attention
    assert rel_err(chunked, reference) > 1e-3


MAIN = [family for family in FAMILIES if family.name in ("wan2.2-ti2v", "skyreels-v2", "ltx-video")]
# Every geometry on one model per family (To < Tc, To > Tc, Tc = 1 without overlap), Tc=3, To=1 on the
# other ways to call them (diffusion forcing, per-token timesteps, given or plain RoPE coordinates).
RECURRENT = [(f, c, o) for f in MAIN for c, o in ((3, 1), (2, 3), (1, 0))] + [
    (f, 3, 1) for f in FAMILIES if f not in MAIN
]


@pytest.mark.parametrize("family,chunk,overlap", RECURRENT, ids=str)
def test_recurrent_equals_parallel(family, chunk, overlap):
    net = converted(family.build(), chunk_frames=chunk, overlap_frames=overlap, feature_init="random")
    inputs = family.inputs(batch=2)
    parallel = run(net, inputs)
    seen = []

    def count(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).shape[1])

    handles = [block.attn1.register_forward_pre_hook(count, with_kwargs=True) for block in family.blocks(net)]
    with recurrent_mode(net):
        recurrent = run(net, inputs)
    for handle in handles:
        handle.remove()
    assert recurrent.shape == parallel.shape
    assert rel_err(recurrent, parallel) <= 1e-4
    assert max(seen) == chunk * SIZE * SIZE  # attention only ever saw one chunk
    assert rel_err(run(net, inputs), parallel) == 0  # the parallel form is back


# Several chunks per forward call: a whole number of calls, a shorter last call, the sliding window.
PER_CALL = [(f, c, o, k) for f in FAMILIES for c, o, k in ((2, 1, 2), (1, 3, 3))] + [
    (f, 2, 3, 3) for f in MAIN
]


@pytest.mark.parametrize("family,chunk,overlap,per_call", PER_CALL, ids=str)
def test_several_chunks_per_call_equal_the_parallel_form(family, chunk, overlap, per_call):
    """apply_recurrent(chunks_per_call=k): diffusers' forward runs on k chunks at a time (fewer calls, the
    last one shorter), the attention still attends chunk by chunk, and the result is the parallel form's."""
    net = converted(family.build(), chunk_frames=chunk, overlap_frames=overlap, feature_init="random")
    inputs = family.inputs(batch=2)
    parallel = run(net, inputs)
    seen = []
    handle = family.blocks(net)[0].attn1.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
        with_kwargs=True,
    )
    with recurrent_mode(net, chunks_per_call=per_call):
        recurrent = run(net, inputs)
    handle.remove()
    frames = [min(per_call * chunk, FRAMES - start) for start in range(0, FRAMES, per_call * chunk)]
    assert seen == [f * SIZE * SIZE for f in frames]
    assert rel_err(recurrent, parallel) <= 1e-4


@by_name
def test_checkpoint_round_trip(family, tmp_path):
    config = ReHyAtConfig(chunk_frames=2, overlap_frames=1, blocks=[1], feature_init="random")
    net = convert(family.build(), config)
    save_rehyat(net, tmp_path / "rehyat")
    assert sorted(p.name for p in (tmp_path / "rehyat").iterdir()) == [
        "rehyat.safetensors",
        "rehyat_config.json",
    ]
    assert read_rehyat_config(tmp_path / "rehyat") == config
    fresh = load_rehyat(family.build(), tmp_path / "rehyat")  # converts the plain model first
    assert converted_blocks(fresh) == [1]
    inputs = family.inputs()
    assert torch.equal(run(fresh, inputs), run(net, inputs))
    with torch.no_grad():
        next(feature_maps(net)[1][0].parameters()).add_(1.0)  # fine-tuned base weights travel too
        family.blocks(net)[0].attn1.to_q.weight.add_(0.1)
    save_rehyat(net, tmp_path / "tuned", include_base_weights=True)
    tuned = load_rehyat(family.build(), tmp_path / "tuned")
    assert torch.equal(run(tuned, inputs), run(net, inputs))


def test_a_checkpoint_of_one_family_does_not_load_into_another(tmp_path):
    wan, ltx = FAMILIES[0], FAMILIES[3]
    save_rehyat(convert(wan.build()), tmp_path / "wan")
    with pytest.raises(ValueError, match="checkpoint is for WanTransformer3DModel, the model is LTXVideo"):
        load_rehyat(ltx.build(), tmp_path / "wan")


def test_dispatch():
    wan, sky, ltx = FAMILIES[0].build(), FAMILIES[1].build(), FAMILIES[3].build()
    assert [family_of(m).name for m in (wan, sky, ltx)] == ["wan", "skyreels-v2", "ltx-video"]
    assert supported_classes() == [
        "WanTransformer3DModel",
        "SkyReelsV2Transformer3DModel",
        "LTXVideoTransformer3DModel",
        "HunyuanVideoTransformer3DModel",
        "CogVideoXTransformer3DModel",
    ]
    assert [family.name for family in ADAPTERS] == [
        "wan",
        "skyreels-v2",
        "ltx-video",
        "hunyuan-video",
        "cogvideox",
    ]
    assert isinstance(convert(wan).blocks[0].attn1.processor, ReHyAtWanAttnProcessor)
    assert isinstance(convert(sky).blocks[1].attn1.processor, ReHyAtWanAttnProcessor)
    assert isinstance(convert(ltx).transformer_blocks[0].attn1.processor, ReHyAtLTXAttnProcessor)
    assert not isinstance(ltx.transformer_blocks[0].attn2.processor, ReHyAtLTXAttnProcessor)
    with pytest.raises(ValueError, match="already converted"):
        convert(ltx)
    with pytest.raises(ValueError) as error:
        convert(torch.nn.Linear(2, 2))
    assert str(error.value) == (
        "cannot convert Linear: ReHyAt converts WanTransformer3DModel, SkyReelsV2Transformer3DModel, "
        "LTXVideoTransformer3DModel, HunyuanVideoTransformer3DModel, CogVideoXTransformer3DModel"
    )
    with pytest.raises(ValueError, match="WanTransformer3DModel"):
        convert_wan(torch.nn.Linear(2, 2))  # the Wan entry point keeps its own message


def test_convert_equals_convert_wan_on_wan():
    wan = FAMILIES[0]
    model, inputs = wan.build(), wan.inputs()
    config = ReHyAtConfig(chunk_frames=2, feature_init="random")
    torch.manual_seed(3)
    a = run(convert(copy.deepcopy(model), config), inputs)
    torch.manual_seed(3)
    b = run(convert_wan(copy.deepcopy(model), config), inputs)
    assert torch.equal(a, b)


def test_family_specific_errors():
    sky = FAMILIES[1].build()
    sky.register_to_config(num_frame_per_block=2)
    with pytest.raises(ValueError, match="num_frame_per_block=2"):
        convert(sky)
    assert converted_blocks(sky) == []
    ltx = FAMILIES[3]
    net = convert(ltx.build())
    inputs = ltx.inputs()
    for missing in ("num_frames", "height"):
        with pytest.raises(ValueError, match="num_frames, height and width"):
            run(net, {**inputs, missing: None})
    with pytest.raises(ValueError, match="num_frames × height × width"):
        run(net, {**inputs, "num_frames": FRAMES - 1})
    with pytest.raises(ValueError, match="no latent frames"):
        run(net, ltx.inputs(frames=0))


def test_ltx_spatial_features_do_not_depend_on_the_frame():
    """feature_rotary="spatial": φ reads q, k with LTX-Video's frame rotation undone (its frame angles sit
    in every third channel pair after inner_dim % 6 unrotated channels), whatever the frame."""
    ltx = FAMILIES[3]
    model = ltx.build()
    x = torch.randn(1, 1, 16)
    features = []
    for frame in (0, 5):
        coords = torch.tensor([[[frame * 8.0], [64.0], [32.0]]])
        cos, sin = model.rope(x, video_coords=coords)
        q = ReHyAtLTXAttnProcessor.rotate(x, 2, (cos, sin))  # as LTX-Video rotates q: [B, N, 2 heads, 8]
        features.append(ReHyAtLTXAttnProcessor(None).feature_input(ReHyAtConfig(), q, (cos, sin)).flatten(2))
    assert torch.allclose(features[0], features[1], atol=1e-6)
    assert not torch.allclose(features[0], x, atol=1e-3)  # the row and column rotation stays
    assert LTX_VIDEO.temporal_compression == 8 and LTX_VIDEO.latent_frames(161) == 21
