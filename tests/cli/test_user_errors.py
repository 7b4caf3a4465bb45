"""Whatever a careless user hands a `rehyat` command (a wrong file, a folder where a file belongs, a
missing path, a bad number) is one line on stderr naming what is wrong, exit code 2, and no work: never
a traceback, never a model-hub lookup."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from diffusers import WanTransformer3DModel

from rehyat.cli import main
from rehyat.models.wan_configs import tiny_wan_config
from training.finetune_helpers import tiny_dataset, tiny_overrides


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Any model load from a path that was not checked first fails the test (it would be a hub lookup)."""
    original = WanTransformer3DModel.from_pretrained.__func__

    def checked(cls, folder, *args, **kwargs):
        assert kwargs.get("local_files_only") or Path(folder, kwargs.get("subfolder") or "").is_dir(), folder
        return original(cls, folder, *args, **kwargs)

    monkeypatch.setattr(WanTransformer3DModel, "from_pretrained", classmethod(checked))


def fails(capsys, argv: list[str], match: str) -> str:
    """``rehyat argv`` exits 2 with one stderr line (``rehyat <command>: error: …``) matching ``match``."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.match(r"rehyat [\w-]+: error: ", lines[0]), lines[0]
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def config_files(tmp_path):
    """Config files that are valid JSON/YAML/TOML of the wrong shape, broken syntax, or no file at all."""
    files = {
        "list.json": "[1, 2]",
        "string.json": '"steps"',
        "empty.json": "",
        "broken.yaml": "steps: [\n  - 1\n bad",
        "list.yaml": "- 1\n",
        "intkeys.yaml": "1: 2\n",
        "section.toml": "optim = 3\n",
        "broken.toml": "steps = \n",
        "section.json": '{"optim": [1]}',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "folder.yaml").mkdir()
    return tmp_path


@pytest.mark.parametrize("command", ["finetune", "distill"])
@pytest.mark.parametrize(
    "name,match",
    [
        ("list.json", "must hold a mapping"),
        ("string.json", "must hold a mapping"),
        ("empty.json", "not valid JSON"),
        ("broken.yaml", "not valid YAML"),
        ("list.yaml", "must hold a mapping"),
        ("intkeys.yaml", "keys must be strings"),
        ("section.toml", "optim must be a section|unknown config key"),
        ("broken.toml", "not valid TOML"),
        ("section.json", "optim must be a section|unknown config key"),
        ("folder.yaml", "is a folder"),
    ],
)
def test_wrong_config_files(capsys, config_files, command, name, match):
    line = fails(capsys, [command, "--config", config_files / name], match)
    if "section" not in match and "keys must" not in match:
        assert str(config_files / name) in line


def test_latest_that_is_a_folder_or_a_link_to_one(tmp_path, capsys, dataset):
    data = dataset
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run / "checkpoints" / "latest").symlink_to(run / "checkpoints" / "step-00000001")
    argv = ["finetune", "--set", *tiny_overrides(run, data, steps=1)]
    fails(capsys, argv, rf"{run / 'checkpoints' / 'latest'} must be a file")
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").mkdir()
    fails(capsys, argv, rf"{run / 'checkpoints' / 'latest'} must be a file")
    (run / "checkpoints" / "latest").rmdir()
    (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe")
    fails(capsys, argv, rf"{run / 'checkpoints' / 'latest'} .*UTF-8")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "model"
    WanTransformer3DModel(**tiny_wan_config(num_layers=1)).save_pretrained(folder / "transformer")
    return folder


def _export(out, model, *extra) -> list[str]:
    return ["export", out, "--model", model, "--untrained", "--height", "8", "--width", "8", *extra]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--frames", "0"], "--frames must be >= 1, got 0"),
        (["--frames", "4", "--batch", "0"], "--batch must be >= 1, got 0"),
        (["--frames", "4", "--text-tokens", "0"], "--text-tokens must be >= 1, got 0"),
        (["--frames", "4", "--height", "7"], "--height must be a positive multiple of 2"),
        (["--frames", "4", "--width", "-2"], "--width must be >= 1, got -2"),
        (["--frames", "4", "--block", "-1"], r"--block must be in \[0, 1\)"),
    ],
)
def test_bad_export_arguments(tmp_path, capsys, wan_folder, monkeypatch, extra, match):
    import rehyat.export as export_module

    def forbidden(*args, **kwargs):
        raise AssertionError("exported before the arguments were checked")

    monkeypatch.setattr(export_module, "export_dit_step", forbidden)
    monkeypatch.setattr(export_module, "export_block_step", forbidden)
    fails(capsys, _export(tmp_path / "out", wan_folder, *extra), match)
    assert not (tmp_path / "out").exists()


def test_export_into_a_file_or_under_one(tmp_path, capsys, wan_folder):
    file = tmp_path / "file"
    file.write_text("keep me")
    fails(capsys, _export(file, wan_folder, "--frames", "4"), f"{file} is a file")
    fails(capsys, _export(file / "sub", wan_folder, "--frames", "4"), f"under {file}, which is a file")
    assert file.read_text() == "keep me"


@pytest.mark.parametrize("command", ["export", "toy-eval", "generate", "finetune", "distill"])
def test_missing_model_folder_is_local_and_immediate(tmp_path, capsys, dataset, command):
    """A --model path that does not exist is one line at once: nothing is looked up on a model hub."""
    missing = tmp_path / "no-such-model"
    argv = {
        "export": _export(tmp_path / "out", missing, "--frames", "4"),
        "toy-eval": ["toy", "eval", "--model", missing, "--prompts", "1", "--steps", "1"],
        "generate": ["generate", "--model", missing, "--prompt", "x", "--output", tmp_path / "v.mp4"],
        "finetune": ["finetune", "--set", *tiny_overrides(tmp_path / "run", dataset, missing)],
        "distill": ["distill", "--set", f"model={missing}", f"out={tmp_path / 'run'}", "prompts=p.txt"],
    }[command]
    fails(capsys, argv, f"{missing}.* does not exist")


@pytest.mark.parametrize("command", ["export", "toy-eval", "finetune"])
def test_model_folder_without_a_model(tmp_path, capsys, dataset, command):
    """A folder that holds no transformer (or a damaged config) names the folder, exit code 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = {
        "export": _export(tmp_path / "out", empty, "--frames", "4"),
        "toy-eval": ["toy", "eval", "--model", empty, "--prompts", "1", "--steps", "1"],
        "finetune": ["finetune", "--set", *tiny_overrides(tmp_path / "run", dataset, empty)],
    }[command]
    fails(capsys, argv, f"{empty}")


