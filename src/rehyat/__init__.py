"""rehyat: recurrent hybrid attention (ReHyAt) for video diffusion transformers."""

from rehyat.attention import (
    DENOMINATOR_EPS,
    AttentionStats,
    HybridAttentionState,
    PolynomialFeatureMap,
    hybrid_attention,
    hybrid_attention_step,
    recurrent_hybrid_attention,
)

__version__ = "0.1.0"

__all__ = [
    "DENOMINATOR_EPS",
    "AttentionStats",
    "HybridAttentionState",
    "PolynomialFeatureMap",
    "__version__",
    "hybrid_attention",
    "hybrid_attention_step",
    "recurrent_hybrid_attention",
]
