"""The recurrent (streaming) form against the parallel causal form."""

from __future__ import annotations

import pytest
import torch

from rehyat import HybridAttentionState, hybrid_attention, hybrid_attention_step, recurrent_hybrid_attention

from conftest import GEOMETRIES, make_inputs, rel_err


@pytest.mark.parametrize("frames,frame_tokens,chunk,overlap", GEOMETRIES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_recurrent_matches_parallel(frames, frame_tokens, chunk, overlap, dtype, tol):
    q, k, v, fq, fk = make_inputs(2, frames, frame_tokens, 3, 4, 6, dtype=dtype, seed=frames + chunk)
    kwargs = dict(frame_tokens=frame_tokens, chunk_frames=chunk, overlap_frames=overlap)
    rec = recurrent_hybrid_attention(q, k, v, fq, fk, **kwargs)
    par = hybrid_attention(q, k, v, fq, fk, causal=True, **kwargs)
    assert rec.dtype == dtype
    assert rel_err(rec, par) <= tol


def test_recurrent_gradients_match_parallel():
    inputs = make_inputs(1, 7, 2, 2, 3, 4, seed=2, requires_grad=True)
    kwargs = dict(frame_tokens=2, chunk_frames=3, overlap_frames=1)
    got = torch.autograd.grad(recurrent_hybrid_attention(*inputs, **kwargs).sum(), inputs)
    want = torch.autograd.grad(hybrid_attention(*inputs, **kwargs).sum(), inputs)
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) <= 1e-10


def test_recurrent_form_continues_from_an_initial_state():
    """Two pieces, the first ending on a chunk boundary: the second from the first's final state gives the
    rest of the whole video's output, and the final states agree."""
    q, k, v, fq, fk = make_inputs(1, 9, 2, 2, 4, 6, seed=4)
    kwargs = dict(frame_tokens=2, chunk_frames=2, overlap_frames=3)
    whole, whole_state = recurrent_hybrid_attention(q, k, v, fq, fk, output_final_state=True, **kwargs)
    cut = 4 * 2  # 2 chunks of 2 frames
    first, state = recurrent_hybrid_attention(
        *(x[:, :cut] for x in (q, k, v, fq, fk)), output_final_state=True, **kwargs
    )
    rest = recurrent_hybrid_attention(*(x[:, cut:] for x in (q, k, v, fq, fk)), initial_state=state, **kwargs)
    assert rel_err(torch.cat([first, rest], dim=1), whole) <= 1e-12
    assert rel_err(whole, hybrid_attention(q, k, v, fq, fk, **kwargs)) <= 1e-10
    _, final = recurrent_hybrid_attention(
        *(x[:, cut:] for x in (q, k, v, fq, fk)), initial_state=state, output_final_state=True, **kwargs
    )
    assert final.frames_seen == whole_state.frames_seen == 9
    assert rel_err(final.kv, whole_state.kv) <= 1e-12


def test_step_state_is_fixed_size_and_streams():
    """Driving the public step by hand: the state never grows, and frames_seen counts frames."""
    frames, s, chunk, overlap = 11, 3, 2, 1
    q, k, v, fq, fk = make_inputs(1, frames, s, 2, 4, 5, seed=9)
    state: HybridAttentionState | None = None
    outs, sizes = [], set()
    for start in range(0, frames * s, chunk * s):
        sl = slice(start, start + chunk * s)
        out, state = hybrid_attention_step(
            q[:, sl], k[:, sl], v[:, sl], fq[:, sl], fk[:, sl], state, frame_tokens=s, overlap_frames=overlap
        )
        outs.append(out)
        sizes.add((tuple(state.kv.shape), state.k.shape[1]))
    assert state.frames_seen == frames
    assert sizes == {((1, 2, 5, 4), overlap * s)}
    assert state.kv.dtype == torch.float64
    par = hybrid_attention(q, k, v, fq, fk, frame_tokens=s, chunk_frames=chunk, overlap_frames=overlap)
    assert rel_err(torch.cat(outs, 1), par) <= 1e-10


