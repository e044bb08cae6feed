"""The full-rate marks of alarm windows on the wire: both telemetry forms carry them, decode
to the same readings, and pass the JSON Schema; a malformed mark is a ContractError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.types import Reading
from edge import contract
from edge.contract import Aliases, ContractError, reading_body
from edge.schemas import validate_message

T = 1_714_550_400.125
ALIASES = Aliases([("d", "a", "mA"), ("d", "b", "°C"), ("e", "a", "mA")])


@dataclass(frozen=True)
class _Row:
    seq: int
    body: dict[str, Any]


def _rows(marks: list[str | None], first: int = 7) -> list[_Row]:
    points = [("d", "a", "mA"), ("d", "b", "°C"), ("e", "a", "mA"), ("x", "y", "")]
    rows = []
    for index, mark in enumerate(marks):
        device, point, unit = points[index % len(points)]
        reading = Reading(device, point, float(index), unit, T + index // 4, 0.0)
        rows.append(_Row(first + index, reading_body(reading, mark)))
    return rows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([None, None, "pre", "post"]), min_size=1, max_size=60))
def test_both_forms_carry_the_window_marks(marks: list[str | None]) -> None:
    rows = _rows(marks)
    verbose = contract.decode_payload(
        contract.telemetry_message("gw", "e", rows, clock_synced=True, historical=False)
    )
    compact = contract.decode_payload(
        contract.telemetry_message(
            "gw", "e", rows, clock_synced=True, historical=False, aliases=ALIASES
        )
    )
    assert validate_message(verbose) == "telemetry"
    assert validate_message(compact) == "telemetry"
    from_verbose = contract.decode_telemetry(verbose)
    from_compact = contract.decode_telemetry(compact, ALIASES)
    assert from_verbose == from_compact
    assert [r.get("window") for r in from_compact] == marks


def test_compact_form_lists_window_ranges_by_seq() -> None:
    rows = _rows([None, "pre", "pre", "pre", None, "post", "post"])
    message = contract.decode_payload(
        contract.telemetry_message(
            "gw", "e", rows, clock_synced=True, historical=False, aliases=ALIASES
        )
    )
    assert message["window_pre"] == [[8, 10]]
    assert message["window_post"] == [[12, 13]]


@pytest.mark.parametrize(
    "ranges",
    [[[6, 8]], [[8, 30]], [[9, 8]], [[8, 9], [9, 10]], "8-9", [[8]], [["8", 9]]],
)
def test_malformed_window_ranges_are_refused(ranges: object) -> None:
    rows = _rows([None, None, None, None])
    message = contract.decode_payload(
        contract.telemetry_message(
            "gw", "e", rows, clock_synced=True, historical=False, aliases=ALIASES
        )
    )
    message["window_pre"] = ranges
    with pytest.raises(ContractError, match="window_pre"):
        contract.decode_telemetry(message, ALIASES)
