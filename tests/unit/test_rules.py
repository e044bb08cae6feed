"""Over-limit with hysteresis: the one rule kind of the skeleton."""

from __future__ import annotations

import pytest

from drivers import Reading
from edge.config.model import OverLimitRule
from edge.rules import OverLimit, RuleEngine

RESIDUAL = OverLimitRule(
    id="residual", kind="over-limit", point="residual_current", raise_at=300, clear_below=270
)


def reading(value: float, device: str = "efm-1", point: str = "residual_current") -> Reading:
    return Reading(device, point, value, "mA", ts=0.0, mono=0.0)


def kinds(rule: OverLimit, values: list[float]) -> list[str | None]:
    results: list[str | None] = []
    for value in values:
        transition = rule.evaluate(reading(value))
        results.append(None if transition is None else transition.kind)
    return results


def test_raises_at_limit_and_clears_only_below_hysteresis() -> None:
    rule = OverLimit(RESIDUAL)
    assert kinds(rule, [120, 299.9, 300, 350, 280, 270, 269.9, 120]) == [
        None,
        None,
        "raised",
        None,
        None,
        None,
        "cleared",
        None,
    ]


def test_value_hovering_between_thresholds_does_not_toggle() -> None:
    rule = OverLimit(RESIDUAL)
    assert kinds(rule, [310, 290, 301, 285, 299, 305]) == ["raised", None, None, None, None, None]


def test_transition_carries_rule_reading_and_threshold() -> None:
    transition = OverLimit(RESIDUAL).evaluate(reading(350))
    assert transition is not None
    assert (transition.rule_id, transition.severity, transition.threshold) == (
        "residual",
        "critical",
        300,
    )
    assert transition.reading.value == 350
    assert transition.alarm_key == ("residual", "efm-1")


def test_devices_are_judged_independently() -> None:
    engine = RuleEngine([RESIDUAL])
    assert [t.kind for t in engine.evaluate(reading(400, "a"))] == ["raised"]
    assert engine.evaluate(reading(400, "b"))[0].reading.device_id == "b"
    assert [t.kind for t in engine.evaluate(reading(100, "a"))] == ["cleared"]
    assert engine.active_alarms() == [("residual", "b")]


def test_rule_limited_to_listed_devices_ignores_others() -> None:
    engine = RuleEngine([RESIDUAL.model_copy(update={"devices": ["a"]})])
    assert engine.evaluate(reading(999, "b")) == []
    assert len(engine.evaluate(reading(999, "a"))) == 1


def test_other_points_are_not_judged() -> None:
    engine = RuleEngine([RESIDUAL])
    assert engine.evaluate(reading(999, point="temperature_1")) == []


@pytest.mark.parametrize("clear_below", [300, 0])
def test_hysteresis_boundaries_accepted(clear_below: float) -> None:
    rule = RESIDUAL.model_copy(update={"clear_below": clear_below})
    assert OverLimit(rule).evaluate(reading(300)) is not None
