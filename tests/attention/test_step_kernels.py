"""The streaming step on the Triton kernels: the no-grad path that reads the cached frames and the chunk
in place (no concatenated window) against the autograd path (concatenated keys) and the reference.

Runs in Triton's interpreter without a GPU (TRITON_INTERPRET=1, set before the kernel modules are
first imported), on tiny shapes: 16-wide blocks, so the cached frames and the chunk end mid-block.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from rehyat import AttentionStats, HybridAttentionState, hybrid_attention_step
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.hybrid.kernels import launch as hybrid
from rehyat.attention.hybrid.kernels.windowed_attention import (
    WindowedHybridAttention,
    windowed_attention_forward,
)
from rehyat.attention.hybrid.naive import naive_hybrid_attention
from rehyat.attention.kernels.tuning import best_key_splits

from conftest import make_inputs, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5  # fp32 kernels against the float64 reference
SAME = 1e-6  # the two fp32 paths: the same sums, split into blocks differently


def _stream(inputs, *, frame_tokens, chunks, overlap, grad, stats=None):
    """Drive ``hybrid_attention_step`` over chunks of ``chunks[i]`` frames; the whole output.

    ``grad`` makes the inputs require grad (the autograd path); otherwise the step runs under no_grad.
    """
    xs = [x.to(DEVICE, torch.float32).requires_grad_(grad) for x in inputs]
    state: HybridAttentionState | None = None
    outs, start = [], 0
    with torch.set_grad_enabled(grad):
        for frames in chunks:
            piece = slice(start, start + frames * frame_tokens)
            start = piece.stop
            out, state = hybrid_attention_step(
                *(x[:, piece] for x in xs),
                state,
                frame_tokens=frame_tokens,
                overlap_frames=overlap,
                stats=stats,
                backend="triton",
            )
            outs.append(out)
    return torch.cat(outs, 1).detach().cpu()


def _chunks(frames: int, chunk: int) -> list[int]:
    return [min(chunk, frames - start) for start in range(0, frames, chunk)]


@pytest.mark.parametrize("batch,heads", [(1, 1), (2, 3)])
@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_no_grad_step_matches_cat_path_and_parallel(overlap, chunk, batch, heads, monkeypatch):
    """7 frames of 5 tokens (short last chunk for Tc in {2, 3}): no-cat == cat path == parallel causal."""
    inputs = make_inputs(batch, 7, 5, heads, 16, 32, seed=10 * overlap + chunk + batch + heads)
    geometry = dict(frame_tokens=5, chunks=_chunks(7, chunk), overlap=overlap)
    calls = []
    forward = hybrid.windowed_attention_forward

    def recorded(*args, prefix, **kwargs):
        calls.append(prefix)
        return forward(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(hybrid, "windowed_attention_forward", recorded)
    fast = _stream(inputs, grad=False, **geometry)
    # Every step but the first (and all with To = 0) reads cached frames as a prefix.
    assert [p is not None for p in calls] == [overlap > 0 and i > 0 for i in range(len(calls))]
    calls.clear()
    cat = _stream(inputs, grad=True, **geometry)
    assert calls == []  # with gradients the autograd function runs instead
    ref = naive_hybrid_attention(*inputs, frame_tokens=5, chunk_frames=chunk, overlap_frames=overlap)
    assert rel_err(fast, cat) <= SAME
    assert rel_err(fast, ref) <= TOL


def test_grad_enabled_but_nothing_requires_grad_takes_the_no_cat_path(monkeypatch):
    """Inference without ``torch.no_grad()``: no input needs a gradient, so no window is built."""
    monkeypatch.setattr(torch, "cat", _forbidden_cat(torch.cat, min_rows=10))
    q, k, v, fq, fk = (x.to(DEVICE, torch.float32) for x in make_inputs(1, 6, 5, 2, 16, 16, seed=1))
    state = None
    for start in range(0, 30, 10):  # chunks of 2 frames, 1 cached: a window would be 15 rows
        piece = slice(start, start + 10)
        out, state = hybrid_attention_step(
            q[:, piece], k[:, piece], v[:, piece], fq[:, piece], fk[:, piece], state,
            frame_tokens=5, overlap_frames=1, backend="triton",
        )  # fmt: skip
        assert out.grad_fn is None


def _forbidden_cat(cat, min_rows: int):
    """torch.cat that fails on [B, N, H, D] results of ``min_rows`` or more rows (a K/V window)."""

    def checked(tensors, dim=0, **kwargs):
        result = cat(tensors, dim=dim, **kwargs)
        assert not (result.dim() == 4 and dim == 1 and result.shape[1] >= min_rows), "window concatenated"
        return result

    return checked


def test_prefix_forward_equals_concatenated_keys_in_any_geometry():
    """The kernel's prefix option on the parallel geometry (several chunks, windows straddling the
    prefix end or past it), with and without a linear part; the prefix in a heads-major layout, so
    its strides differ from k's in every dim but the last."""
    q, k, v, fq = (x.to(DEVICE, torch.float32) for x in make_inputs(2, 7, 5, 3, 16, 32, seed=4)[:4])
    gen = torch.Generator().manual_seed(4)
    kv, z = (torch.rand(2, 3, 3, 32, *last, generator=gen).to(DEVICE) for last in ((16,), ()))
    for cut in (0, 7, 16, 23, 34):  # prefix rows: none, mid-block, a block, mid-chunk, all but one
        for linear in ((fq, kv, z), (None, None, None)):
            args = (*linear, Geometry(frame_tokens=5, chunk_frames=3, overlap_frames=2, scale=0.3))
            want = WindowedHybridAttention.apply(q, k, v, *args, None)
            prefix = tuple(x[:, :cut].transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))
            got = windowed_attention_forward(q, k[:, cut:], v[:, cut:], *args, prefix=prefix if cut else None)
            assert rel_err(got, want) <= SAME, (cut, linear[0] is None)


