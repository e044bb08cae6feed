"""Durations with units: ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``, ``"60d"``, ``"2w"``.

A bare number is refused: "timeout: 3" could mean seconds or milliseconds, and guessing wrong
on a fire alarm's poll interval is not an option. Values are held as float seconds.

No pydantic here: the running gateway parses durations too. The site model's field type is
:data:`edge.config.annotated.Duration`.
"""

from __future__ import annotations

import re
from typing import Any

UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$"
_RE = re.compile(PATTERN)


def parse_duration(value: Any) -> float:
    """Return the duration in seconds, or raise ``ValueError`` naming what was wrong."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"a duration needs a unit, e.g. '500ms', '2s', '60d' (got {value!r}); "
            f"units: {', '.join(UNITS)}"
        )
    match = _RE.match(value)
    if match is None:
        raise ValueError(
            f"not a duration: {value!r}; write a number and a unit, e.g. '500ms', '2s', '60d' "
            f"(units: {', '.join(UNITS)})"
        )
    return float(match.group(1)) * UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` (used when writing defaults into docs)."""
    for unit, size in sorted(UNITS.items(), key=lambda item: -item[1]):
        count = seconds / size
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds * 1000:g}ms"
