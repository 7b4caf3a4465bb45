"""``profile.start``: the trainer profiles a window of steps and writes a trace and a table of ops."""

from __future__ import annotations

import json

import pytest
from finetune_helpers import tiny_config, tiny_dataset

from rehyat.training.finetune import ProfileSection, finetune


@pytest.mark.parametrize(("start", "steps", "stem"), [(1, 2, "steps-1-2"), (3, 5, "steps-3-3")])
def test_a_profiled_run_writes_the_windows_trace_and_ops(tmp_path, start, steps, stem):
    data = tiny_dataset(tmp_path / "data")
    run = tiny_config(
        tmp_path / "run", data, save="false", **{"profile.start": start, "profile.steps": steps}
    )
    finetune(run)  # 4 steps: the second window is cut off by the run's end and written all the same
    folder = tmp_path / "run" / "profile"
    assert sorted(p.name for p in folder.iterdir()) == [f"{stem}.json", f"{stem}.txt"]
    trace = json.loads((folder / f"{stem}.json").read_text())
    assert any(event.get("name", "").startswith("aten::") for event in trace["traceEvents"])
    table = (folder / f"{stem}.txt").read_text()
    assert "ops by self host time" in table and "aten::" in table


def test_an_unprofiled_run_writes_no_profile(tmp_path):
    finetune(tiny_config(tmp_path / "run", tiny_dataset(tmp_path / "data"), save="false"))
    assert not (tmp_path / "run" / "profile").exists()


def test_profile_options_are_range_checked():
    with pytest.raises(ValueError, match=r"profile\.start must be"):
        ProfileSection(start=-1)
    with pytest.raises(ValueError, match=r"profile\.steps must be"):
        ProfileSection(start=0, steps=0)
