"""Thresholds written with a unit, converted to the unit of the point they judge.

``above: 0.4 cm`` on a displacement in mm is ``above: 4`` (mm), never ``0.4``: a unit is
either converted (a unit of the same dimension, drivers/units.py) or refused (another
dimension, an unknown unit, two units, digits that are not ASCII). This runs on the file's data
before the typed model, where the point catalogue says which unit the point is in; each
conversion is reported as a note (``rules[0].above: 0.4 cm -> 4 mm``) so the installer sees
the value the gateway will compare.

A rule may also say ``unit: cm`` and write bare numbers: they are in that unit and converted
the same way. Where the point's unit is not known (an unknown model, reported on its own),
the values are left as written and the model keeps the unit beside them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers.catalog import device_points
from drivers.units import UnitError, convert, format_quantity

__all__ = [
    "LEVEL_KEYS",
    "PATTERN",
    "THRESHOLD_KEYS",
    "Conversion",
    "command_threshold",
    "normalise_thresholds",
    "parse_quantity",
]

Loc = tuple[str | int, ...]

#: Thresholds that are levels of the reading: they lie where readings lie.
LEVEL_KEYS = ("raise_at", "clear_below", "clear_above", "above", "below")
#: Every key of a point rule that holds a threshold in the point's unit.
THRESHOLD_KEYS = (*LEVEL_KEYS, "change", "min_deviation", "stuck_tolerance")

_NUMBER = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
#: A number in ASCII digits and at most one unit, with or without a space between: the JSON
#: Schema of the site file uses the same pattern.
PATTERN = rf"^\s*({_NUMBER})\s*([^\s0-9.+-]\S*)?\s*$"
_QUANTITY = re.compile(PATTERN)


@dataclass(frozen=True, slots=True)
class Conversion:
    """One threshold converted to its point's unit, for the note check-config prints."""

    loc: Loc
    written: str
    value: float
    unit: str

    def __str__(self) -> str:
        return f"{self.written} -> {format_quantity(self.value, self.unit)}"


def parse_quantity(text: str) -> tuple[float, str]:
    """``"300 mA"`` -> ``(300.0, "mA")``; ``"300"`` -> ``(300.0, "")``.

    ``ValueError`` with a message for the installer: two units, a word, a number in digits
    other than ASCII 0-9 (full-width digits look the same on screen but is another text;
    it is refused rather than guessed), NaN or infinity.
    """
    match = _QUANTITY.match(text)
    if match is None and _QUANTITY.match(unicodedata.normalize("NFKC", text)):
        raise ValueError(
            f"'{text}' has digits or signs that are not ASCII (full-width or another script); "
            "type the number with 0-9"
        )
    if match is None:
        raise ValueError(
            f"'{text}' is not a threshold: write a number and at most one unit, "
            "e.g. '300 mA' or '4 mm'"
        )
    number, unit = match.groups()
    return float(number), unit or ""


def _points_unit(
    rule: Mapping[str, Any],
    devices: Mapping[str, tuple[str, bool]],
    derived: Mapping[tuple[str, str], str],
) -> str | None:
    """The unit of the rule's point on the devices it judges; None when unknown or not one."""
    point = rule.get("point")
    if not isinstance(point, str):
        return None
    listed = rule.get("devices")
    models = rule.get("models")
    units: set[str] = set()
    for device, (model, gauged) in devices.items():
        if isinstance(listed, list) and device not in listed:
            continue
        if isinstance(models, list) and model not in models:
            continue
        if (device, point) in derived:
            units.add(derived[(device, point)])
            continue
        for spec in device_points(model, gauged=gauged) or ():
            if spec.name == point:
                units.add(spec.unit)
    return units.pop() if len(units) == 1 else None


def _derived_units(
    data: Mapping[str, Any], devices: Mapping[str, tuple[str, bool]]
) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for item in data.get("derived_points") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        listed, models = item.get("devices"), item.get("models")
        for device, (model, _) in devices.items():
            if isinstance(listed, list) and device not in listed:
                continue
            if isinstance(models, list) and model not in models:
                continue
            found[(device, item["name"])] = str(item.get("unit", ""))
    return found


