"""feature_rotary="spatial": φ reads q and k without the temporal RoPE, in every path that computes φ."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import FRAMES, LATENT_SIZE, converted, run, tiny_inputs, tiny_wan

from rehyat import ReHyAtConfig, recurrent_forward
from rehyat.models import feature_maps
from rehyat.models.wan import apply_rotary, feature_input, temporal_rotary_dims
from rehyat.training.capture import AttentionRecorder
from rehyat.training.students import BlockStudent

from conftest import rel_err

SPATIAL = ReHyAtConfig(feature_rotary="spatial")


@pytest.fixture(scope="module")
def model():
    return tiny_wan(num_layers=2)


@pytest.mark.parametrize("head_dim", [12, 32, 128])
def test_temporal_dims_match_diffusers_rope(head_dim):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    assert temporal_rotary_dims(head_dim) == WanRotaryPosEmbed(head_dim, (1, 2, 2), 64).t_dim


def test_spatial_inputs_do_not_depend_on_the_frame(model):
    """A token's content repeated in every frame gets one φ input, the one frame 0 gives (angle 0)."""
    hidden, _, _ = tiny_inputs()
    cos, sin = model.rope(hidden)
    frame_tokens = (LATENT_SIZE // 2) ** 2
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    per_frame = torch.randn(2, 1, frame_tokens, heads, head_dim, dtype=torch.float64)
    pre = per_frame.expand(2, FRAMES, frame_tokens, heads, head_dim).flatten(1, 2)
    q = apply_rotary(pre, cos, sin)  # as attention sees it
    k = apply_rotary(pre.flip(0), cos, sin)
    phi_q, phi_k = (feature_input(SPATIAL, x, (cos, sin)) for x in (q, k))
    frames_q = phi_q.unflatten(1, (FRAMES, frame_tokens))
    assert torch.allclose(frames_q, frames_q[:, :1].expand_as(frames_q), atol=1e-12)
    assert torch.allclose(frames_q[:, 0], q[:, :frame_tokens], atol=1e-12)
    assert torch.allclose(
        phi_k, apply_rotary(pre.flip(0), *_without_temporal(cos, sin, head_dim)), atol=1e-12
    )
    # The spatial rotation stays: within a frame, tokens still differ by their (h, w) angles.
    assert not torch.allclose(frames_q[:, 0], pre[:, :frame_tokens])
    # "full" is q and k themselves; "spatial" needs the rotary.
    assert feature_input(ReHyAtConfig(feature_rotary="full"), q, (cos, sin)) is q
    with pytest.raises(ValueError, match="feature_rotary='spatial' needs the rotary embedding"):
        feature_input(SPATIAL, q, None)


def _without_temporal(cos, sin, head_dim):
    temporal = temporal_rotary_dims(head_dim)
    cos, sin = cos.clone(), sin.clone()
    cos[..., :temporal], sin[..., :temporal] = 1, 0
    return cos, sin


def test_config_rejects_unknown_rotary():
    with pytest.raises(ValueError, match="feature_rotary must be one of"):
        ReHyAtConfig(feature_rotary="temporal")
    assert ReHyAtConfig.from_json(SPATIAL.to_json()) == SPATIAL


def test_spatial_model_recurrent_equals_parallel_and_differs_from_full(model):
    torch.manual_seed(3)
    spatial = converted(model, feature_rotary="spatial", feature_init="random")
    full = converted(model, feature_rotary="full", feature_init="random")
    full.load_state_dict(spatial.state_dict())  # the same φ: only their inputs differ
    hidden, timestep, context = tiny_inputs(batch=2, frames=9)
    parallel = run(spatial, hidden, timestep, context)
    with torch.no_grad():
        recurrent = recurrent_forward(spatial, hidden, timestep, context)
    assert rel_err(recurrent, parallel) <= 1e-4
    assert rel_err(run(full, hidden, timestep, context), parallel) > 1e-3


def test_stage1_student_runs_the_processors_op(model):
    """Stage 1 trains φ on what the converted model will feed it: a student holding a converted block's
    φ reproduces that block's attention output from the recorder's capture (q, k, v and the rotary)."""
    torch.manual_seed(4)
    net = converted(model, feature_rotary="spatial", feature_init="random")
    hidden, timestep, context = tiny_inputs(frames=6)
    recorder = AttentionRecorder(net, [1])
    with recorder.installed(), torch.no_grad():
        recorder.active = True
        net(hidden, timestep, context, return_dict=False)
    (capture,) = recorder.take()[1]
    assert capture.rotary is not None and capture.rotary[0].shape[1] == capture.q.shape[1]
    student = BlockStudent(
        "rehyat", SPATIAL, model.config.num_attention_heads, model.config.attention_head_dim
    )
    phi_q, phi_k = feature_maps(net)[1]
    student.phi_q.load_state_dict(phi_q.state_dict())
    student.phi_k.load_state_dict(phi_k.state_dict())
    with torch.no_grad():
        assert rel_err(student.predict(capture), capture.y) <= 1e-5
