"""No import cycle among the project's packages: imports go one way (docs/architecture.md).

The imports are read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` anywhere in a module counts, at the top, inside a function (an import put
there to dodge a cycle is still the cycle) and under ``if TYPE_CHECKING:`` (a type-only import
back up the layers is a dependency the design does not have; a ``Protocol`` in the lower module
says what it needs instead). A module that imports by name (``importlib.import_module``, as
``edge run`` loads each CLI tool only when asked) depends on every module whose dotted name it
spells out in a string.

What does not count: that importing ``a.b.c`` first runs ``a/__init__.py`` and ``a/b/__init__.py``.
A package that re-exports its modules is imported before them and never half-way through them,
so those implied edges are left out; ``from a.b import name`` of a name that ``a/b/__init__.py``
defines or re-exports is an edge to ``a.b`` like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "drivers", "buffer", "hil")

Graph = dict[str, set[str]]


def modules_of(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of ``packages`` under ``root`` by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The modules among ``known`` that the module ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()

    def add(target: str) -> None:
        # ``import a.b.c`` needs a.b.c; the nearest known module that is, or holds, it.
        parts = target.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in known:
                found.add(candidate)
                return
            parts.pop()

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    by_name = any(
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id == "import_module")
        )
        for node in ast.walk(tree)
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if by_name and node.value in known:
                found.add(node.value)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from a import b``: the module a.b if there is one, else a name of a.
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                else:
                    add(source)
    found.discard(name)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    known = modules_of(root, packages)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def tangles(graph: Graph) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module: within each, every
    module imports every other one, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[list[str]] = []

    def connect(start: str) -> None:
        # Tarjan's algorithm, iterative: the graph is small, but recursion limits are not ours.
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    advanced = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.append(member)
                    if member == node:
                        break
                if len(part) > 1:
                    parts.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(parts)


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle of each tangle of ``graph``, as the modules in import order, the first
    repeated at the end (``a -> b -> a``)."""
    return [_one_cycle(graph, set(part), part[0]) for part in tangles(graph)]


def _one_cycle(graph: Graph, part: set[str], start: str) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``part``."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & part):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected part has one


def test_no_module_of_the_gateway_imports_itself_back() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 100, f"modules not found under {ROOT}"
    # The walk sees what it must: a top-level import, one in a function, a TYPE_CHECKING one.
    assert "edge.rules" in graph["edge.gateway"]
    assert "drivers.modbus.model" in graph["edge.config.storage"]
    assert "edge.uplink" in graph["edge.control"]
    assert "edge.doctor" in graph["edge.cli"]  # loaded by name
    found = [
        f"{' -> '.join(cycle)} (modules in the tangle: {', '.join(part)})"
        for cycle, part in zip(cycles(graph), tangles(graph), strict=True)
    ]
    assert found == [], "import cycles: " + "; ".join(found)


def test_the_walk_finds_cycles_through_functions_and_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "site_pkg"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("from site_pkg.alarm import Alarm\n")
    (package / "alarm.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from . import inner\n"
        "if TYPE_CHECKING:\n"
        "    from site_pkg.inner.relay import Relay\n"
        "class Alarm: ...\n"
    )
    (package / "inner" / "__init__.py").write_text("")
    (package / "inner" / "relay.py").write_text(
        "def sound() -> None:\n    from ..alarm import Alarm  # noqa\n"
    )
    (package / "inner" / "quiet.py").write_text("import site_pkg.inner.relay\n")
    (package / "tools.py").write_text(
        "import importlib\nTOOLS = {'q': 'site_pkg.inner.quiet'}\n"
        "def load(n): return importlib.import_module(TOOLS[n])\n"
    )
    graph = import_graph(tmp_path, ["site_pkg"])
    assert graph["site_pkg"] == {"site_pkg.alarm"}
    assert graph["site_pkg.alarm"] == {"site_pkg.inner", "site_pkg.inner.relay"}
    assert graph["site_pkg.inner.relay"] == {"site_pkg.alarm"}
    assert graph["site_pkg.tools"] == {"site_pkg.inner.quiet"}
    assert cycles(graph) == [["site_pkg.alarm", "site_pkg.inner.relay", "site_pkg.alarm"]]
    # Without the function's import the cycle is gone: the package's own __init__ is no edge.
    (package / "inner" / "relay.py").write_text("def sound() -> None: ...\n")
    assert cycles(import_graph(tmp_path, ["site_pkg"])) == []
