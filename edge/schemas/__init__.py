"""JSON Schemas of contract v1, shipped with the package.

Every kind is at version 1 except telemetry, which also has version 2, the compact columnar
form (``edge.telemetry/2``); ``telemetry.json`` describes both.

The gateway, the reference receiver (``hil.receiver``) and the tests read the same files, so a
message that passes here passes on the platform side. ``docs/asyncapi.yaml`` refers to them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from edge.schemas.accept import Unsupported, is_valid

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

__all__ = ["NAMES", "VERSIONS", "ContractError", "load", "validate", "validate_message"]

#: File stem of every schema, i.e. the kind in ``edge.<kind>/<version>``.
NAMES: Final = ("telemetry", "event", "status", "health", "metadata", "command", "ack")
#: The versions of each kind a message may carry.
VERSIONS: Final[dict[str, tuple[str, ...]]] = dict.fromkeys(NAMES, ("1",)) | {
    "telemetry": ("1", "2")
}


class ContractError(ValueError):
    """A message that does not follow the contract; the text says which field and why."""


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (one of :data:`NAMES`) as a dict."""
    if name not in NAMES:
        raise ValueError(f"no schema {name!r}; expected one of {list(NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    # Imported here: a running gateway whose messages are all valid never loads jsonschema
    # (about 6 MiB resident with referencing and rpds); see edge/schemas/accept.py.
    from jsonschema import Draft202012Validator  # noqa: PLC0415

    schema = load(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(name: str, message: Any) -> None:
    """Raise :class:`ContractError` naming the first offending field if ``message`` is not a
    valid ``name`` message."""
    try:
        if is_valid(load(name), message):
            return
    except Unsupported:
        pass
    # best_match picks the most specific error, which names the field a person has to fix.
    error = _best(_validator(name), message)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the message)"
        raise ContractError(f"{name}: {where}: {error.message}")


def validate_message(message: Any) -> str:
    """Validate a message by its own ``schema`` field (``edge.<kind>/<version>``); return the
    kind."""
    if not isinstance(message, dict):
        raise ContractError(f"a message is a JSON object, not {type(message).__name__}")
    tag = message.get("schema")
    if not isinstance(tag, str) or not tag.startswith("edge.") or "/" not in tag:
        raise ContractError(f"unknown schema {tag!r}; expected edge.<kind>/<version>")
    kind, _, version = tag[len("edge.") :].partition("/")
    if kind not in NAMES:
        raise ContractError(f"unknown schema {tag!r}; kinds are {list(NAMES)}")
    if version not in VERSIONS[kind]:
        raise ContractError(f"unknown schema {tag!r}; {kind} versions are {list(VERSIONS[kind])}")
    validate(kind, message)
    return kind


def _best(validator: Draft202012Validator, message: Any) -> ValidationError | None:
    from jsonschema.exceptions import best_match  # noqa: PLC0415

    error: ValidationError | None = best_match(validator.iter_errors(message))
    return error