def test_damaged_transformer_config(tmp_path, capsys, wan_folder):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(wan_folder, broken)
    (broken / "transformer" / "config.json").write_text("{not json")
    fails(capsys, _export(tmp_path / "out", broken, "--frames", "4"), f"{broken}")


def test_the_toy_names_work_for_toy_eval(capsys):
    """`toy` (the bundled teacher) and `bundled` (its student) are accepted wherever a model is."""
    argv = ["toy", "eval", "--model", "toy", "--prompts", "1", "--steps", "1", "--frames", "2"]
    assert main(argv) == 0
    assert "adherence" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "content,match",
    [
        ("[1]\n", r"manifest\.jsonl line 1 must be a JSON object"),
        ('{"video": "a.mp4", "prompt": "x"}\nnot json\n', r"manifest\.jsonl line 2 is not valid JSON"),
        ('{"video": 3, "prompt": "x"}\n', r"manifest\.jsonl line 1 must hold 'video' and 'prompt' strings"),
        (b"\xff\xfe\n", r"manifest\.jsonl is not UTF-8"),
        (None, r"manifest\.jsonl is a folder"),
    ],
)
def test_build_dataset_manifest(tmp_path, capsys, content, match):
    manifest = tmp_path / "manifest.jsonl"
    if content is None:
        manifest.mkdir()
    else:
        (manifest.write_bytes if isinstance(content, bytes) else manifest.write_text)(content)
    argv = ["build-dataset", "--model", tmp_path, "--manifest", manifest, "--out", tmp_path / "out"]
    fails(capsys, argv, match)


def test_generate_explains_the_toy_name(tmp_path, capsys):
    """`toy` is a known model name, but the toy teacher is no Wan pipeline: say so, not 'does not exist'."""
    fails(
        capsys,
        ["generate", "--model", "toy", "--prompt", "x"],
        "--model toy is the toy teacher.*rehyat toy eval",
    )


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--prompts", "0"], "--prompts must be >= 1, got 0"),
        (["--device", "cudax"], "--device"),
    ],
)
def test_bad_toy_eval_arguments(capsys, extra, match):
    fails(capsys, ["toy", "eval", "--model", "toy", "--steps", "1", *extra], match)


def test_outputs_in_a_file_or_under_one(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("keep me")
    fails(capsys, ["toy", "teacher", "--out", file / "run", "--steps", "1"], f"under {file}, which is a file")
    fails(
        capsys,
        ["bench", "op", "--frames", "1", "--set", f"json_out={file / 'x.json'}"],
        f"under {file}, which is a file",
    )
    fails(capsys, ["demo", "--out", file, "--quick"], f"{file} is a file")
    assert file.read_text() == "keep me"


def test_unreadable_file_is_one_line(monkeypatch, tmp_path, capsys):
    """A path the system refuses (permissions, a folder where a file belongs) deep in any command is one
    line naming the path, exit code 2 (root reads anything, so the refusal is simulated)."""
    import rehyat.cli.flops as flops

    def refused(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret"))

    monkeypatch.setattr(flops, "_main", refused)
    fails(capsys, ["flops", "--frames", "1", "--height", "1", "--width", "1"], "Permission denied: .*secret")


def test_distill_prompt_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xff\xfe a cat\n")
    argv = ["distill", "--set", "model=toy", f"prompts={prompts}", f"out={tmp_path / 'run'}"]
    fails(capsys, argv, f"prompt file {prompts} is not UTF-8")
    prompts.unlink()
    prompts.mkdir()
    fails(capsys, argv, f"prompts file {prompts} is a folder")


@pytest.mark.parametrize(
    "target,name",
    [("attention", "attention.json"), ("model", "model.json"), ("toy", "toybench.json")],
)
@pytest.mark.parametrize("content", ["{", "[1]", "{}"])
def test_render_only_from_a_damaged_results_file(tmp_path, capsys, target, name, content):
    """`--render-only` reads an earlier run's JSON: damaged or of another shape, it is named in one line."""
    (tmp_path / name).write_text(content)
    line = fails(capsys, ["bench", target, "--render-only", "--out", tmp_path], rf"{tmp_path}")
    assert content == "{}" or str(tmp_path / name) in line


def test_reuse_of_a_damaged_table(tmp_path, capsys):
    table = tmp_path / "toybench.json"
    table.write_text("[1]")
    argv = ["bench", "toy", "--reuse", table, "--out", tmp_path / "out", "--work", tmp_path / "w"]
    fails(capsys, [*argv, "--device", "cpu", "--quick"], rf"{table}")
