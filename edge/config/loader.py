"""Reading the site file: YAML with line numbers, validation, cross-references, readable errors.

The installer's question is always "which line is wrong?", so the YAML is composed into a node
tree first and every mapping key and sequence item keeps its position. Validation then runs in
two stages, and both report *everything* they find, each issue naming ``file:line:column``:

1. the typed model (:class:`~edge.config.model.SiteConfig`): types, ranges, unknown keys;
2. cross-references the model cannot see on its own: unique ids, buses and devices that are
   referred to but not defined, two devices on one Modbus address, unknown device models.

When stage 1 fails, the cross-references that can be checked on the raw data still run, so one
``edge check-config`` shows every mistake at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from drivers.catalog import BUS_FAMILY, GPIO_MODELS, SERIAL_MODELS, family_of
from drivers.modbus.model import ModelError, load_model
from drivers.yamlpos import Document, Loc, Position, YamlError, decode, load_yaml
from drivers.yamlpos import dotted as _dotted
from edge.config.issues import ConfigError, ConfigIssue
from edge.config.model import Device, SiteConfig
from edge.config.rules_check import check_rules
from edge.config.storage import check_storage, check_storage_of_parts
from edge.config.thresholds import normalise_thresholds
from edge.config.warning_checks import ConfigWarning, site_warnings, url_without_login

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "check_config_main",
    "load_site",
    "load_site_checked",
    "parse_site",
    "parse_site_checked",
    "report_config",
]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def load_site(
    path: str | os.PathLike[str], *, known_models: Collection[str] | None = None
) -> SiteConfig:
    """Read, validate and cross-check the site file at ``path``.

    Raises :class:`ConfigError` for any mistake in the file, and ``OSError`` (for example
    ``FileNotFoundError``) when the file cannot be read at all. ``known_models`` is the set of
    device model names the drivers provide; ``None`` skips that check.
    """
    return load_site_checked(path, known_models=known_models)[0]


def load_site_checked(
    path: str | os.PathLike[str], *, known_models: Collection[str] | None = None
) -> tuple[SiteConfig, list[ConfigWarning]]:
    """:func:`load_site`, with the warnings about the valid file beside it."""
    filename = os.fspath(path)
    try:
        text = decode(Path(path).read_bytes(), filename)
    except YamlError as exc:
        raise ConfigError([exc.issue]) from None
    return parse_site_checked(text, filename, known_models=known_models)


def parse_site(
    text: str, filename: str, *, known_models: Collection[str] | None = None
) -> SiteConfig:
    """Validate the site file contents ``text``; ``filename`` is used in the error messages.

    Returns the :class:`SiteConfig` or raises :class:`ConfigError` listing every issue.
    """
    return parse_site_checked(text, filename, known_models=known_models)[0]


def parse_site_checked(
    text: str, filename: str, *, known_models: Collection[str] | None = None
) -> tuple[SiteConfig, list[ConfigWarning]]:
    """:func:`parse_site`, with the warnings about the valid file beside it
    (edge/config/warning_checks.py), each placed at its line and column."""
    doc, data = _read(text, filename)

    # Thresholds with units, in the unit of their point, before the model reads them.
    unit_issues: list[ConfigIssue] = []
    conversions = normalise_thresholds(
        data,
        lambda loc, message: unit_issues.append(
            ConfigIssue(filename, *doc.position(loc), _dotted(loc), message)
        ),
    )
    config: SiteConfig | None = None
    model_issues: list[ConfigIssue] = []
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        model_issues = [_issue_from_error(err, data, doc, filename) for err in exc.errors()]

    # A refused value that was converted: say what was written, not only the number compared.
    written = {_dotted(c.loc): c for c in conversions}
    model_issues = [
        dataclasses.replace(issue, message=f"{issue.message} (written {written[issue.field]})")
        if issue.field in written
        else issue
        for issue in model_issues
    ]
    refused = {*map(_dotted, doc.unreadable), *(issue.field for issue in unit_issues)}
    model_issues = [
        issue
        for issue in model_issues
        if not _within(issue.field, refused)
        # A refused unit is the one mistake, not also a second unit in the rule.
        and not (
            "share one unit" in issue.message
            and any(_within(field, [issue.field]) for field in refused)
        )
    ]
    issues = doc.issues + unit_issues + model_issues
    # A value the model already refused is not cross-checked again (one message per mistake).
    reported = {issue.field for issue in model_issues}
    view: Mapping[str, Any] = config.model_dump() if config is not None else data
    for issue in _cross_check(view, doc, filename, known_models):
        if issue.field not in reported:
            issues.append(issue)

    def storage_issue(loc: Loc, message: str) -> None:
        if _dotted(loc) not in reported:
            issues.append(ConfigIssue(filename, *doc.position(loc), _dotted(loc), message))

    if config is not None:
        check_storage(config, storage_issue)
    elif isinstance(data, Mapping):
        check_storage_of_parts(data, storage_issue, device=Device.model_validate)

    if config is None and not issues:  # the model refused it without saying where
        issues.append(ConfigIssue(filename, 1, 1, "", "the site file did not validate"))
    if issues or config is None:
        raise ConfigError(issues)

    def position(place: Loc) -> tuple[int, int]:
        return doc.position(place)

    notes = [
        ConfigWarning(filename, *position(c.loc), _dotted(c.loc), str(c), kind="note")
        for c in conversions
    ]
    warnings = site_warnings(config, filename, position)
    return config, notes + warnings


def _read(text: str, filename: str) -> tuple[Document, dict[str, Any]]:
    """The site file's text as data with positions; :class:`ConfigError` when it is not a
    mapping of sections at all."""
    try:
        doc = load_yaml(text, filename)
    except YamlError as exc:
        raise ConfigError([exc.issue]) from None
    if doc.empty:
        raise ConfigError(
            [
                ConfigIssue(
                    filename,
                    1,
                    1,
                    "",
                    f"the file is empty; a site file needs the sections {_required_sections()}",
                )
            ]
        )
    if not isinstance(doc.data, dict):
        raise ConfigError(
            [
                ConfigIssue(
                    filename,
                    *doc.position(()),
                    "",
                    "the top level of a site file must be a mapping with the sections "
                    f"{_required_sections()}; found {doc.top}",
                )
            ]
        )
    return doc, doc.data


def _within(field: str, places: Collection[str]) -> bool:
    """Whether ``field`` is one of ``places`` or inside one of them."""
    return any(field == place or field.startswith((f"{place}.", f"{place}[")) for place in places)


def report_config(
    path: str,
    out: TextIO,
    *,
    known_models: Collection[str] | None = None,
    quiet: bool = False,
    strict: bool = False,
    warn: Callable[[ConfigWarning], None] | None = None,
) -> tuple[int, SiteConfig | None]:
    """Load the site file at ``path`` and report on ``out``; returns the exit status and, when
    the file is valid, the configuration (so that ``edge run`` reads the file only once).

    Status 0: the file is valid (its warnings, one per line, and a one-line summary are printed
    unless ``quiet``); 1: the file has mistakes (all are printed, one per line, then a count),
    or with ``strict`` it has warnings (printed, then counted as errors); 2: the file cannot be
    read (one line, no traceback). ``warn`` takes each warning instead of ``out`` (``edge run``
    logs them).
    """
    try:
        config, warnings = load_site_checked(path, known_models=known_models)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=out)
        count = len(exc.issues)
        print(f"{count} error{'s' if count != 1 else ''}; nothing was started", file=out)
        return 1, None
    except OSError as exc:
        print(f"error: cannot read {path}: {_os_reason(exc)}", file=out)
        return 2, None
    notes = [w for w in warnings if w.kind == "note"]
    warnings = [w for w in warnings if w.kind != "note"]
    if strict and warnings:
        for warning in warnings:
            print(str(warning).replace(": warning: ", ": error: ", 1), file=out)
        count = len(warnings)
        print(f"{count} warning{'s' if count != 1 else ''} taken as errors (--strict)", file=out)
        return 1, None
    for warning in [*notes, *warnings]:
        if warn is not None:
            warn(warning)
        elif not quiet:
            print(warning, file=out)
    if not quiet:
        print(
            f"ok: gateway {config.gateway.id}, {_count(len(config.buses), 'bus', 'buses')}, "
            f"{_count(len(config.devices), 'device')}, {_count(len(config.rules), 'rule')}",
            file=out,
        )
    return 0, config


def check_config_main(
    path: str,
    out: TextIO,
    *,
    known_models: Collection[str] | None = None,
    quiet: bool = False,
) -> int:
    """The body of ``edge check-config FILE``: :func:`report_config`'s exit status."""
    status, _ = report_config(path, out, known_models=known_models, quiet=quiet)
    return status


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory, not a file"
    return exc.strerror or type(exc).__name__


