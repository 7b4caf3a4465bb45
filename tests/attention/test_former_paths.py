"""The op's former module paths (before it moved into ``attention/hybrid/``) keep importing its public
names: each is the op folder's own object, so the tests import every name one way, from the folder."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import rehyat

ROOT = Path(rehyat.__file__).parent
FORMER = sorted(
    path for path in (ROOT / "attention").rglob("*.py") if path.read_text().startswith('"""Moved to :mod:')
)


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)


def test_the_former_paths_are_found():
    assert {_module(path) for path in FORMER} >= {
        "rehyat.attention.ops",
        "rehyat.attention.chunked",
        "rehyat.attention.naive",
        "rehyat.attention.recurrent",
        "rehyat.attention.custom_ops",
        "rehyat.attention._common",
        "rehyat.attention.kernels.hybrid",
    }


@pytest.mark.parametrize("path", FORMER, ids=_module)
def test_a_former_path_re_exports_the_folders_objects(path):
    target = re.match(r'"""Moved to :mod:`([\w.]+)`', path.read_text()).group(1)
    former, current = importlib.import_module(_module(path)), importlib.import_module(target)
    assert target.startswith("rehyat.attention.hybrid.") and former.__all__
    for name in former.__all__:
        assert getattr(former, name) is getattr(current, name), name


#: Names that moved from rehyat.models.wan to rehyat.models.adapter; the former path keeps them.
MOVED_FROM_WAN = (
    "rehyat_runtime",
    "ReHyAtRuntime",
    "converted_blocks",
    "feature_maps",
    "configured_attention",
    "PHI_Q",
    "PHI_K",
)


@pytest.mark.parametrize("name", MOVED_FROM_WAN)
def test_the_models_former_wan_path_re_exports_the_adapters_objects(name):
    from rehyat.models import adapter, wan

    namespace: dict = {}
    exec(f"from rehyat.models.wan import {name}", namespace)
    assert namespace[name] is getattr(adapter, name) is getattr(wan, name)


def test_the_models_former_wan_path_still_rejects_unknown_names():
    from rehyat.models import wan

    with pytest.raises(AttributeError, match="no_such_name"):
        wan.no_such_name  # noqa: B018
