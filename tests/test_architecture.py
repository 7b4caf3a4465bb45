"""The layering of docs/architecture.md, kept true: the library never imports the command line or the
experiment harness, no library file names an issue, no imports form a cycle (function-local ones
included), and no module imports another's private names."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "rehyat"
OUTSIDE_LIBRARY = ("rehyat.cli", "rehyat.experiments")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The rehyat modules ``path`` imports (anywhere in the file, or only at import time)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""  # from . / .. import
            module = ".".join(part for part in (base, node.module) if part)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "rehyat" or name.startswith("rehyat.")}


def _library_files() -> list[Path]:
    return [
        path for path in sorted(PACKAGE.rglob("*.py")) if not _module_name(path).startswith(OUTSIDE_LIBRARY)
    ]


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """``rehyat.models.wan.convert_wan`` → ``rehyat.models.wan`` (the module a dotted name lives in)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_the_library_never_imports_the_cli_or_the_experiments():
    offenders = [
        f"{_module_name(path)} imports {name}"
        for path in _library_files()
        for name in _imports(path)
        if name.startswith(OUTSIDE_LIBRARY)
    ]
    assert not offenders, offenders


def test_the_cli_is_the_only_home_of_argparse():
    offenders = [
        _module_name(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if not _module_name(path).startswith("rehyat.cli")
        and re.search(r"^\s*import argparse", path.read_text(), re.M)
    ]
    assert not offenders, offenders


def test_no_library_file_names_an_issue():
    offenders = [
        _module_name(path)
        for path in _library_files()
        if re.search(r"\bissue\b", path.read_text(), re.IGNORECASE)
    ]
    assert not offenders, offenders


def _cycles(top_level_only: bool) -> list[list[str]]:
    """Import cycles between rehyat modules (a package ``__init__`` is a module like the others)."""
    modules = _modules()
    graph = {
        name: {
            target
            for imported in _imports(path, top_level_only)
            if (target := _resolve(imported, modules)) and target != name
        }
        for name, path in modules.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def test_no_import_cycles_at_import_time():
    assert not _cycles(top_level_only=True)


def test_no_import_cycles_through_function_local_imports():
    """A function-local import defers a cycle to call time but keeps the modules entangled: none either."""
    assert not _cycles(top_level_only=False)


def test_importing_the_library_loads_neither_the_cli_nor_the_experiments():
    code = (
        "import sys, rehyat, rehyat.attention, rehyat.models, rehyat.training, rehyat.toy, "
        "rehyat.toy.recipe, rehyat.toy.teacher, rehyat.generation.pipeline; "
        "print([m for m in sys.modules if m.startswith(('rehyat.cli', 'rehyat.experiments'))])"
    )
    assert _python(code) == "[]"


def _python(code: str) -> str:
    """What a fresh interpreter prints running ``code``, stripped."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_documented_import_graph_is_the_codes():
    """docs/architecture.md shows the output of scripts/import_graph.py; regenerate it when layers change."""
    root = SRC.parent
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "import_graph.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = (root / "docs" / "architecture.md").read_text()
    block = doc.split("## Import graph", 1)[1].split("```", 2)[1]
    assert block.strip() == done.stdout.strip()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(path: Path, attributes: bool) -> list[str]:
    """``from rehyat... import _name`` in ``path`` and, with ``attributes``, ``module._name`` of a rehyat
    module it imported (``import rehyat.x as module``, ``from rehyat import x``)."""
    tree = ast.parse(path.read_text())
    in_package = path.is_relative_to(PACKAGE)
    package = (
        ""
        if not in_package
        else _module_name(path)
        if path.name == "__init__.py"
        else _module_name(path).rpartition(".")[0]
    )
    modules = _modules()
    bound: dict[str, str] = {}  # a name (or dotted expression) in this file -> the rehyat module it is
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            if module != "rehyat" and not module.startswith("rehyat."):
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {module} import {alias.name}")
                elif f"{module}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rehyat"):
                    bound[alias.asname or alias.name] = alias.name
    if attributes:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and ast.unparse(node.value) in bound:
                found.append(f"line {node.lineno}: {bound[ast.unparse(node.value)]}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    """A name another module needs is public where it is defined: the library, the tests and the scripts
    import only public names, and the library and the scripts read no private attribute of a rehyat
    module. (White-box tests of a kernel's internals, such as its autotune pruning, still reach them as
    attributes.)"""
    files = [
        *((path, True) for path in sorted(PACKAGE.rglob("*.py"))),
        *((path, True) for path in sorted((ROOT / "scripts").rglob("*.py"))),
        *((path, False) for path in sorted((ROOT / "tests").rglob("*.py"))),
    ]
    offenders = [
        f"{path.relative_to(ROOT)} {use}"
        for path, attributes in files
        for use in _private_uses(path, attributes)
    ]
    assert not offenders, offenders


#: Old paths kept so that imports of them keep working: each re-exports the module it was moved or
#: renamed to (its docstring says which), so it shares that module's name or another module's.
SHIMS = {
    "rehyat/config.py",  # renamed rehyat/settings.py
    "rehyat/models/recurrent.py",  # recurrent_forward moved into rehyat/models/hooks.py
    "rehyat/parallel/recurrent.py",  # renamed rehyat/parallel/pipeline_form.py
    "rehyat/attention/_common.py",  # the op's folder: attention/hybrid/common.py
    "rehyat/attention/custom_ops.py",
    "rehyat/attention/naive.py",
    "rehyat/attention/recurrent.py",
    "rehyat/attention/kernels/config.py",  # renamed attention/kernels/tuning.py
    "rehyat/attention/kernels/layout.py",  # renamed attention/kernels/memory_layout.py
    "rehyat/attention/kernels/state_sums.py",
    "rehyat/attention/kernels/windowed_attention.py",
}

#: Names that mean the same thing in each package that has one: a command's module in ``rehyat.cli`` is
#: named after what it runs, ``common.py`` holds the helpers its package shares, ``hooks.py`` the
#: package's diffusers ``ModelHook`` s, ``wan.py`` the package's part for Wan, ``sampler.py`` a denoising loop (PyTorch or ONNX Runtime), ``checkpoint.py``
#: saved weights (a converted model's folder, a training run's resumable state), ``model.py`` the
#: package's model (the toy teacher, the stage-2 student).
SAME_MEANING = {
    "checkpoint.py": {"rehyat/models/checkpoint.py", "rehyat/training/checkpoint.py"},
    "common.py": {"rehyat/attention/hybrid/common.py", "rehyat/experiments/common.py"},
    "demo.py": {"rehyat/cli/demo.py", "rehyat/experiments/demo.py"},
    "flops.py": {"rehyat/cli/flops.py", "rehyat/flops.py"},
    "generate.py": {"rehyat/cli/generate.py", "rehyat/toy/generate.py"},
    "hooks.py": {"rehyat/models/hooks.py", "rehyat/parallel/hooks.py"},
    "model.py": {"rehyat/toy/model.py", "rehyat/training/finetune/model.py"},
    "sampler.py": {"rehyat/export/sampler.py", "rehyat/generation/sampler.py"},
    "wan.py": {"rehyat/models/wan.py", "rehyat/parallel/wan.py"},
}


def test_one_meaning_per_module_name():
    """No two modules share a file name (``config.py``, ``recurrent.py`` once meant three things each)
    but package ``__init__`` s, the old paths kept as shims and the names of :data:`SAME_MEANING`."""
    by_name: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(SRC).as_posix()
        if path.name != "__init__.py" and relative not in SHIMS:
            by_name.setdefault(path.name, set()).add(relative)
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert {name: paths for name, paths in shared.items() if SAME_MEANING.get(name) != paths} == {}
    for relative in SHIMS:
        assert re.match(r'"""(Moved|Renamed) to :mod:`rehyat\.', (SRC / relative).read_text()), relative


def test_a_renamed_module_keeps_its_old_path_with_a_deprecation_warning():
    import importlib

    import pytest

    for old, new, name in (
        ("rehyat.config", "rehyat.settings", "load_config"),
        ("rehyat.models.recurrent", "rehyat.models.hooks", "recurrent_forward"),
        ("rehyat.parallel.recurrent", "rehyat.parallel.pipeline_form", "chunk_parallel_recurrent_forward"),
        ("rehyat.attention.kernels.config", "rehyat.attention.kernels.tuning", "attention_config"),
        ("rehyat.attention.kernels.layout", "rehyat.attention.kernels.memory_layout", "strides"),
    ):
        module = importlib.import_module(old)
        with pytest.warns(DeprecationWarning, match=f"{old} was renamed {new}"):
            assert getattr(module, name) is getattr(importlib.import_module(new), name)
        with pytest.raises(AttributeError):
            module.no_such_name  # noqa: B018
        assert name in module.__all__


def test_importing_the_library_does_not_import_diffusers_or_a_renamed_path():
    """``rehyat.recurrent_forward`` runs diffusers' hooks: it is imported when first used, not with the
    package; and the library reaches no old path of a renamed module (which would warn)."""
    code = (
        "import sys, warnings; "
        "warnings.filterwarnings('error', 'rehyat[.a-z_]* was renamed', DeprecationWarning); "
        "import rehyat, rehyat.attention, rehyat.models, rehyat.parallel; "
        "print('diffusers' in sys.modules); "
        "import rehyat.training, rehyat.toy.recipe, rehyat.generation.pipeline, rehyat.export; "
        "print(rehyat.recurrent_forward is rehyat.models.hooks.recurrent_forward)"
    )
    assert _python(code).split() == ["False", "True"]


def _is_runtime(node: ast.expr, bound: set[str]) -> bool:
    """Whether ``node`` is a ReHyAtRuntime by its name: ``runtime``, ``*_runtime`` (a name or an
    attribute), a name bound to one in the file, or a call of ``rehyat_runtime``."""
    if isinstance(node, ast.Name):
        return node.id in bound or node.id == "runtime" or node.id.endswith("_runtime")
    if isinstance(node, ast.Attribute):
        return node.attr == "runtime" or node.attr.endswith("_runtime")
    if isinstance(node, ast.Call):
        function = node.func
        return getattr(function, "id", getattr(function, "attr", None)) == "rehyat_runtime"
    return False


def _runtime_writes(source: str) -> list[int]:
    """The lines of ``source`` that assign a ReHyAtRuntime's mode field (``runtime.grid = ...``, also in
    a tuple target or an augmented assignment, or ``setattr(runtime, "grid", ...)``)."""
    from rehyat.models.adapter import MODE_FIELDS

    tree = ast.parse(source)
    bound = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _is_runtime(node.value, set())
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    bound |= {
        node.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.arg)
        and node.annotation is not None
        and "ReHyAtRuntime" in ast.unparse(node.annotation)
    }

    def flat(target: ast.expr) -> list[ast.expr]:
        if isinstance(target, (ast.Tuple, ast.List)):
            return [leaf for element in target.elts for leaf in flat(element)]
        return [target.value] if isinstance(target, ast.Starred) else [target]

    lines = []
    for node in ast.walk(tree):
        assigned = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            assigned = [node.target]
        for target in assigned:
            lines += [
                node.lineno
                for leaf in flat(target)
                if isinstance(leaf, ast.Attribute)
                and leaf.attr in MODE_FIELDS
                and _is_runtime(leaf.value, bound)
            ]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) > 1:
            field_name = node.args[1]
            if isinstance(field_name, ast.Constant) and field_name.value in MODE_FIELDS:
                lines += [node.lineno] if _is_runtime(node.args[0], bound) else []
    return sorted(lines)


def test_only_the_runtimes_mode_writes_its_mode_fields():
    """``ReHyAtRuntime.mode`` is the one writer of streaming, grid, backend and attention: no module of
    the library, the harness or the command line assigns them but models/adapter.py, which defines it."""
    offenders = {
        str(path.relative_to(SRC)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "models" / "adapter.py" and (lines := _runtime_writes(path.read_text()))
    }
    assert offenders == {}


def test_the_runtime_write_check_sees_each_form_of_write():
    source = """
runtime.streaming, runtime.grid = True, (1, 2, 3)
self.runtime.backend = "torch"
rehyat_runtime(model).attention = None
self._softmax_runtime.grid = grid
state = rehyat_runtime(model)
state.grid += ()
setattr(runtime, "backend", "torch")
def f(r: ReHyAtRuntime):
    r.streaming = False
self.grid = grid
self._call.grid = grid
runtime.config = config
"""
    assert _runtime_writes(source) == [2, 2, 3, 4, 5, 7, 8, 10]
