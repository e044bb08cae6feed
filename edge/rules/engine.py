"""The rules engine: routes each reading to the judges of its device and point.

Routing is decided once per (device, point) and cached, so judging a reading costs a dict
lookup and one call per rule that applies to it. Derived points (a displacement computed from
a tilt angle) are computed here and judged like any other point. Composite rules are
re-evaluated only when another alarm changed state.

Time comes from the readings themselves (``Reading.ts``) and from :meth:`RuleEngine.tick`,
which the gateway calls every second and ``edge replay`` calls every second of the recorded
time (jumping over the seconds in which :meth:`RuleEngine.next_due` proves a tick does
nothing): the engine never looks at a clock, so months of history replay in seconds.

A value that is not a number (NaN) or infinite is judged as a ``bad`` reading: absence of
evidence, never a verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from drivers import DeviceStatus, Reading
from drivers.tilt import TILT_AXES, displacement_point
from edge.rules.judges import (
    AbnormalJudge,
    AlarmBitsJudge,
    DeviceOfflineJudge,
    Judge,
    OverLimitJudge,
    SensorFaultJudge,
    SuddenChangeJudge,
    SustainedJudge,
    UnderLimitJudge,
)
from edge.rules.tuning import (
    Override,
    current_value,
    default_field,
    is_point_rule,
    is_tunable,
    storm_tightened,
    with_threshold,
)
from edge.rules.types import Transition, worse

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from edge.config.model import (
        CompositeRule,
        DerivedPoint,
        Device,
        DeviceOfflineRule,
        PointRule,
        Rule,
    )

__all__ = [
    "ACTIVE_KEY",
    "SAVE_INTERVAL",
    "STATE_PREFIX",
    "STATE_SCHEMA",
    "ModelInfo",
    "RuleEngine",
    "ThresholdChange",
    "model_info_from_drivers",
]

#: Layout version of the state values the engine writes (the store's ``schema``).
STATE_SCHEMA = 1
#: One stored value per rule: ``rules/<rule id>``, holding the state of its judges.
STATE_PREFIX = "rules/"
#: The active alarms (and which composites are active).
ACTIVE_KEY = "alarms/active"
#: Rules whose state is large and changes slowly are written less often than the gateway saves:
#: an abnormal baseline holds up to 10 000 readings per device, and losing its last ten
#: minutes to a restart changes nothing a median would notice. Seconds, by rule kind.
SAVE_INTERVAL = {"abnormal": 600.0}


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know of a device model: its points, their units and bits."""

    units: Mapping[str, str]
    bits: Mapping[str, Mapping[int, str]] = field(default_factory=dict)

    def has_point(self, point: str) -> bool:
        return point in self.units


def model_info_from_drivers(model: str) -> ModelInfo | None:
    """The :class:`ModelInfo` of a Modbus device model shipped in ``drivers/models``."""
    from drivers.modbus import load_model  # noqa: PLC0415 -- only needed when configuring

    try:
        loaded = load_model(model)
    except (ValueError, OSError):
        return None
    return ModelInfo(
        units={p.name: p.unit for p in loaded.points},
        bits={p.name: dict(p.bits) for p in loaded.points if p.bits},
    )


@dataclass(frozen=True)
class ThresholdChange:
    """What :meth:`RuleEngine.set_threshold` changed: the value before and after, per device
    the rule judges (``""`` for a rule that judges no configured device yet)."""

    rule: str
    field: str
    value: float
    device: str | None
    before: Mapping[str, float | None]
    after: Mapping[str, float | None]

    @property
    def old(self) -> float | None:
        """The value before, when every device had the same (else None)."""
        values = set(self.before.values())
        return values.pop() if len(values) == 1 else None


@dataclass(frozen=True, slots=True)
class _Route:
    # Tuples, one route per point: smaller than lists, and every empty one is the same ().
    judges: tuple[Judge, ...]
    ticking: tuple[Judge, ...]
    derived: tuple[tuple[DerivedPoint, float | None], ...]


