"""Semantics an engineer chooses: strict or inclusive limits, latching alarms, calendar months
or a rolling window, and abnormal baselines that learn the day's pattern."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from drivers import Reading
from edge.command_handlers import command_handlers
from edge.config import SiteConfig
from edge.config.model import Rule, SuddenChangeRule, SustainedRule
from edge.gateway import Gateway
from edge.rules import RuleEngine
from edge.rules.engine import _rule_hash
from tests.unit.test_rules import T0, device, engine, feed, reading

RULE: TypeAdapter[Any] = TypeAdapter(Rule)
SHANGHAI = ZoneInfo("Asia/Shanghai")
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"

LIMIT: dict[str, Any] = {
    "id": "leak",
    "kind": "over-limit",
    "point": "residual_current",
    "raise_at": 300,
    "clear_below": 270,
}


# -- at least or more than -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compare", "values", "expected"),
    [
        # at-least (the default): the limit itself raises; clear_below itself does not clear.
        ("at-least", [300, 270, 269.9], ["raised", None, "cleared"]),
        # more-than: the limit itself is quiet; clear_below itself clears.
        ("more-than", [300, 300.1, 270.1, 270], [None, "raised", None, "cleared"]),
    ],
)
def test_over_limit_at_least_or_more_than(
    compare: str, values: list[float], expected: list[str | None]
) -> None:
    judge = engine({**LIMIT, "compare": compare})
    assert feed(judge, values) == expected


def test_under_limit_at_most_or_less_than_and_escalation_follow_the_choice() -> None:
    rule = {
        "id": "low",
        "kind": "under-limit",
        "point": "voltage_a",
        "raise_at": 198,
        "clear_above": 205,
        "escalate": {"at": 180, "severity": "major"},
    }
    inclusive = engine(rule)
    assert feed(inclusive, [198, 180, 205, 205.1], point="voltage_a") == [
        "raised",
        "escalated",
        None,
        "cleared",
    ]
    strict = engine({**rule, "compare": "less-than"})
    out = feed(strict, [198, 197, 180, 179, 205], point="voltage_a")
    assert out == [None, "raised", None, "escalated", "cleared"]
    assert strict.active == {}


def test_sudden_change_of_exactly_the_change_raises_only_with_at_least() -> None:
    rule = {"id": "jump", "kind": "sudden-change", "point": "temperature_1", "change": 15}
    rule |= {"window": "2m"}
    assert feed(engine(rule), [20, 35], point="temperature_1") == [None, "raised"]
    strict = engine({**rule, "compare": "more-than"})
    assert feed(strict, [20, 35, 35.5], point="temperature_1") == [None, None, "raised"]


def test_new_options_at_their_default_keep_the_stored_state_of_an_unchanged_site_file() -> None:
    # Hashes written by the gateway before these options existed: the same site file must
    # resume its windows after an upgrade, not restart them.
    before = {
        "577b15bcd4edad43": LIMIT,
        "b611803b25f509ee": {"id": "odd", "kind": "abnormal", "point": "voltage_a"},
        "3d8656d23108e506": {
            "id": "tilt",
            "kind": "sustained",
            "point": "displacement",
            "above": 4,
            "months": 2,
        },
        "de233a6dac53c69f": {
            "id": "low",
            "kind": "under-limit",
            "point": "voltage_a",
            "raise_at": 198,
            "clear_above": 205,
        },
    }
    for digest, rule in before.items():
        assert _rule_hash(RULE.validate_python(rule)) == digest, rule
    latched = RULE.validate_python({**LIMIT, "latch": True})
    assert _rule_hash(latched) != "577b15bcd4edad43"


# -- latching --------------------------------------------------------------------------------------


def test_a_latching_alarm_stays_raised_until_released_after_its_condition_has_gone() -> None:
    judge = engine({**LIMIT, "latch": True}, devices=[device("efm-1")])
    assert feed(judge, [350]) == ["raised"]
    assert judge.release(T0 + 1) == []  # the condition is still there: nothing to release
    assert feed(judge, [100, 120], start=T0 + 2) == [None, None]  # gone, but latched
    assert list(judge.active) == [("leak", "efm-1")]
    # Back over the limit while latched: the alarm simply goes on.
    assert feed(judge, [360, 100], start=T0 + 4) == [None, None]
    # The state survives a restart, latched.
    values = {key: (1, value) for key, value in judge.dump_state(everything=True).items()}
    restarted = engine({**LIMIT, "latch": True}, devices=[device("efm-1")])
    assert restarted.load_state(values) == []
    assert list(restarted.latched) == [("leak", "efm-1")]
    (cleared,) = restarted.release(T0 + 10)
    assert (cleared.kind, cleared.ts) == ("cleared", T0 + 10)
    assert "reset by hand" in cleared.reason
    assert restarted.active == {}
    assert feed(restarted, [350], start=T0 + 11) == ["raised"]


def test_the_silence_button_clears_a_latched_alarm_whose_condition_has_gone() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["rules"] = [{**LIMIT, "latch": True}]
    data["zones"] = []
    config = SiteConfig.model_validate(data)
    pins = MockFactory()
    gateway = Gateway(config, pin_factory=pins)
    buzzer = pins.pin(config.outputs.buzzer.pin)
    try:
        now = 1_800_000_000.0
        gateway.on_sample(Reading("efm-shop-101", "residual_current", 350.0, "mA", now, 0.0))
        assert buzzer.state
        assert gateway.silence("local") == 1  # condition still there: silenced, not cleared
        assert not buzzer.state
        assert ("leak", "efm-shop-101") in gateway.alarms.alarms
        gateway.on_sample(Reading("efm-shop-101", "residual_current", 90.0, "mA", now + 1, 0.0))
        assert ("leak", "efm-shop-101") in gateway.alarms.alarms  # latched
        assert gateway.silence("local") == 1  # the button now acknowledges it: cleared
        assert gateway.alarms.alarms == {}
        assert gateway.rules.active == {}
        # The platform's silence command does the same for an alarm already silenced.
        gateway.on_sample(Reading("efm-shop-101", "residual_current", 350.0, "mA", now + 2, 0.0))
        command = {"rule": "leak", "device": "efm-shop-101"}
        handle = command_handlers(gateway)["silence"]

        async def silence(params: dict[str, str]) -> dict[str, Any] | None:
            return await handle(params)

        assert asyncio.run(silence(command)) == {"silenced": 1}
        gateway.on_sample(Reading("efm-shop-101", "residual_current", 90.0, "mA", now + 3, 0.0))
        assert ("leak", "efm-shop-101") in gateway.alarms.alarms
        assert asyncio.run(silence(command)) == {"silenced": 1}
        assert gateway.alarms.alarms == {}
    finally:
        gateway.annunciator.close()
        pins.reset()


# -- calendar months or a rolling window of days ---------------------------------------------------


def _daily(judge: RuleEngine, first: datetime, days: int, value: Any) -> list[tuple[str, str]]:
    """Hourly readings of ``days`` days from local midnight ``first`` (Shanghai); the value
    of a day is ``value(day)`` (None: no reading that day)."""
    out: list[tuple[str, str]] = []
    start = first.timestamp()
    for hour in range(days * 24):
        ts = start + hour * 3600
        out += [(t.kind, _local(t.ts)) for t in judge.tick(ts)]
        today = value(hour // 24)
        if today is not None:
            found = judge.evaluate(reading(today, ts, point="displacement"))
            out += [(t.kind, _local(t.ts)) for t in found]
    out += [(t.kind, _local(t.ts)) for t in judge.tick(start + days * 86400)]
    return out


def _local(ts: float) -> str:
    return datetime.fromtimestamp(ts, SHANGHAI).strftime("%Y-%m-%d %H:%M")


TILT: dict[str, Any] = {"id": "tilt", "kind": "sustained", "point": "displacement", "above": 4}


def test_two_calendar_months_or_a_rolling_60_days() -> None:
    first = datetime(2025, 1, 15, tzinfo=SHANGHAI)
    months = engine({**TILT, "months": 2}, timezone="Asia/Shanghai")
    rolling = engine({**TILT, "for": "60d"}, timezone="Asia/Shanghai")
    # Over 4 mm every day from 15 January to 5 April.
    assert _daily(months, first, 81, lambda day: 4.5) == [("raised", "2025-04-01 00:00")]
    # 60 days from 15 January 00:00 end at 16 March 00:00.
    assert _daily(rolling, first, 81, lambda day: 4.5) == [("raised", "2025-03-16 00:00")]


def test_a_day_without_readings_never_counts_as_a_day_that_passed() -> None:
    first = datetime(2025, 1, 1, tzinfo=SHANGHAI)

    def with_gap(day: int) -> float | None:
        return None if 10 <= day < 13 else 4.5  # no reading 11-13 January

    counted = engine({**TILT, "days": 30, "missing": "ignore"}, timezone="Asia/Shanghai")
    rolling = engine({**TILT, "for": "30d", "missing": "ignore"}, timezone="Asia/Shanghai")
    broken = engine({**TILT, "for": "30d"}, timezone="Asia/Shanghai")
    # ignore: the three days are skipped, so the 30th passing day ends on 2 February.
    assert _daily(counted, first, 40, with_gap) == [("raised", "2025-02-03 00:00")]
    assert _daily(rolling, first, 40, with_gap) == [("raised", "2025-02-03 00:00")]
    # break (the default): the window starts again on 14 January.
    assert _daily(broken, first, 45, with_gap) == [("raised", "2025-02-13 00:00")]
    # One day over the limit, then silence: days without readings never complete a window.
    quiet = engine({**TILT, "for": "3d", "missing": "ignore"}, timezone="Asia/Shanghai")
    assert _daily(quiet, first, 10, lambda day: 4.5 if day == 0 else None) == []


# -- abnormal: the whole baseline, and the day's pattern -----------------------------------------


def test_max_samples_spreads_over_the_whole_baseline_instead_of_shortening_it() -> None:
    rule = {
        "id": "odd",
        "kind": "abnormal",
        "point": "residual_current",
        "baseline": "1d",
        "learning": "1d",
        "max_samples": 200,
        "min_deviation": 3,
    }
    judge = engine(rule)
    out = feed(judge, [100 + (i % 5) for i in range(86_400 // 10)], step=10)  # a day at 10 s
    assert set(out) == {None}
    # A lasting step: with the last 200 readings as baseline (33 minutes) it would be the
    # new normal within 17 minutes; over a whole day's baseline it stays abnormal for hours.
    step = feed(judge, [130.0] * 360, step=10, start=T0 + 86_400)
    assert step[0] == "raised"
    assert "cleared" not in step
    history = judge.dump_state(everything=True)["rules/odd"]["efm-1/residual_current"]["history"]
    assert len(history) <= 201
    assert history[-1][0] - history[0][0] >= 86_400 - 2 * 432  # a day, to the spacing


def _swing(ts: float) -> float:
    """A structure's daily swing: 10 mm at 14:00 local, -10 mm at 02:00, and small noise."""
    hours = datetime.fromtimestamp(ts, SHANGHAI).hour + (ts % 3600) / 3600
    return 10 * math.sin((hours - 8) / 24 * 2 * math.pi) + 0.3 * math.sin(ts * 0.37)


