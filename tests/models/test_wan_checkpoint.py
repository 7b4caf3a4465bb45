"""save_rehyat / load_rehyat: round trips through a local diffusers folder, and clear mismatch errors."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from tiny_wan import converted, run, tiny_inputs, tiny_wan

from rehyat import ReHyAtConfig, convert_wan, load_rehyat, save_rehyat
from rehyat.models import converted_blocks, read_rehyat_config

CONFIG = dict(chunk_frames=2, overlap_frames=1, blocks=2, block_ranking=[2, 0, 1], feature_init="random")


@pytest.fixture
def saved(tmp_path):
    """A user's local base model folder and a ReHyAt checkpoint of a converted copy."""
    tiny_wan(num_layers=3).save_pretrained(tmp_path / "base")
    # converted in place (not a deep copy) so that its weights share the memory layout of every
    # from_pretrained load below, which makes the outputs bitwise comparable
    net = convert_wan(WanTransformer3DModel.from_pretrained(tmp_path / "base").eval(), ReHyAtConfig(**CONFIG))
    save_rehyat(net, tmp_path / "rehyat")
    return tmp_path, net


def test_round_trip_into_a_fresh_local_model(saved):
    tmp_path, net = saved
    files = sorted(p.name for p in (tmp_path / "rehyat").iterdir())
    assert files == ["rehyat.safetensors", "rehyat_config.json"]  # no temp files, no pickle
    assert all(".rehyat_phi_" in k for k in load_file(tmp_path / "rehyat" / "rehyat.safetensors"))
    assert read_rehyat_config(tmp_path / "rehyat") == ReHyAtConfig(**CONFIG)

    fresh = WanTransformer3DModel.from_pretrained(tmp_path / "base").eval()
    load_rehyat(fresh, tmp_path / "rehyat")
    assert converted_blocks(fresh) == [0, 2]
    inputs = tiny_inputs()
    assert torch.equal(run(fresh, *inputs), run(net, *inputs))

    # loading into a model already converted with the same config also works
    again = convert_wan(
        WanTransformer3DModel.from_pretrained(tmp_path / "base").eval(), ReHyAtConfig(**CONFIG)
    )
    load_rehyat(again, tmp_path / "rehyat")
    assert torch.equal(run(again, *inputs), run(net, *inputs))


def test_fine_tuned_base_weights_are_saved_in_diffusers_layout(tmp_path):
    net = converted(tiny_wan(), chunk_frames=3)
    with torch.no_grad():
        net.blocks[1].ffn.net[2].weight.add_(0.5)  # "fine-tuned"
    save_rehyat(net, tmp_path / "ckpt", include_base_weights=True)
    base_folder = tmp_path / "ckpt" / "transformer"
    assert sorted(p.name for p in base_folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert not any(
        ".rehyat_phi_" in k for k in load_file(base_folder / "diffusion_pytorch_model.safetensors")
    )

    inputs = tiny_inputs()
    loaded = load_rehyat(tiny_wan(seed=5), tmp_path / "ckpt")
    assert torch.equal(run(loaded, *inputs), run(net, *inputs))
    # the base folder alone is a plain diffusers model
    plain = WanTransformer3DModel.from_pretrained(base_folder).eval()
    assert torch.equal(plain.blocks[1].ffn.net[2].weight, net.blocks[1].ffn.net[2].weight)


def _unchanged(model: WanTransformer3DModel, state: dict) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_layers=2), "num_layers=3"),
        (dict(num_attention_heads=3, attention_head_dim=8), "num_attention_heads=2"),
        (dict(attention_head_dim=18), "attention_head_dim=12"),
    ],
)
def test_architecture_mismatch_is_rejected_without_change(saved, overrides, match):
    tmp_path, _ = saved
    other = tiny_wan(**{"num_layers": 3, **overrides})
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        load_rehyat(other, tmp_path / "rehyat")
    assert converted_blocks(other) == [] and _unchanged(other, state)


def test_config_mismatch_is_rejected(saved):
    tmp_path, _ = saved
    other = converted(tiny_wan(num_layers=3), **{**CONFIG, "chunk_frames": 3})
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="already converted"):
        load_rehyat(other, tmp_path / "rehyat")
    assert _unchanged(other, state)


def test_tensor_mismatch_is_rejected_before_any_change(saved):
    tmp_path, _ = saved
    path = tmp_path / "rehyat" / "rehyat.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][..., :-1].contiguous()
    save_file(tensors, path)
    model = tiny_wan(num_layers=3)
    with pytest.raises(ValueError, match="has shape"):
        load_rehyat(model, tmp_path / "rehyat")
    assert converted_blocks(model) == []
    del tensors[name]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="missing"):
        load_rehyat(model, tmp_path / "rehyat")


def test_bad_checkpoint_folders(saved):
    tmp_path, _ = saved
    with pytest.raises(ValueError, match=r"rehyat_config\.json is missing"):
        load_rehyat(tiny_wan(num_layers=3), tmp_path / "base")
    meta_path = tmp_path / "rehyat" / "rehyat_config.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format version"):
        load_rehyat(tiny_wan(num_layers=3), tmp_path / "rehyat")
    meta_path.write_text(json.dumps({**meta, "converted_blocks": [0, 1]}))
    with pytest.raises(ValueError, match="lists blocks"):
        load_rehyat(tiny_wan(num_layers=3), tmp_path / "rehyat")
    with pytest.raises(ValueError, match="convert_wan"):
        save_rehyat(tiny_wan(), tmp_path / "plain")


def test_save_overwrites_atomically(saved):
    tmp_path, net = saved
    with torch.no_grad():
        next(iter(net.blocks[0].attn1.rehyat_phi_q.parameters())).add_(1.0)
    save_rehyat(net, tmp_path / "rehyat")
    assert sorted(p.name for p in (tmp_path / "rehyat").iterdir()) == [
        "rehyat.safetensors",
        "rehyat_config.json",
    ]
    inputs = tiny_inputs()
    loaded = load_rehyat(WanTransformer3DModel.from_pretrained(tmp_path / "base").eval(), tmp_path / "rehyat")
    assert torch.equal(run(loaded, *inputs), run(net, *inputs))


def test_nonnegative_feature_maps_survive_a_round_trip(tmp_path):
    """The config flag rebuilds the maps with even powers on load, so outputs match exactly."""
    tiny_wan(num_layers=2).save_pretrained(tmp_path / "base")
    config = ReHyAtConfig(chunk_frames=2, feature_init="random", feature_nonnegative=True)
    net = convert_wan(WanTransformer3DModel.from_pretrained(tmp_path / "base").eval(), config)
    save_rehyat(net, tmp_path / "rehyat")
    fresh = load_rehyat(WanTransformer3DModel.from_pretrained(tmp_path / "base").eval(), tmp_path / "rehyat")
    maps = [m for m in fresh.modules() if type(m).__name__ == "PolynomialFeatureMap"]
    assert len(maps) == 4 and all(m.nonnegative for m in maps)  # φq, φk of both blocks
    inputs = tiny_inputs()
    assert torch.equal(run(fresh, *inputs), run(net, *inputs))
    with pytest.raises(ValueError, match="feature_nonnegative must be a bool"):
        ReHyAtConfig(feature_nonnegative="yes")
