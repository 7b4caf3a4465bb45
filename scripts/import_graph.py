"""Print the package-level import graph of ``src/rehyat`` (module-level and function-local imports).

Usage: ``python scripts/import_graph.py`` (markdown text; docs/architecture.md holds its output).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"


def layer(module: str) -> str:
    """``rehyat.attention.kernels.hybrid`` → ``attention``; top-level modules are their own layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _modules() -> set[str]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "rehyat").rglob("*.py")
    }


def _resolve(name: str, modules: set[str]) -> str:
    """``rehyat.models.wan.convert_wan`` → ``rehyat.models.wan`` (the module a dotted name lives in)."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports() -> dict[str, set[str]]:
    """Module name → the rehyat modules it imports anywhere in its body (function-local ones too)."""
    modules = _modules()
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / "rehyat").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found[name].update(_resolve(t, modules) for t in targets if t.startswith("rehyat."))
    return found


def main() -> int:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in imports().items():
        for target in targets:
            if layer(target) != layer(module) and target != "rehyat":
                edges[layer(module)].add(layer(target))
    for source in sorted(edges):
        print(f"{source:>12} → {', '.join(sorted(edges[source]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
