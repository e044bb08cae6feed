"""Durations with units: ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``, ``"60d"``, ``"2w"``.

A bare number is refused: "timeout: 3" could mean seconds or milliseconds, and guessing wrong
on a fire alarm's poll interval is not an option. Values are held as float seconds.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, WithJsonSchema
from pydantic.fields import FieldInfo

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


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": PATTERN, "examples": ["500ms", "2s", "60d"]}),
]


def as_written(model: BaseModel) -> dict[str, Any]:
    """``model`` as a site file would hold it, keys as written (``for``, not ``for_``):
    durations back in words ("10s"), because the model refuses bare numbers for them (a bare
    3 could be seconds or milliseconds). Validating the result gives ``model`` again."""
    data: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = info.alias or name
        if isinstance(value, BaseModel):
            data[key] = as_written(value)
        elif isinstance(value, float) and _is_duration(info):
            data[key] = _spelled(value)
        else:
            data[key] = value
    return data


def _spelled(seconds: float) -> str:
    words = format_duration(seconds)
    if parse_duration(words) == seconds:
        return words
    exact = f"{seconds!r}s"  # "1234.5678s": exact wherever the pattern takes it
    return exact if _RE.match(exact) else words


def _is_duration(info: FieldInfo) -> bool:
    def found(items: Any) -> bool:
        for item in items:
            if isinstance(item, BeforeValidator) and item.func is parse_duration:
                return True
            if found(typing.get_args(item)) or found(getattr(item, "__metadata__", ())):
                return True
        return False

    return found(info.metadata) or found([info.annotation])