# --------------------------------------------------------------------------------------------
# Values in messages
# --------------------------------------------------------------------------------------------


def _is_secret(loc: Loc) -> bool:
    """Whether the value at ``loc`` is a secret that no message may repeat."""
    return any(
        isinstance(part, str) and part.endswith(("password", "secret", "token")) for part in loc
    )


def _describe(value: object) -> str:
    """A short, installer-readable rendering of a value found in the file."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _required_sections() -> str:
    return ", ".join(name for name, field in SiteConfig.model_fields.items() if field.is_required())


# --------------------------------------------------------------------------------------------
# Places and paths
# --------------------------------------------------------------------------------------------


def _clean_loc(loc: Sequence[str | int], data: Any) -> Loc:
    """Pydantic's error location without its discriminator tags (``'modbus-rtu'``)."""
    cleaned: list[str | int] = []
    current: Any = data
    for part in loc:
        if isinstance(current, dict):
            if part in current:
                current = current[part]
            elif isinstance(part, str) and current.get("kind") == part:
                continue  # the tag pydantic inserts for a discriminated union
            else:
                current = None
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            current = None
        cleaned.append(part)
    return tuple(cleaned)


def _value_at(data: Any, loc: Loc) -> Any:
    """The value at ``loc`` in the parsed data, or ``None`` when there is none."""
    current = data
    for part in loc:
        if isinstance(current, dict) and isinstance(part, str):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
        else:
            return None
    return current


