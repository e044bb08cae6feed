"""Every rule kind on synthetic traces, on the readings' own clock (months run in seconds)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from pydantic import TypeAdapter

from drivers import DeviceStatus, Reading
from edge.config.model import DerivedPoint, Device, Rule
from edge.rules import ModelInfo, RuleEngine, Transition

RULE = TypeAdapter(Rule)
SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = 1_700_000_000.0

EFM = ModelInfo(
    units={
        "residual_current": "mA",
        "temperature_1": "°C",
        "voltage_a": "V",
        "alarm_bits": "",
    },
    bits={"alarm_bits": {0: "residual_current", 1: "over_temperature", 2: "overcurrent"}},
)
TILT = ModelInfo(units={"pitch": "°", "displacement": "mm"})
MODELS = {"efm-ref": EFM, "tilt-ref": TILT}


def device(ident: str, model: str = "efm-ref") -> Device:
    return Device.model_validate(
        {
            "id": ident,
            "model": model,
            "bus": "lan",
            "address": 1,
            "location": {"building": "B", "floor": "1", "room": "R", "venue_type": "shop"},
        }
    )


def engine(
    *rules: dict[str, Any],
    devices: Sequence[Device] = (),
    derived: Sequence[DerivedPoint] = (),
    timezone: str = "UTC",
) -> RuleEngine:
    return RuleEngine(
        [RULE.validate_python(rule) for rule in rules],
        devices=devices,
        derived=derived,
        timezone=timezone,
        model_info=MODELS.get,
    )


def reading(
    value: float,
    ts: float = T0,
    device: str = "efm-1",
    point: str = "residual_current",
    quality: str = "good",
) -> Reading:
    return Reading(device, point, value, "mA", ts, 0.0, quality)  # type: ignore[arg-type]


def feed(
    judge: RuleEngine,
    values: Iterable[float],
    *,
    step: float = 1.0,
    start: float = T0,
    device: str = "efm-1",
    point: str = "residual_current",
) -> list[str | None]:
    """One entry per reading: the kinds of the transitions it caused, joined."""
    out: list[str | None] = []
    for index, value in enumerate(values):
        found = judge.evaluate(reading(value, start + index * step, device, point))
        out.append(",".join(t.kind for t in found) or None)
    return out


OVER: dict[str, Any] = {
    "id": "residual",
    "kind": "over-limit",
    "point": "residual_current",
    "raise_at": 300,
    "clear_below": 270,
}


# -- over-limit / under-limit ----------------------------------------------------------------


def test_over_limit_raises_at_limit_and_clears_only_below_hysteresis() -> None:
    assert feed(engine(OVER), [120, 299.9, 300, 350, 280, 270, 269.9, 120]) == [
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
    assert feed(engine(OVER), [310, 290, 301, 285, 299, 305]) == ["raised"] + [None] * 5


def test_transition_carries_rule_reading_and_threshold() -> None:
    (t,) = engine(OVER).evaluate(reading(350))
    assert (t.rule_id, t.rule_kind, t.severity, t.threshold, t.value) == (
        "residual",
        "over-limit",
        "critical",
        300,
        350,
    )
    assert t.reading is not None
    assert t.reading.value == 350
    assert t.alarm_key == ("residual", "efm-1")
    assert "350" in t.reason


def test_devices_are_judged_independently_and_listed_devices_only() -> None:
    judge = engine(OVER)
    assert [t.kind for t in judge.evaluate(reading(400, device="a"))] == ["raised"]
    assert judge.evaluate(reading(400, device="b"))[0].device_id == "b"
    assert [t.kind for t in judge.evaluate(reading(100, T0 + 1, device="a"))] == ["cleared"]
    assert judge.active_alarms() == [("residual", "b")]

    only_a = engine({**OVER, "devices": ["a"]})
    assert only_a.evaluate(reading(999, device="b")) == []
    assert len(only_a.evaluate(reading(999, device="a"))) == 1
    assert only_a.evaluate(reading(999, point="temperature_1", device="a")) == []


def test_rule_by_model_with_a_per_device_override() -> None:
    judge = engine(
        {**OVER, "models": ["efm-ref"], "overrides": {"efm-2": {"raise_at": 500}}},
        devices=[device("efm-1"), device("efm-2"), device("tilt-1", "tilt-ref")],
    )
    assert feed(judge, [400], device="efm-1") == ["raised"]
    assert feed(judge, [400, 500], device="efm-2") == [None, "raised"]
    assert feed(judge, [900], device="tilt-1") == [None], "not an efm-ref"


def test_single_spike_does_not_alarm_with_debounce_by_readings() -> None:
    judge = engine({**OVER, "debounce": {"readings": 3}})
    assert feed(judge, [120, 900, 120, 310, 320, 330, 120]) == [
        None,
        None,
        None,
        None,
        None,
        "raised",
        "cleared",
    ]


def test_debounce_by_duration_counts_from_the_first_reading_over_the_limit() -> None:
    judge = engine({**OVER, "debounce": {"duration": "10s"}})
    # One reading every 4 s: over at 0, 4, 8 (8 s: not yet), 12 (12 s >= 10 s: raised).
    assert feed(judge, [310, 310, 310, 310], step=4) == [None, None, None, "raised"]
    again = engine({**OVER, "debounce": {"duration": "10s"}})
    # The reading under the limit at 8 s restarts the run: 12, 16, 20 (8 s), 24 (12 s).
    assert feed(again, [310, 310, 100, 310, 310, 310, 310], step=4) == [None] * 6 + ["raised"]


def test_bad_quality_readings_never_raise_and_do_not_break_a_debounce() -> None:
    judge = engine({**OVER, "debounce": {"readings": 2}})
    assert judge.evaluate(reading(999, T0, quality="bad")) == []
    assert judge.evaluate(reading(999, T0 + 1, quality="bad")) == []
    assert judge.evaluate(reading(310, T0 + 2)) == []
    assert judge.evaluate(reading(120, T0 + 3, quality="bad")) == []
    assert [t.kind for t in judge.evaluate(reading(310, T0 + 4))] == ["raised"]
    assert judge.evaluate(reading(0, T0 + 5, quality="bad")) == [], "bad never clears either"


def test_readings_not_newer_than_the_last_are_ignored() -> None:
    judge = engine({**OVER, "debounce": {"readings": 2}})
    assert judge.evaluate(reading(310, T0)) == []
    assert judge.evaluate(reading(310, T0)) == [], "the same reading twice counts once"
    assert judge.evaluate(reading(310, T0 - 5)) == []
    assert len(judge.evaluate(reading(310, T0 + 1))) == 1


def test_under_limit_for_undervoltage() -> None:
    rule = {
        "id": "undervoltage",
        "kind": "under-limit",
        "point": "voltage_a",
        "raise_at": 198,
        "clear_above": 205,
        "severity": "major",
    }
    assert feed(engine(rule), [228, 198.1, 198, 190, 204, 205.1], point="voltage_a") == [
        None,
        None,
        "raised",
        None,
        None,
        "cleared",
    ]


def test_escalation_changes_severity_once() -> None:
    judge = engine({**OVER, "severity": "major", "escalate": {"at": 500, "severity": "fire"}})
    out: list[Transition] = []
    for index, value in enumerate([310, 520, 530, 480, 100]):
        out.extend(judge.evaluate(reading(value, T0 + index)))
    assert [(t.kind, t.severity) for t in out] == [
        ("raised", "major"),
        ("escalated", "fire"),
        ("cleared", "fire"),
    ]
    # Straight past the escalation level: raised at the worse severity at once.
    direct = engine({**OVER, "severity": "major", "escalate": {"at": 500, "severity": "fire"}})
    (t,) = direct.evaluate(reading(600))
    assert (t.kind, t.severity, t.threshold) == ("raised", "fire", 500)


# -- sudden change -----------------------------------------------------------------------------


SUDDEN: dict[str, Any] = {
    "id": "jump",
    "kind": "sudden-change",
    "point": "residual_current",
    "change": 50,
    "window": "10s",
}


def test_sudden_change_absolute_within_window_then_clears_when_it_leaves() -> None:
    judge = engine(SUDDEN)
    # 100, then +49 (no), then +51 over the lowest of the last 10 s (yes); at 15 s the 100 has
    # left the window and the jump with it.
    out = feed(judge, [100, 149, 151, 151, 151], step=5)
    assert out == [None, None, "raised", "cleared", None]


def test_slow_drift_is_not_a_sudden_change() -> None:
    assert feed(engine(SUDDEN), [100 + 20 * i for i in range(10)], step=5) == [None] * 10


@pytest.mark.parametrize(
    ("direction", "values", "expected"),
    [
        ("rise", [200, 100], [None, None]),
        ("fall", [200, 100], [None, "raised"]),
        ("fall", [100, 200], [None, None]),
        ("either", [100, 200], [None, "raised"]),
    ],
)
def test_sudden_change_direction(
    direction: str, values: list[float], expected: list[str | None]
) -> None:
    assert feed(engine({**SUDDEN, "direction": direction}), values) == expected


def test_sudden_change_relative() -> None:
    rule = {**SUDDEN, "change_percent": 20}
    del rule["change"]
    assert feed(engine(rule), [100, 119, 120.5]) == [None, None, "raised"]
    assert feed(engine(rule), [0, 50]) == [None, None], "no relative change from zero"


# -- abnormal ------------------------------------------------------------------------------------


ABNORMAL: dict[str, Any] = {
    "id": "odd",
    "kind": "abnormal",
    "point": "residual_current",
    "sensitivity": 6,
    "baseline": "1d",
    "learning": "1h",
    "min_samples": 30,
}


def noise(i: int) -> float:
    # A deterministic wobble of +/- 5 mA around 120 mA.
    return 120 + 5 * math.sin(i * 1.7)


def test_abnormal_waits_for_learning_then_fires_on_outlier_only() -> None:
    judge = engine(ABNORMAL)
    minute = 60.0
    # Learning: an outlier in the first hour does not fire.
    early = [noise(i) for i in range(30)] + [400]
    assert set(feed(judge, early, step=minute)) == {None}
    normal = [noise(i) for i in range(31, 120)]
    assert set(feed(judge, normal, step=minute, start=T0 + 31 * minute)) == {None}
    out = feed(judge, [400, noise(1), noise(2)], step=minute, start=T0 + 120 * minute)
    assert out == ["raised", "cleared", None]


def test_abnormal_min_deviation_floors_a_flat_baseline() -> None:
    judge = engine({**ABNORMAL, "learning": "0s", "min_samples": 5, "min_deviation": 2})
    # One reading joins the 1d baseline every 1d / max_samples = 86.4 s.
    assert feed(judge, [50.0] * 6 + [51.5, 52.5], step=90) == [None] * 7 + ["raised"]


# -- sustained -----------------------------------------------------------------------------------


TILT_RULE: dict[str, Any] = {
    "id": "tilt-two-months",
    "kind": "sustained",
    "point": "displacement",
    "above": 4,
    "aggregate": "mean",
    "months": 2,
}


def local(year: int, month: int, day: int, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=SHANGHAI).timestamp()


def hourly(
    judge: RuleEngine, start: float, end: float, value: Any, device: str = "tilt-1"
) -> list[Transition]:
    """Feed one reading an hour from ``start`` to ``end`` (``value(ts)`` or a number), ticking
    as the gateway would."""
    out: list[Transition] = []
    ts = start
    while ts < end:
        v = value(ts) if callable(value) else value
        out.extend(judge.tick(ts))
        out.extend(judge.evaluate(reading(v, ts, device, "displacement")))
        ts += 3600
    out.extend(judge.tick(end))
    return out


def test_two_consecutive_calendar_months_over_4mm_raise_when_the_second_ends() -> None:
    judge = engine(TILT_RULE, timezone="Asia/Shanghai")
    out = hourly(judge, local(2025, 1, 1), local(2025, 2, 28, 23), 4.5)
    assert out == [], "February has not ended yet"
    out = hourly(judge, local(2025, 2, 28, 23), local(2025, 3, 2), 4.5)
    assert [(t.kind, t.ts) for t in out] == [("raised", local(2025, 3, 1))]
    assert "2 months" in out[0].reason


def test_a_month_joined_half_way_does_not_count() -> None:
    judge = engine(TILT_RULE, timezone="Asia/Shanghai")
    out = hourly(judge, local(2025, 1, 15), local(2025, 3, 1), 4.5)
    assert out == [], "January was not watched whole"
    out = hourly(judge, local(2025, 3, 1), local(2025, 4, 1, 1), 4.5)
    assert [(t.kind, t.ts) for t in out] == [("raised", local(2025, 4, 1))]


def test_one_day_under_the_limit_restarts_the_count() -> None:
    judge = engine(TILT_RULE, timezone="Asia/Shanghai")
    dip_start, dip_end = local(2025, 2, 10), local(2025, 2, 11)

    def trace(ts: float) -> float:
        return 3.0 if dip_start <= ts < dip_end else 4.5

    assert hourly(judge, local(2025, 1, 1), local(2025, 4, 1, 1), trace) == []
    out = hourly(judge, local(2025, 4, 1, 1), local(2025, 5, 1, 1), 4.5)
    assert [(t.kind, t.ts) for t in out] == [("raised", local(2025, 5, 1))]


def test_daily_mean_not_single_readings_decides() -> None:
    judge = engine(TILT_RULE, timezone="Asia/Shanghai")

    def spiky(ts: float) -> float:
        # Mostly 4.2 mm with one 2 mm reading a day: the daily mean stays above 4.
        return 2.0 if datetime.fromtimestamp(ts, SHANGHAI).hour == 3 else 4.2

    out = hourly(judge, local(2025, 1, 1), local(2025, 3, 1, 1), spiky)
    assert [t.kind for t in out] == ["raised"]


def test_a_day_without_readings_breaks_the_run_unless_missing_is_ignore() -> None:
    for missing, expected in (("break", []), ("ignore", ["raised"])):
        judge = engine({**TILT_RULE, "missing": missing}, timezone="Asia/Shanghai")
        out = hourly(judge, local(2025, 1, 1), local(2025, 1, 20), 4.5)
        out += hourly(judge, local(2025, 1, 22), local(2025, 3, 1, 1), 4.5)
        assert [t.kind for t in out] == expected, missing


def test_restart_in_the_middle_of_the_window_neither_resets_nor_double_counts() -> None:
    first = engine(TILT_RULE, timezone="Asia/Shanghai")
    assert hourly(first, local(2025, 1, 1), local(2025, 2, 10, 12), 4.5) == []
    saved = {key: (1, value) for key, value in first.dump_state(everything=True).items()}

    second = engine(TILT_RULE, timezone="Asia/Shanghai")
    assert second.load_state(saved) == []
    # The last hours before the restart arrive again (replayed from the buffer): ignored.
    assert hourly(second, local(2025, 2, 10, 6), local(2025, 2, 10, 12), 1.0) == []
    out = hourly(second, local(2025, 2, 10, 12), local(2025, 3, 1, 1), 4.5)
    assert [(t.kind, t.ts) for t in out] == [("raised", local(2025, 3, 1))]

    fresh = engine(TILT_RULE, timezone="Asia/Shanghai")
    assert hourly(fresh, local(2025, 2, 10, 12), local(2025, 3, 1, 1), 4.5) == [], (
        "without the saved state the window would have started again"
    )


def test_active_alarm_comes_back_active_after_restart() -> None:
    first = engine(OVER)
    first.evaluate(reading(400))
    saved = {key: (1, value) for key, value in first.dump_state().items()}
    second = engine(OVER)
    assert second.load_state(saved) == []
    assert second.active_alarms() == [("residual", "efm-1")]
    assert second.evaluate(reading(400, T0 + 1)) == [], "not raised twice"
    assert [t.kind for t in second.evaluate(reading(100, T0 + 2))] == ["cleared"]


def test_changed_rule_drops_its_restored_alarm() -> None:
    first = engine(OVER)
    first.evaluate(reading(400))
    saved = {key: (1, value) for key, value in first.dump_state().items()}
    second = engine({**OVER, "raise_at": 450})
    dropped = second.load_state(saved)
    assert [(t.kind, t.rule_id) for t in dropped] == [("cleared", "residual")]
    assert second.active_alarms() == []


@pytest.mark.parametrize(
    ("period", "step", "count", "raised_at"),
    [
        ({"days": 3}, 3600.0, 24 * 4, 3),
        ({"hours": 5}, 600.0, 6 * 7, 5),
    ],
)
def test_sustained_days_and_hours_count_calendar_buckets(
    period: dict[str, int], step: float, count: int, raised_at: int
) -> None:
    rule = {**TILT_RULE, **period}
    del rule["months"]
    judge = engine(rule, timezone="Asia/Shanghai")
    start = local(2025, 6, 1)
    out: list[Transition] = []
    for index in range(count):
        ts = start + index * step
        out.extend(judge.tick(ts))
        out.extend(judge.evaluate(reading(4.5, ts, "tilt-1", "displacement")))
    unit = 86400 if "days" in period else 3600
    assert [(t.kind, t.ts) for t in out] == [("raised", start + raised_at * unit)]


def test_sustained_duration_on_raw_readings() -> None:
    rule = {**TILT_RULE, "duration": "30s", "above": 60}
    del rule["months"]
    judge = engine(rule)
    out = feed(judge, [65, 65, 65, 65, 50, 65], step=10, point="displacement")
    assert out == [None, None, None, "raised", "cleared", None]


# -- device bits, faults, offline ------------------------------------------------------------------


def test_alarm_bits_by_name_and_number() -> None:
    rule = {"id": "bits", "kind": "alarm-bits", "point": "alarm_bits", "bits": ["overcurrent", 0]}
    judge = engine(rule, devices=[device("efm-1")])
    out = feed(judge, [0, 2, 4, 5, 1, 0], point="alarm_bits")
    assert out == [None, None, "raised", None, None, "cleared"]
    (t,) = engine(rule, devices=[device("efm-1")]).evaluate(reading(4, point="alarm_bits"))
    assert "overcurrent" in t.reason


def test_sensor_stuck_and_missing_raise_a_fault() -> None:
    rule = {
        "id": "fault",
        "kind": "sensor-fault",
        "point": "residual_current",
        "stuck_for": "1h",
        "missing_for": "10m",
    }
    judge = engine(rule, devices=[device("efm-1")])
    judge.tick(T0)
    assert [t.kind for t in judge.tick(T0 + 600)] == ["raised"], "never reported"
    assert [t.kind for t in judge.evaluate(reading(120, T0 + 601))] == ["cleared"]
    out = feed(judge, [120] * 61, step=60, start=T0 + 660)
    assert out[-1] == "raised"
    assert out.count("raised") == 1
    assert "stuck" in judge.active[("fault", "efm-1")].reason
    assert judge.evaluate(reading(0, T0 + 5000, quality="bad")) == []
    assert [t.kind for t in judge.evaluate(reading(125, T0 + 5060))] == ["cleared"]
    assert [t.kind for t in judge.tick(T0 + 5060 + 600)] == ["raised"]


def test_device_offline_after_a_while_and_when_silent() -> None:
    rule = {"id": "offline", "kind": "device-offline", "after": "30s", "silent_for": "5m"}
    judge = engine(rule, devices=[device("efm-1")])
    judge.tick(T0)
    assert judge.on_status(DeviceStatus("efm-1", False, T0 + 1, "timeout")) == []
    assert judge.tick(T0 + 20) == []
    (raised,) = judge.tick(T0 + 31)
    assert (raised.kind, raised.device_id, raised.rule_kind) == (
        "raised",
        "efm-1",
        "device-offline",
    )
    assert "timeout" in raised.reason
    assert [t.kind for t in judge.on_status(DeviceStatus("efm-1", True, T0 + 40))] == ["cleared"]
    judge.evaluate(reading(120, T0 + 41))
    assert judge.tick(T0 + 340) == []
    assert [t.kind for t in judge.tick(T0 + 341)] == ["raised"]


def test_a_late_reading_is_no_evidence_that_a_silence_or_a_missing_point_ended() -> None:
    offline = {"id": "offline", "kind": "device-offline", "silent_for": "15s"}
    fault = {"id": "fault", "kind": "sensor-fault", "point": "voltage_a", "missing_for": "10s"}
    judge = engine(offline, fault, devices=[device("efm-1")])
    judge.tick(T0)
    for second in range(10):
        judge.evaluate(reading(120, T0 + second))  # residual_current only
    raised = [t.rule_id for t in judge.tick(T0 + 24)]
    assert sorted(raised) == ["fault", "offline"]
    # A row older than the last one (a duplicate, a late export): its time is in the past, so
    # it neither clears the silence nor the missing voltage.
    assert judge.evaluate(reading(120, T0 + 5)) == []
    assert judge.evaluate(reading(230, T0 + 6, point="voltage_a")) == []
    assert sorted(judge.active) == [("fault", "efm-1"), ("offline", "efm-1")]
    assert judge.next_due() == math.inf  # both raised: only a reading can change them


# -- composite, derived points ---------------------------------------------------------------------


def test_composite_smoke_and_temperature_rise_is_a_confirmed_fire() -> None:
    smoke = {"id": "smoke", "kind": "alarm-bits", "point": "smoke_bits", "severity": "critical"}
    rise = {
        "id": "temp-rise",
        "kind": "sudden-change",
        "point": "temperature_1",
        "change": 10,
        "window": "5m",
    }
    fire = {"id": "confirmed-fire", "kind": "composite", "all": ["smoke", "temp-rise"]}
    judge = engine(smoke, rise, fire)
    assert [t.rule_id for t in judge.evaluate(reading(1, T0, "smoke-1", "smoke_bits"))] == ["smoke"]
    judge.evaluate(reading(30, T0, "efm-1", "temperature_1"))
    out = judge.evaluate(reading(45, T0 + 60, "efm-1", "temperature_1"))
    assert [(t.rule_id, t.kind) for t in out] == [
        ("temp-rise", "raised"),
        ("confirmed-fire", "raised"),
    ]
    assert (out[1].severity, out[1].scope) == ("fire", "")
    out = judge.evaluate(reading(0, T0 + 61, "smoke-1", "smoke_bits"))
    assert [(t.rule_id, t.kind) for t in out] == [
        ("smoke", "cleared"),
        ("confirmed-fire", "cleared"),
    ]


def test_composite_any_with_device_terms() -> None:
    rule = {
        "id": "either-shop",
        "kind": "composite",
        "any": [{"rule": "residual", "devices": ["a"]}, {"rule": "residual", "devices": ["b"]}],
        "severity": "major",
    }
    judge = engine(OVER, rule)
    assert judge.evaluate(reading(400, device="c"))[-1].rule_id == "residual"
    assert [t.rule_id for t in judge.evaluate(reading(400, device="b"))] == [
        "residual",
        "either-shop",
    ]


def test_derived_displacement_from_tilt_angle_is_judged_like_any_point() -> None:
    derived = DerivedPoint(
        name="displacement",
        kind="displacement",
        source="pitch",
        gauge_length=1000.0,
        gauge_lengths={"tilt-2": 3000.0},
        unit="mm",
    )
    rule = {**OVER, "point": "displacement", "raise_at": 4, "clear_below": 3.5}
    judge = engine(rule, derived=[derived])
    # 4 mm over 1 m is 0.229 degrees (devices.md); over a 3 m storey 0.076 degrees.
    assert judge.evaluate(reading(0.22, device="tilt-1", point="pitch")) == []
    (t,) = judge.evaluate(reading(0.23, T0 + 1, device="tilt-1", point="pitch"))
    assert t.point == "displacement"
    assert t.value == pytest.approx(1000 * math.tan(math.radians(0.23)))
    (t,) = judge.evaluate(reading(0.077, device="tilt-2", point="pitch"))
    assert t.value == pytest.approx(4.03, abs=0.01)


def test_a_displacement_is_not_derived_for_a_device_without_a_gauge_length() -> None:
    # The site file check refuses such a file; the engine still never raises on the alarm
    # path: the source point is judged, and no displacement is made up for that device.
    derived = DerivedPoint(
        name="displacement",
        kind="displacement",
        source="pitch",
        gauge_lengths={"tilt-2": 3000.0},
        unit="mm",
    )
    over = {**OVER, "point": "displacement", "raise_at": 4, "clear_below": 3.5}
    pitch = {**OVER, "id": "pitch-high", "point": "pitch", "raise_at": 1, "clear_below": 0.5}
    judge = engine(over, pitch, derived=[derived])
    (t,) = judge.evaluate(reading(2.0, device="tilt-1", point="pitch"))
    assert (t.rule_id, t.point) == ("pitch-high", "pitch")
    assert judge.derived_readings(reading(2.0, T0 + 1, device="tilt-1", point="pitch")) == []
    judge.evaluate(reading(0.1, device="tilt-2", point="pitch"))
    (made,) = judge.derived_readings(reading(0.1, T0 + 1, device="tilt-2", point="pitch"))
    assert made.point == "displacement"


def test_calendar_day_boundaries_follow_the_site_time_zone() -> None:
    rule = {**TILT_RULE, "days": 1}
    del rule["months"]
    shanghai = engine(rule, timezone="Asia/Shanghai")
    utc = engine(rule)
    start = local(2025, 6, 1)
    for judge in (shanghai, utc):
        judge.evaluate(reading(4.5, start, "tilt-1", "displacement"))
    assert [t.ts for t in shanghai.tick(start + 86400)] == [start + 86400]
    # In UTC the same reading fell on 31 May, 16:00; that day ended 8 h later.
    assert [t.ts for t in utc.tick(start + 86400)] == [start + 8 * 3600]
    assert datetime.fromtimestamp(start, SHANGHAI) - timedelta(hours=8) == datetime(
        2025, 5, 31, 16, tzinfo=SHANGHAI
    )


def test_an_unknown_time_zone_is_refused_when_a_rule_reads_the_calendar() -> None:
    # The zone is resolved when the engine is built with a calendar rule, not at its first
    # reading; an engine whose rules never read the calendar never resolves it.
    for calendar_rule in (ABNORMAL, TILT_RULE):
        with pytest.raises(ZoneInfoNotFoundError):
            engine(calendar_rule, timezone="Mars/Olympus_Mons")
    over = engine(OVER, timezone="Mars/Olympus_Mons")
    assert [t.kind for t in over.evaluate(reading(999.0))] == ["raised"]
    assert str(engine(OVER, timezone="Asia/Shanghai").zone) == "Asia/Shanghai"
