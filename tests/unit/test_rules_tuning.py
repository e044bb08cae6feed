"""Thresholds set at run time: which threshold each kind has, refusals, storm tightening, state."""

from __future__ import annotations

import math
from typing import Any

import pytest

from edge.rules import AlarmBook, MemoryStateStore, RuleEngine, load_rule_state, save_rule_state
from edge.rules.tuning import Override
from tests.unit.test_rules import T0, device, engine, reading

OVER = {
    "id": "rc",
    "kind": "over-limit",
    "point": "residual_current",
    "raise_at": 300,
    "clear_below": 270,
    "escalate": {"at": 500},
}
UNDER = {
    "id": "volts",
    "kind": "under-limit",
    "point": "voltage_a",
    "raise_at": 180,
    "clear_above": 190,
}
SUDDEN = {
    "id": "jump",
    "kind": "sudden-change",
    "point": "residual_current",
    "change": 100,
    "window": "10s",
}
BITS = {"id": "bits", "kind": "alarm-bits", "point": "alarm_bits"}


def two_devices(*rules: dict[str, Any]) -> RuleEngine:
    return engine(*rules, devices=[device("efm-1"), device("efm-2")])


def kinds(judge: RuleEngine, value: float, ts: float, dev: str = "efm-1") -> list[str]:
    return [t.kind for t in judge.evaluate(reading(value, ts, device=dev))]


def test_raise_at_moves_with_its_hysteresis_and_takes_effect_on_the_next_reading() -> None:
    judge = two_devices(OVER)
    assert kinds(judge, 260, T0) == []
    change = judge.set_threshold("rc", 250)
    assert (change.field, change.old, change.after["efm-1"]) == ("raise_at", 300.0, 250.0)
    tuned = judge.thresholds("rc", "efm-1")
    assert tuned is not None
    assert (tuned.raise_at, tuned.clear_below) == (250.0, 220.0)  # type: ignore[union-attr]
    assert kinds(judge, 260, T0 + 1) == ["raised"]
    assert kinds(judge, 230, T0 + 2) == []  # still above the moved clear_below
    assert kinds(judge, 219, T0 + 3) == ["cleared"]


def test_a_device_override_leaves_the_other_devices_alone() -> None:
    judge = two_devices(OVER)
    judge.set_threshold("rc", 200, device="efm-2")
    assert kinds(judge, 250, T0, "efm-1") == []
    assert kinds(judge, 250, T0, "efm-2") == ["raised"]


@pytest.mark.parametrize(
    ("rule", "args", "message"),
    [
        (OVER, {"rule_id": "nope", "value": 1.0}, "no rule 'nope'"),
        (BITS, {"rule_id": "bits", "value": 1.0}, "no settable threshold"),
        (OVER, {"rule_id": "rc", "value": math.nan}, "finite"),
        (OVER, {"rule_id": "rc", "value": math.inf}, "finite"),
        (OVER, {"rule_id": "rc", "value": 280.0, "field": "clear_below"}, ""),
        (OVER, {"rule_id": "rc", "value": 301.0, "field": "clear_below"}, "clear_below"),
        (OVER, {"rule_id": "rc", "value": 600.0}, "escalate.at must be above raise_at"),
        (OVER, {"rule_id": "rc", "value": 1.0, "field": "change"}, "no threshold 'change'"),
        (OVER, {"rule_id": "rc", "value": 1.0, "device": "efm-9"}, "no device 'efm-9'"),
        (UNDER, {"rule_id": "volts", "value": 195.0, "field": "clear_above"}, ""),
        (UNDER, {"rule_id": "volts", "value": 170.0, "field": "clear_above"}, "clear_above"),
        (SUDDEN, {"rule_id": "jump", "value": 5.0, "field": "change_percent"}, "judges by"),
        (SUDDEN, {"rule_id": "jump", "value": -5.0}, "greater than 0"),
    ],
)
def test_a_value_the_site_file_would_refuse_is_refused_and_changes_nothing(
    rule: dict[str, Any], args: dict[str, Any], message: str
) -> None:
    judge = two_devices(rule)
    before = judge.thresholds(rule["id"], "efm-1")
    if not message:  # the control case: a valid change goes through
        judge.set_threshold(**args)
        assert judge.overrides
        return
    with pytest.raises(ValueError, match=message):
        judge.set_threshold(**args)
    assert judge.overrides == []
    assert judge.thresholds(rule["id"], "efm-1") == before


