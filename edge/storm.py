"""Storm mode: poll chosen Modbus devices faster and tighten their thresholds, for a while.

The platform switches it on before a storm (``storm-mode``, docs/commands.md) for a bounded
time. :func:`plan_storm` turns the command's parameters into a plan or refuses them (pure: the
site's devices and the devices polled now in, intervals out); :class:`StormMode` applies a plan
to the buses and the rules, ends it by itself at its deadline (on the gateway's clock) or by
command, reports both, and keeps a record in the state store. Storm mode does not survive a
restart: the next start finds the record, reports that it ended, and the buses run at their
configured intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from edge.buses import FieldDriver, set_interval
from edge.clock import Clock
from edge.commands import CommandError
from edge.contract import iso_utc
from edge.log import fields
from edge.rule_state import RuleStateKeeper
from edge.rules import RuleEngine

if TYPE_CHECKING:
    from edge.config.model import Device

__all__ = [
    "STORM_KEY",
    "STORM_MAX_DURATION",
    "STORM_MIN_INTERVAL",
    "Storm",
    "StormMode",
    "StormPlan",
    "plan_storm",
]

# The gateway's logger, as before this module was split out of it: the journal reads the same.
log = logging.getLogger("edge.gateway")

#: The fastest poll it sets (a bus of 30 devices at 0.2 s is already busy), and the longest it
#: may last before it ends by itself.
STORM_MIN_INTERVAL: Final = 0.2
STORM_MAX_DURATION: Final = 7 * 86_400.0
#: Where the storm mode now is recorded in the state store.
STORM_KEY: Final = "storm/active"

#: ``report(kind, **body)``: an event of the gateway's own, timestamped now.
Report = Callable[..., None]


@dataclasses.dataclass(frozen=True)
class StormPlan:
    """A storm-mode request that passed :func:`plan_storm`: each device's interval, the
    thresholds' factor and how long it lasts (seconds)."""

    intervals: dict[str, float]
    factor: float
    duration: float


@dataclasses.dataclass
class Storm:
    """Storm mode now: the devices polled faster, at which intervals, the thresholds' factor
    and when it ends by itself (POSIX seconds; ``deadline`` on the monotonic clock)."""

    intervals: dict[str, float]
    factor: float
    until: float
    deadline: float
    command_id: str | None

    def describe(self) -> dict[str, Any]:
        return {
            "devices": sorted(self.intervals),
            "intervals": dict(sorted(self.intervals.items())),
            "threshold_factor": self.factor,
            "until": iso_utc(self.until),
        }


def plan_storm(
    params: Mapping[str, Any], devices: Iterable[Device], polled: Collection[str]
) -> StormPlan:
    """The plan for a ``storm-mode`` command that switches it on; :class:`CommandError` says
    why not. ``devices``: the site's; ``polled``: the Modbus devices being polled now.

    Each device gets ``interval_s`` if given, else its ``fast_interval``, else half its poll
    interval; never slower than the site file asks, never faster than
    :data:`STORM_MIN_INTERVAL`."""
    duration = params.get("duration_s")
    if duration is None:
        raise CommandError("storm-mode on needs duration_s (it ends by itself after it)")
    _check_number("duration_s", duration, above=0, most=STORM_MAX_DURATION)
    factor = params.get("threshold_factor", 1.0)
    _check_number("threshold_factor", factor, above=0, most=1)
    wanted = params.get("interval_s")
    if wanted is not None:
        _check_number("interval_s", wanted, least=STORM_MIN_INTERVAL, most=86_400.0)
    if not polled:
        raise CommandError("no Modbus device is being polled (yet); nothing to speed up")
    chosen = params.get("devices")
    if chosen is None:
        chosen = sorted(polled)
    if not chosen:
        raise CommandError("devices is empty; leave it out for every polled device")
    known = {d.id: d for d in devices}
    for device_id in chosen:
        if device_id not in known:
            raise CommandError(f"unknown device {device_id!r}")
        if device_id not in polled:
            raise CommandError(
                f"device {device_id!r} is not polled over Modbus; storm mode speeds up polls"
            )
    intervals: dict[str, float] = {}
    for device_id in dict.fromkeys(chosen):
        device = known[device_id]
        default = device.fast_interval or device.poll_interval / 2
        seconds = float(wanted) if wanted is not None else default
        intervals[device_id] = max(STORM_MIN_INTERVAL, min(seconds, device.poll_interval))
    return StormPlan(intervals, float(factor), float(duration))


