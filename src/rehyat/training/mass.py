"""Out-of-window attention mass: how much of a query's attention ReHyAt's linear part carries, against
what the teacher's softmax puts on the same keys (docs/method.md §7.1).

For a query row, with the softmax window's row max c and normaliser nS = Σ_window exp(s − c), the linear
part's share is nL / nS with nL = φ(q)·Σ_linear φ(k) (not rescaled by exp(−c), as in the op), and the
teacher's is Σ_linear exp(s − c) / nS over the same linear keys. Matching outputs alone can leave nL
near 0 (local attention is close on one step's outputs of a smooth video) while the teacher puts most of
its attention outside the window; stage 1's ``mass_weight`` adds |log(1 + student) − log(1 + teacher)| over
sampled rows to the L1 loss. Rows are sampled so the cost is R × N scores per capture, not N².
"""

from __future__ import annotations

import torch
from torch import Tensor

from rehyat.attention.hybrid.common import DENOMINATOR_EPS
from rehyat.attention.hybrid.geometry import Geometry

#: Query rows per capture that a student's evaluation takes the mass error on (drawn from a fixed seed).
EVALUATION_ROWS = 256


def key_frame_sets(geometry: Geometry, frames: int, query_frames: Tensor) -> tuple[Tensor, Tensor]:
    """[R, frames] booleans: the softmax key frames and the linear key frames of each query frame."""
    f = query_frames[:, None]
    tc = frames if geometry.chunk_frames is None else geometry.chunk_frames
    first = geometry.first_chunk_frames
    if first:
        later = f >= first
        start = torch.where(later, first + (f - first).div(tc, rounding_mode="floor") * tc, 0)
        end = torch.where(later, start + tc, first)
    else:
        start = f.div(tc, rounding_mode="floor") * tc
        end = start + tc
    low = (start - geometry.overlap_frames).clamp(min=0)
    high = end.clamp(max=frames)
    key = torch.arange(frames, device=query_frames.device)[None, :]
    anchor = key < geometry.anchor_frames
    softmax = (key >= low) & (key < high) | (anchor & (key < high) if geometry.causal else anchor)
    linear = (key < low) & ~softmax if geometry.causal else ~softmax
    return softmax, linear


def rows_with_linear_keys(geometry: Geometry, frames: int, device: torch.device | str) -> Tensor:
    """The query rows (token indices) that have at least one linear key."""
    _, linear = key_frame_sets(geometry, frames, torch.arange(frames, device=device))
    frame_ids = linear.any(dim=1).nonzero().flatten()
    tokens = geometry.frame_tokens
    return (frame_ids[:, None] * tokens + torch.arange(tokens, device=device)).flatten()


def sample_rows(geometry: Geometry, frames: int, count: int, generator: torch.Generator, device) -> Tensor:
    """At most ``count`` distinct rows with linear keys, drawn uniformly with ``generator``, in order."""
    rows = rows_with_linear_keys(geometry, frames, device)
    if rows.numel() <= count:
        return rows
    pick = torch.randperm(rows.numel(), generator=generator, device=generator.device)[:count]
    return rows[pick.to(device)].sort().values


