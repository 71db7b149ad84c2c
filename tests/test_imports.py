"""Every module of the project imports, so a broken import never ships; and the layering holds."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("feddetox", "server", "edge_client", "export", "feddetox_cli")
#: what each part may import of the others (DESIGN.md: dependencies point one way)
FORBIDDEN = {
    "feddetox": {"server", "edge_client", "export", "feddetox_cli"},
    "server": {"edge_client", "export", "feddetox_cli"},
    "edge_client": {"server", "export", "feddetox_cli"},
    "export": {"server", "edge_client", "feddetox_cli"},
}


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        if not (ROOT / package / "__init__.py").exists():
            continue
        names.append(package)
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            if info.name.endswith("__main__") or ".migrations.versions" in info.name:
                continue
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_module_imports(name: str) -> None:
    importlib.import_module(name)


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_dependencies_point_one_way(part: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_levels(path) & FORBIDDEN[part])
        for path in (ROOT / part).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders
