"""The site model's field types with units (durations, sizes), for pydantic.

:mod:`edge.config.duration` and :mod:`edge.config.size` parse and spell the values without
pydantic, so the running gateway can use them; the annotated types the model validates with
live here.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, WithJsonSchema
from pydantic.fields import FieldInfo

from edge.config.duration import _RE, format_duration, parse_duration
from edge.config.duration import PATTERN as DURATION_PATTERN
from edge.config.size import PATTERN as SIZE_PATTERN
from edge.config.size import parse_size

__all__ = ["Duration", "Size", "as_written"]

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {"type": "string", "pattern": DURATION_PATTERN, "examples": ["500ms", "2s", "60d"]}
    ),
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


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": "string", "pattern": SIZE_PATTERN, "examples": ["512MiB", "2GiB"]}),
]