class StormMode:
    """The gateway's storm mode: :attr:`active` is the storm now, or None.

    ``buses()``: the field drivers now (built when the gateway runs); ``report``: the
    gateway's own events; ``state``: where the record is kept."""

    def __init__(
        self,
        *,
        buses: Callable[[], Mapping[str, FieldDriver]],
        rules: RuleEngine,
        clock: Clock,
        report: Report,
        state: RuleStateKeeper,
    ) -> None:
        self._buses = buses
        self._rules = rules
        self._clock = clock
        self._report = report
        self._state = state
        self.active: Storm | None = None
        self._expiry: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any] | None:
        return None if self.active is None else self.active.describe()

    async def start(self, plan: StormPlan, command_id: str | None) -> dict[str, Any]:
        """Apply ``plan`` (renewing a storm already on: its devices left out go back to their
        intervals); reports ``storm-mode-started``; returns the command's answer."""
        buses = self._buses()
        renewed = self.active is not None
        if self.active is not None:
            for device_id in set(self.active.intervals) - set(plan.intervals):
                set_interval(buses, device_id, None)
            self._cancel_expiry()
        for device_id, seconds in plan.intervals.items():
            set_interval(buses, device_id, seconds)
        self._rules.set_storm(plan.intervals, plan.factor)
        storm = Storm(
            plan.intervals,
            plan.factor,
            self._clock.time() + plan.duration,
            self._clock.monotonic() + plan.duration,
            command_id,
        )
        self.active = storm
        self._expiry = asyncio.create_task(self._expire(storm), name="storm")
        described = storm.describe()
        self._report(
            "storm-mode-started",
            **described,
            duration_s=plan.duration,
            renewed=renewed,
            command_id=command_id,
        )
        log.warning(
            "storm-mode-started",
            extra=fields(devices=len(plan.intervals), until=described["until"]),
        )
        await self._save()
        return {"active": True, "renewed": renewed, **described}

    async def end(self, reason: str, command_id: str | None = None) -> None:
        """End the storm now (``reason``: ``command`` or ``expired``): the buses go back to
        their intervals, the rules to their thresholds; reports ``storm-mode-ended``."""
        storm, self.active = self.active, None
        if storm is None:
            return
        self._cancel_expiry()
        for device_id in storm.intervals:
            with contextlib.suppress(ValueError):
                set_interval(self._buses(), device_id, None)
        self._rules.set_storm(None)
        self._report(
            "storm-mode-ended",
            reason=reason,
            devices=sorted(storm.intervals),
            command_id=command_id if reason == "command" else storm.command_id,
        )
        log.warning("storm-mode-ended", extra=fields(reason=reason))
        await self._save()

    async def end_recorded(self) -> None:
        """At a start: a storm the last run left on ended with it. The platform hears so
        (reason ``restart``) and may switch it on again; the record is cleared."""
        entries = {e.key: e for e in await self._state.items("storm/")}
        record = entries.get(STORM_KEY)
        if record is None or not isinstance(record.value, dict) or not record.value.get("devices"):
            return
        self._report(
            "storm-mode-ended",
            reason="restart",
            devices=record.value.get("devices"),
            command_id=record.value.get("command_id"),
        )
        await self._state.put(STORM_KEY, {}, what="storm mode")

    def stop(self) -> None:
        """At shutdown: stop the clock on the storm, which stays recorded (the next start
        reports it ended, reason ``restart``)."""
        self._cancel_expiry()

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _expire(self, storm: Storm) -> None:
        never = asyncio.Event()
        while self.active is storm:
            remaining = storm.deadline - self._clock.monotonic()
            if remaining <= 0:
                self._expiry = None  # ending it must not cancel this very task
                await self.end("expired")
                return
            await self._clock.wait(never, remaining)

    async def _save(self) -> None:
        value = (
            {}
            if self.active is None
            else {**self.active.describe(), "command_id": self.active.command_id}
        )
        await self._state.put(STORM_KEY, value, what="storm mode")


def _check_number(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    least: float | None = None,
    most: float | None = None,
) -> None:
    """Refuse what the schema lets through: NaN passes every JSON Schema bound."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CommandError(f"{name} must be a finite number, not {value!r}")
    if above is not None and not value > above:
        raise CommandError(f"{name} must be above {above:g}, not {value!r}")
    if least is not None and value < least:
        raise CommandError(f"{name} must be at least {least:g}, not {value!r}")
    if most is not None and value > most:
        raise CommandError(f"{name} must be at most {most:g}, not {value!r}")
