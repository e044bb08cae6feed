"""The alarm lifecycle: raised -> (escalated) -> silenced -> (resounded) -> cleared.

The rules decide when an alarm is raised, escalated and cleared; people decide when it is
silenced (the button on site, or the platform). A silenced alarm stays active (the LED stays
on, the platform still sees it) but the buzzer stops, until one of:

* the alarm escalates to a worse severity: it sounds again at once;
* ``rearm_after`` passes and the alarm is still active: it sounds again (``resounded``);
* another alarm is raised: that one sounds (silence applies to the alarms it silenced).

Every change is a :class:`Transition` carrying the rule and the reading that caused it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edge.rules.types import SEVERITY_RANK, Severity, Transition, worse

__all__ = ["Alarm", "AlarmBook"]


@dataclass
class Alarm:
    """One active alarm: its latest transition and whether it is silenced."""

    latest: Transition
    raised_at: float
    silenced_at: float | None = None
    silenced_by: str = ""

    @property
    def silenced(self) -> bool:
        return self.silenced_at is not None

    @property
    def severity(self) -> Severity:
        return self.latest.severity


class AlarmBook:
    """The active alarms and their silence, fed with the rules' transitions."""

    def __init__(self, *, rearm_after: float = 600.0) -> None:
        self.rearm_after = rearm_after
        self.alarms: dict[tuple[str, str], Alarm] = {}
        #: What :meth:`dump` returned when it was last stored (so unchanged silence is not
        #: written again).
        self.saved: dict[str, Any] | None = None

    def apply(self, transitions: Iterable[Transition]) -> None:
        """Follow the rules' transitions."""
        for t in transitions:
            key = t.alarm_key
            if t.kind == "cleared":
                self.alarms.pop(key, None)
            elif t.kind == "raised":
                self.alarms[key] = Alarm(t, t.ts)
            elif t.kind == "escalated":
                alarm = self.alarms.get(key)
                if alarm is None:
                    self.alarms[key] = Alarm(t, t.ts)
                else:
                    alarm.latest = t
                    alarm.silenced_at = None
                    alarm.silenced_by = ""
            elif t.kind == "updated" and key in self.alarms:
                self.alarms[key].latest = t

    def silence(
        self, now: float, source: str, key: tuple[str, str] | None = None
    ) -> list[Transition]:
        """Silence the sounding alarms (or only ``key``); one ``silenced`` transition each."""
        out: list[Transition] = []
        for alarm_key, alarm in sorted(self.alarms.items()):
            if alarm.silenced or (key is not None and alarm_key != key):
                continue
            alarm.silenced_at = now
            alarm.silenced_by = source
            out.append(
                dataclasses.replace(
                    alarm.latest, kind="silenced", ts=now, source=source, reading=None
                )
            )
        return out

    def tick(self, now: float) -> list[Transition]:
        """Silenced alarms that are still active after ``rearm_after`` sound again."""
        out: list[Transition] = []
        for alarm in self.alarms.values():
            if alarm.silenced_at is not None and now - alarm.silenced_at >= self.rearm_after:
                alarm.silenced_at = None
                alarm.silenced_by = ""
                out.append(
                    dataclasses.replace(alarm.latest, kind="resounded", ts=now, reading=None)
                )
        return out

    def sounding(self) -> Severity | None:
        """The worst severity among the alarms that are not silenced (the buzzer's pattern)."""
        found: Severity | None = None
        for alarm in self.alarms.values():
            if not alarm.silenced:
                found = worse(found, alarm.severity)
        return found

    def worst(self) -> Severity | None:
        """The worst severity among all active alarms, silenced or not."""
        found: Severity | None = None
        for alarm in self.alarms.values():
            found = worse(found, alarm.severity)
        return found

    def at_least(self, severity: Severity) -> bool:
        worst = self.worst()
        return worst is not None and SEVERITY_RANK[worst] <= SEVERITY_RANK[severity]

    # -- persistence: which alarms were silenced, and when ------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            f"{rule}\x1f{scope}": {"silenced_at": a.silenced_at, "by": a.silenced_by}
            for (rule, scope), a in self.alarms.items()
            if a.silenced
        }

    def load(self, data: dict[str, Any], active: dict[tuple[str, str], Transition]) -> None:
        """Take the active alarms restored by the engine and their silence as it was."""
        for key, transition in active.items():
            self.alarms[key] = Alarm(transition, transition.ts)
        for joined, silence in data.items():
            rule, _, scope = joined.partition("\x1f")
            alarm = self.alarms.get((rule, scope))
            if alarm is not None and isinstance(silence, dict):
                alarm.silenced_at = silence.get("silenced_at")
                alarm.silenced_by = str(silence.get("by", ""))