def linear_mass(
    q: Tensor,
    k: Tensor,
    fq: Tensor,
    fk: Tensor,
    geometry: Geometry,
    rows: Tensor,
    *,
    global_k: Tensor | None = None,
    global_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(student, teacher) out-of-window mass relative to the window's, [B, H, R], of query rows ``rows``
    of q, k [B, N, H, D] and φ features fq, fk [B, N, H, E]; text keys ``global_k`` (joint layers) are
    window keys of every row. fp32 (fp64 stays fp64), autocast or not; differentiable in fq and fk."""
    with torch.autocast(q.device.type, enabled=False):
        return _linear_mass(q, k, fq, fk, geometry, rows, global_k, global_mask)


def _linear_mass(q, k, fq, fk, geometry, rows, global_k, global_mask) -> tuple[Tensor, Tensor]:
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    tokens = geometry.frame_tokens
    frames = q.shape[1] // tokens
    softmax, linear = key_frame_sets(geometry, frames, rows // tokens)
    softmax = softmax.repeat_interleave(tokens, dim=1)  # [R, N]
    linear = linear.repeat_interleave(tokens, dim=1)
    scale = geometry.softmax_scale(q.shape[-1])
    q_rows = q[:, rows].to(acc)
    scores = torch.einsum("brhd,bnhd->bhrn", q_rows, k.to(acc)) * scale
    window = scores.masked_fill(~softmax, float("-inf"))
    if global_k is not None:
        text = torch.einsum("brhd,bghd->bhrg", q_rows, global_k.to(acc)) * scale
        if global_mask is not None:
            text = text.masked_fill(~global_mask[:, None, None, :], float("-inf"))
        window = torch.cat([window, text], dim=-1)
    c = window.amax(dim=-1, keepdim=True)
    n_softmax = torch.exp(window - c).sum(dim=-1)
    teacher = torch.exp(scores.masked_fill(~linear, float("-inf")) - c).sum(dim=-1)
    student = (torch.einsum("brhe,bnhe->bhrn", fq[:, rows].to(acc), fk.to(acc)) * linear).sum(dim=-1)
    return student / n_softmax, teacher / n_softmax


def mass_error(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean |log(1 + student) − log(1 + teacher)|: the error of the row's whole normaliser relative to the
    window's, in log space (a factor 2 too little or too much counts alike at any scale); the student's
    floored as the op floors its denominator."""
    return (torch.log((1 + student).clamp(min=DENOMINATOR_EPS)) - torch.log1p(teacher)).abs().mean()


class OwnMassPenalty:
    """Stage 2's mass term (docs/method.md §7.1): set as ``runtime.attention`` (through
    ``ReHyAtRuntime.mode``) it runs :func:`~rehyat.models.adapter.configured_attention` unchanged and, while
    gradients are on, records per call the :func:`mass_error` of the student's linear share against its own
    softmax's share over the same keys, on ``rows`` query rows. No teacher forward: the target is the
    student's own scores, taken as a constant of the step (q, k detached in the scores); the gradient reaches
    φ and, through φ's inputs, the layers that produce q and k. Rows are drawn once per :meth:`start` and
    frame geometry, so a recomputation under gradient checkpointing sees the same rows; what a
    recomputation (after :meth:`loss`) records is dropped."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.errors: list[Tensor] = []
        self.terms: list[Tensor] = []  # each micro-batch's loss(), detached, for the step's metrics
        self._generator = torch.Generator()
        self._rows: dict[tuple, Tensor] = {}
        self._taken = False  # loss() was called: later calls are recomputations in the backward

    def start(self, seed: int) -> None:
        """A new forward: drop the recorded errors and draw rows from ``seed`` (per step and micro-batch)."""
        self.errors = []
        self._rows = {}
        self._taken = False
        self._generator.manual_seed(seed)

    def __call__(
        self, config, q: Tensor, k: Tensor, v: Tensor, fq, fk, geometry: Geometry, **kwargs
    ) -> Tensor:
        from rehyat.models.adapter import configured_attention

        out = configured_attention(config, q, k, v, fq, fk, geometry, **kwargs)
        if fq is not None and torch.is_grad_enabled():
            frames = q.shape[1] // geometry.frame_tokens
            key = (geometry, frames)
            if key not in self._rows:
                self._rows[key] = sample_rows(geometry, frames, self.rows, self._generator, q.device)
            rows = self._rows[key]
            if rows.numel():
                # Computed on recomputation too, so a checkpointed block saves what its forward saved.
                error = mass_error(*linear_mass(q.detach(), k.detach(), fq, fk, geometry, rows))
                if not self._taken:
                    self.errors.append(error)
        return out

    def loss(self) -> Tensor:
        """Mean of the errors recorded since :meth:`start` (one per converted layer with linear keys); the
        forward is then over: what is recorded before the next :meth:`start` (a recomputation) is dropped."""
        if not self.errors:
            raise ValueError(
                "mass_weight > 0 but no converted self-attention recorded a mass error in this forward: the "
                "model has no linear keys at this length (a video within one softmax window), runs a joint "
                "text-video family (whose processors do not take runtime.attention), or checkpoints its blocks "
                "reentrantly (the forward then runs without gradients)"
            )
        term = torch.stack(self.errors).mean()
        self.errors, self._taken = [], True
        self.terms.append(term.detach())
        return term

    def step_mean(self) -> Tensor:
        """The mean of the terms since the last call (a step's micro-batches), and forget them."""
        terms, self.terms = self.terms, []
        return torch.stack(terms).mean()
