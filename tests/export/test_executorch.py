"""The ExecuTorch (XNNPACK) export of the recurrent step: parity with PyTorch over a whole video.

Slow (lowering to XNNPACK takes minutes on two cores) and skipped without the executorch package, which
the test extras do not install; the ONNX Runtime tests cover the same step modules and runner on CI.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from rehyat import ReHyAtConfig, convert_wan, recurrent_forward
from rehyat.export import ExportedStep, export_dit_step
from rehyat.models.wan_configs import tiny_wan_config

pytest.importorskip("executorch.runtime")


@pytest.mark.slow
def test_executorch_matches_pytorch_over_a_whole_video(tmp_path):
    torch.manual_seed(0)
    model = WanTransformer3DModel(**tiny_wan_config(num_layers=1)).eval()
    model = convert_wan(model, ReHyAtConfig(feature_init="random")).eval()
    folder = export_dit_step(
        model, tmp_path, num_frames=7, height=8, width=8, text_tokens=6, runtime="executorch"
    )
    assert (folder / "model.pte").is_file()
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 7, 8, 8, generator=gen)
    timestep, context = torch.tensor([700.0]), torch.randn(1, 6, 32, generator=gen)
    with torch.no_grad():
        expected = recurrent_forward(model, latents, timestep, context).numpy()
    runner = ExportedStep(folder)
    assert runner.runtime == "executorch"
    got = runner.forward(latents.numpy(), timestep.numpy(), context.numpy())
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4