#: The route of a point no rule judges and nothing is derived from.
_NO_ROUTE: Final = _Route((), (), ())


@dataclass
class _Composite:
    rule: CompositeRule
    active: bool = False


#: Rule options added after rule state was first stored. At their default they are left out
#: of the hash, so a gateway upgraded with an unchanged site file resumes its windows.
LATER_OPTIONS = ("latch", "compare", "seasonal", "for_")


def _rule_hash(rule: Any) -> str:
    """Changing a rule's settings restarts its state: a window counted against the old limit
    says nothing about the new one."""
    fields = type(rule).model_fields
    unchanged = {
        name
        for name in LATER_OPTIONS
        if name in fields and getattr(rule, name) == fields[name].default
    }
    return hashlib.sha256(rule.model_dump_json(exclude=unchanged).encode()).hexdigest()[:16]


#: Rule kinds whose judges read the site's calendar (hours, days, months in its zone).
_CALENDAR_KINDS = frozenset({"abnormal", "sustained"})


class RuleEngine:
    """Judges readings against the site's rules; see docs/rules.md for every kind."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        devices: Sequence[Device] = (),
        derived: Sequence[DerivedPoint] = (),
        timezone: str = "UTC",
        model_info: Callable[[str], ModelInfo | None] | None = model_info_from_drivers,
    ) -> None:
        self.timezone = timezone
        self._zone: ZoneInfo | None = None
        self._models = {d.id: d.model for d in devices}
        self._gauged = {d.id for d in devices if d.gauge_length is not None}
        self._model_info = model_info
        self._info_cache: dict[str, ModelInfo | None] = {}
        self._point_rules: dict[str, list[PointRule]] = {}
        self._offline_rules: list[DeviceOfflineRule] = []
        self._composites: list[_Composite] = []
        self.rules: list[Rule] = list(rules)
        self._rule_by_id: dict[str, Rule] = {rule.id: rule for rule in self.rules}
        #: Thresholds set at run time, in the order they were set (later ones win).
        self.overrides: list[Override] = []
        #: Storm mode's tightening: (devices, factor), or None.
        self._storm: tuple[frozenset[str], float] | None = None
        for rule in self.rules:
            if rule.kind == "composite":
                self._composites.append(_Composite(rule))
            elif rule.kind == "device-offline":
                self._offline_rules.append(rule)
            else:
                self._point_rules.setdefault(rule.point, []).append(rule)
        self._composites = _in_dependency_order(self._composites)
        if any(rule.kind in _CALENDAR_KINDS for rule in self.rules):
            self.zone  # noqa: B018 (an unknown zone is refused here, not at the first reading)
        self._derived: dict[str, list[DerivedPoint]] = {}
        for derived_point in derived:
            self._derived.setdefault(derived_point.source, []).append(derived_point)
        self._routes: dict[tuple[str, str], _Route] = {}
        self._offline: dict[str, list[DeviceOfflineJudge]] = {}
        #: Every judge by its state key, for ticking and persistence.
        self._judges: dict[str, tuple[Judge, str]] = {}
        self._ticking: list[Judge] = []
        #: Rules whose judges changed since their last save; rules that must be saved now.
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()
        self._active_dirty = False
        self._saved_at: dict[str, float] = {}
        self._kinds = {rule.id: rule.kind for rule in self.rules}
        self._by_rule: dict[str, list[str]] = {}
        self._restored: dict[str, dict[str, Any]] = {}
        #: The latest transition of every active alarm, by alarm key.
        self.active: dict[tuple[str, str], Transition] = {}
        #: Latching rules, and their alarms whose condition has gone: still active, until
        #: :meth:`release` (the silence button, a silence command) clears them.
        self._latching = {rule.id for rule in self.rules if getattr(rule, "latch", False)}
        self.latched: dict[tuple[str, str], Transition] = {}
        self._start: float | None = None
        #: The latest time the engine was ticked (or skipped) to: a late reading (one older
        #: than that) is judged by the time-based judges at this time, not at its own.
        self._now = -math.inf
        for device in devices:
            self._device_judges(device.id)
            for point in self._points_of(device.id):
                self._route(device.id, point)

    @property
    def zone(self) -> ZoneInfo:
        """The site's time zone, for the rules that read the calendar (abnormal, sustained).
        zoneinfo (with sysconfig, 0.5 MiB) is imported for the first of them: a site without
        one never loads it (docs/benchmarks.md, import budget)."""
        if self._zone is None:
            from zoneinfo import ZoneInfo  # noqa: PLC0415 -- calendar rules only

            self._zone = ZoneInfo(self.timezone)
        return self._zone

    # -- routing ----------------------------------------------------------------------------

    def _info(self, device: str) -> ModelInfo | None:
        model = self._models.get(device)
        if model is None or self._model_info is None:
            return None
        if model not in self._info_cache:
            self._info_cache[model] = self._model_info(model)
        return self._info_cache[model]

    def _points_of(self, device: str) -> list[str]:
        """Points worth a route up front (so that missing-reading faults can fire): those of
        the device's model that some rule or derived point names."""
        info = self._info(device)
        if info is None:
            return []
        wanted = set(self._point_rules) | set(self._derived)
        known = list(info.units)
        if device in self._gauged:
            # The driver reports <axis>_displacement next to each tilt angle.
            known += [displacement_point(axis) for axis in TILT_AXES if axis in info.units]
        points = [p for p in known if p in wanted]
        for source in list(points):
            points.extend(d.name for d in self._derived.get(source, ()) if self._selects(d, device))
        return points

    def knows_device(self, device: str) -> bool:
        """Whether ``device`` is one of the site's devices."""
        return device in self._models

    def known_points(self, device: str) -> set[str] | None:
        """Every point ``device`` can report: its model's, the tilt displacements of a gauged
        device and the derived points it has; ``None`` when its model has no point table
        (UART and GPIO sensors), so that any point is possible."""
        info = self._info(device)
        if info is None:
            return None
        points = set(info.units)
        if device in self._gauged:
            points |= {displacement_point(axis) for axis in TILT_AXES if axis in info.units}
        for derived in self._derived.values():
            points |= {d.name for d in derived if self._selects(d, device)}
        return points

    def _selects(self, rule: PointRule | DeviceOfflineRule | DerivedPoint, device: str) -> bool:
        if rule.devices is not None and device not in rule.devices:
            return False
        return rule.models is None or self._models.get(device) in rule.models

    def _device_judges(self, device: str) -> list[DeviceOfflineJudge]:
        judges = self._offline.get(device)
        if judges is None:
            judges = []
            for rule in self._offline_rules:
                if self._selects(rule, device):
                    judge = DeviceOfflineJudge(rule, device, self._start)
                    self._register(judge, rule)
                    judges.append(judge)
            self._offline[device] = judges
        return judges

    def _route(self, device: str, point: str) -> _Route:
        judges: list[Judge] = list(self._device_judges(device))
        for rule in self._point_rules.get(point, ()):
            if self._selects(rule, device):
                configured = rule.for_device(device)
                judge = self._judge(self._tuned(configured, device), device)
                # The state key's hash is the site file's rule: a threshold set at run time
                # keeps the judge's windows and counts, across restarts too.
                self._register(judge, configured)
                judges.append(judge)
        # A displacement without a gauge length for this device is not derived for it (the
        # site file check refuses one): the alarm path never raises on it.
        derived = [
            (d, gauge)
            for d in self._derived.get(point, ())
            if self._selects(d, device)
            and ((gauge := d.gauge_for(device)) is not None or d.kind != "displacement")
        ]
        if judges or derived:
            route = _Route(tuple(judges), tuple([j for j in judges if j.ticks]), tuple(derived))
        else:
            route = _NO_ROUTE  # most points: one object for all of them, never changed
        self._routes[(device, point)] = route
        return route

    def _judge(self, rule: PointRule, device: str) -> Judge:
        if rule.kind == "over-limit":
            return OverLimitJudge(rule, device)
        if rule.kind == "under-limit":
            return UnderLimitJudge(rule, device)
        if rule.kind == "sudden-change":
            return SuddenChangeJudge(rule, device)
        if rule.kind == "abnormal":
            return AbnormalJudge(rule, device, self.zone)
        if rule.kind == "sustained":
            return SustainedJudge(rule, device, self.zone)
        if rule.kind == "alarm-bits":
            info = self._info(device)
            bits = {} if info is None else dict(info.bits.get(rule.point, {}))
            return AlarmBitsJudge(rule, device, bits)
        if rule.kind == "sensor-fault":
            return SensorFaultJudge(rule, device, self._start)
        raise AssertionError(f"no judge for {rule!r}")  # pragma: no cover

    def _register(self, judge: Judge, rule: Any) -> None:
        key = f"{STATE_PREFIX}{judge.rule_id}/{judge.device}"
        if judge.point and rule.kind != "device-offline":
            key = f"{key}/{judge.point}"
        if key in self._judges:
            # A device-offline judge is shared by every route of its device.
            return
        self._judges[key] = (judge, _rule_hash(rule))
        self._by_rule.setdefault(judge.rule_id, []).append(key)
        if judge.ticks:
            self._ticking.append(judge)
        restored = self._restored.pop(key, None)
        if restored is not None:
            self._load_judge(key, restored)

    # -- thresholds changed at run time (edge/rules/tuning.py) -------------------------------

    def _tuned(self, rule: PointRule, device: str, *, storm: bool = True) -> PointRule:
        """``rule`` (already for ``device``) with the overrides, then storm mode, laid over."""
        if not is_tunable(rule) or (not self.overrides and self._storm is None):
            return rule
        for override in self.overrides:
            if override.rule == rule.id and override.device in (None, device):
                rule = with_threshold(rule, override.field, override.value)
        if storm and self._storm is not None and device in self._storm[0]:
            rule = storm_tightened(rule, self._storm[1])
        return rule

    def devices_of(self, rule: Rule) -> list[str]:
        """The configured devices ``rule`` judges (for device-offline, composite: none)."""
        if rule.kind == "composite":
            return []
        return [device for device in self._models if self._selects(rule, device)]

    def set_threshold(
        self, rule_id: str, value: float, *, field: str | None = None, device: str | None = None
    ) -> ThresholdChange:
        """Set a threshold of rule ``rule_id`` (on ``device`` only, or on every device it
        judges), from the next reading on. Raises ``ValueError`` naming the problem, and then
        nothing has changed."""
        rule = self._rule_by_id.get(rule_id)
        if rule is None:
            known = ", ".join(sorted(self._rule_by_id)) or "none"
            raise ValueError(f"no rule {rule_id!r} (rules: {known})")
        if not is_tunable(rule):
            raise ValueError(f"rule {rule_id!r} is {rule.kind}, which has no settable threshold")
        chosen = default_field(rule) if field is None else field
        judged = self.devices_of(rule)
        if device is not None and device not in judged:
            if device not in self._models:
                raise ValueError(f"no device {device!r} in the site")
            raise ValueError(f"rule {rule_id!r} does not judge device {device!r}")
        override = Override(rule_id, chosen, value, device)
        targets = [device] if device is not None else (judged or [""])
        before: dict[str, float | None] = {}
        after: dict[str, float | None] = {}
        for target in targets:
            configured = rule.for_device(target) if target else rule
            tuned = self._tuned(configured, target, storm=False)
            before[target] = current_value(tuned, chosen)
            try:
                changed = with_threshold(tuned, chosen, value)
            except ValueError as exc:
                where = f" on device {target!r}" if target and len(targets) > 1 else ""
                raise ValueError(f"rule {rule_id!r}{where}: {exc}") from None
            after[target] = current_value(changed, chosen)
        # Setting the same field again replaces the earlier value (and moves it last).
        self.overrides = [
            o for o in self.overrides if (o.rule, o.field, o.device) != (rule_id, chosen, device)
        ]
        self.overrides.append(override)
        self._retune({rule_id})
        return ThresholdChange(rule_id, chosen, float(value), device, before, after)

    def load_overrides(self, overrides: Sequence[Override]) -> list[str]:
        """Re-apply stored overrides in order; returns why each refused one was dropped (its
        rule was removed or changed so that the value no longer fits)."""
        self.overrides = []
        problems: list[str] = []
        for override in overrides:
            try:
                self.set_threshold(
                    override.rule, override.value, field=override.field, device=override.device
                )
            except ValueError as exc:
                problems.append(str(exc))
        return problems

    def clear_overrides(self) -> None:
        """Back to the site file's thresholds (storm mode still applies)."""
        if self.overrides:
            self.overrides = []
            self._retune(None)

    def set_storm(self, devices: Iterable[str] | None, factor: float = 1.0) -> None:
        """Tighten over-limit rules on ``devices`` by ``factor`` (see tuning.py); ``None``
        ends it, restoring the thresholds exactly."""
        if devices is None:
            self._storm = None
        else:
            if not (math.isfinite(factor) and 0 < factor <= 1):
                raise ValueError(f"threshold_factor must be in (0, 1], not {factor!r}")
            self._storm = (frozenset(devices), factor)
        self._retune(None)

    def thresholds(self, rule_id: str, device: str) -> PointRule | None:
        """The rule as it judges ``device`` now (overrides and storm mode included)."""
        rule = self._rule_by_id.get(rule_id)
        if rule is None or not is_point_rule(rule):
            return None
        return self._tuned(rule.for_device(device), device)

    def _retune(self, rule_ids: set[str] | None) -> None:
        for judge, _ in self._judges.values():
            if rule_ids is not None and judge.rule_id not in rule_ids:
                continue
            rule = self._rule_by_id.get(judge.rule_id)
            if rule is None or not is_tunable(rule):
                continue
            judge.retune(self._tuned(rule.for_device(judge.device), judge.device))

    # -- judging ----------------------------------------------------------------------------

    def evaluate(self, reading: Reading) -> list[Transition]:
        """Judge one reading; the transitions it caused, in order (empty almost always)."""
        value = reading.value
        # NaN and infinities: x - x is 0.0 for every finite number and NaN for these.
        if value - value != 0.0 and reading.quality == "good":
            reading = dataclasses.replace(reading, quality="bad")
        route = self._routes.get((reading.device_id, reading.point))
        if route is None:
            route = self._route(reading.device_id, reading.point)
        out: list[Transition] = []
        if route.ticking:
            now = reading.ts if reading.ts > self._now else self._now
            for judge in route.ticking:
                out.extend(judge.tick(now))
        ts = reading.ts
        good = reading.quality == "good"
        for judge in route.judges:
            # Every judge's guard, here once: a reading no newer than the last one judged (a
            # late row, a repeat) is no evidence of anything, and judges of values judge only
            # good readings (Judge.feed).
            if ts <= judge.last_ts or not (good or judge.any_quality):
                continue
            judge.last_ts = ts
            transition = judge.feed(reading)
            if transition is not None:
                out.append(transition)
        for point, gauge in route.derived:
            out.extend(self.evaluate(_derive(point, gauge, reading)))
        if route.judges:
            self._touch(route)
        if out:
            self._settle(out)
        return out

    def derived_readings(self, reading: Reading) -> list[Reading]:
        """The derived points' readings (a tilt's displacement...) that judging ``reading``
        computed, for showing them; empty for a reading the engine has not routed."""
        route = self._routes.get((reading.device_id, reading.point))
        if route is None:
            return []
        return [_derive(point, gauge, reading) for point, gauge in route.derived]

    def baselines(self, reading: Reading) -> list[tuple[str, float, float]]:
        """(rule id, median, limit) of every ``abnormal`` rule judging ``reading``'s point,
        as the reading was judged; learning baselines are left out. For showing them."""
        route = self._routes.get((reading.device_id, reading.point))
        if route is None:
            return []
        found = []
        for judge in route.judges:
            if isinstance(judge, AbnormalJudge):
                band = judge.baseline(reading.ts)
                if band is not None:
                    found.append((judge.rule_id, *band))
        return found

    def tick(self, now: float) -> list[Transition]:
        """Let time pass to ``now`` (POSIX seconds): missing readings, offline devices and the
        calendar buckets of sustained rules are judged here."""
        if self._start is None:
            self._start = now
        self._now = max(self._now, now)
        out: list[Transition] = []
        for judge in self._ticking:
            found = judge.tick(now)
            if found:
                out.extend(found)
                self._dirty.add(judge.rule_id)
        if out:
            self._settle(out)
        return out

    def next_due(self) -> float:
        """A time before which :meth:`tick` changes nothing (every judge's :meth:`Judge.due`,
        the earliest): ``-inf`` before the first tick, ``inf`` when only readings can change
        anything. Readings and driver statuses move it, so ask again after each."""
        if self._start is None:
            return -math.inf
        return min((judge.due() for judge in self._ticking), default=math.inf)

    def skip(self, now: float) -> None:
        """Time passed to ``now`` without a tick: only for a caller that knows from
        :meth:`next_due` that a tick would have changed nothing (``edge replay``)."""
        self._now = max(self._now, now)

    def on_status(self, status: DeviceStatus) -> list[Transition]:
        """A driver says a device went offline or came back."""
        out: list[Transition] = []
        for judge in self._device_judges(status.device_id):
            transition = judge.status(status.online, status.ts, status.reason)
            self._dirty.add(judge.rule_id)
            if transition is not None:
                out.append(transition)
        if out:
            self._settle(out)
        return out

    def _touch(self, route: _Route) -> None:
        for judge in route.judges:
            self._dirty.add(judge.rule_id)

    def _settle(self, out: list[Transition], *, latch: bool = True) -> None:
        """Note the alarms that changed, then judge the composites that depend on them."""
        if latch and self._latching:
            self._latch(out)
            if not out:
                return
        for transition in out:
            self._note(transition)
        if not self._composites:
            return
        cause = out[-1]
        for composite in self._composites:
            met = self._composite_met(composite.rule)
            if met == composite.active:
                continue
            composite.active = met
            transition = Transition(
                rule_id=composite.rule.id,
                kind="raised" if met else "cleared",
                severity=composite.rule.severity,
                device_id=cause.device_id,
                point=cause.point,
                ts=cause.ts,
                value=cause.value,
                threshold=None,
                reading=cause.reading,
                rule_kind="composite",
                reason=f"{'all' if composite.rule.all is not None else 'any'} of "
                f"{', '.join(t.rule for t in composite.rule.terms())} "
                f"{'active' if met else 'no longer active'} ({cause.rule_id} {cause.kind})",
                scope="",
            )
            self._note(transition)
            out.append(transition)

    def _latch(self, out: list[Transition]) -> None:
        """A latching rule's ``cleared`` only notes that the condition has gone; the alarm stays
        active. Raised again while latched, it simply goes on (escalated if worse)."""
        kept: list[Transition] = []
        for transition in out:
            key = transition.alarm_key
            if transition.rule_id not in self._latching:
                kept.append(transition)
            elif transition.kind == "cleared" and key in self.active:
                self.latched[key] = transition
                self._active_dirty = True
            elif transition.kind in ("raised", "escalated") and key in self.latched:
                del self.latched[key]
                self._active_dirty = True
                before = self.active[key].severity
                if worse(before, transition.severity) != before:
                    kept.append(dataclasses.replace(transition, kind="escalated"))
            else:
                kept.append(transition)
        out[:] = kept

    def release(self, now: float, key: tuple[str, str] | None = None) -> list[Transition]:
        """Clear the latched alarms whose condition has gone (or only ``key``): the silence
        button or a silence command acknowledged them. Returns their ``cleared``."""
        out: list[Transition] = []
        for alarm_key in sorted(self.latched):
            if key is not None and alarm_key != key:
                continue
            gone = self.latched.pop(alarm_key)
            self._active_dirty = True
            self._urgent.add(gone.rule_id)
            out.append(
                dataclasses.replace(
                    gone,
                    ts=now,
                    reading=None,
                    reason=f"reset by hand; the condition had gone ({gone.reason})",
                )
            )
        if out:
            self._settle(out, latch=False)
        return out

    def _note(self, transition: Transition) -> None:
        self._active_dirty = True
        self._urgent.add(transition.rule_id)
        if transition.kind == "cleared":
            self.active.pop(transition.alarm_key, None)
        else:
            self.active[transition.alarm_key] = transition

    def _composite_met(self, rule: CompositeRule) -> bool:
        results = (self._term_met(term.rule, term.devices) for term in rule.terms())
        return all(results) if rule.all is not None else any(results)

    def _term_met(self, rule_id: str, devices: Sequence[str] | None) -> bool:
        return any(
            key[0] == rule_id and (devices is None or key[1] in devices) for key in self.active
        )

    def active_alarms(self) -> list[tuple[str, str]]:
        """(rule id, device id) of every alarm now raised."""
        return sorted(self.active)

    # -- persistence ------------------------------------------------------------------------

    def dump_state(self, now: float | None = None, *, everything: bool = False) -> dict[str, Any]:
        """The values to store (schema :data:`STATE_SCHEMA`), by key: one per rule whose
        judges changed since it was last written (and whose :data:`SAVE_INTERVAL` has passed
        at monotonic time ``now``; rules with a transition go at once), and the active alarms
        when they changed. ``everything``: every value, changed or not."""
        if everything:
            due = set(self._by_rule)
        else:
            due = {
                rule
                for rule in self._dirty
                if rule in self._urgent
                or now is None
                or now - self._saved_at.get(rule, -math.inf)
                >= SAVE_INTERVAL.get(self._kinds.get(rule, ""), 0.0)
            }
        self._dirty -= due
        self._urgent.clear()
        values: dict[str, Any] = {}
        for rule in due:
            keys = self._by_rule.get(rule, [])
            values[f"{STATE_PREFIX}{rule}"] = {
                key.removeprefix(f"{STATE_PREFIX}{rule}/"): {
                    "rule": self._judges[key][1],
                    **self._judges[key][0].dump(),
                }
                for key in keys
            }
            if now is not None:
                self._saved_at[rule] = now
        if everything or self._active_dirty:
            self._active_dirty = False
            values[ACTIVE_KEY] = {
                "alarms": [_dump_transition(t) for t in self.active.values()],
                "composites": {c.rule.id: c.active for c in self._composites},
                "latched": [list(key) for key in self.latched],
            }
        return values

    def load_state(self, values: Mapping[str, tuple[int, Any]]) -> list[Transition]:
        """Resume from stored ``{key: (schema, value)}``; returns ``cleared`` transitions for
        restored alarms whose rule is gone or changed (nothing else judges them any more)."""
        flat: dict[str, tuple[int, Any]] = {}
        for key, (schema, value) in values.items():
            if schema != STATE_SCHEMA or not isinstance(value, dict):
                continue
            if key.startswith(STATE_PREFIX):
                for sub, judged in value.items():
                    flat[f"{key}/{sub}"] = (schema, judged)
        for key, (_, value) in flat.items():
            if not isinstance(value, dict):
                continue
            if key in self._judges:
                self._load_judge(key, value)
            else:
                self._restored[key] = value
        schema, active = values.get(ACTIVE_KEY, (STATE_SCHEMA, None))
        dropped: list[Transition] = []
        if schema == STATE_SCHEMA and isinstance(active, dict):
            composites = active.get("composites", {})
            for composite in self._composites:
                composite.active = bool(composites.get(composite.rule.id, False))
            known = {rule.id for rule in self.rules}
            latched = {(str(r), str(s)) for r, s in active.get("latched", [])}
            for item in active.get("alarms", []):
                transition = _load_transition(item)
                alarm = transition.alarm_key
                if alarm in latched and transition.rule_id in self._latching:
                    # Its condition had gone; it waits for a hand to clear it, judge or not.
                    self.active[alarm] = transition
                    self.latched[alarm] = _cleared(transition, transition.reason)
                    continue
                judge_alive = self._alarm_still_judged(transition, known, flat)
                if judge_alive:
                    self.active[alarm] = transition
                else:
                    dropped.append(_cleared(transition, "rule removed or changed since the alarm"))
        return dropped

    def _alarm_still_judged(
        self, transition: Transition, known: set[str], values: Mapping[str, tuple[int, Any]]
    ) -> bool:
        if transition.rule_id not in known:
            return False
        if transition.rule_kind == "composite":
            return any(c.rule.id == transition.rule_id and c.active for c in self._composites)
        for judge, _ in self._judges.values():
            if judge.rule_id == transition.rule_id and judge.device == transition.device_id:
                return judge.active
        # Not routed yet: alive if its stored state was written by the same settings and was
        # active (the judge takes it over when the device's first reading arrives).
        rule = next(r for r in self.rules if r.id == transition.rule_id)
        if is_point_rule(rule):
            digest = _rule_hash(rule.for_device(transition.device_id))
        else:
            digest = _rule_hash(rule)
        prefix = f"{STATE_PREFIX}{transition.rule_id}/{transition.device_id}"
        return any(
            key.startswith(prefix)
            and isinstance(v, dict)
            and v.get("active")
            and v.get("rule") == digest
            for key, (_, v) in values.items()
        )

    def _load_judge(self, key: str, value: dict[str, Any]) -> None:
        judge, digest = self._judges[key]
        if value.get("rule") != digest:
            return
        try:
            judge.load(value)
        except (KeyError, TypeError, ValueError):
            # A damaged value restarts that judge rather than the gateway.
            return


