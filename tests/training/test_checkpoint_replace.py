"""A training checkpoint saved again at a step that exists replaces the old one whole: a save that fails
while moving in leaves the old checkpoint loadable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rehyat.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def test_a_failed_resave_of_a_step_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    first = {"w": torch.zeros(3)}
    save_checkpoint(tmp_path, 3, first)
    final = tmp_path / "step-00000003"
    real_rename, real_replace = os.rename, os.replace

    def fails_moving_in(rename):
        def wrapped(src, dst, *args, **kwargs):
            moving_in = Path(src).name.startswith(".step-") and ".old." not in Path(src).name
            if Path(dst) == final and moving_in:  # the new folder, not the old one put back
                raise OSError("disk full")
            return rename(src, dst, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(os, "rename", fails_moving_in(real_rename))
    monkeypatch.setattr(os, "replace", fails_moving_in(real_replace))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 3, {"w": torch.ones(3)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path)).model["w"], first["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003"]

    save_checkpoint(tmp_path, 3, {"w": torch.ones(3)})  # and the next save replaces it
    assert torch.equal(load_checkpoint(final).model["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000003"]
