"""``edge replay`` judges exactly as the field: the same transitions at the same times.

The field is a real :class:`Gateway` (gpiozero's MockFactory for the pins) on a clock the
test sets: its rules are ticked by ``Gateway.tick`` once a second, as ``_rules_service``
does, and readings go through ``Gateway.on_sample`` in the order they arrive. The replay is
``edge.replay.replay`` on the same rows, which jumps over silences. Both must give the same
transitions for any trace: with gaps, duplicates, rows out of order, NaN and bad readings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import Reading
from edge.config import SiteConfig
from edge.gateway import Gateway
from edge.replay import ReplayError, replay
from edge.rules import RuleEngine, Transition

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
T0 = 1_735_689_600.3  # 2025-01-01T00:00:00.3Z: ticks fall between whole seconds
DEVICES = ("efm-shop-101", "efm-restaurant-102", "efm-workshop-201")
POINTS = ("residual_current", "temperature_1", "voltage_a")

RULES: list[dict[str, Any]] = [
    {
        "id": "leak",
        "kind": "over-limit",
        "point": "residual_current",
        "raise_at": 300,
        "clear_below": 270,
        "debounce": {"readings": 2},
        "escalate": {"at": 500},
    },
    {
        "id": "jump",
        "kind": "sudden-change",
        "point": "residual_current",
        "change": 150,
        "window": "10s",
    },
    {"id": "hot-hour", "kind": "sustained", "point": "temperature_1", "above": 50, "hours": 1},
    {
        "id": "hot-run",
        "kind": "sustained",
        "point": "temperature_1",
        "above": 50,
        "duration": "30s",
    },
    {
        "id": "volt-fault",
        "kind": "sensor-fault",
        "point": "voltage_a",
        "missing_for": "20s",
        "stuck_for": "2m",
    },
    {"id": "silent", "kind": "device-offline", "silent_for": "15s"},
    {
        "id": "odd-voltage",
        "kind": "abnormal",
        "point": "voltage_a",
        "baseline": "1h",
        "learning": "0s",
        "min_samples": 5,
        "max_samples": 60,
        "min_deviation": 5,
    },
    {"id": "silent-and-faulty", "kind": "composite", "any": ["silent", "volt-fault"]},
]


def site(rules: Sequence[dict[str, Any]] = RULES) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["rules"] = list(rules)
    data["zones"] = []
    return SiteConfig.model_validate(data)


class SetClock:
    """The gateway's clock, set by the test to the time of each tick and reading."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def wait(self, event: Any, seconds: float) -> bool:  # pragma: no cover - not run
        raise AssertionError("the field is driven by the test")


def field(config: SiteConfig, rows: Sequence[Reading], until: float | None = None) -> list[Any]:
    """The gateway's transitions for ``rows`` arriving in order, ticked every second from the
    first row's time (a row older than the latest arrives at the latest time)."""
    clock = SetClock(rows[0].ts)
    pins = MockFactory()
    gateway = Gateway(config, pin_factory=pins, clock=clock)
    seen: list[Transition] = []
    gateway.transition_hooks.append(seen.append)
    origin, index, now = rows[0].ts, 0, -math.inf
    try:
        for row in [*rows, None]:
            now = max(now, row.ts if row is not None else (until or now))
            while origin + index <= now:
                clock.now = origin + index
                gateway.tick()
                index += 1
            if row is not None:
                clock.now = now
                gateway.on_sample(row)
    finally:
        gateway.annunciator.close()
        pins.reset()
    return [key(t) for t in seen if t.kind in ("raised", "escalated", "cleared")]


def replayed(config: SiteConfig, rows: Sequence[Reading], until: float | None = None) -> list[Any]:
    out: list[Transition] = []
    replay(config, iter(rows), out.append, until=until)
    return [key(t) for t in out]


def key(t: Transition) -> tuple[Any, ...]:
    return (t.ts, t.kind, t.rule_id, t.scope, t.point, t.severity, t.value, t.threshold, t.reason)


VALUES = {
    "residual_current": [0.0, 120.0, 280.0, 300.0, 420.0, 600.0],
    "temperature_1": [20.0, 49.0, 51.0, 70.0],
    "voltage_a": [220.0, 221.0, 230.0, 300.0],
}
#: Steps between rows, seconds: bursts, a poll, silences longer than every rule's limit, hours.
STEPS = [0.0, 0.25, 1.0, 1.0, 2.5, 5.0, 14.0, 16.0, 21.0, 61.0, 130.0, 900.0, 3700.0]


