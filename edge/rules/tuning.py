"""Thresholds changed at run time: ``set-threshold`` overrides and storm mode's tightening.

The site file stays the reference. What the platform changes remotely is kept apart from it,
as an ordered list of :class:`Override` (rule, field, value, optional device), and laid over
each rule when its judges are tuned. A change is validated exactly as the site file would be:
the rule with the new value goes through the same bounds and checks (hysteresis direction,
escalation above the limit, ...), so a value the site file could not hold is refused here too.

Which threshold a rule kind has, and what ``field`` may name (the first is the default):

========================  ==========================================================
over-limit                ``raise_at`` (``clear_below`` moves by the same amount, so the
                          hysteresis gap is kept), ``clear_below``, ``escalate_at``
under-limit               ``raise_at`` (``clear_above`` moves with it), ``clear_above``,
                          ``escalate_at``
sudden-change             ``change`` or ``change_percent``: the one the rule uses
sustained                 ``above`` or ``below``: the one the rule uses
abnormal                  ``sensitivity``, ``min_deviation``
========================  ==========================================================

``alarm-bits``, ``sensor-fault``, ``device-offline`` and ``composite`` rules have no threshold.

Storm mode multiplies the ``raise_at``, ``clear_below`` and ``escalate.at`` of ``over-limit``
rules by a factor (at most 1: tighter) on the storm's devices, after the overrides. Rules whose
``raise_at`` is not above zero are left alone: scaling a negative limit would loosen it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeGuard

if TYPE_CHECKING:
    from edge.config.model import PointRule, Rule

__all__ = [
    "SETTABLE",
    "Override",
    "current_value",
    "default_field",
    "is_point_rule",
    "is_tunable",
    "storm_tightened",
    "with_threshold",
]

#: The thresholds a rule kind lets the platform set; the first is the default ``field``.
SETTABLE: Final[dict[str, tuple[str, ...]]] = {
    "over-limit": ("raise_at", "clear_below", "escalate_at"),
    "under-limit": ("raise_at", "clear_above", "escalate_at"),
    "sudden-change": ("change", "change_percent"),
    "sustained": ("above", "below"),
    "abnormal": ("sensitivity", "min_deviation"),
}


@dataclass(frozen=True, slots=True)
class Override:
    """One threshold set by the platform: ``device`` None means every device of the rule."""

    rule: str
    field: str
    value: float
    device: str | None = None

    def dump(self) -> dict[str, Any]:
        return {"rule": self.rule, "field": self.field, "value": self.value, "device": self.device}

    @classmethod
    def load(cls, data: Any) -> Override:
        """From :meth:`dump`'s output; raises ``ValueError`` for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"an override is a mapping, not {type(data).__name__}")
        rule, field, value, device = (data.get(k) for k in ("rule", "field", "value", "device"))
        if not isinstance(rule, str) or not isinstance(field, str):
            raise ValueError(f"override without rule or field: {data!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"override value is not a number: {data!r}")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"override device is not text: {data!r}")
        return cls(rule, field, float(value), device)


def default_field(rule: PointRule) -> str:
    """The threshold ``set-threshold`` changes when it names no ``field``."""
    if rule.kind == "sudden-change":
        return "change" if rule.change is not None else "change_percent"
    if rule.kind == "sustained":
        return "above" if rule.above is not None else "below"
    fields = SETTABLE.get(rule.kind)
    if fields is None:
        raise ValueError(f"rule {rule.id!r} is {rule.kind}, which has no settable threshold")
    return fields[0]


def current_value(rule: PointRule, field: str) -> float | None:
    """The value of threshold ``field`` in ``rule`` (None when the rule does not use it)."""
    if field == "escalate_at":
        escalate = getattr(rule, "escalate", None)
        return None if escalate is None else float(escalate.at)
    value = getattr(rule, field, None)
    return None if value is None else float(value)


def with_threshold(rule: PointRule, field: str, value: float) -> PointRule:
    """``rule`` with threshold ``field`` set to ``value``, validated like the site file.

    Raises ``ValueError`` naming the problem: a kind without thresholds, a field the kind does
    not have or the rule does not use, a value that is not finite, or one the rule's checks
    refuse (``clear_below`` above ``raise_at``, ...).
    """
    fields = SETTABLE.get(rule.kind)
    if fields is None:
        raise ValueError(f"rule {rule.id!r} is {rule.kind}, which has no settable threshold")
    if field not in fields:
        raise ValueError(
            f"rule {rule.id!r} ({rule.kind}) has no threshold {field!r}; "
            f"settable: {', '.join(fields)}"
        )
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"threshold must be a finite number, not {value!r}")
    update: dict[str, Any] = {"overrides": None}
    if field == "escalate_at":
        escalate = getattr(rule, "escalate", None)
        if escalate is None:
            raise ValueError(f"rule {rule.id!r} has no escalate level to set")
        update["escalate"] = escalate.model_copy(update={"at": float(value)})
    elif field == "raise_at":
        clear = "clear_below" if rule.kind == "over-limit" else "clear_above"
        # The hysteresis gap is part of the rule's design; moving the limit keeps it.
        # Both are required fields of the two kinds that have raise_at.
        limit, gap_end = current_value(rule, "raise_at") or 0.0, current_value(rule, clear) or 0.0
        update[clear] = float(value) - limit + gap_end
        update["raise_at"] = float(value)
    else:
        if getattr(rule, field) is None:
            used = default_field(rule)
            raise ValueError(f"rule {rule.id!r} judges by {used}, not {field}")
        update[field] = float(value)
    # The site model's checks, in either form of the rule (edge/config/behaviour.py).
    return rule.validated_copy(update)


def storm_tightened(rule: PointRule, factor: float) -> PointRule:
    """``rule`` as storm mode judges it: an over-limit rule's limits times ``factor``."""
    if rule.kind != "over-limit" or rule.raise_at <= 0 or factor == 1.0:
        return rule
    update: dict[str, Any] = {
        "raise_at": rule.raise_at * factor,
        "clear_below": rule.clear_below * factor,
    }
    if rule.escalate is not None:
        update["escalate"] = rule.escalate.model_copy(update={"at": rule.escalate.at * factor})
    return rule.model_copy(update=update)


def is_point_rule(rule: Rule) -> TypeGuard[PointRule]:
    """Whether ``rule`` judges a point (not device-offline, not composite): by its kind, so
    either form of the rule (edge/config/plain.py) answers alike."""
    return rule.kind not in ("device-offline", "composite")


def is_tunable(rule: object) -> TypeGuard[PointRule]:
    """Whether ``rule`` is of a kind with a settable threshold (and, for mypy, a point rule):
    by its kind, so either form of the rule answers alike."""
    return getattr(rule, "kind", None) in SETTABLE
