"""The layer contract: the arrows between packages point one way.

    tools, benchmarks, graph ──▶ deployments ──▶ core
                        └──────▶ ranker ───────▶ core

``core`` is the domain (no Ray, no web framework, no SQLite); ``deployments`` is Serve; ``ranker``
is training. Every import statement counts, those inside functions included. ``make check`` runs
this file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the top-level modules it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "core": frozenset({"deployments", "ranker", "tools", "benchmarks", "graph", "ray", "fastapi",
                       "starlette", "sqlite3"}),
    "ranker": frozenset({"deployments", "tools", "benchmarks", "graph", "ray", "fastapi", "starlette"}),
    "deployments": frozenset({"ranker", "tools", "benchmarks"}),
    "tools": frozenset({"benchmarks"}),
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``, at any depth."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    forbidden = FORBIDDEN[package]
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module in imported_modules(path.read_text()):
            if module.split(".")[0] in forbidden:
                out.append(f"{path.relative_to(root)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    assert not violations(package), f"{package}/ breaks the layer contract:\n" + "\n".join(
        violations(package))


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "ok.py").write_text("import numpy\nfrom core.spec import index\n")
    (tmp_path / "core" / "bad.py").write_text("def f():\n    from deployments.serving import schemas\n")
    assert violations("core", tmp_path) == ["core/bad.py:2 imports deployments.serving"]


def test_every_package_is_covered() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == set(FORBIDDEN), "a new top-level package needs its place in FORBIDDEN"