def test_other_kinds_change_their_own_threshold() -> None:
    judge = two_devices(SUDDEN, UNDER)
    judge.set_threshold("jump", 20)
    assert kinds(judge, 100, T0) == []
    assert kinds(judge, 125, T0 + 1) == ["raised"]  # a 25 mA jump: under 100, over 20
    judge.set_threshold("volts", 200)
    volts = judge.evaluate(reading(195, T0, point="voltage_a"))
    assert [t.kind for t in volts] == ["raised"]


def test_storm_tightens_over_limit_on_its_devices_and_ending_it_restores_exactly() -> None:
    judge = two_devices(OVER, UNDER)
    original = {d: judge.thresholds("rc", d) for d in ("efm-1", "efm-2")}
    judge.set_storm({"efm-1"}, 0.8)
    tightened = judge.thresholds("rc", "efm-1")
    assert tightened is not None
    assert (tightened.raise_at, tightened.clear_below) == (240.0, 216.0)  # type: ignore[union-attr]
    assert judge.thresholds("rc", "efm-2") == original["efm-2"]
    assert judge.thresholds("volts", "efm-1") == judge.thresholds("volts", "efm-2")
    assert kinds(judge, 250, T0, "efm-1") == ["raised"]
    assert kinds(judge, 250, T0, "efm-2") == []
    judge.set_storm(None)
    assert {d: judge.thresholds("rc", d) for d in ("efm-1", "efm-2")} == original
    with pytest.raises(ValueError, match="threshold_factor"):
        judge.set_storm({"efm-1"}, 1.5)


async def test_overrides_keep_the_judges_state_and_reload_in_order() -> None:
    judge = two_devices(OVER)
    book = AlarmBook(rearm_after=600.0)
    assert kinds(judge, 320, T0) == ["raised"]
    judge.set_threshold("rc", 350)
    store = MemoryStateStore()
    await save_rule_state(store, judge, book, everything=True)
    again = two_devices(OVER)
    await load_rule_state(store, again, AlarmBook(rearm_after=600.0))
    # The active alarm survives: the state's hash is the site file's rule, not the override.
    assert again.active_alarms() == [("rc", "efm-1")]
    dropped = again.load_overrides([Override.load(o.dump()) for o in judge.overrides])
    assert dropped == []
    assert again.thresholds("rc", "efm-1") == judge.thresholds("rc", "efm-1")
    changed = two_devices({**OVER, "escalate": {"at": 320}})
    assert "escalate.at" in changed.load_overrides(judge.overrides)[0]
    assert changed.overrides == []


def test_rules_with_durations_take_a_new_threshold_and_keep_their_periods() -> None:
    sustained = {
        "id": "warm",
        "kind": "sustained",
        "point": "temperature_1",
        "above": 60,
        "duration": "90s",
    }
    abnormal = {
        "id": "odd",
        "kind": "abnormal",
        "point": "residual_current",
        "baseline": "7d",
        "learning": "1h",
    }
    judge = two_devices(sustained, abnormal, {**OVER, "debounce": {"duration": "2500ms"}})
    judge.set_threshold("warm", 55)
    judge.set_threshold("odd", 4.5)
    judge.set_threshold("rc", 280)
    warm, odd, rc = (judge.thresholds(r, "efm-1") for r in ("warm", "odd", "rc"))
    assert (warm.above, warm.duration) == (55.0, 90.0)  # type: ignore[union-attr]
    assert (odd.sensitivity, odd.baseline, odd.learning) == (4.5, 604_800.0, 3_600.0)  # type: ignore[union-attr]
    assert rc.debounce.duration == 2.5  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="less than or equal to 100"):
        judge.set_threshold("odd", 101)
