"""The gateway's packages hold nothing that ``python -OO`` would silently change.

The installed service runs ``python -OO`` (deploy/systemd/city-safety-edge.service), which
drops every ``assert`` statement and every docstring. So the gateway's own packages (edge/,
drivers/, buffer/) have no ``assert`` at all: a check that matters raises a named error, and
a type narrowing is written so that mypy follows it without one. The modules ``edge run``
loads must not read ``__doc__`` either (tests/integration/test_run_imports.py checks those of
a running gateway, and that it does not import ``decimal`` itself), and a gateway under
``-OO`` is run there for real.

The scans read the source with ``ast``: an ``assert`` in a comment or a string is not one.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.fixtures.service import interpreter_flags
from tests.unit.test_import_cycles import modules_of

ROOT = Path(__file__).resolve().parents[2]
#: The packages an installed gateway runs from (hil/ and district/ are tools, not the service).
PACKAGES = ("edge", "drivers", "buffer")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def asserts_in(path: Path) -> list[int]:
    """The lines of the ``assert`` statements of a module."""
    return [node.lineno for node in ast.walk(_tree(path)) if isinstance(node, ast.Assert)]


def docstring_reads_in(path: Path) -> list[int]:
    """The lines that read a docstring (``__doc__``, ``inspect.getdoc``): None under -OO."""
    found = []
    for node in ast.walk(_tree(path)):
        if (
            (isinstance(node, ast.Name) and node.id == "__doc__")
            or (isinstance(node, ast.Attribute) and node.attr in ("__doc__", "getdoc"))
            or (isinstance(node, ast.alias) and node.name in ("getdoc", "inspect.getdoc"))
        ):
            found.append(getattr(node, "lineno", 0))
    return found


def imports_of_module(path: Path, module: str) -> list[int]:
    """The lines where a module imports ``module`` (or one of its submodules) itself."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(name == module or name.startswith(f"{module}.") for name in names):
            found.append(node.lineno)
    return found


def test_no_assert_statement_in_the_gateways_packages() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in modules_of(ROOT, PACKAGES).values()
        for line in asserts_in(path)
    ]
    assert found == [], "python -OO drops these; raise a named error instead"


def test_the_scans_find_what_they_look_for(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        '"""Doc."""\n'
        "import argparse\n"
        "from decimal import Decimal\n"
        "import decimal.context as c\n"
        "from inspect import getdoc\n"
        "# assert in a comment\n"
        "x = 'assert in a string'\n"
        "assert x, 'a real one'\n"
        "def f() -> None:\n"
        "    assert isinstance(x, str)\n"
        "    argparse.ArgumentParser(description=__doc__)\n"
        "    print(f.__doc__)\n",
        encoding="utf-8",
    )
    assert asserts_in(module) == [8, 10]
    assert imports_of_module(module, "decimal") == [3, 4]
    assert imports_of_module(module, "dec") == []
    assert sorted(docstring_reads_in(module)) == [5, 11, 12]


def test_the_installed_service_runs_python_with_docstrings_and_asserts_stripped() -> None:
    # The benchmark and the run-path test start their gateway with these same flags.
    assert interpreter_flags() == ["-OO"]
