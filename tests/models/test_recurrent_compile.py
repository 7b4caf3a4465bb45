"""compile_recurrent: the recurrent form compiled chunk by chunk makes one graph per chunk shape, however
many chunks the video has and however many blocks the model has, and equals eager and the parallel form.
Without a GPU the kernels' case runs in Triton's interpreter (tests/conftest.py turns it on)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_wan import converted, run, tiny_inputs, tiny_wan
from torch._dynamo.utils import counters

from rehyat import recurrent_forward
from rehyat.models import rehyat_runtime
from rehyat.models.hooks import compile_recurrent, is_recurrent, remove_recurrent

from conftest import rel_err


@pytest.mark.parametrize(
    "chunk,overlap,extra,batch,graphs",
    [
        (2, 1, 0, 1, 2),  # first chunk, steady chunk
        (2, 3, 1, 2, 4),  # first, overlap cache filling, steady, shorter last; per-token timesteps
    ],
    ids=["steady", "filling-last-per-token"],
)
def test_graphs_do_not_grow_with_chunks(chunk, overlap, extra, batch, graphs):
    model = tiny_wan(num_layers=1)
    reference = converted(model, chunk_frames=chunk, overlap_frames=overlap)
    net = compile_recurrent(converted(model, chunk_frames=chunk, overlap_frames=overlap), backend="eager")
    torch._dynamo.reset()
    counters.clear()
    for chunks in (3, 6, 9):
        frames = chunks * chunk + extra
        hidden, timestep, context = tiny_inputs(batch=batch, frames=frames)
        if batch > 1:  # Wan2.2-TI2V: one timestep per token, cut with the chunk's tokens
            timestep = torch.linspace(900.0, 100.0, batch * frames * 16).reshape(batch, -1)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=chunks > 3):
            compiled = run(net, hidden, timestep, context)
        with torch.no_grad():
            eager = recurrent_forward(reference, hidden, timestep, context)
        assert counters["stats"]["unique_graphs"] == graphs
        assert rel_err(compiled, eager) <= 1e-5
        assert rel_err(compiled, run(reference, hidden, timestep, context)) <= 1e-4  # the parallel form
    assert all(block.attn1.processor.state is None for block in net.blocks)
    remove_recurrent(net)
    assert not is_recurrent(net)


def test_several_chunks_per_call_make_one_graph_per_call_shape():
    """compile_recurrent(chunks_per_call=2): the first call and the steady call, whatever the length."""
    model = tiny_wan(num_layers=1)
    reference = converted(model, chunk_frames=2, overlap_frames=1)
    net = compile_recurrent(
        converted(model, chunk_frames=2, overlap_frames=1), chunks_per_call=2, backend="eager"
    )
    torch._dynamo.reset()
    counters.clear()
    for frames in (8, 12, 16):
        hidden, timestep, context = tiny_inputs(frames=frames)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=frames > 8):
            compiled = run(net, hidden, timestep, context)
        assert counters["stats"]["unique_graphs"] == 2
        assert rel_err(compiled, run(reference, hidden, timestep, context)) <= 1e-4  # the parallel form
    with pytest.raises(ValueError, match="applied with 2"):
        compile_recurrent(net, chunks_per_call=3)
    remove_recurrent(net)


@pytest.mark.parametrize("blocks", [1, 4])
def test_graphs_do_not_grow_with_blocks_on_the_kernels(blocks, monkeypatch):
    """The backend (kernels or PyTorch) is resolved inside the compiled chunk forward, in every block. Dynamo
    before torch 2.12 cannot trace importlib's ``find_spec`` (emulated: a graph break in it); a break in a
    block resumes once per block, each block's FFN hook a new guard, so the graphs grew with the depth."""
    pytest.importorskip("triton")
    find_spec = importlib.util.find_spec

    def untraceable(name, package=None):
        torch._dynamo.graph_break()
        return find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", untraceable)
    model = tiny_wan(num_layers=blocks, attention_head_dim=16)  # the kernels take head dims of 16 and up
    reference = converted(model, chunk_frames=2, overlap_frames=1)
    net = converted(model, chunk_frames=2, overlap_frames=1)
    rehyat_runtime(net).backend = "triton"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, reference = compile_recurrent(net.to(device), backend="eager"), reference.to(device)
    torch._dynamo.reset()
    counters.clear()
    for chunks in (2, 3):
        hidden, timestep, context = (t.to(device) for t in tiny_inputs(frames=2 * chunks))
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=chunks > 2):
            compiled = run(net, hidden, timestep, context)
        assert counters["stats"]["unique_graphs"] == 2  # first chunk, steady chunk: as with one block
        with torch.no_grad():
            eager = recurrent_forward(reference, hidden, timestep, context)
        assert rel_err(compiled, eager) <= 1e-4
        assert rel_err(compiled, run(reference, hidden, timestep, context)) <= 1e-4  # the parallel form
    remove_recurrent(net)
