"""Block sizes of the Triton kernels, and the dot precision per input dtype.

GPU values are for Hopper (H100/H200) at head dim 64/128; the interpreter (CPU, TRITON_INTERPRET=1)
uses the smallest blocks ``tl.dot`` accepts so that tiny test shapes still span several blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class SegmentConfig:
    block_t: int
    block_e: int
    num_warps: int
    num_stages: int


#: Smallest tile ``tl.dot`` accepts; also the feature-dim slice width under the interpreter.
MIN_BLOCK = 16

_INTERPRETER_ATTENTION = AttentionConfig(MIN_BLOCK, MIN_BLOCK, 1, 1)

#: Per kernel ("fwd", "bwd_dq", "bwd_dkdv"), keyed by head dim; chosen on an H100, head dim 128 re-swept
#: on an H200 at the Wan shape (8 candidates per kernel, median of do_bench; fwd 128×128: −2% forward,
#: bwd_dq 128×64: −8% softmax fwd+bwd at 21 frames, the same with the linear part).
ATTENTION_CONFIGS: dict[str, dict[int, AttentionConfig]] = {
    "fwd": {
        16: AttentionConfig(64, 64, 4, 3),
        32: AttentionConfig(64, 64, 4, 3),
        64: AttentionConfig(128, 64, 4, 3),
        128: AttentionConfig(128, 128, 8, 3),
        256: AttentionConfig(64, 32, 8, 2),
    },
    "bwd_dq": {
        16: AttentionConfig(64, 32, 4, 3),
        32: AttentionConfig(64, 32, 4, 3),
        64: AttentionConfig(64, 64, 4, 3),
        128: AttentionConfig(128, 64, 8, 3),
        256: AttentionConfig(64, 32, 8, 2),
    },
    "bwd_dkdv": {
        16: AttentionConfig(32, 64, 4, 3),
        32: AttentionConfig(32, 64, 4, 3),
        64: AttentionConfig(64, 128, 8, 3),
        128: AttentionConfig(64, 128, 8, 3),
        256: AttentionConfig(32, 64, 8, 2),
    },
}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: fp32 inputs: tiles twice as wide in bytes, so half the blocks and fewer stages (shared memory).
FP32_CONFIGS: dict[str, AttentionConfig] = {
    "fwd": AttentionConfig(64, 32, 4, 2),
    "bwd_dq": AttentionConfig(64, 32, 4, 2),
    "bwd_dkdv": AttentionConfig(32, 64, 4, 2),
}


def attention_config(kernel: str, head_dim: int, dtype: torch.dtype, device: torch.device) -> AttentionConfig:
    if device.type != "cuda" or interpreting():
        return _INTERPRETER_ATTENTION
    if dtype == torch.float32 and head_dim > 64:
        return FP32_CONFIGS[kernel]
    return ATTENTION_CONFIGS[kernel][head_dim]


def feature_block(feature_dim: int) -> int:
    """Width of the feature-dim slices (state tiles [slice, D] in fp32); feature_dim % 16 == 0."""
    return 64 if feature_dim % 64 == 0 else 32 if feature_dim % 32 == 0 else MIN_BLOCK


def segment_config(head_dim: int, feature_dim: int, device: torch.device) -> SegmentConfig:
    if device.type != "cuda" or interpreting():
        return SegmentConfig(MIN_BLOCK, feature_block(feature_dim), 1, 1)
    return SegmentConfig(64, feature_block(feature_dim), 4 if head_dim <= 64 else 8, 2)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 dots (``"ieee"``); half inputs use tf32 for their fp32 state dots."""
    return "ieee" if dtype == torch.float32 else "tf32"


def key_splits(
    programs: int, window_blocks: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> int:
    """Parts to cut each key window of ``window_blocks`` key blocks into; see :func:`best_key_splits`.

    1 off CUDA and wherever the one-program-per-SM premise is unmeasured: only the head-dim-128
    half-precision forward config (whose shared memory holds one program per SM) splits.
    """
    if device.type != "cuda" or interpreting() or head_dim != 128 or dtype == torch.float32:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return best_key_splits(programs, sms, max_splits=min(4, window_blocks))


def best_key_splits(programs: int, sms: int, max_splits: int = 4) -> int:
    """Parts per key window so that a small grid of query blocks fills the GPU (flash-decoding style).

    With one program per SM, ``programs`` query blocks take ceil(programs / sms) waves; s parts take
    ceil(s · programs / sms) waves of 1/s the work. The streaming step at the Wan shape has 444
    programs on 132 SMs: 4 waves, the last a third full; s = 2 takes 3.5 wave-lengths. A split must
    save ≥ 10%: its fp32 partials cost memory (s · rows · D · 4 bytes, +24 MiB at the Wan step) and a
    merge pass. Measured on an H200 (``scripts/check_key_splits.py``): the step 4–5% faster.
    """

    def waves(s: int) -> float:
        return -(-programs * s // sms) / s

    best = min(range(1, max(max_splits, 1) + 1), key=lambda s: (waves(s), s))
    return best if waves(best) <= 0.9 * waves(1) else 1
