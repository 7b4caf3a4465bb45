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
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


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
