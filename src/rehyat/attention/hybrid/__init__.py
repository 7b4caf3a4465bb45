"""The ReHyAt hybrid attention op, all of it in this folder (docs/method.md §2–§4):

- :mod:`.geometry` — :class:`Geometry`, the chunk geometry every layer below reads under one set of names;
- :mod:`.common` — input checks, the guarded combine shared by every fast path, :class:`AttentionStats`;
- :mod:`.naive` — the standalone dense reference (O(N²), for tests; imported by no other module);
- :mod:`.chunk` — the parallel form in PyTorch (all chunks at once, O(N · window) memory);
- :mod:`.parallel` — :func:`hybrid_attention`, the public parallel form, and :func:`attend`, the same
  with a :class:`Geometry` in place of the geometry's keywords;
- :mod:`.recurrent` — :func:`hybrid_attention_step` / :func:`recurrent_hybrid_attention`, the chunk-wise
  RNN form, its :class:`HybridAttentionState`, and :func:`attend_step` / :func:`attend_recurrent` (a step,
  or several chunks from a state, given a :class:`Geometry`);
- :mod:`.custom_ops` — the ops registered with ``torch.library`` and the registry of backends
  (:data:`~.custom_ops.IMPLEMENTATIONS`) that every call dispatches through;
- :mod:`.kernels` — the fused Triton kernels and their launchers.

The feature maps φ that produce ``fq`` and ``fk`` live beside this folder, in
:mod:`rehyat.attention.feature_maps`; the backend is resolved by :mod:`rehyat.attention.kernels`.
"""

from rehyat.attention.hybrid.common import DENOMINATOR_EPS, AttentionStats
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.hybrid.parallel import attend, hybrid_attention
from rehyat.attention.hybrid.recurrent import (
    HybridAttentionState,
    attend_recurrent,
    attend_step,
    hybrid_attention_step,
    recurrent_hybrid_attention,
)

__all__ = [
    "DENOMINATOR_EPS",
    "AttentionStats",
    "Geometry",
    "HybridAttentionState",
    "attend",
    "attend_recurrent",
    "attend_step",
    "hybrid_attention",
    "hybrid_attention_step",
    "recurrent_hybrid_attention",
]
