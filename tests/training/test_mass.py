"""Stage 1's out-of-window mass (rehyat.training.mass) against the dense reference's masks and formula."""

from __future__ import annotations

import itertools

import pytest
import torch

from rehyat import ReHyAtConfig
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.hybrid.naive import chunk_masks
from rehyat.baselines import full_attention
from rehyat.training.capture import AttentionCapture
from rehyat.training.distill import DistillConfig
from rehyat.training.mass import key_frame_sets, linear_mass, mass_error, rows_with_linear_keys, sample_rows
from rehyat.training.students import BlockStudent

GEOMETRIES = [
    dict(chunk_frames=tc, overlap_frames=to, causal=causal, anchor_frames=a, first_chunk_frames=f0)
    for tc, to, causal, a, f0 in itertools.product((1, 2, 3), (0, 1, 3), (True, False), (0, 1), (0, 3))
    if causal or not f0
]


@pytest.mark.parametrize("fields", GEOMETRIES)
def test_key_sets_are_the_dense_references(fields):
    frames = 8
    softmax, linear = key_frame_sets(Geometry(frame_tokens=1, **fields), frames, torch.arange(frames))
    ref_softmax, ref_linear = chunk_masks(frames, 1, **fields)
    assert torch.equal(softmax, ref_softmax) and torch.equal(linear, ref_linear)


def _dense_ratios(q, k, fq, fk, fields, tokens, text=None):
    """nL/nS and the teacher's Σ_linear exp(s − c)/nS for every row, from the reference's token masks."""
    frames = q.shape[1] // tokens
    softmax, linear = chunk_masks(frames, tokens, **fields)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * q.shape[-1] ** -0.5
    window = s.masked_fill(~softmax, float("-inf"))
    if text is not None:
        window = torch.cat([window, torch.einsum("bihd,bjhd->bhij", q, text) * q.shape[-1] ** -0.5], -1)
    c = window.amax(-1, keepdim=True)
    n_s = torch.exp(window - c).sum(-1)
    teacher = (torch.exp(s - c) * linear).sum(-1)
    student = (torch.einsum("bihe,bjhe->bhij", fq, fk) * linear).sum(-1)
    return student / n_s, teacher / n_s


@pytest.mark.parametrize("fields", [GEOMETRIES[i] for i in (0, 9, 22, 31, 45)])
@pytest.mark.parametrize("text", [False, True])
def test_linear_mass_equals_the_dense_ratios_on_sampled_rows(fields, text):
    gen = torch.Generator().manual_seed(0)
    tokens, frames = 3, 8
    q, k = (torch.randn(2, frames * tokens, 2, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    fq, fk = (torch.rand(2, frames * tokens, 2, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    global_k = torch.randn(2, 4, 2, 4, generator=gen, dtype=torch.float64) if text else None
    geometry = Geometry(frame_tokens=tokens, **fields)
    rows = sample_rows(geometry, frames, 10, torch.Generator().manual_seed(1), "cpu")
    assert rows.numel() == min(10, rows_with_linear_keys(geometry, frames, "cpu").numel())
    if rows.numel() == 0:
        return
    student, teacher = linear_mass(q, k, fq, fk, geometry, rows, global_k=global_k)
    ref_student, ref_teacher = _dense_ratios(q, k, fq, fk, fields, tokens, global_k)
    torch.testing.assert_close(student, ref_student[:, :, rows])
    torch.testing.assert_close(teacher, ref_teacher[:, :, rows])
    assert (teacher > 0).all()  # every sampled row has linear keys
    assert mass_error(teacher, teacher) < 1e-12 and mass_error(student, teacher) > 0.01


def _capture(seed: int) -> AttentionCapture:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 8 * 4, 2, 8, generator=gen) for _ in range(3))
    return AttentionCapture(q, k, v, full_attention(q, k, v), frame_tokens=4)


def test_mass_matching_moves_the_linear_share_towards_the_teachers():
    config = ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_rotary="full")
    captures = [_capture(s) for s in range(4)]
    plain = BlockStudent("rehyat", config, 2, 8, lr=3e-3)
    matched = BlockStudent("rehyat", config, 2, 8, lr=3e-3, mass_weight=1.0, mass_rows=16)
    matched.load_feature_map_state(plain.feature_map_state())
    assert plain.evaluate(captures).mass_error == matched.evaluate(captures).mass_error  # same rows
    for _ in range(15):
        for capture in captures:
            plain.train_step(capture)
            matched.train_step(capture)
    assert matched.evaluate(captures).mass_error < 0.8 * plain.evaluate(captures).mass_error
    assert BlockStudent("local", config, 2, 8).evaluate(captures).mass_error is None


def test_mass_weight_needs_hybrid_attention():
    with pytest.raises(ValueError, match=r"mass_weight=1\.0 .* attention='local'"):
        BlockStudent("rehyat", ReHyAtConfig(attention="local"), 2, 8, mass_weight=1.0)
    with pytest.raises(ValueError, match=r"mass_weight=0\.5 .* needs rehyat\.attention='hybrid'"):
        DistillConfig(mass_weight=0.5, rehyat=ReHyAtConfig(attention="linear"))
    with pytest.raises(ValueError, match="mass_weight"):
        DistillConfig(mass_weight=-1.0)
