"""Numbers read from ``repr``'s text give what ``decimal`` gave.

A scale's decimal places (drivers/modbus/model.py) and canonical JSON's numbers
(edge/canonical.py) were computed through ``Decimal(repr(x))``; they now read ``repr``'s text
so that the running gateway does not load ``decimal`` for them. The references below are the
Decimal-based code as it was, and every double must give the same answer: hypothesis's floats
(which reach subnormals, huge and tiny values), random bit patterns (every exponent equally
likely), and the edges named here.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.modbus.model import Point
from edge.canonical import _shortest_digits, canonical_json

#: Doubles where the text changes shape: subnormals, the normal range's ends, the points where
#: repr and ECMAScript switch to an exponent, powers of ten, integers beyond 2^53.
EDGES = (
    5e-324, 1e-323, 2.225073858507201e-308, 2.2250738585072014e-308, 1e-310, 1e-7, 1e-6,
    9.999999999999999e-7, 0.0001, 0.001, 0.1, 0.2, 0.3, 1 / 3, 0.5, 1.0, 10.0, 100.0, 250.0,
    1e15, 1e16, 1.5e16, 9007199254740993.0, 1e20, 1e21, 9.999999999999999e20, 1e22, 1e100,
    1.7976931348623157e308, 123.456, 333333333.33333329, 0.000015, 1.5e-5, 65535.0, 0.01,
)  # fmt: skip


def reference_decimals(scale: float) -> int:
    """The scale's decimal places as drivers/modbus/model.py computed them with ``decimal``."""
    exponent = Decimal(repr(scale)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def reference_digits(value: float) -> tuple[str, int]:
    """The digits and ``n`` (``value = 0.DIGITS x 10^n``) of a double > 0 as edge/canonical.py
    took them from ``decimal``; the layout around them is the same code as before."""
    _, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"{value!r} is not finite")
    return "".join(map(str, digit_tuple)).rstrip("0"), len(digit_tuple) + exponent


def _from_bits(bits: int) -> float:
    value: float = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return value


#: Any finite double, each of its 2^64 bit patterns equally likely (so every exponent is).
any_double = st.integers(0, 2**64 - 1).map(_from_bits).filter(math.isfinite)
finite = st.floats(allow_nan=False, allow_infinity=False) | any_double


@pytest.mark.parametrize("value", EDGES)
def test_the_edges_give_what_decimal_gave(value: float) -> None:
    assert _shortest_digits(value) == reference_digits(value)
    for signed in (value, -value):
        assert float(canonical_json(signed)) == signed
        assert Point("p", 0, "u16", scale=signed).decimals == reference_decimals(signed)


@pytest.mark.slow
@settings(max_examples=4_000, deadline=None)
@given(finite)
@example(-0.0)
@example(0.0)
def test_every_double_is_written_as_decimal_wrote_it(value: float) -> None:
    if value != 0:
        assert _shortest_digits(abs(value)) == reference_digits(abs(value))
    assert float(canonical_json(value)) == value


@pytest.mark.slow
@settings(max_examples=4_000, deadline=None)
@given(finite.filter(lambda scale: scale != 0))
@example(5e-324)
@example(1.7976931348623157e308)
def test_every_scale_has_the_decimal_places_decimal_gave(scale: float) -> None:
    assert Point("p", 0, "u16", scale=scale).decimals == reference_decimals(scale)


def test_the_places_are_those_of_the_scale_as_written() -> None:
    # The figures the decoder rounds to: 3 x 0.1 reads 0.3, a scale of 1e-7 keeps 7 places.
    places = {0.1: 1, 0.01: 2, 250.0: 0, 1.0: 0, 1e-7: 7, 1.5e-5: 6, 1e21: 0, 0.125: 3}
    assert {scale: Point("p", 0, "u16", scale=scale).decimals for scale in places} == places
