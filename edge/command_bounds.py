"""How far a command may change the gateway: the bounds the site file sets on remote power.

A valid signature says the platform sent a command, not that the command is sane: a
``set-threshold`` to 1e308 or a push that points the uplink at another broker would silence
a site as surely as a forged one. Two bounds, both pure functions of the site file:

- :func:`threshold_refusal`: a ``set-threshold`` value stays within what the point can report
  (the register's range times its scale, for a Modbus point) and within
  ``commands.threshold_factor`` of the site file's own value for that rule and device.
- :func:`engineering_reasons`: what a pushed site changes that needs the engineering key
  (edge/signing.py): where the data goes (brokers, credentials, TLS files, the topic prefix),
  who may command (the ``commands`` section), the outputs that sound the alarm, the alarm SMS,
  and any fire or critical rule, or a device, its bus or a derived point one of them judges.
  Whether a change to such a rule weakens it is not guessed: any change needs the engineering
  key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from edge.rules.tuning import current_value, default_field, is_point_rule

if TYPE_CHECKING:
    from edge.config.model import SiteConfig

__all__ = ["PointRange", "engineering_reasons", "reportable_range", "threshold_refusal"]

#: Lowest and highest value a point can report, in its unit; None when not known.
PointRange = tuple[float, float]
#: Raw ranges of the register types (value = raw x scale); f32 up to its largest finite value.
_RAW: Final[dict[str, tuple[float, float]]] = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
    "f32": (-3.4028234663852886e38, 3.4028234663852886e38),
}
#: Thresholds that are levels of the reading (compared with the reading's range).
_LEVELS: Final = {"raise_at", "clear_below", "clear_above", "escalate_at", "above", "below"}
#: Thresholds that are differences of readings (at most the range's span).
_SPANS: Final = {"change", "min_deviation"}
#: Severities whose rules only the engineering key may change.
GUARDED_SEVERITIES: Final = ("fire", "critical")
#: Uplink settings that decide where the data goes and who the gateway is to the broker.
_UPLINK_IDENTITY: Final = (
    "brokers",
    "topic_prefix",
    "client_id",
    "username",
    "password",
    "ca_file",
    "cert_file",
    "key_file",
)


def reportable_range(point_type: str, scale: float) -> PointRange | None:
    """What a Modbus point of ``point_type`` and ``scale`` can report (None: unknown type)."""
    raw = _RAW.get(point_type)
    if raw is None:
        return None
    low, high = raw[0] * scale, raw[1] * scale
    return (min(low, high), max(low, high))


def threshold_refusal(
    config: SiteConfig,
    rule_id: str,
    field: str | None,
    value: Any,
    devices: Sequence[str],
    *,
    point_range: Callable[[str, str], PointRange | None],
) -> str | None:
    """Why ``set-threshold`` of ``field`` (default: the rule's main one) to ``value`` on
    ``devices`` (the ones it would change) is beyond the bounds; None when within them, or when
    the rule or field does not exist (the rules engine names that problem itself).
    ``point_range(device, point)`` is what the device can report for the point."""
    rule = next((r for r in config.rules if r.id == rule_id), None)
    if rule is None or not is_point_rule(rule):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # the schema and the engine refuse it by name
    if not math.isfinite(value):
        return f"threshold must be a finite number, not {value!r}"
    try:
        chosen = default_field(rule) if field is None else field
    except ValueError:
        return None
    factor = config.commands.threshold_factor
    for device in devices or [""]:
        configured = rule.for_device(device) if device else rule
        site_value = current_value(configured, chosen)
        if site_value is None:
            continue
        where = f" on device {device!r}" if device else ""
        if site_value != 0:
            low, high = sorted((site_value / factor, site_value * factor))
            if not low <= value <= high:
                return (
                    f"{rule_id}.{chosen} {value:g} is beyond the bound{where}: within a factor "
                    f"{factor:g} of the site file's {site_value:g}, so {low:g} to {high:g} "
                    "(commands.threshold_factor; a larger change is a push-config)"
                )
        span = point_range(device, rule.point) if device else None
        if span is None:
            continue
        unit = f" {rule.unit}" if rule.unit else ""
        if chosen in _LEVELS and not span[0] <= value <= span[1]:
            return (
                f"{rule_id}.{chosen} {value:g} is beyond the bound{where}: the point "
                f"{rule.point} reports only {span[0]:g} to {span[1]:g}{unit}, so the alarm "
                "could never change"
            )
        if chosen in _SPANS and not 0 < value <= span[1] - span[0]:
            return (
                f"{rule_id}.{chosen} {value:g} is beyond the bound{where}: the point "
                f"{rule.point} changes by at most {span[1] - span[0]:g}{unit}"
            )
    return None


def engineering_reasons(old: SiteConfig, new: SiteConfig) -> list[str]:
    """What replacing the running site ``old`` by ``new`` changes that needs the engineering
    key, one reason each; empty when the operations key may push it."""
    reasons = [
        f"uplink.{name} changed"
        for name in _UPLINK_IDENTITY
        if getattr(old.uplink, name) != getattr(new.uplink, name)
    ]
    if old.commands != new.commands:
        reasons.append("commands changed (who may command this gateway, and how far)")
    if old.outputs != new.outputs:
        reasons.append("outputs changed (the pins and patterns that sound the alarm)")
    if old.sms != new.sms:
        reasons.append("sms changed (who is told of an alarm)")
    new_rules = {rule.id: rule for rule in new.rules}
    guarded = _guarded_rules(old)
    for rule in guarded:
        pushed = new_rules.get(rule.id)
        if pushed is None:
            reasons.append(f"rule {rule.id} ({rule.severity}) removed")
        elif pushed != rule:
            reasons.append(f"rule {rule.id} ({rule.severity}) changed")
    new_devices = {device.id: device for device in new.devices}
    for device in old.devices:
        judged_by = [rule.id for rule in guarded if _judges(rule, device.id, device.model)]
        if not judged_by or new_devices.get(device.id) == device:
            continue
        what = "removed" if device.id not in new_devices else "changed"
        reasons.append(f"device {device.id} {what} (judged by {', '.join(judged_by)})")
    guarded_buses = {
        device.bus
        for device in old.devices
        if any(_judges(rule, device.id, device.model) for rule in guarded)
    }
    new_buses = {bus.id: bus for bus in new.buses}
    for bus in old.buses:
        if bus.id in guarded_buses and new_buses.get(bus.id) != bus:
            what = "removed" if bus.id not in new_buses else "changed"
            reasons.append(f"bus {bus.id} {what} (it carries devices a fire/critical rule judges)")
    guarded_points = {getattr(rule, "point", None) for rule in guarded}
    new_derived = {point.name: point for point in new.derived_points}
    for point in old.derived_points:
        if point.name in guarded_points and new_derived.get(point.name) != point:
            reasons.append(f"derived point {point.name} changed (a fire/critical rule judges it)")
    return reasons


def _guarded_rules(config: SiteConfig) -> list[Any]:
    """The fire and critical rules, and the rules a fire or critical composite rule combines."""
    ids = {rule.id for rule in config.rules if rule.severity in GUARDED_SEVERITIES}
    for rule in config.rules:
        if rule.kind == "composite" and rule.id in ids:
            ids |= {term.rule for term in rule.terms()}
    return [rule for rule in config.rules if rule.id in ids]


def _judges(rule: Any, device_id: str, model: str) -> bool:
    if rule.kind == "composite":
        return False  # it judges other rules' alarms, which are guarded themselves
    devices = getattr(rule, "devices", None)
    models = getattr(rule, "models", None)
    return (devices is None or device_id in devices) and (models is None or model in models)
