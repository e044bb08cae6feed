"""Durations: a unit is mandatory, values are float seconds, formatting round-trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from edge.config.annotated import Duration
from edge.config.duration import UNITS, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("60d", 60 * 86400.0),
        ("2w", 14 * 86400.0),
        ("0s", 0.0),
        (" 3 s ", 3.0),
    ],
)
def test_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [3, 3.0, 0, True, False, None, [1], {"s": 1}])
def test_values_without_unit_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="needs a unit"):
        parse_duration(value)


@pytest.mark.parametrize(
    "text", ["3", "-1s", "3 parsecs", "s", "", "1.s", ".5s", "1e3s", "2 seconds", "1s1", "1sec"]
)
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.05, "50ms"),
        (0.3, "300ms"),
        (1.0, "1s"),
        (30.0, "30s"),
        (90.0, "90s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (86400.0, "1d"),
        (60 * 86400.0, "60d"),
        (14 * 86400.0, "2w"),
        (0.0005, "0.5ms"),
        (0.0, "0ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=300, deadline=None)
@given(count=st.integers(min_value=0, max_value=10**7), unit=st.sampled_from(sorted(UNITS)))
def test_format_round_trip(count: int, unit: str) -> None:
    seconds = parse_duration(f"{count}{unit}")
    text = format_duration(seconds)
    assert math.isclose(parse_duration(text), seconds, rel_tol=1e-9, abs_tol=1e-12)


class _Holder(BaseModel):
    timeout: Duration


def test_duration_in_a_model() -> None:
    assert _Holder.model_validate({"timeout": "250ms"}).timeout == pytest.approx(0.25)
    with pytest.raises(ValidationError, match="needs a unit"):
        _Holder.model_validate({"timeout": 3})
