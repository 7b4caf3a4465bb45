"""The PyTorch step attends a chunk in blocks of query rows once its scores exceed
``SCORE_BLOCK_ELEMENTS`` (a large model's chunk never holds all its scores): the same outputs, state,
guard counts and gradients as in one block, with and without (masked) global keys."""

from __future__ import annotations

import pytest
import torch

from rehyat import recurrent_hybrid_attention
from rehyat.attention import AttentionStats
from rehyat.attention.hybrid import custom_ops

from conftest import make_inputs


@pytest.mark.parametrize("global_keys", [False, True], ids=["video", "global-keys"])
def test_row_blocks_equal_one_block(global_keys, monkeypatch):
    inputs = make_inputs(2, 7, 5, 2, 4, 6, seed=4, requires_grad=True, positive_features=False)
    extra = {}
    if global_keys:
        gen = torch.Generator().manual_seed(1)
        mask = torch.ones(2, 3, dtype=torch.bool)
        mask[1, -1] = False
        extra = dict(
            global_k=torch.randn(2, 3, 2, 4, generator=gen, dtype=torch.float64),
            global_v=torch.randn(2, 3, 2, 4, generator=gen, dtype=torch.float64),
            global_mask=mask,
        )

    def run():
        stats = AttentionStats()
        out = recurrent_hybrid_attention(
            *inputs, frame_tokens=5, chunk_frames=3, overlap_frames=1, backend="torch", stats=stats, **extra
        )
        grads = torch.autograd.grad(out.square().sum(), inputs)
        return out, grads, (stats.guarded_rows, stats.total_rows)

    whole = run()
    monkeypatch.setattr(custom_ops, "SCORE_BLOCK_ELEMENTS", 2 * 2 * 20 * 3)  # 3 rows a block of 20 keys
    blocked = run()
    torch.testing.assert_close(blocked[0], whole[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(blocked[1], whole[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert blocked[2] == whole[2] and whole[2][1] > 0
