"""What the rules engine hands out: alarm transitions, and the words for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from drivers import Reading
from edge.config.terms import SEVERITY_ORDER, Severity

__all__ = ["SEVERITY_RANK", "Severity", "Transition", "TransitionKind", "worse"]

#: ``raised``, ``escalated`` and ``cleared`` come from the rules; ``silenced``, ``resounded``
#: (a silenced alarm sounding again after the re-arm time) and ``updated`` (the room's
#: occupancy changed while the alarm is active) from the alarm lifecycle.
TransitionKind = Literal["raised", "escalated", "cleared", "silenced", "resounded", "updated"]

#: 0 is the most severe.
SEVERITY_RANK = SEVERITY_ORDER


def worse(a: Severity | None, b: Severity | None) -> Severity | None:
    """The more severe of two severities (``None`` is no alarm)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if SEVERITY_RANK[a] <= SEVERITY_RANK[b] else b


@dataclass(frozen=True, slots=True)
class Transition:
    """An alarm of one rule on one device changed state, because of ``reading`` (or, for
    time-based rules, because time passed: then ``reading`` is ``None`` and ``ts`` says when).

    ``scope`` names the alarm within its rule: the device id for rules on devices, empty for a
    composite rule (one alarm for the site).
    """

    rule_id: str
    kind: TransitionKind
    severity: Severity
    device_id: str
    point: str
    ts: float
    value: float | None
    threshold: float | None
    reading: Reading | None
    rule_kind: str
    reason: str
    scope: str
    #: Filled in by the gateway for alarms of a device in a zone (see edge/occupancy.py).
    occupancy: dict[str, Any] | None = None
    #: Who silenced the alarm (``local``/``remote``), for ``silenced`` transitions.
    source: str = ""

    @property
    def alarm_key(self) -> tuple[str, str]:
        """Identifies one alarm: one rule on one device (or the site, for composites)."""
        return (self.rule_id, self.scope)