def test_half_inputs_keep_fp32_state_over_a_long_run():
    """≥ 1,000 frames in bf16 and fp16: state/normaliser in fp32, result within 1e-3 of float64."""
    frames, s, chunk, overlap = 1002, 2, 3, 1
    q, k, v, fq, fk = make_inputs(1, frames, s, 1, 8, 8, seed=4)
    kwargs = dict(frame_tokens=s, chunk_frames=chunk, overlap_frames=overlap)
    for dtype in (torch.bfloat16, torch.float16):
        half = [t.to(dtype) for t in (q, k, v, fq, fk)]
        rounded = [t.double() for t in half]  # the same inputs, exactly, in float64
        ref = hybrid_attention(*rounded, **kwargs)
        out = recurrent_hybrid_attention(*half, **kwargs)
        assert out.dtype == dtype
        # The output itself is rounded to dtype (bf16 has an 8-bit mantissa): compare against the
        # reference rounded the same way, so what is left is the accumulation error of the run.
        assert rel_err(out, ref.to(dtype)) <= 1e-3, dtype
        _, state = hybrid_attention_step(
            *[t[:, : chunk * s] for t in half], None, frame_tokens=s, overlap_frames=1
        )
        assert state.kv.dtype == torch.float32 and state.z.dtype == torch.float32


def test_step_rejects_incompatible_state():
    q, k, v, fq, fk = make_inputs(1, 2, 2, 2, 4, 6, seed=1)
    _, state = hybrid_attention_step(q, k, v, fq, fk, None, frame_tokens=2, overlap_frames=1)
    q2, k2, v2, fq2, fk2 = make_inputs(1, 2, 2, 3, 4, 6, seed=1)
    with pytest.raises(ValueError, match="state has kv shape"):
        hybrid_attention_step(q2, k2, v2, fq2, fk2, state, frame_tokens=2, overlap_frames=1)


def test_state_does_not_keep_the_window_buffers_alive():
    """The cached overlap frames are their own storage, not views of the (Tc + To)-frame window."""
    q, k, v, fq, fk = make_inputs(1, 3, 4, 2, 4, 6, seed=3)
    _, state = hybrid_attention_step(q, k, v, fq, fk, None, frame_tokens=4, overlap_frames=1)
    assert state.cached_frames == 1
    assert state.k.shape[1] == state.v.shape[1] == 4  # one frame of 4 tokens
    for cached in (state.k, state.v, state.pending_kv, state.pending_z):
        assert cached.untyped_storage().nbytes() == cached.numel() * cached.element_size()


def test_step_takes_the_feature_maps_themselves():
    """Given φq, φk as callables the step computes them inside (for memory) with the same result."""
    from rehyat import PolynomialFeatureMap

    q, k, v, _, _ = make_inputs(1, 6, 4, 2, 8, 16, seed=5)
    phi_q, phi_k = (PolynomialFeatureMap(2, 8, init="random").double() for _ in range(2))
    kwargs = dict(frame_tokens=4, overlap_frames=1)
    with_tensors = with_maps = None
    for start in range(0, 24, 8):
        piece = slice(start, start + 8)
        qs, ks, vs = q[:, piece], k[:, piece], v[:, piece]
        a, with_tensors = hybrid_attention_step(qs, ks, vs, phi_q(qs), phi_k(ks), with_tensors, **kwargs)
        b, with_maps = hybrid_attention_step(qs, ks, vs, phi_q, phi_k, with_maps, **kwargs)
        assert rel_err(a, b) <= 1e-12
    assert torch.equal(with_tensors.kv, with_maps.kv) and torch.equal(
        with_tensors.pending_kv, with_maps.pending_kv
    )
    first = (q[:, :8], k[:, :8], v[:, :8])
    with pytest.raises(ValueError, match="feature dims differ: fq has 3, fk has 16"):
        hybrid_attention_step(*first, lambda x: phi_q(x)[..., :3], phi_k, None, **kwargs)
    with pytest.raises(ValueError, match=r"fk feature map returned torch\.float32"):
        hybrid_attention_step(*first, phi_q, lambda x: phi_k(x).float(), None, **kwargs)
    with pytest.raises(ValueError, match="fq must be a tensor or a feature map, got str"):
        hybrid_attention_step(*first, "phi", phi_k, None, **kwargs)


def test_step_rejects_a_changed_frame_size():
    q, k, v, fq, fk = make_inputs(1, 4, 4, 2, 4, 6, seed=2)
    _, state = hybrid_attention_step(q, k, v, fq, fk, None, frame_tokens=4, overlap_frames=1)
    with pytest.raises(ValueError, match="this chunk has frame_tokens = 2"):
        hybrid_attention_step(q, k, v, fq, fk, state, frame_tokens=2, overlap_frames=1)


