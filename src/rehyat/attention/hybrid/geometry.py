"""``Geometry``: the one carrier of ReHyAt's chunk geometry, from the public call to the kernel launch.

Every layer of the op — the public functions, the dispatch, the custom ops (whose schemas take its fields
one by one, in this order), the PyTorch forms and the Triton launchers — reads the same fields under
the same names; token counts are derived from them (:attr:`Geometry.chunk_tokens`), never renamed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from rehyat.utils import check_bool, check_int


def resolve_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale: ``scale`` as a float, or 1/sqrt(head_dim) for None; ``ValueError`` unless it
    is a positive finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    return float(scale)


@dataclass(frozen=True)
class Geometry:
    """Where each query's softmax keys and linear keys lie, in whole frames (docs/method.md §2).

    Attributes:
        frame_tokens: S, tokens per latent frame (a frame is a contiguous run of S tokens).
        chunk_frames: Tc, frames per chunk (the last chunk may be shorter; Tc >= T is full softmax).
            ``None`` for one step of the streaming form, whose chunk is whatever frames it is given.
        overlap_frames: To, frames before a chunk that its queries also attend to with softmax.
        causal: the linear part over past frames only (the recurrent-capable default) or over all others.
        scale: the softmax scale, ``None`` for 1/sqrt(D) (:meth:`softmax_scale`).
        anchor_frames: A, the first frames of the video kept in every chunk's softmax window (an anchor,
            docs/method.md §2.1) and left out of the linear sums; causal chunks see only the anchor
            frames before their own end. 0 (the default) is plain ReHyAt.
        first_chunk_frames: F0, the frames of the video's first chunk when it differs from Tc (causal
            only): the chunks are [0, F0), then Tc frames at a time from F0, so the first frames are
            attended jointly (docs/method.md §2.1). 0 (the default): every chunk Tc frames.

    Raises ``ValueError`` naming the field for a value out of range (ints and bools must be real ones).
    """

    frame_tokens: int
    chunk_frames: int | None
    overlap_frames: int
    causal: bool = True
    scale: float | None = None
    anchor_frames: int = 0
    first_chunk_frames: int = 0

    def __post_init__(self) -> None:
        check_int("frame_tokens", self.frame_tokens, 1)
        if self.chunk_frames is not None:
            check_int("chunk_frames", self.chunk_frames, 1)
        check_int("overlap_frames", self.overlap_frames, 0)
        check_bool("causal", self.causal)
        check_int("anchor_frames", self.anchor_frames, 0)
        check_int("first_chunk_frames", self.first_chunk_frames, 0)
        if self.first_chunk_frames and not self.causal:
            raise ValueError(
                f"first_chunk_frames={self.first_chunk_frames} needs causal=True (the bidirectional variant "
                "keeps uniform chunks)"
            )
        if self.scale is not None:
            object.__setattr__(self, "scale", resolve_scale(self.scale, head_dim=1))

    def softmax_scale(self, head_dim: int) -> float:
        """The scale the softmax part uses at head dim ``head_dim``: ``scale``, or 1/sqrt(head_dim)."""
        return resolve_scale(self.scale, head_dim)

    def chunk_tokens(self, frames: int) -> int:
        """Query rows per chunk on a video of ``frames`` frames: Tc·S, at most the whole video (one
        chunk); a streaming step (``chunk_frames=None``) is one chunk of all its rows."""
        chunk = frames if self.chunk_frames is None else min(self.chunk_frames, frames)
        return chunk * self.frame_tokens

    @property
    def overlap_tokens(self) -> int:
        """To·S, the key rows before a chunk that are in its softmax window."""
        return self.overlap_frames * self.frame_tokens


#: The keywords of the global keys (docs/method.md §2.1), after the geometry's in every public call.
GLOBAL_KEYWORDS = ("global_k", "global_v", "global_mask")

#: A form of the parallel op: (q, k, v, fq, fk, geometry, stats) -> y.
Form = Callable[..., Tensor]


def with_keywords(form: Form) -> Callable[..., Tensor]:
    """``form`` called as :func:`rehyat.hybrid_attention` is, the fields of its :class:`Geometry` as
    keywords (``frame_tokens``, ``chunk_frames``, ``overlap_frames``, ``causal``, ``scale``,
    ``anchor_frames``, ``first_chunk_frames``) and the global keys ``global_k``, ``global_v``, ``global_mask`` passed on as
    keywords when given: for tests and benchmarks that run one form directly."""

    def call(
        q: Tensor, k: Tensor, v: Tensor, fq: Tensor | None, fk: Tensor | None, *, stats=None, **fields
    ) -> Tensor:
        given = {name: fields.pop(name, None) for name in GLOBAL_KEYWORDS}
        extra = {name: value for name, value in given.items() if value is not None}
        return form(q, k, v, fq, fk, Geometry(**fields), stats, **extra)

    call.__name__ = call.__qualname__ = f"{form.__name__}_with_keywords"
    call.__doc__ = f"{form.__name__} with the geometry as keywords.\n\n{form.__doc__ or ''}"
    return call
