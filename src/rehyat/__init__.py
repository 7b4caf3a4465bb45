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
from rehyat.models import (
    ReHyAtConfig,
    convert,
    convert_wan,
    load_rehyat,
    recurrent_forward,
    save_rehyat,
)

__version__ = "0.1.0"

__all__ = [
    "DENOMINATOR_EPS",
    "AttentionStats",
    "HybridAttentionState",
    "PolynomialFeatureMap",
    "ReHyAtConfig",
    "__version__",
    "convert",
    "convert_wan",
    "hybrid_attention",
    "hybrid_attention_step",
    "load_rehyat",
    "recurrent_forward",
    "recurrent_hybrid_attention",
    "save_rehyat",
]
