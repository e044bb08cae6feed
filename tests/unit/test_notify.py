"""What SMS and calls share: which alarms they are for and the hourly limit per number."""

from __future__ import annotations

from dataclasses import dataclass

from edge.notify import HourlyLimit, calls_for, notice_fields
from edge.rules import Transition


@dataclass
class _Config:
    severity: str = "major"
    only_when_offline: bool = False


def _transition(kind: str = "raised", severity: str = "fire") -> Transition:
    return Transition(
        kind=kind,  # type: ignore[arg-type]
        rule_id="leak",
        device_id="efm-1",
        severity=severity,  # type: ignore[arg-type]
        point="residual_ma",
        ts=0.0,
        value=350.0,
        threshold=300.0,
        reading=None,
        rule_kind="over-limit",
        reason="350 >= 300",
        scope="efm-1",
    )


def test_only_raised_and_escalated_alarms_at_least_as_severe_call_for_a_notice() -> None:
    config = _Config(severity="major")
    assert calls_for(_transition("raised", "fire"), config, lambda: False)
    assert calls_for(_transition("escalated", "major"), config, lambda: False)
    assert not calls_for(_transition("raised", "minor"), config, lambda: False)
    assert not calls_for(_transition("cleared", "fire"), config, lambda: False)


def test_only_when_offline_asks_the_uplink_and_stays_quiet_while_it_is_up() -> None:
    asked: list[bool] = []

    def online() -> bool:
        asked.append(True)
        return True

    assert calls_for(_transition(), _Config(only_when_offline=False), online)
    assert not asked, "the uplink is not asked when it cannot matter"
    assert not calls_for(_transition(), _Config(only_when_offline=True), online)
    assert calls_for(_transition(), _Config(only_when_offline=True), lambda: False)


def test_the_hourly_limit_is_a_sliding_window_per_number() -> None:
    now = [0.0]
    limit = HourlyLimit(["+8613800000001", "+8613800000002"], 2, lambda: now[0])
    assert limit.take("+8613800000001")
    now[0] = 1800.0
    assert limit.take("+8613800000001")
    assert not limit.take("+8613800000001"), "a third within the hour is refused"
    assert limit.take("+8613800000002"), "another number has its own share"
    now[0] = 3599.0
    assert not limit.take("+8613800000001"), "a refused notice is not counted, nor freed"
    now[0] = 3600.0
    assert limit.take("+8613800000001"), "the first one has left the window"
    assert not limit.take("+8613800000001")


def test_event_fields_name_the_number_and_the_alarm() -> None:
    assert notice_fields("+8613800000001", _transition(), attempt=2) == {
        "number": "+8613800000001",
        "rule": "leak",
        "device": "efm-1",
        "severity": "fire",
        "attempt": 2,
    }