def test_no_grad_step_counts_guarded_rows_like_the_cat_path():
    """Signed features drive the denominator guard on some rows: same counts on both paths."""
    q, k, v, fq, fk = make_inputs(1, 6, 4, 2, 16, 16, seed=3)
    fq = fq.clone()
    fq[:, 16:, 0] *= -50.0  # head 0, frames 4..5: a large negative linear part
    counts = []
    for grad in (False, True):
        stats = AttentionStats()
        _stream((q, k, v, fq, fk), frame_tokens=4, chunks=[2, 2, 2], overlap=1, grad=grad, stats=stats)
        counts.append((stats.total_rows, stats.guarded_rows))
    ref = AttentionStats()
    naive_hybrid_attention(q, k, v, fq, fk, frame_tokens=4, chunk_frames=2, overlap_frames=1, stats=ref)
    assert ref.guarded_rows >= 8
    assert counts[0] == counts[1] == (ref.total_rows, ref.guarded_rows)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("overlap", [0, 1, 2, 4])
def test_state_caches_the_last_overlap_frames_of_the_window(overlap, backend):
    """After each step the state's k, v are the last To frames of [cached ‖ chunk], in their own
    storage — taken from the chunk alone or, for chunks shorter than To, joined to the cached ones."""
    s = 3
    q, k, v, fq, fk = (x.to(DEVICE, torch.float32) for x in make_inputs(2, 9, s, 2, 16, 16, seed=5))
    state, start = None, 0
    for frames in (1, 3, 1, 2, 2):
        piece = slice(start, start + frames * s)
        start = piece.stop
        cached = (state.k, state.v) if state is not None else (k[:, :0], v[:, :0])
        with torch.no_grad():
            _, state = hybrid_attention_step(
                q[:, piece], k[:, piece], v[:, piece], fq[:, piece], fk[:, piece], state,
                frame_tokens=s, overlap_frames=overlap, backend=backend,
            )  # fmt: skip
        for got, old, new in ((state.k, cached[0], k[:, piece]), (state.v, cached[1], v[:, piece])):
            window = torch.cat([old, new], dim=1)
            assert torch.equal(got, window[:, window.shape[1] - min(overlap * s, window.shape[1]) :])
            assert got.untyped_storage().nbytes() == got.numel() * got.element_size()
        assert state.cached_frames == state.k.shape[1] // s


