"""The dense reference stands alone: no library module imports it; its masks are docs/method.md §2's sets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import rehyat
from rehyat.attention.hybrid.naive import chunk_masks

from conftest import GEOMETRIES

REFERENCE = "rehyat.attention.hybrid.naive"
#: The reference's former path, which only re-exports it: it counts as the reference.
FORMER_PATH = "rehyat.attention.naive"


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module an ``import``/``from … import`` in the file names (relative imports resolved
    against ``package``, the file's own package), including ``from pkg import module`` targets."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_imports_the_reference():
    root = Path(rehyat.__file__).parent
    importers = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        if module in (REFERENCE, FORMER_PATH):
            continue
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        if any(
            name == ref or name.startswith(ref + ".")
            for name in _imported_modules(path, package)
            for ref in (REFERENCE, FORMER_PATH)
        ):
            importers.append(module)
    assert importers == [], f"{importers} import {REFERENCE}: the reference must stay independent"


def test_the_import_scan_sees_every_spelling(tmp_path):
    """The scan above would catch an absolute, a from-package and a relative import alike."""
    spellings = [
        "import rehyat.attention.hybrid.naive",
        "from rehyat.attention.hybrid.naive import naive_hybrid_attention",
        "from rehyat.attention.hybrid import naive",
        "from .naive import chunk_masks",
        "from . import naive",
    ]
    for line in spellings:
        path = tmp_path / "module.py"
        path.write_text(line + "\n")
        assert REFERENCE in _imported_modules(path, "rehyat.attention.hybrid"), line


def _loop_masks(frames, frame_tokens, chunk, overlap, causal):
    """docs/method.md §2 sets token by token in plain Python loops (the masks' original, slow form)."""
    n = frames * frame_tokens
    soft = torch.zeros(n, n, dtype=torch.bool)
    lin = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        t = (i // frame_tokens) // chunk
        lo, hi = max(t * chunk - overlap, 0), min((t + 1) * chunk, frames)
        for j in range(n):
            in_window = lo <= j // frame_tokens < hi
            soft[i, j] = in_window
            lin[i, j] = (j // frame_tokens < lo) if causal else not in_window
    return soft, lin


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("frames,frame_tokens,chunk,overlap", GEOMETRIES)
def test_vectorised_masks_are_the_set_definitions(frames, frame_tokens, chunk, overlap, causal):
    got = chunk_masks(frames, frame_tokens, chunk, overlap, causal)
    want = _loop_masks(frames, frame_tokens, chunk, overlap, causal)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not (got[0] & got[1]).any()  # a key is softmax or linear for a query, never both
