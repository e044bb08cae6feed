"""Reading a scenario file: YAML with line numbers, checked before anything starts.

The text is read by drivers/yamlpos.py, its shape validated by the typed models of
hil/scenario/document.py, and then what needs the site is checked here.

Every mistake is reported as ``file:line: field: what is wrong``, all of them at once, the way
``edge check-config`` reports a site file: an unknown step, a device the site does not have, a
point the device's simulator cannot set, a malformed expectation or a label nobody defines.
A scenario that loads is one the runner can carry out; the only exception the loader raises
for bad input is :class:`ScenarioError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args
from zoneinfo import ZoneInfo

import yaml

from drivers.ld2410 import codec as radar
from drivers.modbus.model import encode, load_model
from drivers.yamlpos import Document, Loc, YamlError, dotted, load_yaml, read_yaml
from edge.config import ConfigError, parse_site
from edge.config.model import ModbusRtuBus, ModbusTcpBus, SerialBus, SiteConfig
from hil.modem import CallBehaviour
from hil.scenario.document import (
    EXPECT_KINDS,
    EXPECTATIONS,
    DeviceEntry,
    FaultArgs,
    NoiseArgs,
    PushConfigArgs,
    ReadingEntry,
    ScenarioFile,
    StepEntry,
    ToggleArgs,
    check,
    check_action,
    hint,
)
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

_REPLAY_KINDS: Final = ("transition", "no_transition")


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

    def refused(self, base: Loc, refusals: list[tuple[Loc, str]]) -> None:
        for place, message in refusals:
            self.issue((*base, *place), message)

    # -- the scenario ---------------------------------------------------------------------------

    def scenario(self, text: str) -> Scenario:
        try:
            return self._scenario(text)
        except _Abort:
            raise self.fail() from None

    def _scenario(self, text: str) -> Scenario:
        data = self.build(text)
        top, refusals = check(ScenarioFile, data)
        # A refused key is checked no further, as if it were not written: one mistake, one line.
        refused = {place[0] for place, _ in refusals if place}
        if top is None:
            self.refused((), refusals)
            if not isinstance(data, dict):
                raise _Abort
            top, _ = check(ScenarioFile, {k: v for k, v in data.items() if k not in refused})
            if top is None:  # pragma: no cover - what remains was accepted key by key
                raise _Abort
        for key in ("name", "proves"):
            if getattr(top, key) is None and key not in refused:
                self.issue((key,), "missing: a line of text")
        mode = top.mode
        site, site_data = self.site(top.site)
        if site is None:
            raise _Abort
        devices = self.devices(top.devices or [], site, mode)
        by_id = {d.id: d for d in devices}
        steps: list[Step] = []
        readings: list[ReadingSeries] = []
        if mode == "live":
            steps = self.steps(top.steps or [], by_id)
            if "readings" in data:
                self.issue(("readings",), "only replay scenarios take readings; use steps")
        else:
            if top.readings is None and "readings" not in refused:
                self.issue(("readings",), "missing: a list")
            elif top.readings == []:
                self.issue(("readings",), "must not be empty")
            readings = self.readings(top.readings or [], site)
            if "steps" in data:
                self.issue(("steps",), "replay scenarios take readings, not steps")
        # Labels of refused steps count too: one mistake is reported once, not at every use.
        labels = {"start", "end", *self.step_labels}
        if top.expect is None and "expect" not in refused:
            self.issue(("expect",), "missing: a list")
        expectations = self.expectations(top.expect or [], labels, mode)
        last = max((s.at for s in steps), default=0.0)
        duration = last + 5.0
        if top.duration is not None:
            duration = top.duration or duration
            if duration <= last:
                self.issue(("duration",), f"must be longer than the last step's time ({last:g} s)")
            if duration > MAX_DURATION:
                self.issue(("duration",), f"at most {MAX_DURATION:g} s: scenarios are for CI")
        phones = self.phones(top.phones, site)
        if self.issues:
            raise _Abort
        return Scenario(
            name=top.name or "",
            proves=top.proves or "",
            path=self.path,
            mode=mode,
            site=site,
            site_data=site_data,
            devices=devices,
            steps=sorted(steps, key=lambda s: s.at),
            expectations=expectations,
            duration=duration,
            seed=top.seed,
            readings=readings,
            phones=phones,
        )

    def phones(self, raw: dict[Any, Any], site: SiteConfig) -> dict[str, CallBehaviour]:
        """What each called number does on the simulated modem (hil/modem.py)."""
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

    def site(self, raw: Any) -> tuple[SiteConfig | None, dict[str, Any]]:
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

    def devices(self, listed: list[Any], site: SiteConfig, mode: Mode) -> list[SimDevice]:
        buses = {bus.id: bus for bus in site.buses}
        site_devices = {device.id: device for device in site.devices}
        values_of: dict[str, tuple[dict[str, float], Loc]] = {}
        for index, raw in enumerate(listed):
            loc: Loc = ("devices", index)
            entry, refusals = check(DeviceEntry, raw)
            if entry is None:
                self.refused(loc, refusals)
                continue
            if entry.id not in site_devices:
                self.issue(
                    (*loc, "id"),
                    f"the site has no device {entry.id!r}{hint(entry.id, site_devices)}",
                )
                continue
            if entry.id in values_of:
                self.issue((*loc, "id"), f"device {entry.id!r} is listed twice")
                continue
            values_of[entry.id] = (entry.values, (*loc, "values"))
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
            checked = {
                point: value
                for point, value in values.items()
                if self.point_ok((*loc, point), sim, device.model, point)
                and self.value_ok((*loc, point), sim, device.model, point, value)
            }
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

    def steps(self, listed: list[Any], devices: dict[str, SimDevice]) -> list[Step]:
        steps: list[Step] = []
        labels = self.step_labels
        for index, item in enumerate(listed):
            loc: Loc = ("steps", index)
            if not isinstance(item, dict):
                self.issue(loc, "a step is a mapping: at, an action, optionally label")
                continue
            actions = [key for key in item if key not in ("at", "label")]
            unknown = [key for key in actions if key not in ACTIONS]
            for key in unknown:
                self.issue((*loc, key), f"unknown step{hint(key, ACTIONS)}")
            known = [key for key in actions if key in ACTIONS]
            if not unknown and len(known) != 1:
                self.issue(
                    loc, f"a step has exactly one action ({', '.join(ACTIONS)}), not {len(known)}"
                )
            entry, refusals = check(StepEntry, {k: item[k] for k in ("at", "label") if k in item})
            self.refused(loc, refusals)
            label = f"step {len(steps) + 1}"
            if "label" in item and not any(place[:1] == ("label",) for place, _ in refusals):
                label = str(item["label"])
                if label in labels or label in ("start", "end"):
                    self.issue((*loc, "label"), f"label {label!r} is used twice or reserved")
                labels.add(label)
            if unknown or len(known) != 1:
                continue
            action = known[0]
            args = self.action((*loc, action), action, item[action], devices)
            if args is not None and entry is not None:
                steps.append(Step(entry.at, action, args, label, self.line(loc)))
        return steps

    def action(
        self, loc: Loc, action: str, raw: Any, devices: dict[str, SimDevice]
    ) -> dict[str, Any] | None:
        settings, refusals = check_action(action, raw)
        if refusals:
            self.refused(loc, refusals)
            return None
        if action in ("broker", "disk", "gateway"):
            return {"what": settings}
        if action in ("silent", "back", "garbage"):
            device = self.device_ref(loc, settings, devices)
            if device is None:
                return None
            if action == "garbage" and "garbage" not in FAULTS[device.sim]:
                self.issue(loc, f"the {device.sim} simulator cannot put garbage on its line")
                return None
            return {"device": device.id}
        if isinstance(settings, PushConfigArgs):
            return self.push_config(loc, settings)
        device = self.device_ref((*loc, "device"), settings.device, devices)
        if device is None:
            return None
        args: dict[str, Any] = {"device": device.id}
        if isinstance(settings, FaultArgs):
            if settings.kind not in FAULTS[device.sim]:
                self.issue(
                    (*loc, "kind"),
                    f"the {device.sim} simulator's faults are {', '.join(FAULTS[device.sim])}, "
                    f"not {settings.kind!r}",
                )
                return None
            args["kind"] = settings.kind
            if settings.delay is not None:
                args["delay"] = settings.delay
            return args
        point = settings.point
        if not self.point_ok((*loc, "point"), device.sim, device.model, point):
            return None
        args["point"] = point
        args.update(settings.model_dump(by_alias=True, exclude={"device", "point"}))
        ok = True
        edges = [args[k] for k in ("value", "from", "to") if k in args]
        if isinstance(settings, NoiseArgs):
            edges = [settings.around - settings.amplitude, settings.around + settings.amplitude]
        for value in edges:
            ok = ok and self.value_ok(loc, device.sim, device.model, point, value)
        if isinstance(settings, ToggleArgs):
            for value in settings.values:
                ok = ok and self.value_ok((*loc, "values"), device.sim, device.model, point, value)
        return args if ok else None

    def push_config(self, loc: Loc, settings: PushConfigArgs) -> dict[str, Any] | None:
        site = settings.site
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
        return {"site": site, "expect": settings.expect}

    def device_ref(self, loc: Loc, raw: Any, devices: dict[str, SimDevice]) -> SimDevice | None:
        if not isinstance(raw, str):
            self.issue(loc, f"must name a simulated device, not {raw!r}")
            return None
        device = devices.get(raw)
        if device is None:
            self.issue(loc, f"no simulated device {raw!r}{hint(raw, devices)}")
        return device

    def expectations(self, listed: list[Any], labels: set[str], mode: Mode) -> list[Expectation]:
        result: list[Expectation] = []
        for index, item in enumerate(listed):
            loc: Loc = ("expect", index)
            if not isinstance(item, dict):
                self.issue(
                    loc, f"an expectation is a mapping with one of {', '.join(EXPECT_KINDS)}"
                )
                continue
            kinds = [key for key in item if key in EXPECT_KINDS]
            if len(kinds) != 1:
                others = [key for key in item if key not in EXPECT_KINDS]
                close = hint(others[0], EXPECT_KINDS) if others else ""
                self.issue(
                    loc,
                    f"an expectation has exactly one of {', '.join(EXPECT_KINDS)}, "
                    f"found {len(kinds)}{close}",
                )
                continue
            kind = kinds[0]
            if (kind in _REPLAY_KINDS) != (mode == "replay"):
                self.issue(
                    (*loc, kind),
                    f"{kind} is for {'replay' if kind in _REPLAY_KINDS else 'live'} scenarios",
                )
                continue
            parsed, refusals = check(EXPECTATIONS[kind], item)
            if parsed is None:
                self.refused(loc, refusals)
                continue
            expectation = self.expectation(loc, kind, parsed, labels)
            if expectation is not None:
                result.append(expectation)
        return result

    def label_ok(self, loc: Loc, label: str, labels: set[str]) -> bool:
        if label not in labels:
            self.issue(loc, f"no step labelled {label!r}{hint(label, labels)}")
        return label in labels

    def expectation(
        self, loc: Loc, kind: ExpectKind, parsed: Any, labels: set[str]
    ) -> Expectation | None:
        line = self.line((*loc, kind))
        after = getattr(parsed, "after", "start")
        if not self.label_ok((*loc, "after"), after, labels):
            return None
        window = (getattr(parsed, "from_", "start"), getattr(parsed, "until", "end"))
        for key, label in zip(("from", "until"), window, strict=True):
            if not self.label_ok((*loc, key), label, labels):
                return None
        value = getattr(parsed, kind)
        if kind in ("buzzer", "led"):
            return Expectation(kind, line, state=value, after=after, within=parsed.within)
        if kind in ("no_gaps", "nothing_lost"):
            return Expectation(kind, line)
        not_before = None
        if getattr(parsed, "not_before", None) is not None:
            not_before = self.timestamp((*loc, "not_before"), parsed.not_before, ZoneInfo("UTC"))
        return Expectation(
            kind,
            line,
            match={} if kind == "no_buzzer" else dict(value),
            after=after,
            within=getattr(parsed, "within", 0.0),
            first=getattr(parsed, "first", False),
            window=window,
            equals=getattr(parsed, "equals", None),
            at_least=getattr(parsed, "at_least", None),
            at_most=getattr(parsed, "at_most", None),
            not_before=not_before,
        )

    def readings(self, listed: list[Any], site: SiteConfig) -> list[ReadingSeries]:
        zone = ZoneInfo(site.gateway.timezone)
        devices = {d.id for d in site.devices}
        series: list[ReadingSeries] = []
        for index, item in enumerate(listed):
            loc: Loc = ("readings", index)
            device = item.get("device") if isinstance(item, dict) else None
            if isinstance(item, dict) and not (isinstance(device, str) and device in devices):
                self.issue((*loc, "device"), f"the site has no device {device!r}")
                continue
            entry, refusals = check(ReadingEntry, item)
            if entry is None:
                self.refused(loc, refusals)
                continue
            start = self.timestamp((*loc, "start"), entry.start, zone)
            if start is None:
                continue
            every, span = entry.every, entry.for_
            if every <= 0 or span / every > 2_000_000:
                self.issue((*loc, "every"), "at most two million readings per series")
                continue
            shape = entry.value
            kind: Literal["constant", "ramp", "noise"] = "constant"
            value = to = shape.constant or 0.0
            amplitude = 0.0
            if shape.ramp is not None:
                kind, value, to = "ramp", shape.ramp.from_, shape.ramp.to
            elif shape.noise is not None:
                kind, value, to = "noise", shape.noise.around, shape.noise.around
                amplitude = abs(shape.noise.amplitude)
            series.append(
                ReadingSeries(
                    str(entry.device), entry.point, start, every, span, kind, value, to,
                    amplitude, entry.unit, self.line(loc),
                )
            )  # fmt: skip
        return series

    def timestamp(self, loc: Loc, moment: datetime, zone: ZoneInfo) -> float | None:
        """POSIX seconds of a moment as written, in ``zone`` when it names none."""
        try:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            return moment.timestamp()
        except (ValueError, OverflowError, OSError):
            self.issue(loc, f"a date or time like 2025-01-01 or 2025-01-01T08:00, not {moment}")
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
        # Imported late: only a scenario naming Modbus models needs the Modbus package.
        from drivers.modbus import known_models  # noqa: PLC0415

        _known.append(list(known_models()))
    return _known[0]


def _field_loc(field: str) -> Loc:
    """``devices[1].address`` -> ``("devices", 1, "address")``."""
    loc: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        loc.append(int(index) if index else name)
    return tuple(loc)