# --------------------------------------------------------------------------------------------
# What the model expects at a place (for suggestions)
# --------------------------------------------------------------------------------------------


def _strip(tp: Any) -> Any:
    """Drop ``Annotated`` wrappers and ``None`` from optional types."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(tp) if arg is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _tags(model: type[BaseModel]) -> tuple[Any, ...]:
    field = model.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not Literal:
        return ()
    return typing.get_args(field.annotation)


def _union_members(tp: Any) -> list[type[BaseModel]]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [
            arg
            for arg in typing.get_args(tp)
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
    return []


def _expected_at(loc: Sequence[str | int]) -> tuple[Any, str | None]:
    """The type pydantic expects at ``loc`` (its raw loc, tags included) and the nearest
    field description."""
    tp: Any = SiteConfig
    description: str | None = None
    for part in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if isinstance(part, str) and part in tp.model_fields:
                field = tp.model_fields[part]
                tp = field.annotation
                description = field.description
            elif part in _tags(tp):
                continue
            else:
                return None, description
        elif typing.get_origin(tp) is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif members := _union_members(tp):
            chosen = [member for member in members if part in _tags(member)]
            if not chosen:
                return None, description
            tp = chosen[0]
        else:
            return None, description
    return _strip(tp), description


def _known_keys(loc: Sequence[str | int]) -> list[str]:
    model, _ = _expected_at(loc)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    # Only a site file with a mistake needs it: a running gateway does not carry difflib.
    import difflib  # noqa: PLC0415

    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# Pydantic errors -> issues
# --------------------------------------------------------------------------------------------

_NUMBER_TYPES = {"int_type", "int_parsing", "int_from_float"}
_FLOAT_TYPES = {"float_type", "float_parsing"}
_BOOL_TYPES = {"bool_type", "bool_parsing"}
_MAPPING_TYPES = {"model_type", "dict_type", "model_attributes_type"}


def _issue_from_error(err: ErrorDetails, data: Any, doc: Document, filename: str) -> ConfigIssue:
    raw_loc = err["loc"]
    loc = _clean_loc(raw_loc, data)
    kind = err["type"]
    value = err.get("input")
    got = _describe(value)
    secret = _is_secret(loc)
    if secret:
        # An error message goes to terminals, logs and tickets: a password never does.
        got = "a value that is not shown here (it is a secret)"
    elif isinstance(value, str):
        got = _describe(url_without_login(value))
    message = err["msg"]

    if kind == "missing":
        message = f"missing required key '{loc[-1]}'" if loc else "missing required value"
    elif kind == "extra_forbidden":
        key = str(loc[-1])
        present = _value_at(data, loc[:-1])
        known = [
            k for k in _known_keys(raw_loc[:-1]) if not (isinstance(present, dict) and k in present)
        ]
        message = f"unknown key '{key}'"
        suggestion = _suggest(key, known)
        if suggestion is not None:
            message += f"; did you mean '{suggestion}'?"
        elif known:
            message += f" (allowed here: {', '.join(known)})"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        expected_type, _ = _expected_at(raw_loc)
        members = _union_members(expected_type)
        if isinstance(expected_type, type) and issubclass(expected_type, BaseModel):
            members = [expected_type]
        tags = [str(tag) for member in members for tag in _tags(member)]
        expected = ", ".join(f"'{tag}'" for tag in tags)
        loc = (*loc, "kind")
        if kind == "union_tag_not_found":
            message = f"missing required key 'kind' (one of {expected})"
        else:
            tag = str(err.get("ctx", {}).get("tag", _value_at(data, loc)))
            message = f"unknown kind '{tag}'; expected one of {expected}"
            suggestion = _suggest(tag, tags)
            if suggestion is not None:
                message += f" (did you mean '{suggestion}'?)"
    elif kind == "value_error":
        message = re.sub(r"^Value error, ", "", message)
        loc = _blame_key(loc, message, data, doc.places)
    elif kind in _MAPPING_TYPES:
        message = f"expected a mapping of keys and values, found {got}"
    elif kind == "list_type":
        message = f"expected a list, found {got}"
    elif kind == "string_type":
        if isinstance(value, bool | int | float) and not secret:
            message = f'expected text, found {got}; put it in quotes: "{got}"'
        else:
            message = f"expected text, found {got}"
    elif kind in _NUMBER_TYPES:
        message = f"expected a whole number, found {got}"
    elif kind in _FLOAT_TYPES:
        message = f"expected a number, found {got}"
    elif kind == "finite_number":
        message = f"expected a finite number, found {got}"
    elif kind in _BOOL_TYPES:
        message = f"expected true or false, found {got}"
    elif kind == "string_pattern_mismatch":
        _, description = _expected_at(raw_loc)
        message = f"{got} is not allowed here"
        if description:
            message += f": {description[0].lower()}{description[1:]}"
        else:
            message += f" (must match {err.get('ctx', {}).get('pattern')!r})"
    elif kind == "too_short" and isinstance(value, list):
        minimum = err.get("ctx", {}).get("min_length", 1)
        message = f"needs at least {_count(int(minimum), 'entry', 'entries')}, found {len(value)}"
    else:
        message = f"{message}; found {got}" if not isinstance(value, dict | list) else message

    line, column = doc.position(loc)
    return ConfigIssue(filename, line, column, _dotted(loc), message)


def _blame_key(loc: Loc, message: str, data: Any, positions: Mapping[Loc, Position]) -> Loc:
    """A check across several keys of one mapping ("clear_below must not be above raise_at")
    is pinned to the key it names that comes last in the file: that is where the conflict
    becomes visible."""
    mapping = _value_at(data, loc)
    if not isinstance(mapping, dict):
        return loc
    named = [
        (*loc, key)
        for key in mapping
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", message) and (*loc, key) in positions
    ]
    if not named:
        return loc
    return max(named, key=lambda place: positions[place])


# --------------------------------------------------------------------------------------------
# Cross-references
# --------------------------------------------------------------------------------------------


def _entries(data: Mapping[str, Any], section: str) -> list[tuple[int, dict[str, Any]]] | None:
    """The mappings of a list section, with their indices; ``None`` when the section is not a
    list (then references into it cannot be checked)."""
    items = data.get(section)
    if not isinstance(items, list):
        return None
    return [(index, item) for index, item in enumerate(items) if isinstance(item, dict)]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _cross_check(
    data: Mapping[str, Any],
    doc: Document,
    filename: str,
    known_models: Collection[str] | None,
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def report(loc: Loc, message: str) -> None:
        issues.append(ConfigIssue(filename, *doc.position(loc), _dotted(loc), message))

    def line_of(loc: Loc) -> int:
        return doc.line(loc)

    def unique_ids(section: str, noun: str) -> list[str] | None:
        entries = _entries(data, section)
        if entries is None:
            return None
        first: dict[str, int] = {}
        for index, entry in entries:
            ident = _text(entry.get("id"))
            if ident is None:
                continue
            if ident in first:
                report(
                    (section, index, "id"),
                    f"duplicate {noun} id '{ident}'; first defined at line "
                    f"{line_of((section, first[ident], 'id'))} ({section}[{first[ident]}])",
                )
            else:
                first[ident] = index
        return list(first)

    bus_ids = unique_ids("buses", "bus")
    device_ids = unique_ids("devices", "device")
    unique_ids("rules", "rule")

    # Two buses on one serial port would fight over the line (and pyserial's exclusive lock).
    serial_ports: dict[str, int] = {}
    for index, bus_entry in _entries(data, "buses") or []:
        port = _text(bus_entry.get("port"))
        if bus_entry.get("kind") not in ("modbus-rtu", "serial") or port is None:
            continue
        if port in serial_ports:
            first = serial_ports[port]
            report(
                ("buses", index, "port"),
                f"serial port '{port}' is already used by buses[{first}] "
                f"(line {line_of(('buses', first, 'port'))}); one port carries one bus",
            )
        else:
            serial_ports[port] = index

    devices = _entries(data, "devices") or []
    by_index = dict(devices)
    used: dict[tuple[str, int], int] = {}
    for index, device in devices:
        bus = _text(device.get("bus"))
        if bus is not None and bus_ids is not None and bus not in bus_ids:
            message = f"unknown bus '{bus}'"
            suggestion = _suggest(bus, bus_ids)
            if suggestion is not None:
                message += f"; did you mean '{suggestion}'?"
            message += (
                f" (defined buses: {_listing(bus_ids)})" if bus_ids else " (no bus is defined)"
            )
            report(("devices", index, "bus"), message)

        address = device.get("address")
        if bus is not None and isinstance(address, int) and not isinstance(address, bool):
            if (bus, address) in used:
                other = used[(bus, address)]
                other_id = _text(by_index[other].get("id")) or f"devices[{other}]"
                report(
                    ("devices", index, "address"),
                    f"Modbus address {address} on bus '{bus}' is already used by device "
                    f"'{other_id}' (line {line_of(('devices', other, 'address'))})",
                )
            else:
                used[(bus, address)] = index

        model = _text(device.get("model"))
        if known_models is not None and model is not None:
            # UART and GPIO sensors have drivers, not model files: they are always known.
            known_models = {*known_models, *SERIAL_MODELS, *GPIO_MODELS}
        if known_models is not None and model is not None and model not in known_models:
            names = sorted(known_models)
            message = f"unknown device model '{model}'"
            suggestion = _suggest(model, names)
            if suggestion is not None:
                message += f"; did you mean '{suggestion}'?"
            message += f" (known models: {_listing(names)})" if names else " (no model is known)"
            report(("devices", index, "model"), message)

    _check_device_kinds(data, report, line_of)
    check_rules(data, report, line_of, known_models, doc.places.keys())

    if device_ids is not None:
        for index, rule in _entries(data, "rules") or []:
            targets = rule.get("devices")
            if not isinstance(targets, list):
                continue
            for position, target in enumerate(targets):
                if isinstance(target, str) and target not in device_ids:
                    message = f"unknown device '{target}'"
                    suggestion = _suggest(target, device_ids)
                    if suggestion is not None:
                        message += f"; did you mean '{suggestion}'?"
                    message += f" (defined devices: {_listing(device_ids)})"
                    report(("rules", index, "devices", position), message)

    return issues


def _check_device_kinds(
    data: Mapping[str, Any],
    report: typing.Callable[[Loc, str], None],
    line_of: typing.Callable[[Loc], int],
) -> None:
    """Devices against the kind of their bus: a model on the wrong kind of bus, a Modbus
    device without an address, a PIR without a pin or on a pin the outputs use, two sensors on
    one UART, options that do not apply to the device."""
    kinds: dict[str, str] = {}
    for _, bus_entry in _entries(data, "buses") or []:
        ident, kind = _text(bus_entry.get("id")), _text(bus_entry.get("kind"))
        if ident is not None and kind is not None:
            kinds.setdefault(ident, kind)
    taken: dict[int, str] = {}
    outputs = data.get("outputs")
    if isinstance(outputs, Mapping):
        for name, entry in outputs.items():
            if isinstance(entry, Mapping) and isinstance(entry.get("pin"), int):
                taken[entry["pin"]] = f"outputs.{name}"
    uart_users: dict[str, int] = {}
    for index, device in _entries(data, "devices") or []:
        bus, model = _text(device.get("bus")), _text(device.get("model"))
        kind = kinds.get(bus) if bus is not None else None
        if kind not in BUS_FAMILY:
            continue  # an unknown bus or bus kind is reported on its own
        family = family_of(model) if model is not None else None
        wanted = BUS_FAMILY[kind]
        if family is not None and family != wanted:
            fitting = ", ".join(k for k, f in BUS_FAMILY.items() if f == family)
            report(
                ("devices", index, "model"),
                f"model '{model}' is a {family} device but bus '{bus}' is {kind}; "
                f"put it on a bus of kind {fitting}",
            )
            continue
        modbus = wanted == "modbus"
        if modbus and device.get("address") is None:
            report(("devices", index), "a Modbus device needs an address (its unit id, 1-247)")
        if not modbus:
            for option in ("address", "fast_interval"):
                if device.get(option) is not None:
                    report(("devices", index, option), f"{option} only applies to Modbus devices")
        if kind == "gpio":
            pin = device.get("pin")
            if pin is None:
                report(("devices", index), "a GPIO sensor needs a pin (BCM number)")
            elif isinstance(pin, int) and pin in taken:
                report(("devices", index, "pin"), f"GPIO {pin} is already used by {taken[pin]}")
            elif isinstance(pin, int):
                taken[pin] = f"device '{_text(device.get('id')) or index}'"
        elif device.get("pin") is not None:
            report(("devices", index, "pin"), "pin only applies to GPIO sensors (bus kind gpio)")
        if kind == "serial" and bus is not None:
            if bus in uart_users:
                first = uart_users[bus]
                report(
                    ("devices", index, "bus"),
                    f"serial bus '{bus}' already carries devices[{first}] (line "
                    f"{line_of(('devices', first, 'bus'))}); one UART sensor per port",
                )
            else:
                uart_users[bus] = index
        if modbus and model is not None and family == "modbus":
            _check_modbus_options(model, device, index, report)
        elif device.get("gauge_length") is not None and model != "witmotion-uart":
            report(("devices", index, "gauge_length"), "gauge_length only applies to tilt sensors")


def _check_modbus_options(
    model: str,
    device: Mapping[str, Any],
    index: int,
    report: typing.Callable[[Loc, str], None],
) -> None:
    try:
        points = load_model(model).points
    except ModelError as exc:
        # An unknown model never gets here (its family is None); this is its file, broken:
        # the site is refused with the file's own line, not a gateway that cannot start.
        report(("devices", index, "model"), str(exc))
        return
    if device.get("fast_interval") is not None and not any(point.critical for point in points):
        report(
            ("devices", index, "fast_interval"),
            f"model '{model}' marks no alarm-critical points, so there is nothing for a fast lane",
        )
    if device.get("gauge_length") is not None and not any(
        point.name in ("roll", "pitch") for point in points
    ):
        report(
            ("devices", index, "gauge_length"),
            f"gauge_length only applies to tilt sensors; model '{model}' has no roll or pitch",
        )
