"""Stage 1's model selection: a block keeps the φ it started from where training made it worse."""

from __future__ import annotations

import torch

from rehyat import ReHyAtConfig
from rehyat.baselines import full_attention
from rehyat.training.capture import AttentionCapture
from rehyat.training.students import BlockStudent


def _capture(seed: int) -> AttentionCapture:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 6 * 4, 2, 8, generator=gen) for _ in range(3))
    return AttentionCapture(q, k, v, full_attention(q, k, v), frame_tokens=4)


def test_a_student_made_worse_keeps_its_starting_feature_maps():
    config = ReHyAtConfig(chunk_frames=2, feature_rotary="full")
    student = BlockStudent("rehyat", config, 2, 8, lr=1e-3)
    heldout = [_capture(1), _capture(2)]
    start = student.evaluate(heldout)
    with torch.no_grad():  # a "trained" φ far from the teacher: big positive features everywhere
        for p in [*student.phi_q.parameters(), *student.phi_k.parameters()]:
            p.add_(3.0)
    assert student.evaluate(heldout).l1 > start.l1
    choice = student.keep_better_than_initial(heldout)
    assert choice["kept"] == "initial" and choice["trained"]["l1"] > choice["initial"]["l1"]
    assert student.evaluate(heldout).l1 == start.l1  # the starting weights are back, exactly


def test_a_student_made_better_keeps_its_training():
    config = ReHyAtConfig(chunk_frames=2, feature_rotary="full")
    student = BlockStudent("rehyat", config, 2, 8, lr=3e-3)
    train, heldout = [_capture(s) for s in range(3, 7)], [_capture(1)]
    for _ in range(20):
        for capture in train:
            student.train_step(capture)
    trained = student.evaluate(heldout)
    choice = student.keep_better_than_initial(heldout)
    assert choice["kept"] == "trained" and choice["trained"]["l1"] < choice["initial"]["l1"]
    assert student.evaluate(heldout).l1 == trained.l1
