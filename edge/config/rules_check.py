"""Cross-references of the rules, derived points and zones of a site file.

The typed model checks each rule on its own (types, ranges, one of ``change`` or
``change_percent``...). What needs the whole file is checked here: the devices and models a
rule names exist, the point exists on those devices' models (or is a derived point of them),
the rule's unit is the point's unit, named alarm bits exist, composites refer to rules that
exist and not to themselves, and zones refer to devices and points that exist.

Points are looked up in the point catalogue (drivers/catalog.py) of every device kind,
Modbus model files and UART and GPIO drivers alike, when the caller knows the models (as
``edge check-config`` and ``edge run`` do).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.catalog import device_points

__all__ = ["PointTable", "check_rules"]

Loc = tuple[str | int, ...]
Report = Callable[[Loc, str], None]

#: Keys that may carry a threshold written with its unit ("300 mA"); blamed for a wrong unit
#: when the rule has no ``unit`` key of its own.
_THRESHOLD_KEYS = ("raise_at", "clear_below", "clear_above", "change", "above", "below")


@dataclass(frozen=True)
class PointTable:
    """The points of one device model: unit and bit names of each."""

    units: Mapping[str, str]
    bits: Mapping[str, Collection[str]] = field(default_factory=dict)


def load_point_table(model: str, *, gauged: bool = False) -> PointTable | None:
    """The points of a device of ``model`` from the point catalogue, ``None`` for a model
    the catalogue does not know."""
    points = device_points(model, gauged=gauged)
    if points is None:
        return None
    return PointTable(
        units={p.name: p.unit for p in points},
        bits={p.name: list(p.bits) for p in points if p.bits},
    )


def _did_you_mean(word: str, names: Collection[str]) -> str:
    # Only a rule with a mistake needs it: a running gateway does not carry difflib.
    import difflib  # noqa: PLC0415

    close = difflib.get_close_matches(word, sorted(names), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _strings(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [v for v in value if isinstance(v, str)]


def check_rules(
    data: Mapping[str, Any],
    report: Report,
    line_of: Callable[[Loc], int],
    known_models: Collection[str] | None,
    written: Collection[Loc] = (),
    *,
    point_table: Callable[..., PointTable | None] = load_point_table,
) -> None:
    """Report every broken reference of ``rules``, ``derived_points`` and ``zones``.

    ``written`` holds the places that appear in the file, so that a mistake is pinned to a key
    the installer actually wrote.
    """
    devices: dict[str, str] = {}
    #: Devices whose driver adds displacement points (a tilt sensor with a gauge length).
    gauged: set[str] = set()
    for item in data.get("devices") or []:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            model = item.get("model")
            devices[item["id"]] = model if isinstance(model, str) else ""
            if item.get("gauge_length") is not None:
                gauged.add(item["id"])

    tables: dict[tuple[str, bool], PointTable | None] = {}

    def table_of(device: str) -> PointTable | None:
        model = devices.get(device, "")
        if known_models is None or model not in known_models:
            return None
        key = (model, device in gauged)
        if key not in tables:
            # A gauged tilt sensor also reports <axis>_displacement (mm).
            tables[key] = point_table(model, gauged=key[1])
        return tables[key]

    def check_devices(loc: Loc, value: Any) -> None:
        for position, target in enumerate(_strings(value) or []):
            if target not in devices:
                report(
                    (*loc, position),
                    f"unknown device '{target}' (defined devices: {_listing(sorted(devices))})",
                )

    def check_models(loc: Loc, value: Any) -> None:
        if known_models is None:
            return
        for position, model in enumerate(_strings(value) or []):
            if model not in known_models:
                report(
                    (*loc, position),
                    f"unknown device model '{model}' (known models: "
                    f"{_listing(sorted(known_models))})",
                )

    def targets(item: Mapping[str, Any]) -> list[str]:
        listed = _strings(item.get("devices"))
        models = _strings(item.get("models"))
        chosen = [d for d in devices if listed is None or d in listed]
        return [d for d in chosen if models is None or devices[d] in models]

    # Derived points: what they are called on which devices, and their unit.
    derived: dict[tuple[str, str], str] = {}
    for index, item in enumerate(data.get("derived_points") or []):
        if not isinstance(item, dict):
            continue
        loc: Loc = ("derived_points", index)
        check_devices((*loc, "devices"), item.get("devices"))
        check_models((*loc, "models"), item.get("models"))
        gauges = item.get("gauge_lengths") if isinstance(item.get("gauge_lengths"), dict) else {}
        for device in gauges or {}:
            if device not in devices:
                report((*loc, "gauge_lengths", device), f"unknown device '{device}'")
        # A displacement needs a length on every device it is derived for.
        ungauged = item.get("kind") == "displacement" and item.get("gauge_length") is None
        name, source = item.get("name"), item.get("source")
        if not isinstance(name, str) or not isinstance(source, str):
            continue
        for device in targets(item):
            table = table_of(device)
            if table is not None and source not in table.units:
                report(
                    (*loc, "source"),
                    f"device '{device}' (model {devices[device]}) has no point '{source}'"
                    f"{_did_you_mean(source, table.units)} "
                    f"(its points: {_listing(sorted(table.units))})",
                )
                break
            if table is not None and name in table.units:
                report(
                    (*loc, "name"),
                    f"'{name}' is already a point of model {devices[device]}; "
                    "give the derived point another name",
                )
                break
            if ungauged and device not in (gauges or {}):
                report(
                    (*loc, "gauge_lengths"),
                    f"device '{device}' has no gauge length for '{name}': list it here, "
                    "or give gauge_length for every device",
                )
                break
            derived[(device, name)] = str(item.get("unit", ""))

    rules = [(i, r) for i, r in enumerate(data.get("rules") or []) if isinstance(r, dict)]
    rule_ids = {r["id"]: i for i, r in rules if isinstance(r.get("id"), str)}
    for index, rule in rules:
        loc = ("rules", index)
        kind = rule.get("kind")
        check_models((*loc, "models"), rule.get("models"))
        if kind == "composite":
            _check_composite(rule, loc, rule_ids, devices, report)
            continue
        if kind == "device-offline":
            check_devices((*loc, "devices"), rule.get("devices"))
            continue
        point = rule.get("point")
        if not isinstance(point, str):
            continue
        chosen = targets(rule)
        overrides = rule.get("overrides")
        if isinstance(overrides, dict):
            for device in overrides:
                if device not in devices:
                    report((*loc, "overrides", device), f"unknown device '{device}'")
                elif device not in chosen:
                    report(
                        (*loc, "overrides", device),
                        f"device '{device}' is not judged by this rule (see devices and models)",
                    )
        _check_point(rule, loc, point, chosen, devices, derived, table_of, report, written)
    _check_cycles(rules, report)

    for index, zone in enumerate(data.get("zones") or []):
        if not isinstance(zone, dict):
            continue
        check_devices(("zones", index, "devices"), zone.get("devices"))
        for position, evidence in enumerate(zone.get("evidence") or []):
            if not isinstance(evidence, dict):
                continue
            where: Loc = ("zones", index, "evidence", position)
            device, point = evidence.get("device"), evidence.get("point")
            if not isinstance(device, str):
                continue
            if device not in devices:
                report((*where, "device"), f"unknown device '{device}'")
                continue
            table = table_of(device)
            if (
                table is not None
                and isinstance(point, str)
                and point not in table.units
                and (device, point) not in derived
            ):
                report(
                    (*where, "point"),
                    f"device '{device}' (model {devices[device]}) has no point '{point}'"
                    f"{_did_you_mean(point, table.units)} "
                    f"(its points: {_listing(sorted(table.units))})",
                )


def _check_cycles(rules: list[tuple[int, dict[str, Any]]], report: Report) -> None:
    """Composites that depend on each other in a ring would never settle."""
    refers: dict[str, list[str]] = {}
    where: dict[str, int] = {}
    for index, rule in rules:
        if rule.get("kind") != "composite" or not isinstance(rule.get("id"), str):
            continue
        terms = rule.get("all") if rule.get("all") is not None else rule.get("any")
        names = []
        for term in terms if isinstance(terms, list) else []:
            name = term.get("rule") if isinstance(term, dict) else term
            if isinstance(name, str):
                names.append(name)
        refers[rule["id"]] = names
        where[rule["id"]] = index
    reported: set[str] = set()
    for start, first in refers.items():
        path = [start]
        seen = {start}
        stack = [iter(first)]
        while stack:
            children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                continue
            if child == start and start not in reported:
                reported.update(path)
                report(
                    ("rules", where[start], "id"),
                    f"composite rules refer to each other in a ring: {' -> '.join([*path, start])}",
                )
            elif child in refers and child not in seen:
                seen.add(child)
                path.append(child)
                stack.append(iter(refers[child]))


def _check_point(  # noqa: PLR0917 -- one private helper of check_rules, called once
    rule: Mapping[str, Any],
    loc: Loc,
    point: str,
    chosen: list[str],
    devices: Mapping[str, str],
    derived: Mapping[tuple[str, str], str],
    table_of: Callable[[str], PointTable | None],
    report: Report,
    written: Collection[Loc],
) -> None:
    listed = rule.get("devices") is not None
    having: list[str] = []
    unknown = False
    units: set[str] = set()
    for device in chosen:
        if (device, point) in derived:
            having.append(device)
            units.add(derived[(device, point)])
            continue
        table = table_of(device)
        if table is None:
            unknown = True
            continue
        if point in table.units:
            having.append(device)
            units.add(table.units[point])
            bits = rule.get("bits")
            if rule.get("kind") == "alarm-bits" and isinstance(bits, list) and len(having) == 1:
                names = table.bits.get(point, [])
                for position, bit in enumerate(bits):
                    if isinstance(bit, str) and bit not in names:
                        report(
                            (*loc, "bits", position),
                            f"point '{point}' of model {devices[device]} has no bit '{bit}' "
                            f"(its bits: {_listing(list(names)) or 'none'})",
                        )
        elif listed:
            report(
                (*loc, "point"),
                f"device '{device}' (model {devices[device]}) has no point '{point}'"
                f"{_did_you_mean(point, table.units)} "
                f"(its points: {_listing(sorted(table.units))}; or define a derived point)",
            )
            return
    if not having and not unknown and chosen:
        offered: set[str] = {name for d, name in derived if d in chosen}
        for device in chosen:
            offered.update((table_of(device) or PointTable({})).units)
        report(
            (*loc, "point"),
            f"no device this rule judges has a point '{point}'{_did_you_mean(point, offered)} "
            f"(their points: {_listing(sorted(offered))}; check the name, or define a "
            "derived point)",
        )
        return
    unit = rule.get("unit")
    if not isinstance(unit, str):
        # The file as written (when other mistakes kept the model from reading it).
        unit = next(
            (u for key in _THRESHOLD_KEYS if (u := _unit_of(rule.get(key))) is not None), None
        )
    if isinstance(unit, str) and units and unit not in units:
        blame = next(
            (key for key in ("unit", *_THRESHOLD_KEYS) if (*loc, key) in written),
            "unit",
        )
        report(
            (*loc, blame),
            f"thresholds are in '{unit}' but point '{point}' is in "
            f"'{'/'.join(sorted(units))}'; write them in the point's unit",
        )


def _unit_of(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    match = re.match(r"^\s*[-+]?\d+(?:\.\d+)?\s*(\S+)\s*$", value)
    return None if match is None else match.group(1)


def _check_composite(
    rule: Mapping[str, Any],
    loc: Loc,
    rule_ids: Mapping[str, int],
    devices: Mapping[str, str],
    report: Report,
) -> None:
    key = "all" if rule.get("all") is not None else "any"
    terms = rule.get(key)
    if not isinstance(terms, list):
        return
    for position, term in enumerate(terms):
        name = (
            term if isinstance(term, str) else term.get("rule") if isinstance(term, dict) else None
        )
        if not isinstance(name, str):
            continue
        where: Loc = (
            (*loc, key, position) if isinstance(term, str) else (*loc, key, position, "rule")
        )
        if name == rule.get("id"):
            report(where, "a composite rule cannot refer to itself")
        elif name not in rule_ids:
            report(where, f"unknown rule '{name}' (defined rules: {_listing(sorted(rule_ids))})")
        if isinstance(term, dict):
            for index, device in enumerate(_strings(term.get("devices")) or []):
                if device not in devices:
                    report((*loc, key, position, "devices", index), f"unknown device '{device}'")
