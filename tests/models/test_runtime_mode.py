"""ReHyAtRuntime.mode, the one writer of a runtime's mode fields (streaming, grid, backend, attention):
set for a with block, restored on exit (an error too, nested blocks in turn), checked before anything
is set; the library's scoped uses of it leave a model's runtime as they found it."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import LATENT_SIZE, converted, run, tiny_inputs, tiny_wan

from rehyat import ReHyAtConfig
from rehyat.export.step import DiTStep, StepSignature
from rehyat.models import ReHyAtRuntime, rehyat_runtime
from rehyat.models.adapter import MODE_FIELDS
from rehyat.models.hooks import recurrent_forward


def mode_of(runtime: ReHyAtRuntime) -> dict:
    return {name: getattr(runtime, name) for name in MODE_FIELDS}


def test_mode_sets_the_fields_and_restores_them_nested_and_on_error():
    runtime = ReHyAtRuntime(config=ReHyAtConfig(), blocks=[])
    start = mode_of(runtime)
    attention = lambda *args, **kwargs: None  # noqa: E731
    with runtime.mode(streaming=True, grid=[2, 3, 4], backend="torch") as same:
        assert same is runtime
        assert (runtime.streaming, runtime.grid, runtime.backend) == (True, (2, 3, 4), "torch")
        with runtime.mode(grid=(1, 3, 4), attention=attention):
            assert (runtime.grid, runtime.attention, runtime.streaming) == ((1, 3, 4), attention, True)
        assert (runtime.grid, runtime.attention) == ((2, 3, 4), None)
        with pytest.raises(RuntimeError, match="inside"), runtime.mode(backend="triton"):
            raise RuntimeError("inside")
        assert runtime.backend == "torch"
    assert mode_of(runtime) == start


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"config": None}, "not config"),
        ({"streaming": True, "blocks": [0]}, "not blocks"),
        ({"streaming": 1}, "streaming must be a bool"),
        ({"grid": (2, 3)}, "grid must be"),
        ({"grid": (2, -1, 4)}, "grid must be"),
        ({"grid": (2.0, 3, 4)}, "grid must be"),
        ({"backend": "fast"}, "backend must be one of"),
        ({"attention": "hybrid"}, "attention must be None or a callable"),
    ],
)
def test_mode_refuses_other_names_and_wrong_values_before_setting_anything(fields, words):
    runtime = ReHyAtRuntime(config=ReHyAtConfig(), blocks=[])
    start = mode_of(runtime)
    with pytest.raises(ValueError, match=words), runtime.mode(**{"grid": (1, 1, 1), **fields}):
        pass
    assert mode_of(runtime) == start


def test_a_converted_model_runs_in_a_mode_and_its_runtime_is_put_back():
    model = converted(tiny_wan(), chunk_frames=2, overlap_frames=1)
    runtime = rehyat_runtime(model)
    inputs = tiny_inputs()
    reference = run(model, *inputs)
    found = mode_of(runtime)  # after a parallel call: its grid, not streaming
    with runtime.mode(backend="torch"):
        assert torch.equal(run(model, *inputs), reference)  # "auto" is the PyTorch path on CPU
    assert mode_of(runtime) == found
    with torch.no_grad():
        recurrent_forward(model, *inputs)
    assert mode_of(runtime) == found  # the sweep set streaming and each chunk's grid, then put them back
    hidden, timestep, context = inputs
    step = DiTStep(model, StepSignature(cached=0, frames=2, first=True), LATENT_SIZE, LATENT_SIZE)
    with torch.no_grad():
        step(hidden[:, :, :2], timestep, context, torch.tensor([0]))  # the exported step, streaming
    assert mode_of(runtime) == found
