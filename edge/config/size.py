"""Sizes with units: ``"512MiB"``, ``"2GiB"``, ``"200MB"``, ``"64KiB"``.

A bare number is refused, as for durations: "max_size: 2" could mean anything from bytes to
gigabytes. Binary (KiB, MiB, GiB, TiB) and decimal (kB, MB, GB, TB) units are both accepted
because card vendors print the one and ``df -h`` the other. Values are held as int bytes.
"""

from __future__ import annotations

import re
from typing import Any

UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|kB|MB|GB|TB)\s*$"
_RE = re.compile(PATTERN)


def parse_size(value: Any) -> int:
    """Return the size in bytes, or raise ``ValueError`` naming what was wrong."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"a size needs a unit, e.g. '512MiB', '2GiB' (got {value!r}); units: {', '.join(UNITS)}"
        )
    match = _RE.match(value)
    if match is None:
        raise ValueError(
            f"not a size: {value!r}; write a number and a unit, e.g. '512MiB', '2GiB' "
            f"(units: {', '.join(UNITS)})"
        )
    return round(float(match.group(1)) * UNITS[match.group(2)])


def format_size(size: int) -> str:
    """The shortest exact binary spelling of ``size`` (used when writing defaults into docs)."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size >= UNITS[unit] and size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]}{unit}"
    return f"{size}B"