@st.composite
def traces(draw: st.DrawFn) -> list[Reading]:
    rows: list[Reading] = []
    ts = T0
    for _ in range(draw(st.integers(min_value=1, max_value=70))):
        how = draw(st.sampled_from(["next", "next", "next", "next", "duplicate", "late"]))
        if how == "duplicate" and rows:
            rows.append(rows[-1])
            continue
        device = draw(st.sampled_from(DEVICES))
        point = draw(st.sampled_from(POINTS))
        value = draw(st.sampled_from([*VALUES[point], math.nan]))
        quality = draw(st.sampled_from(["good", "good", "good", "bad"]))
        if how == "late" and rows:
            when = ts - draw(st.sampled_from([0.5, 3.0, 20.0, 100.0]))
        else:
            ts += draw(st.sampled_from(STEPS))
            when = ts
        rows.append(Reading(device, point, value, "", when, 0.0, quality))  # type: ignore[arg-type]
    return rows


CONFIG = site()


@pytest.mark.slow
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(traces(), st.sampled_from([None, 30.0, 2000.0]))
def test_replay_gives_the_fields_transitions_for_any_trace(
    rows: list[Reading], tail: float | None
) -> None:
    until = None if tail is None else max(r.ts for r in rows) + tail
    assert replayed(CONFIG, rows, until) == field(CONFIG, rows, until)


def test_a_silent_device_is_offline_in_the_silence_not_when_it_speaks_again() -> None:
    rows = [
        Reading("efm-shop-101", "voltage_a", 220.0, "V", T0 + second, 0.0)
        for second in [*range(10), *range(910, 915)]
    ]
    config = site([{"id": "silent", "kind": "device-offline", "silent_for": "10m"}])
    out: list[Transition] = []
    summary = replay(config, iter(rows), out.append)
    shop = [(t.kind, t.ts - T0) for t in out if t.device_id == "efm-shop-101"]
    # Last reading at +9 s: offline at the first tick 600 s later; back with the reading at +910.
    assert shop == [("raised", 609.0), ("cleared", 910.0)]
    # The other two devices never spoke: offline 600 s after the replay began.
    others = sorted((t.device_id, t.kind, t.ts - T0) for t in out if t.device_id != "efm-shop-101")
    assert others == [
        ("efm-restaurant-102", "raised", 600.0),
        ("efm-workshop-201", "raised", 600.0),
    ]
    # The 900 s silence cost a handful of ticks, not 900.
    assert summary.ticks < 40


def test_days_of_silence_are_judged_as_ticking_every_second() -> None:
    config = site()
    rows = [
        Reading("efm-shop-101", "temperature_1", 70.0, "°C", T0 + s, 0.0) for s in range(0, 90, 3)
    ]
    rows += [
        Reading("efm-shop-101", "voltage_a", 220.0, "V", T0 + 3 * 86400 + s, 0.0)
        for s in range(0, 40, 2)
    ]
    engine = RuleEngine(config.rules, devices=config.devices, timezone=config.gateway.timezone)
    expected: list[Transition] = []
    second = 0
    for row in rows:  # the reference: a tick at every second of the three days
        while T0 + second <= row.ts:
            expected.extend(engine.tick(T0 + second))
            second += 1
        expected.extend(engine.evaluate(row))
    out: list[Transition] = []
    summary = replay(config, iter(rows), out.append)
    assert [key(t) for t in out] == [key(t) for t in expected]
    assert {t.rule_id for t in out} >= {"silent", "volt-fault", "hot-hour", "hot-run"}
    assert summary.ticks < 1000  # of 259 240 seconds


def test_nan_never_clears_resets_or_counts() -> None:
    config = site(RULES[:1])
    nan = math.nan
    values = [350.0, nan, 350.0, nan, 100.0]  # the NaN neither breaks the debounce nor clears
    rows = [
        Reading("efm-shop-101", "residual_current", v, "mA", T0 + i, 0.0)
        for i, v in enumerate(values)
    ]
    out: list[Transition] = []
    replay(config, iter(rows), out.append)
    assert [(t.kind, t.ts - T0) for t in out] == [("raised", 2.0), ("cleared", 4.0)]


@pytest.mark.parametrize(
    ("device", "point", "message"),
    [
        ("efm-ghost", "residual_current", "device 'efm-ghost' is not in the site file"),
        ("efm-shop-101", "residual_curent", "device 'efm-shop-101' has no point 'residual_curent'"),
    ],
)
def test_devices_and_points_not_in_the_site_are_refused_or_reported(
    device: str, point: str, message: str
) -> None:
    config = site(RULES[:1])
    rows = [
        Reading("efm-shop-101", "residual_current", 350.0, "mA", T0, 0.0),
        Reading(device, point, 900.0, "mA", T0 + 1, 0.0),
        Reading(device, point, 900.0, "mA", T0 + 2, 0.0),
    ]
    with pytest.raises(ReplayError, match=message):
        replay(config, iter(rows), lambda t: None)
    out: list[Transition] = []
    summary = replay(config, iter(rows), out.append, unknown="report")
    assert out == []
    assert summary.unknown == {f"{device}/{point}": 2}
    assert summary.readings == 1
