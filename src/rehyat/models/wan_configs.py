"""Wan2.1 architecture configs as plain numbers, to build models from configs without any download.

``WAN21_T2V_1_3B`` is Wan2.1-T2V-1.3B (docs/method.md §9: 30 blocks, width 1536 = 12 heads × 128, FFN 8960,
patch (1, 2, 2), 16 latent channels, text dim 4096); ``tiny_wan_config`` is a CPU-sized Wan for tests
and smoke runs (2 heads × 12, head dim divisible into Wan's 3D RoPE split).
"""

from __future__ import annotations

from typing import Any

WAN21_T2V_1_3B: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}


def tiny_wan_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny ``WanTransformer3DModel`` (overrides replace entries)."""
    config = {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 64,
    }
    config.update(overrides)
    return config