@pytest.mark.parametrize("chunk,overlap", [(1, 2), (2, 1), (3, 3)])
def test_grad_enabled_step_matches_reference_gradients(chunk, overlap):
    """With gradients the step keeps the autograd path, and the cached frames carry gradients into
    the next steps whether they come from the chunk alone (Tc > To) or from both (Tc ≤ To)."""
    inputs = make_inputs(1, 7, 5, 2, 16, 16, seed=chunk + overlap)
    kwargs = dict(frame_tokens=5, chunk_frames=chunk, overlap_frames=overlap)
    grad_out = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    naive_hybrid_attention(*leaves, **kwargs).backward(grad_out)
    fast = [x.to(DEVICE, torch.float32).requires_grad_(True) for x in inputs]
    state, outs = None, []
    for start in range(0, 35, chunk * 5):
        piece = slice(start, start + chunk * 5)
        out, state = hybrid_attention_step(
            *(x[:, piece] for x in fast), state, frame_tokens=5, overlap_frames=overlap, backend="triton"
        )
        outs.append(out)
    torch.cat(outs, 1).backward(grad_out.to(DEVICE, torch.float32))
    for name, got, want in zip(("q", "k", "v", "fq", "fk"), fast, leaves, strict=True):
        assert rel_err(got.grad.cpu(), want.grad) <= TOL, name


