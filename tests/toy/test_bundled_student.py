"""The shipped toy student: complete, loadable in one call, the library's default φ on a sliding window."""

from __future__ import annotations

import json

import pytest
import torch

from rehyat import ReHyAtConfig, recurrent_forward
from rehyat.models import rehyat_runtime
from rehyat.toy.model import bundled_student, bundled_teacher, load_toy_model


def test_the_bundled_student_loads_in_one_call_with_its_fine_tuned_weights():
    student = load_toy_model(bundled_teacher(), "bundled")
    teacher = load_toy_model(bundled_teacher())
    assert rehyat_runtime(student).config == ReHyAtConfig(
        blocks=(0, 1, 2, 3), chunk_frames=1, overlap_frames=3
    )
    assert rehyat_runtime(teacher) is None
    # Stage 2 fine-tuned the base weights too: the student's are not the teacher's.
    name = "blocks.0.attn1.to_q.weight"
    assert not torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    for tensor in student.state_dict().values():
        assert torch.isfinite(tensor).all()


def test_the_bundled_student_runs_recurrently_and_documents_its_training():
    folder = bundled_student()
    assert (folder / "TRAINING.md").is_file() and (folder / "transformer" / "config.json").is_file()
    assert json.loads((folder / "training_config.json").read_text())["steps"] == 2000
    model = load_toy_model(bundled_teacher(), "bundled")
    latents = torch.randn(1, 3, 4, 8, 8)
    with torch.no_grad():
        out = recurrent_forward(model, latents, torch.tensor([500.0]), torch.zeros(1, 8, 64))
    assert out.shape == latents.shape and torch.isfinite(out).all()


def test_a_missing_student_folder_is_a_clear_error(tmp_path, monkeypatch):
    import rehyat.models.folders as folders

    monkeypatch.setattr(folders, "BUNDLED_STUDENT", tmp_path / "none")
    with pytest.raises(ValueError, match="bundled toy student is missing"):
        load_toy_model(bundled_teacher(), "bundled")
