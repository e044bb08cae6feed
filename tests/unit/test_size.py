"""Sizes: a unit is mandatory, values are int bytes, defaults are spelled back exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from edge.config.annotated import Size
from edge.config.size import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512B", 512),
        ("64KiB", 65536),
        ("256MiB", 256 * 2**20),
        ("2GiB", 2 * 2**30),
        ("1.5GiB", 3 * 2**29),
        ("1TiB", 2**40),
        ("200MB", 200_000_000),
        ("16kB", 16_000),
        (" 4 GB ", 4_000_000_000),
    ],
)
def test_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("value", [2048, 2.0, True, None, ["1GiB"]])
def test_values_without_unit_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="needs a unit"):
        parse_size(value)


@pytest.mark.parametrize("text", ["2", "-1GiB", "2 gigs", "GiB", "", "2gib", "2 G", "1e9B"])
def test_malformed_sizes_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a size: .*'2GiB'"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**50))
def test_format_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_in_a_model() -> None:
    class Model(BaseModel):
        limit: Size

    assert Model.model_validate({"limit": "1MiB"}).limit == 2**20
    with pytest.raises(ValidationError, match="needs a unit"):
        Model.model_validate({"limit": 1048576})
