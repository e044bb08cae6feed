"""Reading a scenario file: YAML with line numbers, checked before anything starts.

Every mistake is reported as ``file:line: field: what is wrong``, all of them at once, the way
``edge check-config`` reports a site file: an unknown step, a device the site does not have, a
point the device's simulator cannot set, a malformed expectation or a label nobody defines.
A scenario that loads is one the runner can carry out; the only exception the loader raises
for bad input is :class:`ScenarioError`.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final, cast, get_args
from zoneinfo import ZoneInfo

import yaml

from drivers.ld2410 import codec as radar
from drivers.modbus.model import encode, load_model
from drivers.yamlpos import Document, Loc, YamlError, dotted, load_yaml, read_yaml
from edge.config import ConfigError, parse_site
from edge.config.duration import parse_duration
from edge.config.model import ModbusRtuBus, ModbusTcpBus, SerialBus, SiteConfig
from hil.modem import CallBehaviour
from hil.scenario.model import (
    ACTIONS,
    FAULTS,
    SERIAL_POINTS,
    Expectation,
    ExpectKind,
    Mode,
    ReadingSeries,
    Scenario,
    SimDevice,
    SimKind,
    Step,
)

__all__ = ["ScenarioError", "load_scenario", "parse_scenario"]

#: Most values one file may expand to (aliases can multiply them) and deepest nesting.
MAX_VALUES: Final = 20_000
MAX_DEPTH: Final = 32
#: Longest a scenario may run in live mode: the library is for CI, seconds not minutes.
MAX_DURATION: Final = 600.0

_TOP_KEYS: Final = (
    "name",
    "proves",
    "mode",
    "site",
    "devices",
    "steps",
    "expect",
    "duration",
    "seed",
    "readings",
    "phones",
)
_EXPECT_KINDS: Final[tuple[ExpectKind, ...]] = get_args(ExpectKind)
#: Which modifiers each expectation kind takes.
_MODIFIERS: Final[dict[str, tuple[str, ...]]] = {
    "buzzer": ("after", "within"),
    "led": ("after", "within"),
    "event": ("after", "within", "first"),
    "reading": ("after", "within"),
    "no_event": ("from", "until"),
    "no_buzzer": ("from", "until"),
    "count": ("equals", "at_least", "at_most"),
    "no_gaps": (),
    "nothing_lost": (),
    "transition": ("not_before", "equals", "at_least", "at_most"),
    "no_transition": (),
}
_REPLAY_KINDS: Final = ("transition", "no_transition")
_LABEL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ScenarioError(Exception):
    """The scenario cannot run; ``issues`` lists every mistake as ``file:line: ...``."""

    def __init__(self, issues: Iterable[str]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(self.issues))


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and check the scenario file at ``path``; :class:`ScenarioError` if it is wrong."""
    name = os.fspath(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ScenarioError([f"{name}:1: cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ScenarioError([f"{name}:1: the file is not UTF-8 text"]) from None
    return parse_scenario(text, Path(path))


def parse_scenario(text: str, path: Path) -> Scenario:
    """Check the scenario ``text`` (``path`` names it and anchors relative site paths)."""
    return _Checker(path).scenario(text)


# --------------------------------------------------------------------------------------------
# YAML with positions


class _Abort(Exception):
    pass


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.issues: list[tuple[int, str]] = []
        self.doc = Document(self.name, None)
        self.step_labels: set[str] = set()

    # -- reporting ------------------------------------------------------------------------------

    def line(self, loc: Loc) -> int:
        return self.doc.line(loc)

    def issue(self, loc: Loc, message: str) -> None:
        where = dotted(loc)
        text = f"{self.name}:{self.line(loc)}: {where + ': ' if where else ''}{message}"
        self.issues.append((self.line(loc), text))

    def fail(self) -> ScenarioError:
        ordered = sorted(dict.fromkeys(self.issues), key=lambda item: item[0])
        return ScenarioError(text for _, text in ordered)

    # -- building -------------------------------------------------------------------------------

    def build(self, text: str) -> Any:
        try:
            self.doc = load_yaml(text, self.name, max_values=MAX_VALUES, max_depth=MAX_DEPTH)
        except YamlError as exc:
            line = exc.issue.line
            problem = exc.issue.message.removeprefix("YAML syntax error: ")
            self.issues.append((line, f"{self.name}:{line}: YAML: {problem}"))
            raise _Abort from None
        if self.doc.empty:
            self.issues.append((1, f"{self.name}:1: the file is empty"))
            raise _Abort
        # Duplicate keys, unsafe tags, unreadable values: reported with the scenario's own.
        for issue in self.doc.issues:
            where = f"{issue.field}: " if issue.field else ""
            self.issues.append((issue.line, f"{self.name}:{issue.line}: {where}{issue.message}"))
        return self.doc.data

    # -- the scenario ---------------------------------------------------------------------------

    def scenario(self, text: str) -> Scenario:
        try:
            return self._scenario(text)
        except _Abort:
            raise self.fail() from None

    def _scenario(self, text: str) -> Scenario:
        data = self.build(text)
        if not isinstance(data, dict):
            self.issue((), f"a scenario is a mapping of {', '.join(_TOP_KEYS)}")
            raise _Abort
        self.unknown_keys(data, (), _TOP_KEYS)
        name = self.text(data, (), "name")
        proves = self.text(data, (), "proves")
        mode = cast(Mode, self.choice(data, (), "mode", ("live", "replay"), "live"))
        seed = data.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            self.issue(("seed",), f"must be an integer, not {seed!r}")
            seed = 1
        site, site_data = self.site(data)
        if site is None:
            raise _Abort
        devices = self.devices(data, site, mode)
        by_id = {d.id: d for d in devices}
        steps: list[Step] = []
        readings: list[ReadingSeries] = []
        if mode == "live":
            steps = self.steps(data, by_id)
            if "readings" in data:
                self.issue(("readings",), "only replay scenarios take readings; use steps")
        else:
            readings = self.readings(data, site)
            if "steps" in data:
                self.issue(("steps",), "replay scenarios take readings, not steps")
        # Labels of refused steps count too: one mistake is reported once, not at every use.
        labels = {"start", "end", *self.step_labels}
        expectations = self.expectations(data, labels, mode)
        last = max((s.at for s in steps), default=0.0)
        duration = last + 5.0
        if "duration" in data:
            duration = self.duration(data, (), "duration") or duration
            if duration <= last:
                self.issue(("duration",), f"must be longer than the last step's time ({last:g} s)")
            if duration > MAX_DURATION:
                self.issue(("duration",), f"at most {MAX_DURATION:g} s: scenarios are for CI")
        phones = self.phones(data, site)
        if self.issues:
            raise _Abort
        return Scenario(
            name=name,
            proves=proves,
            path=self.path,
            mode=mode,
            site=site,
            site_data=site_data,
            devices=devices,
            steps=sorted(steps, key=lambda s: s.at),
            expectations=expectations,
            duration=duration,
            seed=seed,
            readings=readings,
            phones=phones,
        )

    def phones(self, data: dict[str, Any], site: SiteConfig) -> dict[str, CallBehaviour]:
        """What each called number does on the simulated modem (hil/modem.py)."""
        raw = data.get("phones", {})
        if not isinstance(raw, dict):
            self.issue(("phones",), "a mapping of phone number to what it does")
            return {}
        called = (
            set() if site.sms is None or site.sms.calls is None else set(site.sms.calls.numbers)
        )
        options = get_args(CallBehaviour)
        phones: dict[str, CallBehaviour] = {}
        for number, behaviour in raw.items():
            loc: Loc = ("phones", str(number))
            if str(number) not in called:
                self.issue(loc, "not a number the site's sms.calls calls (quote it: '+86...')")
            elif behaviour not in options:
                self.issue(loc, f"one of {', '.join(options)}, not {behaviour!r}")
            else:
                phones[str(number)] = behaviour
        return phones

    def site(self, data: dict[str, Any]) -> tuple[SiteConfig | None, dict[str, Any]]:
        raw = data.get("site")
        loc: Loc = ("site",)
        if raw is None:
            self.issue(loc, "missing: a site file path, or the site inline as a mapping")
            return None, {}
        if isinstance(raw, str):
            site_path = (self.path.parent / raw).resolve()
            try:
                text = site_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.issue(loc, f"cannot read the site file {raw!r}: {exc}")
                return None, {}
            try:
                config = parse_site(text, str(site_path), known_models=_known_models())
            except ConfigError as exc:
                for config_issue in exc.issues:
                    self.issue(loc, f"the site file is not valid: {config_issue}")
                return None, {}
            # The same reading as the gateway's: keys as written, so 'on' stays a name.
            return config, load_yaml(text, str(site_path)).data
        if not isinstance(raw, dict):
            self.issue(loc, "must be a site file path or the site as a mapping")
            return None, {}
        try:
            text = yaml.safe_dump(raw, sort_keys=False)
        except yaml.YAMLError as exc:
            self.issue(loc, f"cannot be written back as YAML: {exc}")
            return None, {}
        try:
            config = parse_site(text, "site", known_models=_known_models())
        except ConfigError as exc:
            for config_issue in exc.issues:
                self.issue((*loc, *_field_loc(config_issue.field)), config_issue.message)
            return None, {}
        return config, raw

    def devices(self, data: dict[str, Any], site: SiteConfig, mode: Mode) -> list[SimDevice]:
        listed = self.items(data, (), "devices", required=False)
        buses = {bus.id: bus for bus in site.buses}
        site_devices = {device.id: device for device in site.devices}
        values_of: dict[str, tuple[dict[str, Any], Loc]] = {}
        for loc, raw in listed:
            item = {"id": raw} if isinstance(raw, str) else raw
            if not isinstance(item, dict):
                self.issue(loc, "a device is a mapping with id and values")
                continue
            self.unknown_keys(item, loc, ("id", "values"))
            device_id = item.get("id")
            if not isinstance(device_id, str):
                self.issue((*loc, "id"), "missing: the id of a device of the site")
                continue
            if device_id not in site_devices:
                self.issue(
                    (*loc, "id"),
                    f"the site has no device {device_id!r}{_hint(device_id, site_devices)}",
                )
                continue
            if device_id in values_of:
                self.issue((*loc, "id"), f"device {device_id!r} is listed twice")
                continue
            values = item.get("values", {})
            if not isinstance(values, dict):
                self.issue((*loc, "values"), "must be a mapping of point: value")
                values = {}
            values_of[device_id] = (values, (*loc, "values"))
        result: list[SimDevice] = []
        for device in site.devices:
            bus = buses[device.bus]
            sim = _sim_kind(bus, device.model)
            values, loc = values_of.get(device.id, ({}, ("devices",)))
            if sim is None:
                if mode == "live":
                    self.issue(
                        loc if device.id in values_of else ("site",),
                        f"device {device.id!r} ({device.model} on a {bus.kind} bus) has no "
                        "simulator: live scenarios serve Modbus TCP/RTU, WitMotion and LD2410 "
                        "devices",
                    )
                continue
            checked: dict[str, float] = {}
            for point, value in values.items():
                if (
                    self.point_ok((*loc, point), sim, device.model, point)
                    and self.number((*loc, point), value)
                    and self.value_ok((*loc, point), sim, device.model, point, float(value))
                ):
                    checked[point] = float(value)
            result.append(
                SimDevice(
                    id=device.id,
                    sim=sim,
                    bus=device.bus,
                    model=device.model,
                    address=device.address,
                    values=checked,
                    line=self.line(loc),
                )
            )
        if mode == "live":
            for bus in site.buses:
                models = {d.model for d in result if d.bus == bus.id}
                if isinstance(bus, ModbusTcpBus) and len(models) > 1:
                    self.issue(
                        ("site",),
                        f"bus {bus.id!r}: the Modbus TCP simulator serves one model per bus, "
                        f"not {', '.join(sorted(models))}",
                    )
        return result

    def point_ok(self, loc: Loc, sim: SimKind, model: str, point: str) -> bool:
        if sim in SERIAL_POINTS:
            if point not in SERIAL_POINTS[sim]:
                self.issue(
                    loc,
                    f"the {sim} simulator sets {', '.join(SERIAL_POINTS[sim])}, not {point!r}",
                )
                return False
            return True
        try:
            load_model(model).point(point)
        except ValueError as exc:
            self.issue(loc, str(exc))
            return False
        return True

    def value_ok(self, loc: Loc, sim: SimKind, model: str, point: str, value: float) -> bool:
        """Whether the simulator can serve ``value``: a register holds it, a radar state is
        0-6 (4-6: calibration); so a run never stops half-way on a value nobody could send."""
        problem = ""
        if sim in ("modbus-tcp", "rtu-line"):
            try:
                encode(load_model(model), {point: value})
            except ValueError as exc:
                problem = str(exc)
        elif sim == "ld2410":
            top = radar.CALIBRATION_FAILED if point == "state" else 65535
            if value != int(value) or not 0 <= value <= top:
                problem = f"{point} is a whole number 0-{top}"
        elif not -180 <= value <= 180 and point != "temperature":
            problem = "angles are -180 to 180 degrees"
        if problem:
            self.issue(loc, f"the simulator cannot serve {value:g}: {problem}")
        return not problem

    def steps(self, data: dict[str, Any], devices: dict[str, SimDevice]) -> list[Step]:
        steps: list[Step] = []
        labels = self.step_labels
        for loc, item in self.items(data, (), "steps", required=False):
            if not isinstance(item, dict):
                self.issue(loc, "a step is a mapping: at, an action, optionally label")
                continue
            actions = [key for key in item if key not in ("at", "label")]
            unknown = [key for key in actions if key not in ACTIONS]
            for key in unknown:
                self.issue((*loc, key), f"unknown step{_hint(key, ACTIONS)}")
            known = [key for key in actions if key in ACTIONS]
            if not unknown and len(known) != 1:
                self.issue(
                    loc, f"a step has exactly one action ({', '.join(ACTIONS)}), not {len(known)}"
                )
            at = self.duration(item, loc, "at", required=True)
            label = item.get("label", f"step {len(steps) + 1}")
            if "label" in item:
                if not isinstance(label, str) or not _LABEL.match(label):
                    self.issue((*loc, "label"), "a label is a lower-case word like 'leak-on'")
                    label = f"step {len(steps) + 1}"
                elif label in labels or label in ("start", "end"):
                    self.issue((*loc, "label"), f"label {label!r} is used twice or reserved")
                labels.add(str(label))
            if unknown or len(known) != 1:
                continue
            action = known[0]
            args = self.action((*loc, action), action, item[action], devices)
            if args is not None and at is not None:
                steps.append(Step(at, action, args, str(label), self.line(loc)))
        return steps

    def action(
        self, loc: Loc, action: str, raw: Any, devices: dict[str, SimDevice]
    ) -> dict[str, Any] | None:
        if action in ("broker", "disk", "gateway"):
            options = {
                "broker": ("down", "up"),
                "disk": ("full", "free"),
                "gateway": ("kill", "restart", "stop", "start"),
            }[action]
            if raw not in options:
                self.issue(loc, f"must be one of {', '.join(options)}, not {raw!r}")
                return None
            return {"what": raw}
        if action in ("silent", "back", "garbage"):
            device = self.device_ref(loc, raw, devices)
            if device is None:
                return None
            if action == "garbage" and "garbage" not in FAULTS[device.sim]:
                self.issue(loc, f"the {device.sim} simulator cannot put garbage on its line")
                return None
            return {"device": device.id}
        if action == "push-config":
            if not isinstance(raw, dict):
                self.issue(loc, "a mapping: site (a path or inline) and expect (ok or error)")
                return None
            self.unknown_keys(raw, loc, ("site", "expect"))
            site = raw.get("site")
            if isinstance(site, str):
                site_path = (self.path.parent / site).resolve()
                try:
                    pushed = read_yaml(site_path)
                except (OSError, YamlError) as exc:
                    self.issue((*loc, "site"), f"cannot read {site!r}: {exc}")
                    return None
                # What cannot be read would be lost on the way to the gateway: refused here.
                for problem in pushed.issues:
                    self.issue((*loc, "site"), f"cannot read {site!r}: {problem}")
                if pushed.issues:
                    return None
                site = pushed.data
            if not isinstance(site, dict):
                self.issue((*loc, "site"), "the site to push: a path or a mapping")
                return None
            expect = raw.get("expect", "ok")
            if expect not in ("ok", "error"):
                self.issue((*loc, "expect"), f"ok or error, not {expect!r}")
                return None
            return {"site": site, "expect": expect}
        if not isinstance(raw, dict):
            self.issue(loc, "a mapping with device and the action's settings")
            return None
        fields = {
            "set": ("device", "point", "value"),
            "ramp": ("device", "point", "from", "to", "over"),
            "noise": ("device", "point", "around", "amplitude", "for", "every"),
            "toggle": ("device", "point", "values", "every", "for"),
            "fault": ("device", "kind", "delay"),
        }[action]
        self.unknown_keys(raw, loc, fields)
        device = self.device_ref((*loc, "device"), raw.get("device"), devices)
        if device is None:
            return None
        args: dict[str, Any] = {"device": device.id}
        ok = True
        if action == "fault":
            kind = raw.get("kind")
            if kind not in FAULTS[device.sim]:
                self.issue(
                    (*loc, "kind"),
                    f"the {device.sim} simulator's faults are {', '.join(FAULTS[device.sim])}, "
                    f"not {kind!r}",
                )
                return None
            args["kind"] = kind
            if "delay" in raw:
                args["delay"] = self.duration(raw, loc, "delay")
            return args
        point = raw.get("point")
        if not isinstance(point, str):
            self.issue((*loc, "point"), "missing: the point to change")
            return None
        if not self.point_ok((*loc, "point"), device.sim, device.model, point):
            return None
        args["point"] = point
        numbers = {"set": ("value",), "ramp": ("from", "to"), "noise": ("around", "amplitude")}
        for key in numbers.get(action, ()):
            if key not in raw:
                self.issue((*loc, key), "missing")
                ok = False
            elif self.number((*loc, key), raw[key]):
                args[key] = float(raw[key])
            else:
                ok = False
        durations = {"ramp": ("over",), "noise": ("for",), "toggle": ("every", "for")}
        for key in durations.get(action, ()):
            value = self.duration(raw, loc, key, required=True)
            ok = ok and value is not None and value > 0
            args[key] = value
        if action == "noise":
            args["every"] = self.duration(raw, loc, "every") or 0.2
            if args.get("amplitude", 0) < 0:
                self.issue((*loc, "amplitude"), "must not be negative")
                ok = False
        if ok:
            edges = [args[k] for k in ("value", "from", "to") if k in args]
            if action == "noise":
                edges = [args["around"] - args["amplitude"], args["around"] + args["amplitude"]]
            for value in edges:
                ok = ok and self.value_ok(loc, device.sim, device.model, point, value)
        if action == "toggle":
            values = raw.get("values")
            if (
                not isinstance(values, list)
                or len(values) < 2
                or not all(self.number((*loc, "values"), v) for v in values)
            ):
                self.issue((*loc, "values"), "a list of at least two numbers to alternate")
                ok = False
            else:
                args["values"] = [float(v) for v in values]
                for value in args["values"]:
                    ok = ok and self.value_ok(
                        (*loc, "values"), device.sim, device.model, point, value
                    )
        return args if ok else None

    def device_ref(self, loc: Loc, raw: Any, devices: dict[str, SimDevice]) -> SimDevice | None:
        if not isinstance(raw, str):
            self.issue(loc, f"must name a simulated device, not {raw!r}")
            return None
        device = devices.get(raw)
        if device is None:
            self.issue(loc, f"no simulated device {raw!r}{_hint(raw, devices)}")
        return device

    def expectations(self, data: dict[str, Any], labels: set[str], mode: Mode) -> list[Expectation]:
        result: list[Expectation] = []
        items = self.items(data, (), "expect", required=True)
        for loc, item in items:
            if not isinstance(item, dict):
                self.issue(
                    loc, f"an expectation is a mapping with one of {', '.join(_EXPECT_KINDS)}"
                )
                continue
            kinds = [key for key in item if key in _EXPECT_KINDS]
            if len(kinds) != 1:
                others = [key for key in item if key not in _EXPECT_KINDS]
                hint = _hint(others[0], _EXPECT_KINDS) if others else ""
                self.issue(
                    loc,
                    f"an expectation has exactly one of {', '.join(_EXPECT_KINDS)}, "
                    f"found {len(kinds)}{hint}",
                )
                continue
            kind = kinds[0]
            self.unknown_keys(item, loc, (kind, *_MODIFIERS[kind]))
            if (kind in _REPLAY_KINDS) != (mode == "replay"):
                self.issue(
                    (*loc, kind),
                    f"{kind} is for {'replay' if kind in _REPLAY_KINDS else 'live'} scenarios",
                )
                continue
            expectation = self.expectation((*loc, kind), kind, item, labels)
            if expectation is not None:
                result.append(expectation)
        return result

    def expectation(
        self, loc: Loc, kind: ExpectKind, item: dict[str, Any], labels: set[str]
    ) -> Expectation | None:
        value = item[kind]
        base = loc[:-1]
        line = self.line(loc)
        after = item.get("after", "start")
        if after not in labels:
            self.issue((*base, "after"), f"no step labelled {after!r}{_hint(str(after), labels)}")
            return None
        if kind in ("buzzer", "led"):
            if value not in ("on", "off") and not isinstance(value, bool):
                self.issue(loc, f"on or off, not {value!r}")
                return None
            state = "on" if value in ("on", True) else "off"
            within = self.duration(item, base, "within", required=True)
            if within is None:
                return None
            return Expectation(kind, line, state=state, after=str(after), within=within)
        if kind in ("no_gaps", "nothing_lost"):
            if value is not True:
                self.issue(loc, "write `true`")
                return None
            return Expectation(kind, line)
        if kind == "no_buzzer":
            match: dict[str, Any] = {}
        else:
            if not isinstance(value, dict) or not value:
                self.issue(loc, "the fields to match, e.g. {kind: alarm-raised, device: efm-1}")
                return None
            for key, wanted in value.items():
                if not isinstance(wanted, str | int | float | bool):
                    self.issue((*loc, key), "match a field against a plain value")
                    return None
            match = dict(value)
        window = (str(item.get("from", "start")), str(item.get("until", "end")))
        for key, label in zip(("from", "until"), window, strict=True):
            if label not in labels:
                self.issue((*base, key), f"no step labelled {label!r}{_hint(label, labels)}")
                return None
        bounds: dict[str, int | None] = {}
        for key in ("equals", "at_least", "at_most"):
            bound = item.get(key)
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, int) or bound < 0
            ):
                self.issue((*base, key), f"a count, not {bound!r}")
                return None
            bounds[key] = bound
        if kind == "count" and all(b is None for b in bounds.values()):
            self.issue(base, "a count needs equals, at_least or at_most")
            return None
        within = 0.0
        first = False
        if kind in ("event", "reading"):
            within = self.duration(item, base, "within", required=True) or 0.0
            first = item.get("first", False)
            if not isinstance(first, bool):
                self.issue((*base, "first"), "true or false")
                return None
        not_before = None
        if "not_before" in item:
            not_before = self.timestamp((*base, "not_before"), item["not_before"], ZoneInfo("UTC"))
        return Expectation(
            kind,
            line,
            match=match,
            after=str(after),
            within=within,
            first=first,
            window=window,
            equals=bounds.get("equals"),
            at_least=bounds.get("at_least"),
            at_most=bounds.get("at_most"),
            not_before=not_before,
        )

    def readings(self, data: dict[str, Any], site: SiteConfig) -> list[ReadingSeries]:
        zone = ZoneInfo(site.gateway.timezone)
        devices = {d.id for d in site.devices}
        series: list[ReadingSeries] = []
        for loc, item in self.items(data, (), "readings", required=True):
            if not isinstance(item, dict):
                self.issue(loc, "a mapping: device, point, start, every, for, value")
                continue
            self.unknown_keys(
                item, loc, ("device", "point", "start", "every", "for", "value", "unit")
            )
            device = item.get("device")
            if device not in devices:
                self.issue((*loc, "device"), f"the site has no device {device!r}")
                continue
            point = item.get("point")
            if not isinstance(point, str) or not point:
                self.issue((*loc, "point"), "missing: the point the readings are of")
                continue
            start = self.timestamp((*loc, "start"), item.get("start"), zone)
            every = self.duration(item, loc, "every", required=True)
            span = self.duration(item, loc, "for", required=True)
            shape, value, to, amplitude = self.shape((*loc, "value"), item.get("value"))
            unit = item.get("unit", "")
            if start is None or every is None or span is None or shape is None:
                continue
            if every <= 0 or span / every > 2_000_000:
                self.issue((*loc, "every"), "at most two million readings per series")
                continue
            series.append(
                ReadingSeries(
                    str(device), point, start, every, span, shape, value, to, amplitude,
                    str(unit), self.line(loc),
                )
            )  # fmt: skip
        return series

    def shape(self, loc: Loc, raw: Any) -> tuple[Any, float, float, float]:
        if self.number(loc, raw, quiet=True):
            return "constant", float(raw), float(raw), 0.0
        if isinstance(raw, dict) and len(raw) == 1:
            ((kind, spec),) = raw.items()
            if kind == "ramp" and isinstance(spec, dict):
                a, b = spec.get("from"), spec.get("to")
                if self.number((*loc, "ramp", "from"), a) and self.number((*loc, "ramp", "to"), b):
                    return "ramp", float(cast(float, a)), float(cast(float, b)), 0.0
                return None, 0, 0, 0
            if kind == "noise" and isinstance(spec, dict):
                a, b = spec.get("around"), spec.get("amplitude")
                if self.number((*loc, "noise", "around"), a) and self.number(
                    (*loc, "noise", "amplitude"), b
                ):
                    return (
                        "noise",
                        float(cast(float, a)),
                        float(cast(float, a)),
                        abs(float(cast(float, b))),
                    )
                return None, 0, 0, 0
        self.issue(loc, "a number, {ramp: {from, to}} or {noise: {around, amplitude}}")
        return None, 0, 0, 0

    # -- small checks ---------------------------------------------------------------------------

    def unknown_keys(self, item: dict[str, Any], loc: Loc, known: Iterable[str]) -> None:
        allowed = tuple(known)
        for key in item:
            if key not in allowed:
                self.issue((*loc, key), f"unknown key{_hint(key, allowed)}")

    def items(
        self, data: dict[str, Any], loc: Loc, key: str, *, required: bool
    ) -> list[tuple[Loc, Any]]:
        raw = data.get(key)
        if raw is None:
            if required:
                self.issue((*loc, key), "missing: a list")
            return []
        if not isinstance(raw, list):
            self.issue((*loc, key), "must be a list")
            return []
        if required and not raw:
            self.issue((*loc, key), "must not be empty")
        return [((*loc, key, index), item) for index, item in enumerate(raw)]

    def text(self, data: dict[str, Any], loc: Loc, key: str) -> str:
        raw = data.get(key)
        if not isinstance(raw, str) or not raw.strip():
            self.issue((*loc, key), "missing: a line of text")
            return ""
        return raw.strip()

    def choice(
        self, data: dict[str, Any], loc: Loc, key: str, options: tuple[str, ...], default: str
    ) -> str:
        raw = data.get(key, default)
        if raw not in options:
            self.issue((*loc, key), f"one of {', '.join(options)}, not {raw!r}")
            return default
        return str(raw)

    def duration(
        self, data: dict[str, Any], loc: Loc, key: str, *, required: bool = False
    ) -> float | None:
        if key not in data:
            if required:
                self.issue((*loc, key), "missing: a duration like 2s or 500ms")
            return None
        try:
            return parse_duration(data[key])
        except ValueError as exc:
            self.issue((*loc, key), str(exc))
            return None

    def number(self, loc: Loc, raw: Any, *, quiet: bool = False) -> bool:
        ok = isinstance(raw, int | float) and not isinstance(raw, bool) and not math.isnan(raw)
        ok = ok and abs(raw) < 1e12
        if not ok and not quiet:
            self.issue(loc, f"must be a number, not {raw!r}")
        return ok

    def timestamp(self, loc: Loc, raw: Any, zone: ZoneInfo) -> float | None:
        try:
            if isinstance(raw, datetime):
                moment = raw
            elif isinstance(raw, date):
                moment = datetime(raw.year, raw.month, raw.day)
            elif isinstance(raw, str):
                moment = datetime.fromisoformat(raw)
            else:
                raise ValueError
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            return moment.timestamp()
        except (ValueError, OverflowError, OSError):
            self.issue(loc, f"a date or time like 2025-01-01 or 2025-01-01T08:00, not {raw!r}")
            return None


def _sim_kind(bus: object, model: str) -> SimKind | None:
    if isinstance(bus, ModbusTcpBus):
        return "modbus-tcp"
    if isinstance(bus, ModbusRtuBus):
        return "rtu-line"
    if isinstance(bus, SerialBus):
        if model.startswith("witmotion"):
            return "witmotion"
        if model == "hlk-ld2410":
            return "ld2410"
    return None


_known: list[list[str]] = []


def _known_models() -> list[str]:
    if not _known:
        # Imported late: the Modbus package pulls in pyserial and pymodbus.
        from drivers.modbus import known_models  # noqa: PLC0415

        _known.append(list(known_models()))
    return _known[0]


def _field_loc(field: str) -> Loc:
    """``devices[1].address`` -> ``("devices", 1, "address")``."""
    loc: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        loc.append(int(index) if index else name)
    return tuple(loc)


def _hint(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
