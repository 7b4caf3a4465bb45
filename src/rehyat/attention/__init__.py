"""ReHyAt attention: the hybrid op (:mod:`rehyat.attention.hybrid`, one folder) and, beside it, the
feature maps φ that feed its linear part (:mod:`rehyat.attention.feature_maps`)."""

from rehyat.attention.feature_maps import PolynomialFeatureMap
from rehyat.attention.hybrid import (
    DENOMINATOR_EPS,
    AttentionStats,
    Geometry,
    HybridAttentionState,
    hybrid_attention,
    hybrid_attention_step,
    recurrent_hybrid_attention,
)

__all__ = [
    "DENOMINATOR_EPS",
    "AttentionStats",
    "Geometry",
    "HybridAttentionState",
    "PolynomialFeatureMap",
    "hybrid_attention",
    "hybrid_attention_step",
    "recurrent_hybrid_attention",
]
