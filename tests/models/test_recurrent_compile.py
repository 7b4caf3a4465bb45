"""compile_recurrent: the recurrent form compiled chunk by chunk makes one graph per chunk shape, however
many chunks the video has, and equals eager and the parallel form."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import converted, run, tiny_inputs, tiny_wan
from torch._dynamo.utils import counters

from rehyat import recurrent_forward
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
