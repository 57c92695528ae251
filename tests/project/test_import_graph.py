"""The import graph of the project's modules: no cycle (lazy imports inside functions included), and
imports go one way: ``jobs`` → ``pipeline`` → ``oml`` (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("oml", "pipeline", "jobs", "bench", "tests")


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its text (top level, in functions, in
    ``try`` blocks). ``from a.b import c`` names the module ``a.b.c`` when there is one, else ``a.b``;
    relative imports are resolved."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        found.add(f"{source}.{alias.name}")
                    elif source in modules:
                        found.add(source)
        found.discard(name)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycle_among_the_projects_modules():
    graph = import_graph()
    assert len(graph) > 100 and graph["pipeline.cli.command"]
    assert cycles(graph) == []


def test_imports_go_from_jobs_to_pipeline_to_oml():
    graph = import_graph()
    upward = sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        for d in deps
        if (m.split(".")[0] == "oml" and d.split(".")[0] in ("pipeline", "jobs")) or (m.split(".")[0] == "pipeline" and d.split(".")[0] == "jobs")
    )
    assert upward == []


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"oml/a.py": "from oml import b\n", "oml/b.py": "def f():\n    from oml.a import g\n"}, ["oml.a", "oml.b"]),
        ({"pipeline/x/__init__.py": "from .y import z\n", "pipeline/x/y.py": "from pipeline.x import w\n"}, ["pipeline.x", "pipeline.x.y"]),
        ({"oml/a.py": "import oml.b\n", "oml/b.py": "import json\n"}, None),
    ],
)
def test_the_check_finds_lazy_and_relative_cycles(tmp_path, files, cycle):
    """The check itself: a cycle closed by an import inside a function, or by a relative import in a
    package's __init__, is found; a one-way import is not a cycle."""
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    assert cycles(import_graph(tmp_path)) == ([cycle] if cycle else [])


def test_the_wheel_lists_every_package():
    """pyproject.toml names the packages the wheel carries: a package added to the layout but not
    listed there would import in a checkout and be missing from an installed oml."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("oml", "pipeline") for p in (ROOT / top).rglob("__init__.py")}
    assert found == listed
