"""A first chunk of its own size (``first_chunk_frames`` = F0): chunks [0, F0), then Tc frames at a time.
The dense reference's masks equal the set definition written as loops; the chunked PyTorch form equals
the dense reference forward and backward (with an anchor and global keys too); the recurrent form and
the streaming step equal the parallel form; the kernels decline it with a reason."""

from __future__ import annotations

import pytest
import torch

from rehyat import AttentionStats, hybrid_attention, recurrent_hybrid_attention
from rehyat.attention.hybrid import Geometry
from rehyat.attention.hybrid.naive import chunk_masks, naive_hybrid_attention

from conftest import make_inputs, rel_err

# (frames, frame tokens, Tc, To, F0): F0 below, at and above Tc, a multiple of it or not, longer than
# the video; the sliding window (Tc = 1) with a joint start.
CASES = [
    (9, 2, 1, 3, 3),
    (9, 2, 2, 1, 3),
    (10, 3, 3, 1, 2),
    (8, 2, 2, 3, 4),
    (7, 2, 3, 2, 5),
    (4, 2, 1, 2, 6),
]


def _loop_masks(frames, frame_tokens, chunk, overlap, first):
    n = frames * frame_tokens
    soft = torch.zeros(n, n, dtype=torch.bool)
    lin = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        f = i // frame_tokens
        if f < first:
            lo, hi = 0, first
        else:
            start = first + (f - first) // chunk * chunk
            lo, hi = max(start - overlap, 0), start + chunk
        hi = min(hi, frames)
        for j in range(n):
            soft[i, j] = lo <= j // frame_tokens < hi
            lin[i, j] = j // frame_tokens < lo
    return soft, lin


@pytest.mark.parametrize("frames,frame_tokens,chunk,overlap,first", CASES)
def test_masks_are_the_set_definition(frames, frame_tokens, chunk, overlap, first):
    got = chunk_masks(frames, frame_tokens, chunk, overlap, True, first_chunk_frames=first)
    want = _loop_masks(frames, frame_tokens, chunk, overlap, first)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("anchor", [0, 1])
@pytest.mark.parametrize("frames,frame_tokens,chunk,overlap,first", CASES)
def test_parallel_form_equals_the_reference_forward_and_backward(
    frames, frame_tokens, chunk, overlap, first, anchor
):
    inputs = make_inputs(2, frames, frame_tokens, 2, 4, 6, seed=frames + first, requires_grad=True)
    geometry = dict(
        frame_tokens=frame_tokens, chunk_frames=chunk, overlap_frames=overlap, anchor_frames=anchor
    )
    stats, want_stats = AttentionStats(), AttentionStats()
    got = hybrid_attention(*inputs, **geometry, first_chunk_frames=first, backend="torch", stats=stats)
    want = naive_hybrid_attention(*inputs, **geometry, first_chunk_frames=first, stats=want_stats)
    assert rel_err(got, want) <= 1e-10
    assert stats.total_rows == want_stats.total_rows  # each row counted once
    weights = torch.randn_like(want)
    got_grads = torch.autograd.grad((got * weights).sum(), inputs)
    want_grads = torch.autograd.grad((want * weights).sum(), inputs)
    for a, b in zip(got_grads, want_grads, strict=True):  # (fq, fk: zero where the video is one chunk)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    plain = hybrid_attention(*inputs, **geometry, backend="torch")
    if first != chunk and first < frames:
        assert rel_err(got, plain) > 1e-3  # the first chunk changes what the first frames see


def test_global_keys_join_every_chunk_with_a_first_chunk():
    q, k, v, fq, fk = make_inputs(1, 7, 2, 2, 4, 6, seed=3)
    gk, gv = (torch.randn(1, 3, 2, 4, dtype=torch.float64) for _ in range(2))
    mask = torch.tensor([[True, False, True]])
    geometry = dict(frame_tokens=2, chunk_frames=1, overlap_frames=2, first_chunk_frames=3)
    keys = dict(global_k=gk, global_v=gv, global_mask=mask)
    got = hybrid_attention(q, k, v, fq, fk, **geometry, **keys)
    assert rel_err(got, naive_hybrid_attention(q, k, v, fq, fk, **geometry, **keys)) <= 1e-10


