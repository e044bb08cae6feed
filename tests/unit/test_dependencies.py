"""The dependencies pyproject.toml declares are the ones the code uses.

- Every runtime dependency is imported by the gateway's own code (edge/, drivers/, buffer/),
  found by walking the syntax trees, so nothing is pinned, installed on every gateway and
  never used.
- Those packages never import a package that only an extra brings (``sim``, ``demo``,
  ``platform``, ``commission``, ``dev``) at module level: a gateway installed without extras
  must be able to load every module it runs. The one module that exists for an extra
  (:data:`EXTRA_MODULES`) may, and nothing imports it at module level.
- ``dev`` (what make demo, make test and make bench install) holds every other extra's pins.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_PACKAGES = ("edge", "drivers", "buffer")
FIRST_PARTY = {"edge", "drivers", "buffer", "hil", "district", "tests"}
#: Runtime dependencies that are loaded by another library, not by an import statement of
#: ours: (the module of ours that makes it happen, the text there that proves it).
LOADED_INDIRECTLY = {
    # gpiozero imports lgpio when its pin factory is chosen; the annunciator names it.
    "lgpio": ("edge/annunciator.py", '"gpiozero.pins.lgpio"'),
}
#: Modules that exist for one extra and may import its packages at module level; each is
#: only ever imported inside a function (the CLI command that needs it).
EXTRA_MODULES = {"edge.commission.server": "commission"}


def _pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, object] = tomllib.load(file)["project"]
    return project


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _runtime() -> set[str]:
    dependencies = _pyproject()["dependencies"]
    assert isinstance(dependencies, list)
    return {_name(r) for r in dependencies}


def _extras() -> dict[str, list[str]]:
    extras = _pyproject()["optional-dependencies"]
    assert isinstance(extras, dict)
    return extras


def _import_names() -> dict[str, set[str]]:
    """distribution -> the top-level modules it installs (for those installed here)."""
    names: dict[str, set[str]] = {}
    for module, distributions in packages_distributions().items():
        for distribution in distributions:
            names.setdefault(re.sub(r"[-_.]+", "-", distribution).lower(), set()).add(module)
    return names


def _modules() -> Iterator[tuple[str, Path]]:
    for package in GATEWAY_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            yield ".".join(parts), path


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, module_level: bool) -> Iterator[str]:
    """Full names of the modules imported (absolute imports; ours are absolute)."""
    if module_level:
        assert isinstance(tree, ast.Module)
        pending: list[ast.AST] = list(tree.body)
        while pending:
            node = pending.pop()
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue  # never runs
            if isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        pending.extend(
                            child.body if isinstance(child, ast.ExceptHandler) else [child]
                        )
                continue
            yield from _names_of(node)
    else:
        for node in ast.walk(tree):
            yield from _names_of(node)


def _names_of(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        yield node.module
        yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _trees() -> Iterator[tuple[str, Path, ast.Module]]:
    for module, path in _modules():
        yield module, path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_every_runtime_dependency_is_imported_by_the_gateways_code() -> None:
    imported = {
        name.split(".")[0] for _, _, tree in _trees() for name in _imports(tree, module_level=False)
    }
    names = _import_names()
    unused = []
    for distribution in sorted(_runtime()):
        if distribution in LOADED_INDIRECTLY:
            where, evidence = LOADED_INDIRECTLY[distribution]
            assert evidence in (ROOT / where).read_text(encoding="utf-8"), (distribution, where)
            continue
        assert distribution in names, f"{distribution} is not installed here"
        if not names[distribution] & imported:
            unused.append(distribution)
    assert unused == [], (
        f"pinned in pyproject.toml, imported nowhere in edge/ drivers/ buffer/: {unused}"
    )


def test_no_gateway_module_imports_an_extra_only_package_at_module_level() -> None:
    names = _import_names()
    runtime = _runtime()
    extra_only: dict[str, str] = {}  # top-level module -> the extra that brings it
    for extra, requirements in _extras().items():
        for distribution in {_name(r) for r in requirements} - runtime:
            for module in names.get(distribution, ()):
                extra_only.setdefault(module, extra)
    assert {"pymodbus", "aiohttp", "psycopg", "pytest"} <= set(extra_only), "the scan sees extras"
    # A runtime dependency's own requirements are pinned by it (pydantic pins pydantic-core).
    declared = runtime | {_name(r) for d in runtime for r in _requires(d)}
    runtime_modules = {m for d in declared for m in names.get(d, ())}
    wrong: set[str] = set()
    undeclared: set[str] = set()
    for module, path, tree in _trees():
        own = _extra_modules(EXTRA_MODULES[module], names) if module in EXTRA_MODULES else set()
        where = path.relative_to(ROOT)
        for name in _imports(tree, module_level=True):
            top = name.split(".")[0]
            if name in EXTRA_MODULES:
                wrong.add(f"{where} imports {name}, the {EXTRA_MODULES[name]} extra's module")
            elif top in extra_only and top not in own:
                wrong.add(f"{where} imports {top}, from the {extra_only[top]} extra")
            elif not ({top} & (sys.stdlib_module_names | FIRST_PARTY | runtime_modules | own)):
                undeclared.add(f"{where} imports {top}, which no dependency declares")
    assert sorted(wrong) == []
    assert sorted(undeclared) == []


def _requires(distribution: str) -> list[str]:
    """What an installed distribution itself requires (not its extras)."""
    try:
        requirements = requires(distribution) or []
    except PackageNotFoundError:
        return []  # not for this platform (lgpio off ARM)
    return [r for r in requirements if "extra ==" not in r]


def _extra_modules(extra: str, names: dict[str, set[str]]) -> set[str]:
    return {m for r in _extras()[extra] for m in names.get(_name(r), ())}


def test_the_extra_modules_are_loaded_only_when_their_command_runs() -> None:
    for module, extra in EXTRA_MODULES.items():
        path = ROOT / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {name.split(".")[0] for name in _imports(tree, module_level=True)}
        assert imported & _extra_modules(extra, _import_names()), f"{module} needs no {extra}"


def test_the_dev_extra_holds_every_other_extras_pins() -> None:
    extras = _extras()
    dev = {Requirement(r).name.lower(): str(Requirement(r)) for r in extras["dev"]}
    for extra, requirements in extras.items():
        for requirement in requirements:
            pin = Requirement(requirement)
            assert dev.get(pin.name.lower()) == str(pin), f"{extra}: {requirement} not in dev"