def test_frame_sums_split_frames_into_runs_and_add_them_back():
    """A chunk's few frames are summed in runs of a frame (more kernel programs), then added per frame."""
    from rehyat.attention.hybrid.kernels.state_sums import SegmentSums

    torch.manual_seed(0)
    fk = torch.randn(2, 2 * 128, 1, 16, device=DEVICE, requires_grad=True)
    v = torch.randn(2, 2 * 128, 1, 16, device=DEVICE, requires_grad=True)
    split_kv, split_z = hybrid.frame_sums(fk, v, 128)  # 4 programs: frames cut in 2 runs of 64
    whole_kv, whole_z = SegmentSums.apply(fk, v, 128)
    assert split_kv.shape == whole_kv.shape == (2, 2, 1, 16, 16) and split_z.shape == (2, 2, 1, 16)
    torch.testing.assert_close(split_kv, whole_kv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split_z, whole_z, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(whole_kv), torch.randn_like(whole_z)

    def grads(kv, z):
        return torch.autograd.grad((kv * weights[0]).sum() + (z * weights[1]).sum(), [fk, v])

    for got, want in zip(grads(split_kv, split_z), grads(whole_kv, whole_z), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    explicit = SegmentSums.apply(fk, v, 64)[0].view(2, 2, 2, 1, 16, 16).sum(2)
    assert torch.equal(explicit, split_kv)  # it did split: the same sums in the same order


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("pending,frames", [(0, 1), (0, 3), (1, 2), (2, 1), (3, 3)])
def test_retire_sums_matches_adding_whole_frames(pending, frames, splits):
    """One launch adds the first ``leaving`` frames of [pending ‖ chunk] (the chunk's frames given as
    ``splits`` partials each) to the sums and keeps the rest, for every leaving count."""
    from rehyat.attention.hybrid.kernels.state_sums import retire_sums

    gen = torch.Generator().manual_seed(10 * pending + frames + splits)
    batch, heads, feat, dim = 2, 3, 32, 16

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    kv, z = rand(batch, heads, feat, dim), rand(batch, heads, feat)
    pending_kv, pending_z = rand(batch, pending, heads, feat, dim), rand(batch, pending, heads, feat)
    parts_kv, parts_z = (
        rand(batch, frames * splits, heads, feat, dim),
        rand(batch, frames * splits, heads, feat),
    )
    frame_kv = parts_kv.view(batch, frames, splits, heads, feat, dim).sum(2)
    frame_z = parts_z.view(batch, frames, splits, heads, feat).sum(2)
    all_kv, all_z = torch.cat([pending_kv, frame_kv], 1), torch.cat([pending_z, frame_z], 1)
    for leaving in range(pending + frames + 1):
        state_kv = kv.to(DEVICE, torch.float32)
        if leaving % 2:  # a dense but permuted state (e.g. built by a caller): read in its own layout
            state_kv = state_kv.transpose(2, 3).contiguous().transpose(2, 3)
        got = retire_sums(
            *(x.to(DEVICE, torch.float32) for x in (parts_kv, parts_z)), splits, state_kv,
            *(x.to(DEVICE, torch.float32) for x in (z, pending_kv, pending_z)), leaving,
        )  # fmt: skip
        want = (
            kv + all_kv[:, :leaving].sum(1),
            z + all_z[:, :leaving].sum(1),
            all_kv[:, leaving:],
            all_z[:, leaving:],
        )
        for name, g, w in zip(("kv", "z", "pending_kv", "pending_z"), got, want, strict=True):
            assert g.shape == w.shape, (name, leaving)
            torch.testing.assert_close(g.cpu().double(), w, rtol=1e-5, atol=1e-5, msg=f"{name} {leaving}")
    with pytest.raises(ValueError, match="leaving"):
        retire_sums(parts_kv.float(), parts_z.float(), splits, kv.float(), z.float(), pending_kv.float(),
                    pending_z.float(), pending + frames + 1)  # fmt: skip


@pytest.mark.parametrize("overlap", [1, 2])
def test_no_grad_step_state_matches_the_torch_step(overlap, monkeypatch):
    """The inference state update (frame sums as partials + one retire launch) leaves the same state
    as the PyTorch step, with chunks longer and shorter than the overlap and frames cut into runs."""
    calls = []
    retire = hybrid.retire_frames

    def recorded(*args, **kwargs):
        calls.append(args[-1])
        return retire(*args, **kwargs)

    monkeypatch.setattr(hybrid, "retire_frames", recorded)
    # The chunk's attention is checked elsewhere; here it is skipped (the interpreter is slow at 128).
    monkeypatch.setattr(hybrid, "triton_step_attention", lambda q, *args, **kwargs: torch.zeros_like(q))
    s = 128  # two runs of 64 tokens per frame (few programs): the partials path with splits = 2
    q, k, v, fq, fk = (x.to(DEVICE, torch.float32) for x in make_inputs(1, 6, s, 2, 16, 16, seed=overlap))
    assert hybrid._frame_splits(fk[:, : 3 * s], s, 512) == 2
    states = {"torch": None, "triton": None}
    start = 0
    for frames in (3, 1, 2):  # retiring new frames, pending frames, and both
        piece = slice(start, start + frames * s)
        start = piece.stop
        for backend in states:
            with torch.no_grad():
                _, states[backend] = hybrid_attention_step(
                    q[:, piece], k[:, piece], v[:, piece], fq[:, piece], fk[:, piece], states[backend],
                    frame_tokens=s, overlap_frames=overlap, backend=backend,
                )  # fmt: skip
        want, got = states["torch"], states["triton"]
        for name in ("kv", "z", "pending_kv", "pending_z", "k", "v"):
            torch.testing.assert_close(
                getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, msg=name
            )
        assert got.frames_seen == want.frames_seen
    assert len(calls) == 3


@pytest.mark.parametrize(
    "frame_tokens,splits,cuts",
    [
        (5, 2, (0, 23)),  # windows of 15–25 keys: 1–2 blocks of 16, two parts
        (5, 5, (0, 23)),  # the same windows in five parts: three or more of them empty
        (10, 3, (0, 37)),  # windows of up to 50 keys (4 blocks): three non-empty parts, a middle one
        (10, 4, (0, 37)),  # four non-empty parts; the prefix ends inside the second or third
    ],
)
def test_key_splits_merge_to_the_unsplit_forward(frame_tokens, splits, cuts):
    """Cutting each key window into parts (one program each, merged by ``_combine_kernel``) gives the
    one-program result: with and without the linear part and a prefix, with empty parts, middle parts
    and parts on either side of the prefix end."""
    batch, heads = (2, 3) if frame_tokens == 5 else (1, 2)
    q, k, v, fq = (
        x.to(DEVICE, torch.float32) for x in make_inputs(batch, 7, frame_tokens, heads, 16, 32, seed=5)[:4]
    )
    gen = torch.Generator().manual_seed(5)
    kv, z = (torch.rand(batch, 3, heads, 32, *last, generator=gen).to(DEVICE) for last in ((16,), ()))
    for cut in cuts:
        for linear in ((fq, kv, z), (None, None, None)):
            args = (*linear, Geometry(frame_tokens, chunk_frames=3, overlap_frames=2, scale=0.3))
            prefix = tuple(x[:, :cut] for x in (k, v)) if cut else None
            keys = (k[:, cut:], v[:, cut:])
            want = windowed_attention_forward(q, *keys, *args, prefix=prefix, splits=1)
            got = windowed_attention_forward(q, *keys, *args, prefix=prefix, splits=splits)
            assert rel_err(got, want) <= SAME, (cut, linear[0] is None)


def test_streaming_step_with_key_splits_matches_the_reference(monkeypatch):
    """The step as it runs on a GPU whose SMs a chunk underfills: every window cut in two; the same
    output as the reference and the same row counts as the unsplit step."""
    from rehyat.attention.hybrid.kernels import windowed_attention

    inputs = make_inputs(2, 7, 5, 3, 16, 32, seed=6)
    unsplit = AttentionStats()
    _stream(inputs, frame_tokens=5, chunks=[3, 3, 1], overlap=1, grad=False, stats=unsplit)
    asked = []
    monkeypatch.setattr(windowed_attention, "key_splits", lambda *args: asked.append(args) or 2)
    split = AttentionStats()
    got = _stream(inputs, frame_tokens=5, chunks=[3, 3, 1], overlap=1, grad=False, stats=split)
    assert len(asked) == 3  # one decision per step: the patched heuristic did run
    want = naive_hybrid_attention(
        *(x.double() for x in inputs), frame_tokens=5, chunk_frames=3, overlap_frames=1
    )
    assert rel_err(got, want) <= TOL
    assert (split.total_rows, split.guarded_rows) == (unsplit.total_rows, unsplit.guarded_rows) != (0, 0)


def test_key_splits_fill_the_waves_of_small_grids():
    assert best_key_splits(444, 132) == 2  # the Wan-shape streaming step: 4 waves -> 3.5
    assert best_key_splits(3108, 132) == 1  # the parallel form at 21 frames: 24 waves either way
    assert best_key_splits(12, 132) == 4  # a tiny grid: as many parts as allowed
    assert best_key_splits(132, 132) == 1  # exactly one full wave
    assert best_key_splits(12, 132, max_splits=2) == 2  # no more parts than the window has key blocks
    tiny = [x.float().to(DEVICE) for x in make_inputs(1, 2, 2, 1, 16, 16)[:3]]
    with pytest.raises(ValueError, match="splits"):
        windowed_attention_forward(*tiny, None, None, None, Geometry(2, 2, 0, scale=1.0), splits=0)


@pytest.mark.parametrize("splits", [1, 2])
def test_step_writes_into_a_strided_output_buffer(splits, monkeypatch):
    """``out=``: each chunk's output lands in its rows of a [B, N, H, D] buffer (for B = 2 a strided
    view), with and without the split merge, and equals the step's own output."""
    from rehyat.attention.hybrid.kernels import windowed_attention

    monkeypatch.setattr(windowed_attention, "key_splits", lambda *args: splits)
    q, k, v, fq, fk = (x.to(DEVICE, torch.float32) for x in make_inputs(2, 5, 5, 3, 16, 32, seed=8))
    buffer = torch.full_like(q, float("nan"))
    states: dict[bool, HybridAttentionState | None] = {False: None, True: None}
    for start in range(0, 25, 15):  # chunks of 3 frames, the last one short
        piece = slice(start, start + 15)
        chunk = [x[:, piece] for x in (q, k, v, fq, fk)]
        with torch.no_grad():
            own, states[False] = hybrid_attention_step(
                *chunk, states[False], frame_tokens=5, overlap_frames=1, backend="triton"
            )
            target = buffer[:, piece]
            assert not target.is_contiguous()
            got, states[True] = hybrid_attention_step(
                *chunk, states[True], frame_tokens=5, overlap_frames=1, backend="triton", out=target
            )
        assert got.data_ptr() == target.data_ptr()
        assert torch.equal(got, own)
    want = naive_hybrid_attention(
        *(x.double().cpu() for x in (q, k, v, fq, fk)), frame_tokens=5, chunk_frames=3, overlap_frames=1
    )
    assert rel_err(buffer.cpu(), want) <= TOL


def test_recurrent_inference_fills_one_output_without_concatenating(monkeypatch):
    """recurrent_hybrid_attention without gradients: chunks written in place, no output-size cat."""
    from rehyat import recurrent_hybrid_attention

    monkeypatch.setattr(torch, "cat", _forbidden_cat(torch.cat, min_rows=16))
    inputs = make_inputs(1, 6, 4, 2, 16, 16, seed=9)
    kwargs = dict(frame_tokens=4, chunk_frames=2, overlap_frames=1)
    got = recurrent_hybrid_attention(
        *(x.to(DEVICE, torch.float32) for x in inputs), **kwargs, backend="triton"
    )
    want = naive_hybrid_attention(*inputs, **kwargs)
    assert rel_err(got.cpu(), want) <= TOL


def test_segment_sums_read_inputs_with_any_strides():
    """φk and v whose last dim is not contiguous (a transposed view) give the contiguous inputs' sums."""
    from rehyat.attention.hybrid.kernels.state_sums import segment_sums

    gen = torch.Generator().manual_seed(11)
    a = torch.randn(1, 40, 2, 16, generator=gen).to(DEVICE)
    b = torch.randn(1, 40, 2, 16, generator=gen).to(DEVICE)
    strided = [x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (a, b)]
    assert strided[0].stride(-1) != 1
    for got, want in zip(segment_sums(*strided, 20), segment_sums(a, b, 20), strict=True):
        torch.testing.assert_close(got, want)


def test_gradients_flow_through_pending_frames_into_later_chunks():
    """A chunk whose frames all stay pending (To > Tc) carries its gradient in the pending sums: later
    chunks that need no gradient themselves keep the autograd path, on the kernels as in PyTorch."""
    q, k, v, fq, fk = make_inputs(1, 4, 4, 1, 16, 16, seed=12)
    grads = {}
    for backend in ("torch", "triton"):
        first_fk = fk[:, :4].to(DEVICE, torch.float32).requires_grad_(True)
        state, outs = None, []
        for start in range(0, 16, 4):  # one frame per chunk, overlap 2: frame 0 leaves at chunk 3
            piece = slice(start, start + 4)
            chunk_fk = first_fk if start == 0 else fk[:, piece].to(DEVICE, torch.float32)
            inputs = [x[:, piece].to(DEVICE, torch.float32) for x in (q, k, v, fq)]
            out, state = hybrid_attention_step(
                *inputs, chunk_fk, state, frame_tokens=4, overlap_frames=2, backend=backend
            )
            outs.append(out)
        assert outs[-1].requires_grad
        (grads[backend],) = torch.autograd.grad(outs[-1].sum(), [first_fk])
    assert grads["triton"].abs().sum() > 0
    torch.testing.assert_close(grads["triton"].double(), grads["torch"].double(), rtol=1e-4, atol=1e-5)
