"""The floors of the house: every import goes down, as docs/architecture.md's layer table says.

The table is read from the document itself, so the drawing and the code cannot drift apart:
a row per floor, the modules on it (dotted prefixes; the longest prefix that matches a module
places it) and the floors it may import. Imports are read from the source as the cycle test
reads them (at the top, inside functions, under ``TYPE_CHECKING``, by name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.unit.test_import_cycles import import_graph

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "drivers", "buffer", "hil", "district")
_HEADER = "| floor | modules | may import |"


@dataclass(frozen=True)
class Floor:
    name: str
    prefixes: tuple[str, ...]
    may_import: frozenset[str]


def floors_of(document: str) -> list[Floor]:
    """The layer table of docs/architecture.md, ground floor first."""
    lines = document.splitlines()
    start = lines.index(_HEADER) + 2  # past the header and its |---| line
    floors = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, modules, allowed = (cell.strip() for cell in line.strip("|").split("|"))
        prefixes = tuple(re.findall(r"`([a-z_.]+)`", modules))
        targets = frozenset(
            part.strip() for part in allowed.split(",") if part.strip() not in ("", "nothing")
        )
        floors.append(Floor(name, prefixes, targets))
    return floors


def floor_of(module: str, floors: list[Floor]) -> Floor | None:
    best: tuple[int, Floor] | None = None
    for floor in floors:
        for prefix in floor.prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), floor)
    return best[1] if best else None


def _floors() -> list[Floor]:
    return floors_of((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))


def test_the_table_is_a_house_each_floor_imports_only_floors_below_it() -> None:
    floors = _floors()
    assert len(floors) >= 10, "the layer table of docs/architecture.md was not found whole"
    seen: set[str] = set()
    for floor in floors:
        assert floor.prefixes, f"floor {floor.name!r} names no module"
        unknown_or_above = floor.may_import - seen
        assert not unknown_or_above, (
            f"floor {floor.name!r} may import {sorted(unknown_or_above)}, "
            "which are not floors below it"
        )
        seen.add(floor.name)


def upward_imports(graph: dict[str, set[str]], floors: list[Floor]) -> list[str]:
    """Each import of ``graph`` that ``floors`` does not allow, as ``module (floor) -> target
    (floor)``; a module no floor names is reported as ``module (no floor)``."""
    found = []
    for module, targets in sorted(graph.items()):
        here = floor_of(module, floors)
        if here is None:
            found.append(f"{module} (no floor)")
            continue
        for target in sorted(targets):
            there = floor_of(target, floors)
            if there is None:
                continue  # reported as a module of its own
            if there is not here and there.name not in here.may_import:
                found.append(f"{module} ({here.name}) -> {target} ({there.name})")
    return found


def test_every_import_goes_down_the_floors() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert "edge.gateway" in graph, f"modules not found in {ROOT}"
    assert "district.receiver" in graph, f"modules not found in {ROOT}"
    found = upward_imports(graph, _floors())
    assert found == [], "imports the layer table does not allow:\n" + "\n".join(found)


def test_an_import_up_a_floor_and_a_module_on_no_floor_are_found(tmp_path: Path) -> None:
    """The check itself can fail: a foundation that imports the gateway is caught, and so is
    a module the table does not place."""
    for name, body in (
        ("edge/__init__.py", ""),
        ("edge/clock.py", "from edge.gateway import Gateway\n"),
        ("edge/gateway.py", "from edge import clock\n"),
        ("edge/newcomer.py", ""),
    ):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(body)
    floors = [
        Floor("foundations", ("edge.clock",), frozenset()),
        Floor("gateway", ("edge.gateway",), frozenset({"foundations"})),
    ]
    assert upward_imports(import_graph(tmp_path, ("edge",)), floors) == [
        "edge (no floor)",
        "edge.clock (foundations) -> edge.gateway (gateway)",
        "edge.newcomer (no floor)",
    ]
