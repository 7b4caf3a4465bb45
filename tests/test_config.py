"""Run configs: file + overrides resolve into typed dataclasses; bad keys and values get clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from rehyat.settings import load_config, write_config


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


@dataclass
class Paths:
    output_dir: str = "runs"
    label: str | None = None
    tags: list[str] = field(default_factory=list)
    lr: float = 1e-3
    seed: int = 0


@pytest.mark.parametrize("text", ["2.10", "1e3", "Infinity", "-0", "007", "true", "null", "[1]", "1_0"])
def test_str_fields_keep_the_text_as_typed(text):
    """A str field takes an override exactly as typed: "2.10" must not become "2.1" via a float."""
    assert load_config(Paths, None, [f"output_dir={text}"]).output_dir == text
    assert load_config(Paths, None, [f'output_dir="{text}"']).output_dir == text  # quotes force a str


def test_optional_str_and_lists_keep_the_text():
    """`str | None` reads null as None and anything else as typed; numbers in a list of str keep their
    text; numeric fields still parse, as plain Python numbers."""
    cfg = load_config(Paths, None, ["label=2.10", 'tags=[2.10, 1e3, "x"]', "lr=1e-4", "seed=7"])
    assert (cfg.label, cfg.tags, cfg.lr, cfg.seed) == ("2.10", ["2.10", "1e3", "x"], 1e-4, 7)
    assert type(cfg.lr) is float and type(cfg.seed) is int
    assert load_config(Paths, None, ["label=null"]).label is None
    assert load_config(Paths, None, ["label=true"]).label == "true"


@pytest.mark.parametrize(
    "name,text",
    [
        ("run.json", '{"output_dir": 2.10, "label": 1e3, "tags": [1.50], "lr": 0.5}'),
        ("run.yaml", "output_dir: 2.10\nlabel: 1.0e+3\ntags: [1.50]\nlr: 0.5\n"),
        ("run.toml", "output_dir = 2.10\nlabel = 1e3\ntags = [1.50]\nlr = 0.5\n"),
    ],
)
def test_str_fields_keep_file_numbers_as_written(tmp_path, name, text):
    """A number written in a config file for a str field keeps its spelling too."""
    path = tmp_path / name
    path.write_text(text)
    cfg = load_config(Paths, path)
    assert (cfg.output_dir, cfg.tags, cfg.lr) == ("2.10", ["1.50"], 0.5)
    assert cfg.label in ("1e3", "1.0e+3")
    assert type(cfg.lr) is float


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("run.json", "[1, 2]", "must hold a mapping"),
        ("run.json", '"steps"', "must hold a mapping"),
        ("run.json", "", "not valid JSON"),
        ("run.json", '{"steps": ', "not valid JSON"),
        ("run.yaml", "steps: [\n", "not valid YAML"),
        ("run.yaml", "- 1\n", "must hold a mapping"),
        ("run.yaml", "1: 2\n", "keys must be strings"),
        ("run.yaml", "optim:\n  3: 1\n", "keys must be strings"),
        ("run.yaml", "!!python/object:os.system {}\n", "not valid YAML"),
        ("run.toml", "steps = \n", "not valid TOML"),
        ("run.json", b"\xff\xfe{}", "not UTF-8"),
        ("run.json", '{"optim": [1]}', "optim must be a section"),
    ],
)
def test_bad_file_contents_name_the_file(tmp_path, name, content, message):
    """Any wrong file is one ValueError on one line that names the file, never another exception."""
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(ValueError, match=message) as info:
        load_config(Run, path)
    assert "\n" not in str(info.value)
    if "section" not in message:
        assert str(path) in str(info.value)


def test_a_folder_or_unreadable_file_is_a_value_error(tmp_path, monkeypatch):
    folder = tmp_path / "run.toml"
    folder.mkdir()
    with pytest.raises(ValueError, match=f"config file {folder} is a folder"):
        load_config(Run, folder)
    path = tmp_path / "run.json"
    path.write_text("{}")

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(type(path), "read_bytes", unreadable)
    with pytest.raises(ValueError, match=f"config file {path} cannot be read: Permission denied"):
        load_config(Run, path)