@pytest.mark.parametrize(("seasonal", "expected"), [("none", []), ("daily", ["raised"])])
def test_a_daily_baseline_sees_a_step_that_the_days_swing_hides(
    seasonal: str, expected: list[str]
) -> None:
    rule = {
        "id": "crack",
        "kind": "abnormal",
        "point": "displacement",
        "baseline": "7d",
        "learning": "3d",
        "max_samples": 4800,
        "seasonal": seasonal,
    }
    judge = engine(rule, timezone="Asia/Shanghai")
    start = datetime(2025, 3, 1, tzinfo=SHANGHAI).timestamp()
    for minute in range(0, 4 * 1440, 5):  # four days every 5 minutes
        ts = start + minute * 60
        assert judge.evaluate(reading(_swing(ts), ts, point="displacement")) == []
    # Learned from the readings and kept with the rule state: a restarted judge agrees.
    values = {k: (1, v) for k, v in judge.dump_state(everything=True).items()}
    restarted = engine(rule, timezone="Asia/Shanghai")
    restarted.load_state(values)
    # 02:30 on day five: 6 mm above the usual night value, well inside the day's range.
    ts = start + 4 * 86400 + 2.5 * 3600
    for judged in (judge, restarted):
        found = judged.evaluate(reading(_swing(ts) + 6, ts, point="displacement"))
        assert [t.kind for t in found] == expected
        if expected:
            assert "baseline median of 02:00-03:00" in found[0].reason


