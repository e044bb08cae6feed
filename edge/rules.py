"""Local rules: pure, stateful judges of readings.

A rule sees every reading of its point and returns a :class:`Transition` only when an alarm
changes state. Rules do no I/O: the gateway hands their transitions to the annunciator
first (the buzzer) and to the buffer second, so the judgement never waits on a disk or a
network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from drivers import Reading
from edge.config.model import OverLimitRule

Severity = Literal["critical", "major", "minor"]


@dataclass(frozen=True, slots=True)
class Transition:
    """An alarm of one rule on one device was raised or cleared by ``reading``."""

    rule_id: str
    kind: Literal["raised", "cleared"]
    severity: Severity
    threshold: float
    reading: Reading

    @property
    def alarm_key(self) -> tuple[str, str]:
        """Identifies one alarm: one rule on one device."""
        return (self.rule_id, self.reading.device_id)


class OverLimit:
    """Over-limit with hysteresis: raised at ``raise_at`` or above, cleared below ``clear_below``.

    Between the two thresholds an alarm keeps its state, so a value hovering at the limit
    does not make the buzzer stutter.
    """

    def __init__(self, rule: OverLimitRule) -> None:
        self.rule = rule
        self._devices = None if rule.devices is None else frozenset(rule.devices)
        self._active: set[str] = set()

    def applies_to(self, reading: Reading) -> bool:
        return reading.point == self.rule.point and (
            self._devices is None or reading.device_id in self._devices
        )

    def evaluate(self, reading: Reading) -> Transition | None:
        device = reading.device_id
        if device not in self._active and reading.value >= self.rule.raise_at:
            self._active.add(device)
            return self._transition("raised", self.rule.raise_at, reading)
        if device in self._active and reading.value < self.rule.clear_below:
            self._active.discard(device)
            return self._transition("cleared", self.rule.clear_below, reading)
        return None

    def active_devices(self) -> frozenset[str]:
        return frozenset(self._active)

    def _transition(
        self, kind: Literal["raised", "cleared"], threshold: float, reading: Reading
    ) -> Transition:
        return Transition(self.rule.id, kind, self.rule.severity, threshold, reading)


class RuleEngine:
    """Routes each reading to the rules of its point."""

    def __init__(self, rules: Iterable[OverLimitRule]) -> None:
        self._by_point: dict[str, list[OverLimit]] = {}
        for rule in rules:
            self._by_point.setdefault(rule.point, []).append(OverLimit(rule))

    def evaluate(self, reading: Reading) -> Sequence[Transition]:
        transitions = []
        for judge in self._by_point.get(reading.point, ()):
            if judge.applies_to(reading):
                transition = judge.evaluate(reading)
                if transition is not None:
                    transitions.append(transition)
        return transitions

    def active_alarms(self) -> list[tuple[str, str]]:
        """(rule id, device id) of every alarm now raised."""
        return sorted(
            (judge.rule.id, device)
            for judges in self._by_point.values()
            for judge in judges
            for device in judge.active_devices()
        )
