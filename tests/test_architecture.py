"""The layering the code base promises (docs/architecture.md): the folders of `sweep/` are layers, each importing only
the layers below it; the import graph has no circles; the data plane stands alone; every module is in the
architecture table; and the tests share fixtures through conftest.py and helper modules, never by importing one
another."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. Each layer is a list of groups of module prefixes: a module may import its own group and the layers
# below; two groups on one layer do not import each other (the report and the explorer are siblings).
LAYERS = [
    [("sweep.errors", "sweep.spec", "sweep.timeline")],  # what a sweep is, and where it lies on the training stream
    [("sweep.landed",)],  # the landed output: the one writer, the one reader, ledgers, verify
    [("sweep.data",)],  # the training data: sources, probe sets
    [("sweep.exposures",)],  # exposure counts: kernel, scans, history, analyses
    [("sweep.run",)],  # one sweep on Ray: plan, cost, preflight, scheduler, driver
    [("sweep.analysis",)],  # memorization analyses, examples, query
    [("sweep.report",), ("sweep.explorer",)],  # the pages people look at
    [("sweep.demo",)],  # the embedded default world
    [("sweep.cli", "sweep.__main__")],  # the command
]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports too: a circle dodged inside a function is
    still a circle). Absolute names; relative imports are named by their dots."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from sweep.demo import stream`
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sweep_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO / "sweep").rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    modules = sweep_modules()
    return {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}


def layer_of(module: str) -> tuple[int, int]:
    """(layer, group within it) of a module."""
    for rank, groups in enumerate(LAYERS):
        for group_number, prefixes in enumerate(groups):
            if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
                return rank, group_number
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py LAYERS")


def test_every_sweep_module_has_a_layer():
    for name in sweep_modules():
        if name != "sweep":
            layer_of(name)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    offenders = []
    for importer, imported in import_graph().items():
        if importer == "sweep":
            continue
        rank, group = layer_of(importer)
        for target in sorted(imported):
            if target == "sweep":
                continue
            target_rank, target_group = layer_of(target)
            if target_rank > rank or (target_rank == rank and target_group != group):
                offenders.append(f"{importer} -> {target}")
    assert offenders == []


def test_the_import_graph_has_no_circles():
    graph = import_graph()
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [node, target]) if target in path
                               else f"{node} -> {target}")
            elif target not in state:
                visit(target, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert circles == []


def test_every_module_is_in_the_architecture_table():
    table = (REPO / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `((?:sweep|actors)/[a-z_/]+\.py)` \|", table, flags=re.M))
    files = {str(path.relative_to(REPO)) for folder in ("sweep", "actors") for path in (REPO / folder).rglob("*.py")
             if path.name != "__init__.py"}
    assert sorted(files - listed) == [] and sorted(listed - files) == []


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