def test_step_out_buffer_and_its_errors():
    """``out=`` receives the chunk's output (PyTorch path here; the kernels in test_step_kernels) and
    is rejected, naming what is wrong, when it does not fit or gradients are needed."""
    q, k, v, fq, fk = make_inputs(1, 4, 3, 2, 8, 16, seed=4)
    kwargs = dict(frame_tokens=3, overlap_frames=1, backend="torch")
    want, _ = hybrid_attention_step(q, k, v, fq, fk, None, **kwargs)
    buffer = torch.zeros(1, 20, 2, 8, dtype=q.dtype)
    got, _ = hybrid_attention_step(q, k, v, fq, fk, None, **kwargs, out=buffer[:, 4:16])
    assert got.data_ptr() == buffer[:, 4:16].data_ptr() and torch.equal(buffer[:, 4:16], want)
    assert buffer[:, :4].abs().sum() == 0 and buffer[:, 16:].abs().sum() == 0
    for bad, message in (
        (torch.zeros(1, 11, 2, 8, dtype=q.dtype), r"out is \(1, 11, 2, 8\)"),
        (torch.zeros(1, 12, 2, 8, dtype=torch.float32), "float32"),
        (torch.zeros(1, 12, 8, 2, dtype=q.dtype).transpose(2, 3), "unit last stride"),
    ):
        with pytest.raises(ValueError, match=message):
            hybrid_attention_step(q, k, v, fq, fk, None, **kwargs, out=bad)
    with pytest.raises(ValueError, match="out= is for inference"):
        hybrid_attention_step(q.requires_grad_(True), k, v, fq, fk, None, **kwargs, out=torch.empty_like(q))


def test_recurrent_output_is_contiguous_for_any_input_layout():
    """Inputs in SDPA's [B, H, N, D] layout seen as [B, N, H, D]: the streamed output is contiguous,
    as the parallel form's is, and equal to it."""
    inputs = make_inputs(2, 4, 3, 2, 8, 16, seed=6)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in inputs[:3])
    kwargs = dict(frame_tokens=3, chunk_frames=2, overlap_frames=1)
    got = recurrent_hybrid_attention(q, k, v, *inputs[3:], **kwargs, backend="torch")
    assert got.is_contiguous()
    torch.testing.assert_close(got, hybrid_attention(q, k, v, *inputs[3:], **kwargs, backend="torch"))


def test_chunks_from_a_state_take_the_feature_maps_themselves():
    """attend_recurrent given φq, φk as callables (applied chunk by chunk) equals it given their
    features, from a state and to a state, with and without gradients."""
    from rehyat import PolynomialFeatureMap
    from rehyat.attention.hybrid import Geometry, attend_recurrent

    q, k, v, _, _ = make_inputs(1, 8, 4, 2, 8, 16, seed=6)
    phi_q, phi_k = (PolynomialFeatureMap(2, 8, init="random").double() for _ in range(2))
    geometry = Geometry(frame_tokens=4, chunk_frames=2, overlap_frames=1)
    first = slice(0, 8)  # one chunk, to start from a state
    _, state = attend_recurrent(q[:, first], k[:, first], v[:, first], phi_q, phi_k, None, geometry)
    rest = slice(8, None)
    qs, ks, vs = q[:, rest], k[:, rest], v[:, rest]
    with torch.no_grad():
        a, a_state = attend_recurrent(qs, ks, vs, phi_q(qs), phi_k(ks), state, geometry)
        b, b_state = attend_recurrent(qs, ks, vs, phi_q, phi_k, state, geometry)
    assert rel_err(a, b) <= 1e-12 and torch.equal(a_state.kv, b_state.kv) and a_state.frames_seen == 8
    trained, _ = attend_recurrent(qs, ks, vs, phi_q, phi_k, state, geometry)  # φ's weights need grad
    trained.sum().backward()
    assert rel_err(trained.detach(), a) <= 1e-12 and next(phi_q.parameters()).grad is not None
    with pytest.raises(ValueError, match="fk must be a tensor or a feature map, got int"):
        attend_recurrent(qs, ks, vs, phi_q, 3, state, geometry)
