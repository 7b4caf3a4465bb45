"""The joint text–video families on the Triton kernels (docs/method.md §6.1): the text keys and the
overlap frames are the step kernel's cached keys, HunyuanVideo's padded text masked in the kernel. A
converted tiny HunyuanVideo (head dim 16, which the kernels take) and CogVideoX-5B, parallel (chunk
entries) and recurrent, on ``backend="triton"`` against ``backend="torch"``, without gradients.

Runs in Triton's interpreter without a GPU (TRITON_INTERPRET=1, set before the kernel modules are
first imported)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from tiny_joint import JOINT, _hunyuan, run

from rehyat import ReHyAtConfig
from rehyat.attention.hybrid.kernels import launch
from rehyat.models import convert, rehyat_runtime
from rehyat.models.hooks import recurrent_mode

from conftest import rel_err

HUNYUAN, COG_5B = JOINT[0], JOINT[1]
BUILDS = {
    # attention_head_dim 16 (the tiny config's 12 is not a kernel head dim); RoPE axes 8 + 4 + 4.
    "hunyuan-video": lambda: _hunyuan(0, attention_head_dim=16, rope_axes_dim=[8, 4, 4]),
    "cogvideox-5b": lambda: COG_5B.build(),
}


@pytest.mark.parametrize("family", [HUNYUAN, COG_5B], ids=str)
def test_joint_family_on_the_kernels_equals_pytorch(family, monkeypatch):
    masks = []
    forward = launch.windowed_attention_forward

    def recorded(*args, prefix_mask=None, **kwargs):
        masks.append(prefix_mask is not None)
        return forward(*args, prefix_mask=prefix_mask, **kwargs)

    monkeypatch.setattr(launch, "windowed_attention_forward", recorded)
    model = convert(
        BUILDS[family.name](), ReHyAtConfig(chunk_frames=3, overlap_frames=1, feature_init="random")
    )
    inputs = family.inputs_for(model, batch=2)  # HunyuanVideo: the second prompt padded
    runtime = rehyat_runtime(model)
    outputs = {}
    for backend in ("torch", "triton"):
        with runtime.mode(backend=backend):
            outputs[backend, "parallel"] = run(model, inputs)
            with recurrent_mode(model):
                outputs[backend, "recurrent"] = run(model, inputs)
    # Every step of the kernels' forms ran there; HunyuanVideo's with its text mask.
    assert masks and all(masks) == (family is HUNYUAN) and any(masks) == (family is HUNYUAN)
    for form in ("parallel", "recurrent"):
        assert rel_err(outputs["triton", form], outputs["torch", form]) < 1e-4, form
    assert rel_err(outputs["triton", "recurrent"], outputs["triton", "parallel"]) < 1e-4
