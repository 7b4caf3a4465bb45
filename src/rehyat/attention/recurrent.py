"""Moved to :mod:`rehyat.attention.hybrid.recurrent` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.recurrent import (
    FeatureMap,
    HybridAttentionState,
    hybrid_attention_step,
    recurrent_hybrid_attention,
)

__all__ = ["FeatureMap", "HybridAttentionState", "hybrid_attention_step", "recurrent_hybrid_attention"]
