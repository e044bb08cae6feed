"""Canonical JSON: one byte string for one JSON value, whoever wrote it.

A signature is made over bytes, but a command travels as JSON that any platform may write with
its own spacing, key order and number spelling. Signer and gateway both sign and check the
canonical form of the parsed value instead, the JSON Canonicalization Scheme (RFC 8785):

- objects with their members sorted by key (by UTF-16 code units), no whitespace anywhere;
- strings as JSON writes them with only the escapes it needs (``\\"``, ``\\\\``, ``\\n`` and
  the other short ones, ``\\u00xx`` for the other control characters), UTF-8 otherwise;
- numbers as ECMAScript prints them: ``250`` for 250.0, ``1e+30``, ``0.002``, ``-0`` as ``0``.

So a platform written in JavaScript gets the same bytes from ``JSON.stringify`` of sorted
objects, and one in another language from any RFC 8785 library. Values that have no single
canonical form are refused: NaN and infinities, integers beyond 2^53 (a double cannot hold
them exactly), strings that are not valid Unicode.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

__all__ = ["CanonicalError", "canonical_json"]

#: Largest integer every JSON reader holds exactly (IEEE 754 double).
_EXACT_INT: Final = 2**53


class CanonicalError(ValueError):
    """The value has no canonical JSON form (NaN, an infinity, a huge integer, ...)."""


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical form of ``value`` (dicts, lists, str, numbers, bools, None)."""
    parts: list[str] = []
    _write(value, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError(f"a string is not valid Unicode: {exc.reason}") from None


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int):
        if abs(value) > _EXACT_INT:
            raise CanonicalError(f"integer {value} is beyond 2^53 and cannot be signed exactly")
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_order)):
            if not isinstance(key, str):
                raise CanonicalError(f"object key {key!r} is not a string")
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise CanonicalError(f"{type(value).__name__} is not a JSON value")


def _utf16_order(key: Any) -> bytes:
    return key.encode("utf-16-be", "surrogatepass") if isinstance(key, str) else b""


def _number(value: float) -> str:
    """ECMAScript's Number::toString, from the shortest digits that read back as ``value``."""
    if not math.isfinite(value):
        raise CanonicalError(f"{value!r} is not a finite number")
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    digits, n = _shortest_digits(abs(value))
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = f"0.{'0' * -n}{digits}"
    else:
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


def _shortest_digits(value: float) -> tuple[str, int]:
    """The shortest digits that read back as ``value`` (> 0), without trailing zeros, and the
    ``n`` of ``value = 0.DIGITS x 10^n``.

    ``repr`` gives those digits, as ECMAScript requires; its text is read as it is (``123.0``,
    ``0.001``, ``1e-07``, ``1.5e+16``) rather than through ``decimal``, which the running
    gateway does not load for this alone.
    """
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    coefficient = (whole + fraction).lstrip("0")
    n = len(coefficient) + int(exponent or "0") - len(fraction)
    return coefficient.rstrip("0"), n
