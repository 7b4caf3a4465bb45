"""rehyat: recurrent hybrid attention (ReHyAt) for video diffusion transformers.

``recurrent_forward`` runs diffusers' hooks: it is imported when first asked for, so ``import rehyat``
does not import diffusers."""

from typing import TYPE_CHECKING

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
    save_rehyat,
)

if TYPE_CHECKING:
    from rehyat.models.hooks import recurrent_forward

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


def __getattr__(name: str):
    if name == "recurrent_forward":
        from rehyat.models.hooks import recurrent_forward

        return recurrent_forward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
