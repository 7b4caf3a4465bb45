"""The ReHyAt attention op: parallel reference, recurrent form, feature maps."""

from rehyat.attention._common import DENOMINATOR_EPS, AttentionStats
from rehyat.attention.feature_maps import PolynomialFeatureMap
from rehyat.attention.ops import hybrid_attention
from rehyat.attention.recurrent import HybridAttentionState, hybrid_attention_step, recurrent_hybrid_attention

__all__ = [
    "DENOMINATOR_EPS",
    "AttentionStats",
    "HybridAttentionState",
    "PolynomialFeatureMap",
    "hybrid_attention",
    "hybrid_attention_step",
    "recurrent_hybrid_attention",
]