@pytest.mark.parametrize("frames,frame_tokens,chunk,overlap,first", CASES)
def test_recurrent_form_equals_the_parallel_form(frames, frame_tokens, chunk, overlap, first):
    inputs = make_inputs(1, frames, frame_tokens, 2, 4, 6, seed=first)
    geometry = dict(
        frame_tokens=frame_tokens, chunk_frames=chunk, overlap_frames=overlap, first_chunk_frames=first
    )
    parallel = hybrid_attention(*inputs, **geometry)
    recurrent, state = recurrent_hybrid_attention(*inputs, **geometry, output_final_state=True)
    assert rel_err(recurrent, parallel) <= 1e-10 and state.frames_seen == frames


def test_only_the_causal_form_and_the_pytorch_path_take_it():
    with pytest.raises(ValueError, match="first_chunk_frames=2 needs causal=True"):
        Geometry(2, 1, 3, causal=False, first_chunk_frames=2)
    with pytest.raises(ValueError, match="first_chunk_frames"):
        Geometry(2, 1, 3, first_chunk_frames=-1)
    q, k, v, fq, fk = make_inputs(1, 4, 2, 2, 16, 16, dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"first_chunk_frames=2 \(the kernels chunk uniformly"):
        hybrid_attention(
            q,
            k,
            v,
            fq,
            fk,
            frame_tokens=2,
            chunk_frames=1,
            overlap_frames=1,
            first_chunk_frames=2,
            backend="triton",
        )


def test_a_video_streamed_in_pieces_must_start_with_the_first_chunk():
    """From a state that has seen fewer frames than F0 the first chunk cannot be completed: refused, not
    silently chunked uniformly; a first piece of F0 + j·Tc frames goes on exactly."""
    inputs = make_inputs(1, 6, 2, 2, 4, 6, seed=2)
    geometry = dict(frame_tokens=2, chunk_frames=1, overlap_frames=3, first_chunk_frames=3)
    whole = hybrid_attention(*inputs, **geometry)
    for cut, ok in ((2, False), (3, True), (4, True)):
        first, state = recurrent_hybrid_attention(
            *(x[:, : cut * 2] for x in inputs), **geometry, output_final_state=True
        )
        rest = (x[:, cut * 2 :] for x in inputs)
        if not ok:
            with pytest.raises(ValueError, match="seen 2 frames, fewer than first_chunk_frames=3"):
                recurrent_hybrid_attention(*rest, **geometry, initial_state=state)
            continue
        second = recurrent_hybrid_attention(*rest, **geometry, initial_state=state)
        assert rel_err(torch.cat([first, second], dim=1), whole) <= 1e-10


def test_the_kernel_entry_refuses_what_it_cannot_chunk():
    from rehyat.attention.hybrid.kernels.launch import triton_hybrid_attention

    q, k, v, fq, fk = make_inputs(1, 4, 2, 2, 16, 16, dtype=torch.float32, seed=1)
    for extra in (dict(first_chunk_frames=2), dict(anchor_frames=1)):
        with pytest.raises(ValueError, match="the kernels cannot take a call with"):
            triton_hybrid_attention(
                q, k, v, fq, fk, frame_tokens=2, chunk_frames=1, overlap_frames=1, **extra
            )


def test_the_local_only_baseline_keeps_the_first_chunk():
    from rehyat.baselines import local_attention

    q, k, v, _, _ = make_inputs(1, 7, 2, 2, 4, 6, seed=5)
    geometry = dict(frame_tokens=2, chunk_frames=1, overlap_frames=2, first_chunk_frames=3)
    want = naive_hybrid_attention(q, k, v, None, None, **geometry)
    assert rel_err(local_attention(q, k, v, **geometry), want) <= 1e-10
