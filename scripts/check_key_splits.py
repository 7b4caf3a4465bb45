"""The streaming step with and without key splits (GPU; Wan2.1-1.3B layer shape): parity and time.

Usage: ``PYTHONPATH=src python3 scripts/check_key_splits.py [FRAMES ...]`` (default 21 81). Per frame
count: the max relative difference of the recurrent output with splits (as chosen on this GPU) against
one program per window (bf16 and fp32), and do_bench medians of the recurrent pass both ways and of
the parallel op, with the recurrent / parallel ratios (the merge's row block and warps swept), and the
recurrent pass with the state update as separate torch ops (frame sums, then adds and copies) instead
of the retire kernel. Env: COMBINE_BLOCKS (default "32x4 64x4 64x8 128x8": rows x warps), DTYPES
(default "float32 bfloat16"; the last is timed). One JSON line per frame count.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import triton

from rehyat import hybrid_attention
from rehyat.attention.hybrid import recurrent
from rehyat.attention.hybrid.kernels import launch as fused
from rehyat.attention.hybrid.kernels import windowed_attention as windowed
from rehyat.attention.kernels.tuning import attention_config, key_splits
from rehyat.experiments.bench_attention import SHAPE, layer_inputs, stream_steps

AUTO = windowed.key_splits
DEFAULT_BLOCK = windowed.COMBINE_BLOCK_M
DTYPES = [getattr(torch, name) for name in os.environ.get("DTYPES", "float32 bfloat16").split()]
COMBINE_BLOCKS = tuple(
    tuple(int(n) for n in b.split("x"))
    for b in os.environ.get("COMBINE_BLOCKS", "32x4 64x4 64x8 128x8").split()
)  # (rows, warps) per program of the merge, timed in turn
DEFAULT_WARPS = windowed.COMBINE_WARPS
RETIRE = fused.retire_frames


def _retire_in_torch(fk, v, frame_tokens, kv, z, pending_kv, pending_z, leaving, min_programs=512):
    """The state update as before the retire kernel: per-frame sums, then torch adds and copies."""
    chunk_kv, chunk_z = fused.frame_sums(fk, v, frame_tokens, min_programs)
    kv, pending_kv = recurrent.retire(kv, pending_kv, chunk_kv, leaving)
    z, pending_z = recurrent.retire(z, pending_z, chunk_z, leaving)
    return kv, z, pending_kv, pending_z


def _recurrent(q, k, v, fq, fk, splits: str) -> torch.Tensor:
    windowed.key_splits = AUTO if splits == "auto" else (lambda *args: 1)
    try:
        out = torch.empty_like(q)
        with torch.no_grad():
            stream_steps(q, k, v, fq, fk, out)
    finally:
        windowed.key_splits = AUTO
    return out


GEOMETRY = dict(
    frame_tokens=SHAPE["frame_tokens"],
    chunk_frames=SHAPE["chunk_frames"],
    overlap_frames=SHAPE["overlap_frames"],
)


def _features(frames: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    q, k, v, (phi_q, phi_k) = layer_inputs(frames, dtype, "cuda")
    with torch.no_grad():
        return q, k, v, phi_q(q), phi_k(k)


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=400, return_mode="median")


def measure(frames: int) -> dict:
    row: dict = {"frames": frames}
    for dtype in DTYPES:
        inputs = _features(frames, dtype)
        one, split = (_recurrent(*inputs, s).float() for s in ("one", "auto"))
        row[f"max_rel_{str(dtype).removeprefix('torch.')}"] = float(
            (split - one).abs().max() / one.abs().max()
        )
    q, k, v, fq, fk = inputs  # bf16: the timed inputs
    cfg = attention_config("fwd", q.shape[-1], q.dtype, q.device)
    chunk = SHAPE["chunk_frames"] * SHAPE["frame_tokens"]
    window = chunk + SHAPE["overlap_frames"] * SHAPE["frame_tokens"]
    programs = -(-chunk // cfg.block_m) * q.shape[0] * q.shape[2]
    row["splits"] = key_splits(programs, -(-window // cfg.block_n), q.shape[-1], q.dtype, q.device)
    with torch.no_grad():
        parallel = hybrid_attention(q, k, v, fq, fk, **GEOMETRY, backend="triton").float()
        streamed = _recurrent(q, k, v, fq, fk, "auto").float()
        row["max_rel_recurrent_vs_parallel"] = float((streamed - parallel).abs().max() / parallel.abs().max())
        row["parallel_ms"] = _bench(lambda: hybrid_attention(q, k, v, fq, fk, **GEOMETRY, backend="triton"))
    row["recurrent_one_ms"] = _bench(lambda: _recurrent(q, k, v, fq, fk, "one"))
    for block, warps in COMBINE_BLOCKS:
        windowed.COMBINE_BLOCK_M, windowed.COMBINE_WARPS = block, warps
        row[f"recurrent_split_ms@{block}x{warps}"] = _bench(lambda: _recurrent(q, k, v, fq, fk, "auto"))
    windowed.COMBINE_BLOCK_M, windowed.COMBINE_WARPS = DEFAULT_BLOCK, DEFAULT_WARPS
    row["recurrent_split_ms"] = _bench(lambda: _recurrent(q, k, v, fq, fk, "auto"))
    fused.retire_frames = _retire_in_torch
    try:
        row["recurrent_split_torch_retire_ms"] = _bench(lambda: _recurrent(q, k, v, fq, fk, "auto"))
    finally:
        fused.retire_frames = RETIRE
    row["recurrent_one_ms_again"] = _bench(lambda: _recurrent(q, k, v, fq, fk, "one"))
    row["ratio_one"] = row["recurrent_one_ms"] / row["parallel_ms"]
    row["ratio_split"] = row["recurrent_split_ms"] / row["parallel_ms"]
    return row


def main(frame_counts: list[int]) -> None:
    for frames in frame_counts:
        print(json.dumps(measure(frames)), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [21, 81])
