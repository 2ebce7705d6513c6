"""The layering the code base promises (docs/architecture.md): the data plane stands alone, and the tests share
fixtures through conftest.py and helper modules, never by importing one another."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports are named by their dots)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_nothing_in_the_data_plane_imports_the_control_plane():
    offenders = {path.name: sorted(m for m in imported_modules(path) if m == "sweep" or m.startswith("sweep."))
                 for path in sorted((REPO / "actors").glob("*.py"))}
    assert {name: modules for name, modules in offenders.items() if modules} == {}


def test_no_test_module_imports_another_test_module():
    test_modules = {path.stem for path in (REPO / "tests").glob("test_*.py")}
    offenders = {}
    for path in sorted((REPO / "tests").glob("*.py")):
        imported = {module.split(".")[-1] for module in imported_modules(path)}
        if imported & test_modules:
            offenders[path.name] = sorted(imported & test_modules)
    assert offenders == {}
