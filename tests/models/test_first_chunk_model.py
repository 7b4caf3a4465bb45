"""``ReHyAtConfig.first_chunk_frames`` in a converted model: validated and saved with the config, the
recurrent sweep (one or several chunks per call, compiled) equals the parallel form, the paths that
chunk uniformly refuse it in one line, and ``rehyat flops`` counts its windows."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import converted, run, tiny_inputs, tiny_wan
from torch._dynamo.utils import counters

from rehyat import ReHyAtConfig, recurrent_forward
from rehyat.flops import attention_flops, softmax_pairs
from rehyat.models.hooks import compile_recurrent, remove_recurrent

from conftest import rel_err

JOINT_START = dict(chunk_frames=1, overlap_frames=3, first_chunk_frames=3, feature_init="random")


def _converted(model, **config):
    """Converted with the same random φ whatever the config (seeded): two configs differ in geometry only."""
    torch.manual_seed(0)
    return converted(model, **config)


def test_the_field_is_validated_and_round_trips():
    config = ReHyAtConfig(**JOINT_START)
    assert ReHyAtConfig.from_dict(config.to_dict()) == config
    assert ReHyAtConfig.from_dict({"chunk_frames": 2}).first_chunk_frames == 0  # older configs load
    assert config.geometry(16).first_chunk_frames == 3
    for bad, match in (
        (dict(first_chunk_frames=-1), "first_chunk_frames"),
        (dict(first_chunk_frames=2, causal=False), "needs attention='hybrid' and causal=True"),
        (dict(first_chunk_frames=2, attention="local"), "needs attention='hybrid' and causal=True"),
    ):
        with pytest.raises(ValueError, match=match):
            ReHyAtConfig(**bad)


@pytest.mark.parametrize("per_call", [1, 2])
def test_recurrent_sweep_equals_the_parallel_form(per_call):
    model = tiny_wan(num_layers=2)
    net = _converted(model, **JOINT_START)
    hidden, timestep, context = tiny_inputs(batch=2)
    parallel = run(net, hidden, timestep, context)
    uniform = _converted(model, **{**JOINT_START, "first_chunk_frames": 0})
    assert rel_err(parallel, run(uniform, hidden, timestep, context)) > 1e-4  # the geometry reaches the op
    sizes = []
    net.blocks[0].attn1.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[1] // 16))
    with torch.no_grad():
        recurrent = recurrent_forward(net, hidden, timestep, context, chunks_per_call=per_call)
    assert rel_err(recurrent, parallel) <= 1e-4
    assert sizes[0] == 3 and set(sizes[1:]) <= {per_call, 1}  # the first call is the first chunk


def test_compiled_sweep_has_one_graph_per_call_shape():
    model = tiny_wan(num_layers=1)
    reference = _converted(model, **JOINT_START)
    net = compile_recurrent(_converted(model, **JOINT_START), backend="eager")
    torch._dynamo.reset()
    counters.clear()
    for frames in (8, 10):
        hidden, timestep, context = tiny_inputs(frames=frames)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=frames > 8):
            compiled = run(net, hidden, timestep, context)
        assert rel_err(compiled, run(reference, hidden, timestep, context)) <= 1e-4
    remove_recurrent(net)


def test_the_joint_families_refuse_it():
    from tiny_joint import JOINT

    from rehyat.models import convert

    with pytest.raises(ValueError, match=r"first_chunk_frames=3: .* chunk entries are uniform chunks"):
        convert(JOINT[0].build(), ReHyAtConfig(**JOINT_START))


def test_flops_count_the_first_chunks_window():
    assert softmax_pairs(21, 1, 3) == 78  # 1 + 2 + 3 + 18 × 4
    assert softmax_pairs(21, 1, 3, first_chunk_frames=3) == 81  # 3 × 3 + 18 × 4
    assert softmax_pairs(21, 3, 1, first_chunk_frames=3) == softmax_pairs(21, 3, 1)
    geometry = dict(chunk_frames=1, overlap_frames=3, feature_dim=8)
    plain = attention_flops(21, 16, 2, 4, **geometry)
    joint = attention_flops(21, 16, 2, 4, **geometry, first_chunk_frames=3)
    assert joint.softmax == pytest.approx(plain.softmax * 81 / 78)