def _derive(point: DerivedPoint, gauge: float | None, reading: Reading) -> Reading:
    if point.kind == "displacement":
        if gauge is None:
            raise ValueError(f"{point.name}: a displacement needs the device's gauge_length")
        value = gauge * math.tan(math.radians(reading.value))
    else:
        value = point.scale * reading.value + point.offset
    return Reading(
        reading.device_id,
        point.name,
        value,
        point.unit,
        reading.ts,
        reading.mono,
        reading.quality,
    )


def _in_dependency_order(composites: list[_Composite]) -> list[_Composite]:
    """Composites that refer to composites come after them (cycles are refused by
    check-config; any left over keep their place)."""
    by_id = {c.rule.id: c for c in composites}
    ordered: list[_Composite] = []
    seen: set[str] = set()

    def visit(composite: _Composite, path: frozenset[str]) -> None:
        if composite.rule.id in seen or composite.rule.id in path:
            return
        for term in composite.rule.terms():
            if term.rule in by_id:
                visit(by_id[term.rule], path | {composite.rule.id})
        seen.add(composite.rule.id)
        ordered.append(composite)

    for composite in composites:
        visit(composite, frozenset())
    return ordered


def _dump_transition(t: Transition) -> dict[str, Any]:
    return {
        "rule": t.rule_id,
        "kind": t.kind,
        "severity": t.severity,
        "device": t.device_id,
        "point": t.point,
        "ts": t.ts,
        "value": t.value,
        "threshold": t.threshold,
        "rule_kind": t.rule_kind,
        "reason": t.reason,
        "scope": t.scope,
    }


def _load_transition(item: Mapping[str, Any]) -> Transition:
    return Transition(
        rule_id=str(item["rule"]),
        kind=item["kind"],
        severity=item["severity"],
        device_id=str(item["device"]),
        point=str(item["point"]),
        ts=float(item["ts"]),
        value=item["value"],
        threshold=item["threshold"],
        reading=None,
        rule_kind=str(item["rule_kind"]),
        reason=str(item["reason"]),
        scope=str(item["scope"]),
    )


def _cleared(t: Transition, reason: str) -> Transition:
    """``t`` cleared for ``reason`` at its own time. Its occupancy and silencer are not carried
    over: the gateway reports the zone as it is now, and nobody silenced a clearing."""
    return dataclasses.replace(
        t, kind="cleared", reading=None, reason=reason, occupancy=None, source=""
    )
