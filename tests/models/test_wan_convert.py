"""convert_wan: what changes, what stays, and that Tc >= T reproduces the original model."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import FRAMES, converted, run, tiny_inputs, tiny_wan

from rehyat import AttentionStats, PolynomialFeatureMap, ReHyAtConfig, convert_wan
from rehyat.models import ReHyAtWanAttnProcessor, converted_blocks, feature_maps

from conftest import rel_err


@pytest.mark.parametrize("init", ["taylor", "random"])
def test_one_chunk_equals_the_original_model(init):
    model = tiny_wan(num_layers=3)
    hidden, timestep, context = tiny_inputs(batch=2)
    reference = run(model, hidden, timestep, context)
    for chunk in (FRAMES, FRAMES + 5):
        out = run(converted(model, chunk_frames=chunk, feature_init=init), hidden, timestep, context)
        assert rel_err(out, reference) < 1e-5


def test_chunking_changes_the_output():
    model = tiny_wan()
    hidden, timestep, context = tiny_inputs()
    reference = run(model, hidden, timestep, context)
    assert rel_err(run(converted(model, chunk_frames=2), hidden, timestep, context), reference) > 1e-3


def test_only_self_attention_of_chosen_blocks_changes():
    model = tiny_wan(num_layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = converted(model, blocks=[0, 2])
    assert converted_blocks(new) == [0, 2]
    assert type(new.blocks[1].attn1.processor) is type(model.blocks[1].attn1.processor)
    for block in new.blocks:
        assert not isinstance(block.attn2.processor, ReHyAtWanAttnProcessor)
    after = new.state_dict()
    added = sorted(set(after) - set(before))
    assert added and all(
        ".attn1.rehyat_phi_" in k and k.startswith(("blocks.0.", "blocks.2.")) for k in added
    )
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # parameters(), state_dict() and .to() see the feature maps
    phis = feature_maps(new)
    assert set(phis) == {0, 2}
    phi_params = {id(p) for pair in phis.values() for phi in pair for p in phi.parameters()}
    assert phi_params <= {id(p) for p in new.parameters()}
    assert isinstance(phis[0][0], PolynomialFeatureMap) and phis[0][0].feature_dim == 24
    new.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in phis[2][1].parameters())


def test_unconverted_blocks_compute_the_same_as_before():
    model = tiny_wan(num_layers=3)
    hidden, timestep, context = tiny_inputs()
    outputs = {}
    for name, net in (("original", model), ("converted", converted(model, blocks=[2], chunk_frames=2))):
        captured = []
        net.blocks[1].register_forward_hook(lambda module, args, out, store=captured: store.append(out))
        run(net, hidden, timestep, context)
        outputs[name] = captured[0]
    assert torch.equal(outputs["original"], outputs["converted"])


def test_grid_is_captured_from_keyword_inputs_and_each_call():
    model = converted(tiny_wan(), chunk_frames=2)
    for frames in (FRAMES, 4):
        hidden, timestep, context = tiny_inputs(frames=frames)
        with torch.no_grad():
            out = model(
                hidden_states=hidden, timestep=timestep, encoder_hidden_states=context, return_dict=False
            )
        assert out[0].shape == hidden.shape
        assert model._rehyat_runtime.grid == (frames, 4, 4)


def test_denominator_stats_are_collected():
    model = converted(tiny_wan(), chunk_frames=2)
    stats = AttentionStats()
    for block in model.blocks:
        block.attn1.processor.stats = stats
    run(model, *tiny_inputs())
    assert stats.total_rows == 2 * FRAMES * 16 * 2  # blocks × tokens × heads


def test_image_to_video_model_keeps_its_image_context():
    model = tiny_wan(image_dim=8, added_kv_proj_dim=24)
    hidden, timestep, _ = tiny_inputs()
    context = torch.randn(1, 512, 32)  # Wan's I2V processor assumes 512 text tokens
    image = torch.randn(1, 3, 8)
    reference = run(model, hidden, timestep, context, encoder_hidden_states_image=image)
    out = run(
        converted(model, chunk_frames=FRAMES), hidden, timestep, context, encoder_hidden_states_image=image
    )
    assert rel_err(out, reference) < 1e-5


def test_conversion_errors():
    model = tiny_wan()
    with pytest.raises(ValueError, match="out of range"):
        convert_wan(model, ReHyAtConfig(blocks=[2]))
    assert converted_blocks(model) == []  # nothing changed
    convert_wan(model)
    with pytest.raises(ValueError, match="already converted"):
        convert_wan(model)
    with pytest.raises(ValueError, match="WanTransformer3DModel"):
        convert_wan(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="ReHyAtConfig"):
        convert_wan(tiny_wan(), {"chunk_frames": 3})
    with pytest.raises(ValueError, match="no latent grid"):
        model.blocks[0].attn1(torch.randn(1, 16, 24))


def test_attention_backend_is_selectable():
    model = converted(tiny_wan(), chunk_frames=2)
    inputs = tiny_inputs()
    reference = run(model, *inputs)
    model._rehyat_runtime.backend = "torch"
    assert torch.equal(run(model, *inputs), reference)  # "auto" is the PyTorch path on CPU
    model._rehyat_runtime.backend = "fast"
    with pytest.raises(ValueError, match="backend"):
        run(model, *inputs)
