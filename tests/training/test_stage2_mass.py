"""Stage 2's out-of-window mass term (rehyat.training.mass.OwnMassPenalty): what it records, where its
gradient goes, gradient checkpointing, and the trainer's option."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import tiny_base, tiny_config, tiny_dataset

from rehyat import ReHyAtConfig
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.models import rehyat_runtime
from rehyat.models.wan import convert_wan
from rehyat.models.wan_configs import tiny_wan_config
from rehyat.training.finetune import finetune
from rehyat.training.mass import OwnMassPenalty, linear_mass, mass_error, sample_rows
from rehyat.training.metrics import read_metrics

GEOMETRY = Geometry(frame_tokens=4, chunk_frames=1, overlap_frames=1, causal=True)


def _inputs(seed=0, frames=5, tokens=4, heads=2, dim=8, features=6):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(1, frames * tokens, heads, dim, generator=gen, requires_grad=True) for _ in range(3)
    )
    fq, fk = (
        torch.rand(1, frames * tokens, heads, features, generator=gen, requires_grad=True) for _ in range(2)
    )
    return q, k, v, fq, fk


def test_records_the_students_own_mass_error_with_the_target_detached():
    config = ReHyAtConfig(chunk_frames=1, overlap_frames=1)
    q, k, v, fq, fk = _inputs()
    penalty = OwnMassPenalty(rows=7)
    penalty.start(3)
    from rehyat.models.adapter import configured_attention

    out = penalty(config, q, k, v, fq, fk, GEOMETRY, backend="torch")
    assert torch.equal(out, configured_attention(config, q, k, v, fq, fk, GEOMETRY, backend="torch"))
    rows = sample_rows(GEOMETRY, 5, 7, torch.Generator().manual_seed(3), "cpu")
    assert rows.numel() == 7 and (rows >= 8).all()  # frames 0 and 1 have no linear keys at Tc=1, To=1
    expected = mass_error(*linear_mass(q, k, fq, fk, GEOMETRY, rows))
    assert len(penalty.errors) == 1
    term = penalty.loss()
    assert torch.allclose(term, expected)
    term.backward()
    assert q.grad is None and k.grad is None  # the target (the student's own scores) is a constant
    assert fq.grad.abs().sum() > 0 and fk.grad.abs().sum() > 0
    penalty.start(3)
    with torch.no_grad():  # sampling (no gradients): nothing recorded
        penalty(config, q, k, v, fq, fk, GEOMETRY, backend="torch")
    assert penalty.errors == []


def test_the_mass_is_fp32_inside_a_bf16_autocast_step():
    q, k, _, fq, fk = _inputs()
    q, k = q * 3, k * 3  # scores of a few units, where bf16 products lose the target's digits
    rows = torch.arange(8, 20)
    plain = linear_mass(q, k, fq, fk, GEOMETRY, rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = linear_mass(q, k, fq, fk, GEOMETRY, rows)
    for a, b in zip(plain, autocast, strict=True):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-6)


def test_rows_are_fixed_per_start_and_drawn_anew_by_the_next():
    config = ReHyAtConfig(chunk_frames=1, overlap_frames=1)
    q, k, v, fq, fk = _inputs()
    penalty = OwnMassPenalty(rows=5)
    penalty.start(0)
    for _ in range(2):  # a second call (another layer, or a checkpointed block's recomputation)
        penalty(config, q, k, v, fq, fk, GEOMETRY, backend="torch")
    assert torch.equal(penalty.errors[0], penalty.errors[1])
    first = penalty.errors[0]
    penalty.start(1)
    penalty(config, q, k, v, fq, fk, GEOMETRY, backend="torch")
    assert penalty.errors == [penalty.errors[0]] and not torch.equal(penalty.errors[0], first)
    penalty.start(2)
    with pytest.raises(ValueError, match="no converted self-attention recorded a mass error"):
        penalty.loss()


def _model():
    torch.manual_seed(0)
    from diffusers import WanTransformer3DModel

    return convert_wan(
        WanTransformer3DModel(**tiny_wan_config()), ReHyAtConfig(chunk_frames=1, overlap_frames=1)
    )


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_error_per_layer_and_the_same_gradients_under_gradient_checkpointing(checkpointing):
    model = _model().train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    reference = _model().train()
    gen = torch.Generator().manual_seed(0)
    latents, context = torch.randn(1, 16, 4, 8, 8, generator=gen), torch.randn(1, 6, 32, generator=gen)
    grads = []
    for m in (model, reference):
        penalty = OwnMassPenalty(rows=16)
        penalty.start(5)
        with rehyat_runtime(m).mode(attention=penalty):
            m(latents, torch.tensor([500.0]), context, return_dict=False)[0].square().mean()
            assert len(penalty.errors) == len(m.blocks)
            penalty.loss().backward()
            assert penalty.errors == []  # a checkpointed block's recomputation records nothing
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("rehyat_phi" in n for n in grads[0])
    # φ's inputs are not detached: the term also reaches the projections that make q and k (docs §7.1).
    assert grads[0]["blocks.0.attn1.to_q.weight"].abs().sum() > 0
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_stage2_with_the_mass_term_trains_and_refuses_what_it_cannot_serve(tmp_path):
    base, data = tiny_base(tmp_path / "wan"), tiny_dataset(tmp_path / "data")
    finetune(tiny_config(tmp_path / "plain", data, base, **{"model.rehyat": '{"chunk_frames": 1}'}))
    run = finetune(
        tiny_config(tmp_path / "mass", data, base, mass_weight=1.0, **{"model.rehyat": '{"chunk_frames": 1}'})
    )
    plain, mass = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "mass")
    assert [r["step"] for r in mass] == [1, 2, 3, 4] and all(r["mass_error"] > 0 for r in mass)
    assert "mass_error" not in plain[0]
    assert mass[0]["loss"] > plain[0]["loss"]  # the same noise and rows, plus the term
    assert rehyat_runtime(run.model).attention is None  # the mode ends with the run
    for overrides, why in [
        ({"model.compile": "true"}, "model.compile=true"),
        ({"model.convert": "false", "model.rehyat": "null"}, "not converted"),
        ({"model.rehyat": '{"chunk_frames": 1, "attention": "local"}'}, "not 'hybrid'"),
    ]:
        with pytest.raises(ValueError, match=rf"mass_weight=1.0 cannot be served: .*{why}"):
            finetune(tiny_config(tmp_path / "bad", data, base, mass_weight=1.0, **overrides))
    with pytest.raises(ValueError, match="mass_weight"):
        tiny_config(tmp_path / "bad", data, base, mass_weight=-1)
