"""Global keys and the anchor (docs/method.md §2.1): the parallel and recurrent forms against the dense
reference, the reference against a per-row oracle written from the set definitions, gradients, the
no-double-counting cases, and the checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rehyat import hybrid_attention, hybrid_attention_step, recurrent_hybrid_attention
from rehyat.attention.hybrid.chunk import chunked_hybrid_attention

from conftest import dense_oracle, make_inputs, rel_err

# (frames, frame_tokens, chunk_frames, overlap_frames, anchor_frames, global keys G)
CASES = [
    (7, 2, 2, 1, 1, 3),
    (7, 2, 3, 0, 2, 0),  # no global keys
    (8, 2, 2, 3, 1, 2),  # To > Tc
    (6, 2, 1, 1, 3, 4),  # A >= Tc: the anchor reaches past the first chunks
    (7, 2, 2, 1, 9, 1),  # A > T: every frame is an anchor
    (5, 3, 9, 1, 2, 2),  # Tc > T: one chunk, full softmax over the video and the globals
    (7, 2, 3, 1, 0, 3),  # global keys only
]


def _globals(batch, count, heads, head_dim, *, masked, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    gk, gv = (
        torch.randn(batch, count, heads, head_dim, generator=gen, dtype=torch.float64) for _ in range(2)
    )
    mask = None
    if masked and count:
        mask = torch.rand(batch, count, generator=gen) > 0.4
        mask[:, 0] = False  # at least one masked key
    return gk.requires_grad_(requires_grad), gv.requires_grad_(requires_grad), mask


def _kwargs(frame_tokens, chunk, overlap, anchor, causal=True, globals_=None):
    kwargs = dict(
        frame_tokens=frame_tokens,
        chunk_frames=chunk,
        overlap_frames=overlap,
        causal=causal,
        anchor_frames=anchor,
    )
    if globals_ is not None:
        kwargs.update(global_k=globals_[0], global_v=globals_[1], global_mask=globals_[2])
    return kwargs


def _row_oracle(q, k, v, fq, fk, gk, gv, mask, *, frame_tokens, chunk, overlap, anchor, causal):
    """§3 row by row, each row's key sets listed from docs/method.md §2 and §2.1 (no token masks)."""
    batch, n, _, head_dim = q.shape
    frames = n // frame_tokens
    out = torch.zeros_like(q)
    for i in range(n):
        t = (i // frame_tokens) // chunk
        low, high = max(t * chunk - overlap, 0), min((t + 1) * chunk, frames)
        anchors = [f for f in range(min(anchor, frames)) if not causal or f < high]
        soft = sorted(set(range(low, high)) | set(anchors))
        if causal:
            linear = [f for f in range(low) if f not in soft]
        else:
            linear = [f for f in range(frames) if f not in soft]
        rows = lambda fs: [f * frame_tokens + s for f in fs for s in range(frame_tokens)]  # noqa: E731
        for b in range(batch):
            keys, values = k[b, rows(soft)], v[b, rows(soft)]
            if gk is not None:
                keep = torch.ones(gk.shape[1], dtype=torch.bool) if mask is None else mask[b]
                keys, values = torch.cat([keys, gk[b, keep]]), torch.cat([values, gv[b, keep]])
            s = torch.einsum("hd,jhd->hj", q[b, i], keys) / head_dim**0.5
            w = torch.exp(s - s.amax(dim=-1, keepdim=True))
            a_s, n_s = torch.einsum("hj,jhd->hd", w, values), w.sum(-1)
            lin = rows(linear)
            a_l = torch.einsum("he,jhe,jhd->hd", fq[b, i], fk[b, lin], v[b, lin])
            n_l = torch.einsum("he,jhe->h", fq[b, i], fk[b, lin])
            out[b, i] = (a_s + a_l) / (n_s + n_l)[:, None]
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=str)
def test_reference_matches_the_row_oracle(case, causal):
    frames, frame_tokens, chunk, overlap, anchor, count = case
    q, k, v, fq, fk = make_inputs(2, frames, frame_tokens, 2, 4, 6, seed=11)
    globals_ = _globals(2, count, 2, 4, masked=True, seed=12)
    ref = dense_oracle(q, k, v, fq, fk, **_kwargs(frame_tokens, chunk, overlap, anchor, causal, globals_))
    geometry = dict(frame_tokens=frame_tokens, chunk=chunk, overlap=overlap, anchor=anchor, causal=causal)
    assert rel_err(ref, _row_oracle(q, k, v, fq, fk, *globals_, **geometry)) <= 1e-12


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_parallel_matches_reference(case, causal, masked):
    frames, frame_tokens, chunk, overlap, anchor, count = case
    q, k, v, fq, fk = make_inputs(2, frames, frame_tokens, 3, 4, 6, seed=frames + anchor)
    kwargs = _kwargs(
        frame_tokens, chunk, overlap, anchor, causal, _globals(2, count, 3, 4, masked=masked, seed=5)
    )
    ref = dense_oracle(q, k, v, fq, fk, **kwargs)
    assert rel_err(hybrid_attention(q, k, v, fq, fk, **kwargs), ref) <= 1e-12
    with torch.no_grad():  # the inference path
        assert rel_err(hybrid_attention(q, k, v, fq, fk, **kwargs), ref) <= 1e-12
    assert rel_err(chunked_hybrid_attention(q, k, v, fq, fk, **kwargs), ref) <= 1e-12


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=str)
def test_gradients_match_reference(case, causal):
    frames, frame_tokens, chunk, overlap, anchor, count = case
    inputs = make_inputs(1, frames, frame_tokens, 2, 3, 4, seed=7, requires_grad=True)
    gk, gv, mask = _globals(1, count, 2, 3, masked=True, seed=8, requires_grad=True)
    kwargs = _kwargs(frame_tokens, chunk, overlap, anchor, causal, (gk, gv, mask))
    grad_out = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = (*inputs, gk, gv)
    got = torch.autograd.grad(hybrid_attention(*inputs, **kwargs), leaves, grad_out)
    want = torch.autograd.grad(dense_oracle(*inputs, **kwargs), leaves, grad_out)
    for name, g, w in zip(("q", "k", "v", "fq", "fk", "global_k", "global_v"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_recurrent_equals_parallel_causal(case, masked):
    frames, frame_tokens, chunk, overlap, anchor, count = case
    q, k, v, fq, fk = make_inputs(2, frames, frame_tokens, 2, 4, 6, seed=3)
    kwargs = _kwargs(
        frame_tokens, chunk, overlap, anchor, True, _globals(2, count, 2, 4, masked=masked, seed=4)
    )
    parallel = hybrid_attention(q, k, v, fq, fk, **kwargs)
    assert rel_err(recurrent_hybrid_attention(q, k, v, fq, fk, **kwargs), parallel) <= 1e-12
    with torch.no_grad():  # the inference path: each chunk written into its rows of one buffer
        assert rel_err(recurrent_hybrid_attention(q, k, v, fq, fk, **kwargs), parallel) <= 1e-12


def test_recurrent_gradients_and_pieces():
    inputs = make_inputs(1, 7, 2, 2, 3, 4, seed=9, requires_grad=True)
    gk, gv, mask = _globals(1, 3, 2, 3, masked=True, seed=10, requires_grad=True)
    kwargs = _kwargs(2, 2, 1, 3, True, (gk, gv, mask))
    leaves = (*inputs, gk, gv)
    grad_out = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(recurrent_hybrid_attention(*inputs, **kwargs), leaves, grad_out)
    want = torch.autograd.grad(dense_oracle(*inputs, **kwargs), leaves, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # In two pieces: the state carries the anchor frames (a fixed size: A frames, not the video).
    with torch.no_grad():
        whole = recurrent_hybrid_attention(*inputs, **kwargs)
        cut = 4 * 2
        first, state = recurrent_hybrid_attention(
            *(x[:, :cut] for x in inputs), **kwargs, output_final_state=True
        )
        assert state.anchor_k.shape[1] == 3 * 2 and state.anchor_frames == 3
        second = recurrent_hybrid_attention(*(x[:, cut:] for x in inputs), **kwargs, initial_state=state)
    assert rel_err(torch.cat([first, second], dim=1), whole) <= 1e-12


def test_steps_do_not_read_frames_seen():
    """The recurrent mode renumbers ``frames_seen`` per chunk: the anchor must not depend on it."""
    q, k, v, fq, fk = make_inputs(1, 7, 2, 2, 4, 6, seed=5)
    kwargs = dict(frame_tokens=2, overlap_frames=1, anchor_frames=2)
    state, outs = None, []
    for start in range(0, 14, 2):
        rows = slice(start, start + 2)
        out, state = hybrid_attention_step(*(x[:, rows] for x in (q, k, v, fq, fk)), state, **kwargs)
        state = dataclasses.replace(state, frames_seen=0)
        outs.append(out)
    want = dense_oracle(q, k, v, fq, fk, chunk_frames=1, **kwargs)
    assert rel_err(torch.cat(outs, dim=1), want) <= 1e-12


def test_step_keeps_the_geometry_of_its_stream():
    q, k, v, fq, fk = make_inputs(1, 2, 2, 1, 4, 4)
    _, state = hybrid_attention_step(q, k, v, fq, fk, None, frame_tokens=2, overlap_frames=1, anchor_frames=1)
    with pytest.raises(ValueError, match="anchor_frames = 1"):
        hybrid_attention_step(q, k, v, fq, fk, state, frame_tokens=2, overlap_frames=1)


def test_no_anchor_and_no_globals_is_todays_op():
    """anchor_frames=0 and empty global keys take today's path: bit-identical results."""
    q, k, v, fq, fk = make_inputs(2, 7, 2, 2, 4, 6, dtype=torch.float32, seed=1)
    plain = dict(frame_tokens=2, chunk_frames=2, overlap_frames=1)
    empty = q.new_zeros(2, 0, 2, 4)
    extra = dict(
        anchor_frames=0, global_k=empty, global_v=empty, global_mask=torch.ones(2, 0, dtype=torch.bool)
    )
    assert torch.equal(
        hybrid_attention(q, k, v, fq, fk, **plain), hybrid_attention(q, k, v, fq, fk, **plain, **extra)
    )
    assert torch.equal(
        recurrent_hybrid_attention(q, k, v, fq, fk, **plain),
        recurrent_hybrid_attention(q, k, v, fq, fk, **plain, **extra),
    )


def test_an_anchor_already_in_every_window_changes_nothing():
    """No double counting: with Tc >= T, or every window reaching frame 0, the anchor is a no-op."""
    q, k, v, fq, fk = make_inputs(1, 5, 2, 2, 4, 6, seed=2)
    for chunk, overlap in ((9, 0), (2, 4)):
        plain = dict(frame_tokens=2, chunk_frames=chunk, overlap_frames=overlap)
        assert (
            rel_err(
                hybrid_attention(q, k, v, fq, fk, **plain, anchor_frames=1),
                hybrid_attention(q, k, v, fq, fk, **plain),
            )
            <= 1e-14
        )


def test_fully_masked_globals_are_no_globals():
    q, k, v, fq, fk = make_inputs(2, 5, 2, 2, 4, 6, seed=2)
    gk, gv, _ = _globals(2, 3, 2, 4, masked=False, seed=1)
    plain = dict(frame_tokens=2, chunk_frames=2, overlap_frames=1, anchor_frames=1)
    masked = dict(global_k=gk, global_v=gv, global_mask=torch.zeros(2, 3, dtype=torch.bool))
    assert (
        rel_err(
            hybrid_attention(q, k, v, fq, fk, **plain, **masked), hybrid_attention(q, k, v, fq, fk, **plain)
        )
        <= 1e-14
    )


def test_triton_refuses_and_auto_takes_pytorch():
    """The parallel form's kernels chunk uniformly and take no extra keys (the recurrent form's do:
    tests/attention/test_step_kernel_globals.py)."""
    q, k, v, fq, fk = make_inputs(1, 4, 16, 1, 16, 16, dtype=torch.float32)
    gk = q.new_zeros(1, 2, 1, 16)
    kwargs = dict(frame_tokens=16, chunk_frames=2, overlap_frames=1)
    with pytest.raises(ValueError, match="anchor_frames=1"):
        hybrid_attention(q, k, v, fq, fk, **kwargs, anchor_frames=1, backend="triton")
    with pytest.raises(ValueError, match="global keys"):
        hybrid_attention(q, k, v, fq, fk, **kwargs, global_k=gk, global_v=gk, backend="triton")
    auto = hybrid_attention(q, k, v, fq, fk, **kwargs, anchor_frames=1)
    assert torch.equal(auto, hybrid_attention(q, k, v, fq, fk, **kwargs, anchor_frames=1, backend="torch"))


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(global_v=None), "give both or neither"),
        (dict(global_k=None, global_v=None), "global_mask was given without"),
        (dict(global_k=torch.zeros(1, 3, 2, 5, dtype=torch.float64)), "must be \\[B, G, H, D\\]"),
        (dict(global_k=torch.zeros(1, 3, 2, 4)), "is torch.float32"),
        (dict(global_mask=torch.ones(1, 3)), "bool tensor"),
        (dict(global_mask=torch.ones(1, 2, dtype=torch.bool)), "must be \\[B, G\\]"),
        (dict(anchor_frames=-1), "anchor_frames"),
    ],
)
def test_bad_global_keys_raise(change, message):
    q, k, v, fq, fk = make_inputs(1, 4, 2, 2, 4, 6)
    gk, gv, _ = _globals(1, 3, 2, 4, masked=False, seed=0)
    kwargs = {"global_k": gk, "global_v": gv, "global_mask": torch.ones(1, 3, dtype=torch.bool), **change}
    with pytest.raises(ValueError, match=message):
        hybrid_attention(q, k, v, fq, fk, frame_tokens=2, chunk_frames=2, overlap_frames=1, **kwargs)