def normalise_thresholds(
    data: dict[str, Any],
    report: Callable[[Loc, str], None],
) -> list[Conversion]:
    """Convert, in place, every threshold of every point rule of ``data`` to its point's unit
    (as the point catalogue gives it); report every unit that cannot be converted. Returns the
    conversions made."""
    devices: dict[str, tuple[str, bool]] = {}
    for item in data.get("devices") or []:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            model = item.get("model")
            devices[item["id"]] = (
                model if isinstance(model, str) else "",
                item.get("gauge_length") is not None,
            )
    derived = _derived_units(data, devices)
    conversions: list[Conversion] = []
    for index, rule in enumerate(data.get("rules") or []):
        if not isinstance(rule, dict) or rule.get("kind") in ("composite", "device-offline"):
            continue
        unit = _points_unit(rule, devices, derived)
        if unit is None:
            continue
        loc: Loc = ("rules", index)
        declared = rule.get("unit") if isinstance(rule.get("unit"), str) else None
        if declared is not None:
            try:
                convert(1.0, declared, unit)
            except UnitError as exc:
                report((*loc, "unit"), str(exc))
                continue
        _convert_in(rule, loc, declared, unit, report, conversions)
        overrides = rule.get("overrides")
        if isinstance(overrides, dict):
            for device, changes in overrides.items():
                if isinstance(changes, dict):
                    where = (*loc, "overrides", device)
                    _convert_in(changes, where, declared, unit, report, conversions)
        rule["unit"] = unit
    return conversions


def _convert_in(  # noqa: PLR0917 -- one private helper, called twice
    fields: dict[str, Any],
    loc: Loc,
    declared: str | None,
    unit: str,
    report: Callable[[Loc, str], None],
    conversions: list[Conversion],
) -> None:
    places: list[tuple[dict[str, Any], str, Loc]] = [(fields, k, (*loc, k)) for k in THRESHOLD_KEYS]
    escalate = fields.get("escalate")
    if isinstance(escalate, dict):
        places.append((escalate, "at", (*loc, "escalate", "at")))
    for holder, key, where in places:
        value = holder.get(key)
        if isinstance(value, bool) or value is None:
            continue  # the model refuses a bool where a number belongs
        if isinstance(value, int | float):
            written_unit = declared or unit
            number, text = float(value), f"{value:g} {declared}" if declared else ""
        elif isinstance(value, str):
            try:
                number, written_unit = parse_quantity(value)
            except ValueError as exc:
                report(where, str(exc))
                continue
            written_unit = written_unit or declared or unit
            text = value.strip()
        else:
            continue
        try:
            converted = convert(number, written_unit, unit)
        except UnitError as exc:
            report(where, str(exc))
            continue
        holder[key] = converted
        if written_unit != unit and text:
            conversions.append(Conversion(where, text, converted, unit))


#: set-threshold fields that are not in the point's unit.
_UNITLESS_FIELDS = {"change_percent": "%", "sensitivity": ""}


def command_threshold(value: object, field: str | None, unit: str | None) -> float:
    """The value of a set-threshold command in the rule's ``unit``: a number as it is, a
    string with a unit (``"0.5 A"``) converted like the site file's thresholds.

    ``ValueError`` for a unit that does not convert, a unit on a field that is not in the
    point's unit (``change_percent``, ``sensitivity``), or a unit where the rule's point has
    none known."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"threshold must be a number or a number with a unit, not {value!r}")
    if not isinstance(value, str):
        return float(value)
    number, written = parse_quantity(value)
    if not written:
        raise ValueError(f"send a number, or a number with its unit, not the text '{value}'")
    if field in _UNITLESS_FIELDS:
        if written == _UNITLESS_FIELDS[field]:
            return number
        raise ValueError(f"{field} is a plain number; '{value}' carries a unit")
    if not unit:
        raise ValueError(
            f"the rule's point has no unit to convert '{value}' to; send the number alone"
        )
    try:
        return convert(number, written, unit)
    except UnitError as exc:
        raise ValueError(str(exc)) from None
