"""Block-size sweep of the windowed-attention kernels at the Wan shape (GPU; bf16, head dim 128).

Usage: ``PYTHONPATH=src python3 scripts/tune_attention_blocks.py [KERNEL [SKIP]] > tune.jsonl`` with
KERNEL one of fwd, bwd_dq, bwd_dkdv (default: all). Each candidate replaces that kernel's head-dim-128
entry of ``rehyat.attention.kernels.tuning.ATTENTION_CONFIGS`` (the others keep theirs), is checked
against the current config's output and gradients (max relative error, 21 frames), and timed with
``triton.testing.do_bench`` (median ms): the forward candidates on the softmax part, the whole op and
the recurrent pass; the backward ones on the softmax part and the whole op, forward + backward.
One JSON line per candidate.
"""

from __future__ import annotations

import json
import sys

import torch
import triton

from rehyat import hybrid_attention
from rehyat.attention.hybrid.kernels.launch import triton_hybrid_attention
from rehyat.attention.kernels import tuning
from rehyat.experiments.bench_attention import SHAPE, layer_inputs, stream_steps

C = tuning.AttentionConfig
CANDIDATES = {
    "fwd": [C(128, 64, 8, 3), C(128, 128, 8, 2), C(128, 64, 4, 3), C(128, 128, 8, 3),
            C(64, 64, 4, 3), C(128, 32, 4, 4), C(64, 128, 4, 2), C(128, 64, 8, 4)],
    "bwd_dq": [C(64, 64, 4, 3), C(128, 64, 8, 2), C(128, 64, 8, 3), C(64, 128, 8, 2),
               C(64, 64, 4, 4), C(64, 32, 4, 3), C(128, 32, 8, 3), C(64, 64, 8, 3)],
    "bwd_dkdv": [C(64, 128, 8, 3), C(128, 128, 8, 2), C(64, 64, 4, 3), C(32, 128, 4, 3),
                 C(64, 128, 8, 2), C(128, 64, 8, 2), C(64, 128, 4, 3), C(32, 64, 4, 3)],
}  # fmt: skip
GEOMETRY = dict(
    frame_tokens=SHAPE["frame_tokens"],
    chunk_frames=SHAPE["chunk_frames"],
    overlap_frames=SHAPE["overlap_frames"],
)


def _data(frames: int) -> dict:
    q, k, v, (phi_q, phi_k) = layer_inputs(frames, torch.bfloat16, "cuda")
    with torch.no_grad():
        fq, fk = phi_q(q), phi_k(k)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v, fq, fk)]
    return {"plain": (q, k, v, fq, fk), "leaves": leaves, "grad": torch.randn_like(q)}


DATA = {frames: _data(frames) for frames in (21, 81)}


def softmax_fwd(frames: int) -> None:
    q, k, v, _, _ = DATA[frames]["plain"]
    with torch.no_grad():
        triton_hybrid_attention(q, k, v, None, None, **GEOMETRY)


def op_fwd(frames: int) -> None:
    with torch.no_grad():
        hybrid_attention(*DATA[frames]["plain"], **GEOMETRY, backend="triton")


def softmax_fwd_bwd(frames: int) -> None:
    q, k, v = DATA[frames]["leaves"][:3]
    torch.autograd.grad(
        triton_hybrid_attention(q, k, v, None, None, **GEOMETRY), [q, k, v], DATA[frames]["grad"]
    )


def op_fwd_bwd(frames: int) -> None:
    leaves = DATA[frames]["leaves"]
    torch.autograd.grad(hybrid_attention(*leaves, **GEOMETRY, backend="triton"), leaves, DATA[frames]["grad"])


def recurrent(frames: int) -> None:
    with torch.no_grad():
        stream_steps(*DATA[frames]["plain"])


MEASURES = {
    "fwd": [(softmax_fwd, 21), (softmax_fwd, 81), (op_fwd, 21), (recurrent, 81)],
    "bwd_dq": [(softmax_fwd_bwd, 21), (op_fwd_bwd, 21)],
    "bwd_dkdv": [(softmax_fwd_bwd, 21), (op_fwd_bwd, 21)],
}


def outputs_and_grads() -> list[torch.Tensor]:
    leaves = DATA[21]["leaves"]
    out = hybrid_attention(*leaves, **GEOMETRY, backend="triton")
    return [out.detach(), *torch.autograd.grad(out, leaves, DATA[21]["grad"])]


def max_rel(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(
        float((a.float() - b.float()).abs().max() / b.float().abs().max())
        for a, b in zip(got, want, strict=True)
    )


def main(only: str | None, skip: int) -> None:
    reference = outputs_and_grads()
    for kernel, candidates in CANDIDATES.items():
        if only and kernel != only:
            continue
        default = tuning.ATTENTION_CONFIGS[kernel][128]
        for candidate in candidates[skip:]:
            tuning.ATTENTION_CONFIGS[kernel][128] = candidate
            row: dict = {"kernel": kernel, "config": list(candidate.__dict__.values())}
            try:
                row["max_rel_vs_current"] = max_rel(outputs_and_grads(), reference)
                for fn, frames in MEASURES[kernel]:
                    row[f"{fn.__name__}@{frames}"] = triton.testing.do_bench(
                        lambda fn=fn, frames=frames: fn(frames), warmup=50, rep=300, return_mode="median"
                    )
            except (RuntimeError, triton.runtime.errors.OutOfResources) as error:
                row["error"] = f"{type(error).__name__}: {str(error)[:80]}"
            print(json.dumps(row), flush=True)
        tuning.ATTENTION_CONFIGS[kernel][128] = default


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