def test_overrides_and_set_threshold_keep_durations_and_the_new_options() -> None:
    # Rules with durations take per-device overrides and thresholds set at run time: the
    # rule is re-validated as written, durations in words ("60d"), not as bare seconds.
    rolling = {**TILT, "for": "60d", "overrides": {"efm-1": {"above": 5}}, "latch": True}
    judge = engine(rolling, devices=[device("efm-1"), device("efm-2")])
    tuned = judge.thresholds("tilt", "efm-1")
    assert isinstance(tuned, SustainedRule)
    assert (tuned.above, tuned.for_, tuned.latch) == (5.0, 60 * 86400.0, True)
    change = judge.set_threshold("tilt", 6.0, device="efm-2")
    assert change.after == {"efm-2": 6.0}
    odd = {"id": "odd", "kind": "abnormal", "point": "voltage_a", "seasonal": "daily"}
    jump = {"id": "jump", "kind": "sudden-change", "point": "temperature_1", "change": 5}
    jump |= {"window": "90s", "compare": "more-than", "overrides": {"efm-1": {"change": 9}}}
    judge = engine(odd, jump, devices=[device("efm-1")])
    assert judge.set_threshold("odd", 8.0).after == {"efm-1": 8.0}
    tuned_jump = judge.thresholds("jump", "efm-1")
    assert isinstance(tuned_jump, SuddenChangeRule)
    assert (tuned_jump.change, tuned_jump.window, tuned_jump.compare) == (9.0, 90.0, "more-than")


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([5.0, 7.0, 30.0, 61.0]),
    st.integers(min_value=30, max_value=400),
    st.sampled_from(["none", "daily"]),
)
def test_no_poll_rate_and_no_max_samples_shortens_the_baseline(
    poll: float, max_samples: int, seasonal: str
) -> None:
    hours = 24 if seasonal == "daily" else 1
    samples = max(max_samples, 5 * hours)
    rule = {
        "id": "odd",
        "kind": "abnormal",
        "point": "residual_current",
        "baseline": "1d",
        "learning": "1d",
        "min_samples": 5,
        "max_samples": samples,
        "seasonal": seasonal,
    }
    judge = engine(rule)
    count = int(1.2 * 86_400 / poll)
    for index in range(count):
        judge.evaluate(reading(100 + index % 7, T0 + index * poll))
    state = judge.dump_state(everything=True)["rules/odd"]["efm-1/residual_current"]
    history = [ts for ts, _ in state["history"]]
    spacing = 86_400 / samples
    # The baseline spans the day, to within a spacing at each end and a poll.
    assert history[-1] - history[0] >= 86_400 - 2 * spacing - poll
    assert len(history) <= samples + 2 * hours
