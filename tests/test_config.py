"""Run configs: file + overrides resolve into typed dataclasses; bad keys and values get clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from rehyat.config import load_config, write_config


@dataclass
class Optim:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Run:
    steps: int = 10
    name: str = "run"
    precision: Literal["fp32", "bf16"] = "bf16"
    blocks: list[int] | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_file_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("steps = 20\n[optim]\nlr = 3e-4\n")
    cfg = load_config(Run, toml, ["optim.lr=1e-3", "blocks=[1, 2]", "name=abc", "precision=fp32"])
    assert cfg == Run(steps=20, name="abc", precision="fp32", blocks=[1, 2], optim=Optim(lr=1e-3))
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("steps: 5\noptim:\n  betas: [0.8, 0.9]\n")
    assert load_config(Run, yaml_file).optim.betas == [0.8, 0.9]
    write_config(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 1e-3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["stepz=3"], r"unknown config key\(s\) \['stepz'\]"),
        (["optim.momentum=1"], r"unknown config key\(s\) \['optim.momentum'\]"),
        (["steps=three"], "steps must be int"),
        (["steps=true"], "steps must be int"),
        (["precision=fp8"], "precision must be one of"),
        (['blocks=[1, "x"]'], "matches none of"),
        (["steps"], "must look like key=value"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(Run, None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(Run, tmp_path / "missing.toml")
    bad = tmp_path / "run.ini"
    bad.write_text("x")
    with pytest.raises(ValueError, match=r"must be \.toml, \.yaml"):
        load_config(Run, bad)
