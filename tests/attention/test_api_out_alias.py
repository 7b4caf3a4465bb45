"""``out=`` of the streaming step must not share memory with an input or the state's cached frames. Each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

from rehyat import hybrid_attention_step
from rehyat.attention.hybrid.common import shares_memory

from conftest import make_inputs

STEP = dict(frame_tokens=3, overlap_frames=1, backend="torch")


def _step_inputs():
    # D' = D so that out (shaped like q) could also be fq or fk.
    return make_inputs(1, 2, 3, 2, 8, 8, seed=12)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("alias", ["q", "k", "v", "fq", "fk"])
def test_step_out_aliasing_an_input_is_rejected(alias, backend):
    """``out=k`` gave the right output for the chunk but corrupted the state for later ones. The check
    runs before either path, so it holds for the kernels too (no Triton needed to see it here)."""
    inputs = dict(zip(("q", "k", "v", "fq", "fk"), _step_inputs(), strict=True))
    kwargs = {**STEP, "backend": backend}
    with torch.no_grad(), pytest.raises(ValueError, match=f"out shares memory with {alias}"):
        hybrid_attention_step(*inputs.values(), None, **kwargs, out=inputs[alias])


def test_step_out_overlapping_part_of_an_input_is_rejected():
    """A view into a buffer that also holds part of v (shifted by one token) is caught too."""
    q, k, _, fq, fk = _step_inputs()
    buffer = torch.randn(1, 12, 2, 8, dtype=q.dtype)
    v, out = buffer[:, :6], buffer[:, 5:11]
    with pytest.raises(ValueError, match="out shares memory with v"):
        hybrid_attention_step(q, k, v, fq, fk, None, **STEP, out=out)


def test_step_out_aliasing_the_cached_keys_is_rejected():
    q, k, v, fq, fk = make_inputs(1, 2, 3, 2, 8, 8, seed=2)
    first = [x[:, :3] for x in (q, k, v, fq, fk)]  # one frame: the state caches exactly that frame
    _, state = hybrid_attention_step(*first, None, **STEP)
    second = [x[:, 3:] for x in (q, k, v, fq, fk)]
    with pytest.raises(ValueError, match="out shares memory with the state's cached k"):
        hybrid_attention_step(*second, state, **STEP, out=state.k)


def test_step_out_in_one_buffer_beside_its_inputs_is_fine():
    """Disjoint rows of one buffer (inputs in some, the output in others) share a storage but no bytes."""
    q, k, v, fq, fk = _step_inputs()
    buffer = torch.zeros(6, *q.shape[1:], dtype=q.dtype)
    for index, x in enumerate((q, k, v, fq, fk)):
        buffer[index] = x[0]
    views = [buffer[i : i + 1] for i in range(6)]
    want, want_state = hybrid_attention_step(q, k, v, fq, fk, None, **STEP)
    got, state = hybrid_attention_step(*views[:5], None, **STEP, out=views[5])
    assert got.data_ptr() == views[5].data_ptr() and torch.equal(got, want)
    assert torch.equal(state.kv, want_state.kv) and torch.equal(state.k, want_state.k)


def test_shares_memory_compares_byte_ranges():
    x = torch.zeros(4, 6)
    assert shares_memory(x, x) and shares_memory(x[1:3], x[2:]) and shares_memory(x[:, 0], x[3])
    assert not shares_memory(x[:2], x[2:]) and not shares_memory(x, torch.zeros(4, 6))
    assert not shares_memory(x[:0], x) and not shares_memory(x.view(torch.int32)[:1], x[1:])
    assert shares_memory(x.view(torch.int32)[1:2], x[1])  # another dtype over the same bytes
