"""Occupancy evidence combinations: radar, PIR and load, each present, absent or unknown."""

from __future__ import annotations

import pytest

from drivers import Reading
from edge.config.model import Zone
from edge.occupancy import Occupancy, priority

T0 = 1_700_000_000.0
ZONE = Zone.model_validate(
    {
        "id": "shop-101",
        "devices": ["smoke-101"],
        "evidence": [
            {"device": "radar-101", "point": "target_state", "kind": "radar"},
            {"device": "pir-101", "point": "motion", "kind": "pir"},
            {"device": "efm-101", "point": "current_a", "kind": "load", "above": 0.5},
        ],
    }
)


def seen(
    occupancy: Occupancy, device: str, point: str, value: float, ts: float, *, quality: str = "good"
) -> None:
    occupancy.observe(Reading(device, point, value, "", ts, 0.0, quality))  # type: ignore[arg-type]


def test_nothing_reported_is_unknown() -> None:
    occupancy = Occupancy([ZONE])
    assert occupancy.state("shop-101", T0) == "unknown"
    assert occupancy.report_for("smoke-101", T0) == occupancy.report("shop-101", T0)
    assert occupancy.report_for("elsewhere", T0) is None


@pytest.mark.parametrize(
    ("readings", "at", "expected"),
    [
        # The radar sees someone now.
        ([("radar-101", "target_state", 2, 0)], 10, "occupied"),
        # ...and 30 s after the last positive frame, with frames saying nobody: vacant.
        ([("radar-101", "target_state", 2, 0), ("radar-101", "target_state", 0, 20)], 31, "vacant"),
        # A radar silent for more than 2 minutes says nothing any more.
        ([("radar-101", "target_state", 0, 0)], 121, "unknown"),
        # A PIR's motion counts for 5 minutes; a PIR that reported "no motion" stays absent.
        ([("pir-101", "motion", 1, 0)], 299, "occupied"),
        ([("pir-101", "motion", 1, 0), ("pir-101", "motion", 0, 1)], 3600, "vacant"),
        # Load above 0.5 A: someone is using the room, for 10 minutes after.
        ([("efm-101", "current_a", 3.2, 0), ("efm-101", "current_a", 0.1, 60)], 100, "occupied"),
        ([("efm-101", "current_a", 0.4, 0)], 60, "vacant"),
        # Any present source wins over absent ones.
        ([("radar-101", "target_state", 0, 0), ("pir-101", "motion", 1, 1)], 10, "occupied"),
        # A bad-quality radar frame is not evidence.
        ([("radar-101", "target_state", 3, 0, "bad")], 10, "unknown"),
    ],
)
def test_evidence_combinations(
    readings: list[tuple[object, ...]], at: float, expected: str
) -> None:
    occupancy = Occupancy([ZONE])
    for device, point, value, offset, *quality in readings:
        seen(
            occupancy,
            str(device),
            str(point),
            float(value),  # type: ignore[arg-type]
            T0 + float(offset),  # type: ignore[arg-type]
            quality=str(quality[0]) if quality else "good",
        )
    assert occupancy.state("shop-101", T0 + at) == expected


def test_report_carries_each_source_with_its_times() -> None:
    occupancy = Occupancy([ZONE])
    seen(occupancy, "pir-101", "motion", 1, T0)
    report = occupancy.report("shop-101", T0 + 10)
    assert report["state"] == "occupied"
    by_kind = {e["kind"]: e for e in report["evidence"]}
    assert (by_kind["pir"]["state"], by_kind["pir"]["last_present"]) == ("present", T0)
    assert by_kind["radar"]["state"] == "unknown"


@pytest.mark.parametrize(
    ("severity", "state", "expected"),
    [
        ("fire", "occupied", 1),
        ("fire", "unknown", 2),
        ("fire", None, 2),
        ("fire", "vacant", 3),
        ("critical", "occupied", 4),
        ("minor", None, 6),
    ],
)
def test_priority(severity: str, state: str | None, expected: int) -> None:
    assert priority(severity, state) == expected  # type: ignore[arg-type]
