"""The flags `rehyat bench` took before its settings moved to --set: each is a one-line error naming the
key that replaced it, not argparse's "unrecognized arguments", and nothing runs."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from rehyat.cli import main
from rehyat.cli.bench import REPLACED_FLAGS, replaced_key

MODULES = {
    "op": ("bench_op", "OpBenchSettings"),
    "attention": ("bench_attention", "AttentionBenchSettings"),
    "distill": ("bench_distill", "DistillBenchSettings"),
    "model": ("bench_model", "ModelBenchSettings"),
    "comm": ("bench_comm", "CommBenchSettings"),
    "device": ("bench_device", "DeviceBenchSettings"),
}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["op", "--frame-tokens", "16"], "--frame-tokens was replaced by --set frame_tokens=VALUE"),
        (["op", "--json", "rows.json"], "--json was replaced by --set json_out=VALUE"),
        (["comm", "--ranks", "2", "4", "--render-only"], "--ranks was replaced by --set ranks=[...]"),
        (
            ["model", "--skip-parity", "--size", "tiny"],
            "--skip-parity was replaced by --set skip_parity=true",
        ),
    ],
)
def test_a_replaced_flag_names_its_key(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"rehyat bench: error: {message}"
    assert not captured.out and not any(tmp_path.iterdir())


@pytest.mark.parametrize("target", sorted(REPLACED_FLAGS))
def test_every_replaced_flag_names_a_field_of_its_target_and_stays_hidden(target, capsys):
    module, settings = MODULES[target]
    cls = getattr(importlib.import_module(f"rehyat.experiments.{module}"), settings)
    names = {field.name for field in dataclasses.fields(cls)}
    for flag in REPLACED_FLAGS[target]:
        assert replaced_key(flag) in names, flag
    with pytest.raises(SystemExit):
        main(["bench", target, "--help"])
    words = capsys.readouterr().out.split()
    assert not set(REPLACED_FLAGS[target]) & set(words)
