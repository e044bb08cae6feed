"""Warnings about thresholds outside the plausible range of their point.

Each point of the catalogue (drivers/catalog.py, ``plausible`` in drivers/models/*.yaml) may
declare where an alarm threshold sensibly lies: residual current alarms at 30-1000 mA
(GB 50116 / GB 14287), mains voltage 150-280 V, cable temperature 40-120 °C, structural
displacement 0.5-50 mm. A threshold outside it runs, but most often it is a number written in
another unit than the point's (``raise_at: 0.3`` meant in amps on a point in mA): the warning
says which value the same number would be in each other unit of the dimension that fits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from drivers.catalog import PointSpec, device_points
from drivers.units import convert, dimension_of, format_quantity, spellings
from edge.config.model import PointRule, SiteConfig
from edge.config.thresholds import LEVEL_KEYS

__all__ = ["implausible_thresholds"]

Place = tuple[str | int, ...]

#: Dimensions of points that lean either way: the range bounds the size of a threshold.
_DIRECTIONAL = frozenset({"angle", "length"})


def _outside(value: float, spec: PointSpec) -> bool:
    if spec.plausible is None:
        return False  # a point without a plausible range has no implausible threshold
    low, high = spec.plausible
    size = abs(value) if dimension_of(spec.unit) in _DIRECTIONAL else value
    return not low <= size <= high


def _suggestion(value: float, spec: PointSpec) -> str:
    """``did you mean 300 mA (0.3 A)?`` when the number fits in another unit."""
    dimension = dimension_of(spec.unit)
    if dimension is None:
        return ""
    for unit in spellings(dimension):
        if unit == spec.unit:
            continue
        meant = convert(value, unit, spec.unit)
        if not _outside(meant, spec):
            return (
                f": did you mean {format_quantity(meant, spec.unit)} "
                f"({format_quantity(value, unit)})?"
            )
    return ""


def _levels(rule: Any) -> Iterable[tuple[tuple[str, ...], float]]:
    for key in LEVEL_KEYS:
        value = getattr(rule, key, None)
        if isinstance(value, float):
            yield (key,), value
    escalate = getattr(rule, "escalate", None)
    if escalate is not None:
        yield ("escalate", "at"), escalate.at


def implausible_thresholds(config: SiteConfig) -> Iterable[tuple[Place, str]]:
    """A warning for each level threshold outside its point's plausible range."""
    specs: dict[str, dict[str, PointSpec]] = {}
    for device in config.devices:
        catalogue = device_points(device.model, gauged=device.gauge_length is not None) or ()
        specs[device.id] = {p.name: p for p in catalogue}
    models = {device.id: device.model for device in config.devices}
    for index, rule in enumerate(config.rules):
        if not isinstance(rule, PointRule):
            continue
        point = rule.point
        seen: set[Place] = set()
        for device_id, points in specs.items():
            spec = points.get(point)
            if spec is None or spec.plausible is None:
                continue
            if rule.devices is not None and device_id not in rule.devices:
                continue
            if rule.models is not None and models[device_id] not in rule.models:
                continue
            overridden = (rule.overrides or {}).get(device_id) or {}
            judged = rule.for_device(device_id)
            for keys, value in _levels(judged):
                place: Place = ("rules", index, *keys)
                if keys[0] in overridden:
                    place = ("rules", index, "overrides", device_id, *keys)
                if place in seen or not _outside(value, spec):
                    continue
                seen.add(place)
                low, high = spec.plausible
                yield (
                    place,
                    f"{format_quantity(value, spec.unit)} is outside the plausible "
                    f"{low:g}-{high:g} {spec.unit} for an alarm on {point}"
                    f"{_suggestion(value, spec)}",
                )
