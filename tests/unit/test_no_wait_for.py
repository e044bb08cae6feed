"""The gateway never waits with ``asyncio.wait_for`` (docs/architecture.md, "Timeouts").

On Python 3.11, the gateway's Python on Raspberry Pi OS, ``asyncio.wait_for`` returns a result
that arrives together with a cancellation and drops the cancellation. In a loop inside a task
group that makes a task run on after its group was told to stop, and the stop wait forever (a
PUBACK arriving as a session ended did exactly that). ``async with asyncio.timeout(...)`` has
no such gap, so it is the only way the runtime code bounds a wait.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ("edge", "drivers", "buffer")


def wait_for_calls(source: str) -> list[int]:
    """Lines of ``source`` that call or import asyncio's wait_for."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "wait_for"
            and isinstance(node.value, ast.Name)
            and node.value.id == "asyncio"
        ) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "asyncio"
            and any(alias.name == "wait_for" for alias in node.names)
        ):
            found.append(node.lineno)
    return found


def test_the_runtime_code_bounds_its_waits_with_asyncio_timeout() -> None:
    files = [path for package in RUNTIME for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50, f"sources not found under {ROOT}"
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in files
        for line in wait_for_calls(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "use `async with asyncio.timeout(...)` instead: " + ", ".join(found)


def test_the_scan_finds_both_spellings() -> None:
    source = (
        "import asyncio\n"
        "from asyncio import wait_for\n"
        "async def f(e):\n"
        "    await asyncio.wait_for(e.wait(), 1)\n"
        "    await e.wait_for(1)\n"  # another object's method of the same name is fine
    )
    assert wait_for_calls(source) == [2, 4]
