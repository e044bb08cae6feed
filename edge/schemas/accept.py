"""A small exact evaluator for the part of JSON Schema 2020-12 the contract's schemas use.

The gateway checks every health message it builds and every command it receives against the
contract. ``jsonschema`` (with ``referencing`` and ``rpds``) costs about 6 MiB of resident memory,
a fifth of the gateway's budget, yet almost every message is valid. So :func:`is_valid` answers
the common case, "valid", and whatever it does not know (a keyword outside :data:`ASSERTIONS`,
a ``$ref`` outside the document) makes it give up with :class:`Unsupported`. Only then, or
when the message is invalid, does ``edge.schemas`` import ``jsonschema``, so the error that
names the field comes from the same library as before. The answer here must never be "valid"
where ``jsonschema`` says "invalid": ``tests/unit/test_schema_accept.py`` holds the two side by
side on every message kind.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["Unsupported", "is_valid"]

#: Keywords that only describe; they never make an instance invalid (``format`` is an
#: annotation in 2020-12 unless a format checker is asked for, and none is).
ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "$defs", "$comment", "title", "description", "examples", "default", "format"}
)
#: Keywords evaluated here; any other makes :func:`is_valid` raise :class:`Unsupported`.
ASSERTIONS: Final = frozenset(
    {
        "type", "const", "enum", "required", "properties", "additionalProperties", "items",
        "prefixItems", "minItems", "maxItems", "uniqueItems", "minLength", "maxLength",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "allOf",
        "anyOf", "oneOf", "not", "if", "then", "else", "$ref",
    }
)  # fmt: skip


class Unsupported(Exception):
    """The schema uses something this evaluator does not know; ask ``jsonschema``."""


def is_valid(schema: dict[str, Any], instance: Any) -> bool:
    """Whether ``instance`` is valid against ``schema`` (a whole document, for ``$ref``)."""
    return _valid(schema, instance, schema)


def _valid(schema: Any, instance: Any, root: dict[str, Any]) -> bool:
    if schema is True:
        return True
    if schema is False:
        return False
    if not isinstance(schema, dict):
        raise Unsupported(f"a schema is an object or a boolean, not {type(schema).__name__}")
    unknown = schema.keys() - ASSERTIONS - ANNOTATIONS
    if unknown:
        raise Unsupported(f"keywords {sorted(unknown)}")
    return all(_keyword(key, value, schema, instance, root) for key, value in schema.items())


def _keyword(key: str, value: Any, schema: dict[str, Any], instance: Any, root: Any) -> bool:
    """Whether ``instance`` passes one keyword (the ones that do not apply to its type pass)."""
    if key in ANNOTATIONS or key in ("then", "else"):
        return True
    if key == "$ref":
        return _valid(_resolve(value, root), instance, root)
    if key == "type":
        types = value if isinstance(value, list) else [value]
        return any(_is_type(instance, name) for name in types)
    if key == "const":
        return _equal(instance, value)
    if key == "enum":
        return any(_equal(instance, option) for option in value)
    if key == "allOf":
        return all(_valid(sub, instance, root) for sub in value)
    if key == "anyOf":
        return any(_valid(sub, instance, root) for sub in value)
    if key == "oneOf":
        return sum(1 for sub in value if _valid(sub, instance, root)) == 1
    if key == "not":
        return not _valid(value, instance, root)
    if key == "if":
        branch = "then" if _valid(value, instance, root) else "else"
        return _valid(schema.get(branch, True), instance, root)
    if isinstance(instance, dict):
        return _object_keyword(key, value, schema, instance, root)
    if isinstance(instance, list):
        return _array_keyword(key, value, schema, instance, root)
    if isinstance(instance, str):
        if key == "minLength":
            return bool(len(instance) >= value)
        if key == "maxLength":
            return bool(len(instance) <= value)
        if key == "pattern":
            return re.search(value, instance) is not None
    if _is_type(instance, "number"):
        if key == "minimum":
            return bool(instance >= value)
        if key == "maximum":
            return bool(instance <= value)
        if key == "exclusiveMinimum":
            return bool(instance > value)
        if key == "exclusiveMaximum":
            return bool(instance < value)
    return True


def _object_keyword(
    key: str, value: Any, schema: dict[str, Any], instance: dict[str, Any], root: Any
) -> bool:
    if key == "required":
        return all(name in instance for name in value)
    if key == "properties":
        return all(_valid(value[k], v, root) for k, v in instance.items() if k in value)
    if key == "additionalProperties":
        known = schema.get("properties", {})
        return all(_valid(value, v, root) for k, v in instance.items() if k not in known)
    return True


def _array_keyword(
    key: str, value: Any, schema: dict[str, Any], instance: list[Any], root: Any
) -> bool:
    if key == "minItems":
        return bool(len(instance) >= value)
    if key == "maxItems":
        return bool(len(instance) <= value)
    if key == "prefixItems":
        return all(_valid(sub, item, root) for sub, item in zip(value, instance, strict=False))
    if key == "items":
        skip = len(schema.get("prefixItems", ()))
        return all(_valid(value, item, root) for item in instance[skip:])
    if key == "uniqueItems":
        if not value:
            return True
        return not any(_equal(a, b) for i, a in enumerate(instance) for b in instance[i + 1 :])
    return True


def _resolve(reference: Any, root: Any) -> Any:
    if not isinstance(reference, str) or not reference.startswith("#/"):
        raise Unsupported(f"$ref {reference!r} outside the document")
    target = root
    for escaped in reference[2:].split("/"):
        part = escaped.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or part not in target:
            raise Unsupported(f"$ref {reference!r} names nothing")
        target = target[part]
    return target


def _is_type(instance: Any, name: str) -> bool:
    if name == "object":
        return isinstance(instance, dict)
    if name == "array":
        return isinstance(instance, list)
    if name == "string":
        return isinstance(instance, str)
    if name == "boolean":
        return isinstance(instance, bool)
    if name == "null":
        return instance is None
    if isinstance(instance, bool):
        return False  # JSON's true is not the number 1
    if name == "number":
        return isinstance(instance, int | float)
    if name == "integer":
        return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
    raise Unsupported(f"type {name!r}")


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``, containers compare item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return bool(a == b)
