"""A name imported only for the type checker is never used when the code runs.

The running gateway keeps the site model (pydantic) and whatever only some sites need out of
its imports by importing them under ``if TYPE_CHECKING:``; mypy is content with such a name
anywhere, but used outside an annotation it is a ``NameError`` on the path that reaches it (a
default built from a model class, an ``isinstance`` with it). This scan finds every such use
in the gateway's packages; a function that imports the name itself (a lazy import) may use it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "drivers", "buffer")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(nodes: list[ast.stmt] | ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(nodes) if isinstance(nodes, ast.AST) else nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return found


def _annotations(tree: ast.AST) -> set[int]:
    """The ids of every node inside an annotation or a TYPE_CHECKING block."""
    roots: list[ast.AST | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            roots += [a.annotation for a in every] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            roots += node.body
    return {id(inner) for root in roots if root is not None for inner in ast.walk(root)}


def runtime_uses_of_type_only_names(source: str, filename: str) -> list[str]:
    """``file:line name`` for each use, outside annotations, of a name imported only under
    ``TYPE_CHECKING`` and not imported again by the function that uses it."""
    tree = ast.parse(source, filename)
    type_only: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            type_only |= _imported(node.body)
    if not type_only:
        return []
    skipped = _annotations(tree)
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            local = _imported(function) & type_only
            skipped |= {
                id(name)
                for name in ast.walk(function)
                if isinstance(name, ast.Name) and name.id in local
            }
    return [
        f"{filename}:{node.lineno} {node.id}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Name)
        and isinstance(node.ctx, ast.Load)
        and node.id in type_only
        and id(node) not in skipped
    ]


def test_no_name_imported_for_the_type_checker_is_used_at_run_time() -> None:
    found = [
        use
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for use in runtime_uses_of_type_only_names(
            path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))
        )
    ]
    assert found == []


def test_the_scan_finds_a_default_built_from_a_type_only_class() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from edge.config.model import CommandPolicy\n"
        "def make(policy: CommandPolicy | None = None) -> CommandPolicy:\n"
        "    return policy or CommandPolicy()\n"
        "def lazy() -> None:\n"
        "    from edge.config.model import CommandPolicy\n"
        "    CommandPolicy()\n"
    )
    assert runtime_uses_of_type_only_names(source, "m.py") == ["m.py:5 CommandPolicy"]
