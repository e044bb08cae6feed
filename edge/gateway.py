"""The gateway: drivers -> rules -> annunciator, then buffer -> uplink.

Data flows one way. A driver hands each sample to :meth:`Gateway.on_sample`, which runs
the rules and drives the buzzer *synchronously*, and only then queues the reading and any
events for the outbox. The outbox and the uplink run in their own supervised tasks: if the
buffer cannot be opened or the broker is gone, readings are still judged and alarms still
sound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

from buffer import CapacityPolicy, LossTally, Outbox, OutboxUnwritable
from drivers import DeviceStatus, Reading
from drivers.catalog import family_of
from drivers.modbus import known_models, load_model
from edge import __version__, command_bounds, contract, reload, timesync
from edge.annunciator import NO_BACKEND_FIX, Annunciator
from edge.buses import (
    FieldDriver,
    UnavailableGpio,
    build_buses,
    bus_health,
    bus_services,
    modbus_devices,
    set_interval,
)
from edge.calls import CallNotifier
from edge.clock import Clock, SystemClock
from edge.commands import CommandError, current_command_id, current_key_class
from edge.config.model import BufferConfig, SiteConfig
from edge.config.storage import storage_of
from edge.config.thresholds import command_threshold
from edge.contract import EventKind, event_body, iso_utc, reading_body
from edge.control import ControlServer, LiveReadings
from edge.log import fields, lines_dropped
from edge.occupancy import Occupancy, priority
from edge.rules import (
    STATE_SCHEMA,
    AlarmBook,
    RuleEngine,
    StateStore,
    Transition,
    load_rule_state,
    save_rule_state,
)
from edge.rules.tuning import Override
from edge.sms import SmsNotifier
from edge.storage_policy import Stored
from edge.supervisor import Supervisor
from edge.uplink import Uplink

log = logging.getLogger("edge.gateway")

Stream = Literal["event", "telemetry"]

#: Readings waiting for the outbox to open. Bounded so that a buffer that never opens costs
#: bounded memory; at 1 reading/s per point this is hours of a small site. Readings beyond it
#: are counted and reported by a readings-lost event; events always wait.
PENDING_LIMIT = 200_000

#: Shutdown budget, inside systemd's and the issue's 5 s: drivers stop at once, then the
#: buffer is flushed, then the uplink says goodbye.
FLUSH_TIMEOUT = 2.0
UPLINK_STOP_TIMEOUT = 1.0
#: If the disk refused the flush, closing gives up after this (the loss is logged).
OUTBOX_CLOSE_GRACE = 0.5


#: How often time-based rules, re-arm timeouts and occupancy updates are judged.
TICK_INTERVAL = 1.0
#: How often changed rule state is written to the store. A restart loses at most this much
#: of a window's readings (never counts one twice); transitions are saved at once.
STATE_SAVE_INTERVAL = 30.0
#: How long the start waits for the buffer to restore rule state before polling anyway.
STATE_RESTORE_TIMEOUT = 3.0
#: Shutdown budget for the last state save.
STATE_SAVE_TIMEOUT = 1.0

#: Storm mode: the fastest poll it sets (a bus of 30 devices at 0.2 s is already busy), and
#: the longest it may last before it ends by itself.
STORM_MIN_INTERVAL: Final = 0.2
STORM_MAX_DURATION: Final = 7 * 86_400.0
#: Where the thresholds set at run time and the storm mode are kept in the state store.
OVERRIDES_KEY: Final = "overrides/thresholds"
STORM_KEY: Final = "storm/active"
#: A pushed config is applied this long after its ack was handed to the uplink, so that the
#: ack goes out on the connection it came in on before the uplink stops.
PUSH_ACK_GRACE: Final = 0.5
#: A refused push's event lists at most this many errors (a file of garbage has thousands).
MAX_REPORTED_ERRORS: Final = 50


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


_EVENT_OF: dict[str, EventKind] = {
    "raised": "alarm-raised",
    "escalated": "alarm-escalated",
    "cleared": "alarm-cleared",
    "silenced": "alarm-silenced",
    "resounded": "alarm-resounded",
    "updated": "alarm-updated",
}


async def open_outbox(buffer: BufferConfig) -> Outbox:
    """The outbox the site file's ``buffer`` section describes (path, commit window, capacity)."""
    return await Outbox.open(
        buffer.path,
        commit_interval=buffer.commit_interval,
        policy=CapacityPolicy(
            max_size=buffer.max_size,
            min_free_disk=buffer.min_free_disk,
            thin_window=buffer.thin_window,
        ),
    )


def config_hash(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:16]


class Gateway:
    """One gateway built from one validated site config."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        config_digest: str = "",
        pin_factory: Any = None,
        status_interval: float = 10.0,
        clock: Clock | None = None,
        state_store: StateStore | None = None,
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.config_digest = config_digest
        #: The site file this gateway was built from; push-config replaces it (None: refused).
        self.config_path = config_path
        #: Set when a pushed config was written and this gateway stops to let it start.
        self.restart: reload.RestartRequest | None = None
        #: The command that pushed this gateway's config (set by the runner that started it).
        self.pushed_by: str | None = None
        #: True while this gateway's pushed config has not proved itself (edge/reload.py).
        self.confirming = False
        #: Set when it runs the last good config because the site file is unusable: a push of
        #: that same config is then not "unchanged", it repairs the file.
        self.site_unusable = False
        self._stop: asyncio.Event | None = None
        #: The field drivers by service name, kept for storm mode (built by :meth:`run`).
        self.buses: dict[str, FieldDriver] = {}
        self.storm: Storm | None = None
        self._storm_task: asyncio.Task[None] | None = None
        self.status_interval = status_interval
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.boot_time = time.time()
        self.rules = RuleEngine(
            config.rules,
            devices=config.devices,
            derived=config.derived_points,
            timezone=config.gateway.timezone,
        )
        self.alarms = AlarmBook(rearm_after=config.outputs.rearm_after)
        self.occupancy = Occupancy(config.zones)
        #: Which polled readings the outbox keeps: storage policies and alarm windows.
        self.storage = storage_of(config)
        #: Zone state each active alarm last reported, to send an update when it changes.
        self._reported_occupancy: dict[tuple[str, str], str] = {}
        self.state_store = state_store
        self._state_due = False
        self._state_restored = False
        self.annunciator = Annunciator(config.outputs, pin_factory=pin_factory, clock=self.clock)
        self.annunciator.on_silence = self._silence_button
        places = {
            d.id: f"{d.location.building} {d.location.floor} {d.location.room}"
            for d in config.devices
        }
        self.sms = (
            None
            if config.sms is None
            else SmsNotifier(
                config.sms,
                site=config.gateway.site.name,
                places=places,
                timezone=config.gateway.timezone,
                report=self._sms_result,
                uplink_online=lambda: self.uplink is not None and self.uplink.state == "online",
            )
        )
        # Calls share the SMS's modem, whose line puts every message before any call.
        self.calls = (
            None
            if self.sms is None or self.sms.config.calls is None
            else CallNotifier(
                self.sms.config.calls,
                site=config.gateway.site.name,
                places=places,
                report=self._sms_result,
                modem=self.sms.modem,
                uplink_online=lambda: self.uplink is not None and self.uplink.state == "online",
            )
        )
        self.supervisor = Supervisor()
        self.outbox: Outbox | None = None
        #: The point alias table the uplink's compact telemetry and metadata message share.
        self.aliases = contract.Aliases.of_site(config)
        self._clock_synced = timesync.cached(timesync.kernel_clock_synced)
        self.uplink: Uplink | None = None
        self.outbox_ready = asyncio.Event()
        self._pending: deque[tuple[Stream, dict[str, Any]]] = deque()
        self._pending_readings = 0
        #: Readings shed while the outbox was not open (reported once it opens).
        self.pending_lost = LossTally()
        self._locations = {d.id: d.location.model_dump() for d in config.devices}
        #: The last value of every point, for the control socket (edge watch, edge commission).
        self.live = LiveReadings()
        #: Called with every transition after the buzzer has been driven (tests, demo).
        self.transition_hooks: list[Callable[[Transition], None]] = []

    # -- the alarm path ---------------------------------------------------------------------

    def on_sample(self, sample: Reading | DeviceStatus) -> None:
        """The drivers' sink. Judges first, sounds second, buffers last."""
        if isinstance(sample, DeviceStatus):
            transitions = self.rules.on_status(sample)
            if transitions:
                self._sound(transitions)
            self._on_status(sample)
            if not sample.online:
                self._keep(self.storage.offline(sample.device_id))
            self._report(transitions)
            self.live.observe(sample)
            return
        self.occupancy.observe(sample)
        transitions = self.rules.evaluate(sample)
        if transitions:
            self._sound(transitions)
        self._keep(self.storage.offer(sample))
        self._report(transitions)
        self.live.observe(sample)

    def _sound(self, transitions: list[Transition]) -> None:
        """The alarm book follows the transitions; the buzzer follows the book, at once."""
        self.alarms.apply(transitions)
        self.annunciator.show(self.alarms.sounding(), self.alarms.worst())

    def _report(self, transitions: list[Transition]) -> None:
        self._keep(self.storage.alarms(transitions))
        for transition in transitions:
            self._on_transition(transition)
        if transitions:
            self._state_due = True

    def silence(self, source: str = "remote", alarm: tuple[str, str] | None = None) -> int:
        """Silence the sounding alarms (or one); ``source`` is ``local`` (the button) or
        ``remote`` (the platform). Returns how many were silenced, or cleared: a latching
        alarm whose condition has gone is cleared by this acknowledgement."""
        now = self.clock.time()
        released = self.rules.release(now, alarm)
        if released:
            self.alarms.apply(released)
        transitions = self.alarms.silence(now, source, alarm)
        self.annunciator.show(self.alarms.sounding(), self.alarms.worst())
        self._report([*released, *transitions])
        return len(released) + len(transitions)

    def _silence_button(self) -> None:
        self.silence("local")

    def _on_transition(self, transition: Transition) -> None:
        kind = _EVENT_OF[transition.kind]
        occupancy = transition.occupancy
        if occupancy is None:
            occupancy = self.occupancy.report_for(transition.device_id, self.clock.time())
        state = None if occupancy is None else str(occupancy["state"])
        if transition.kind == "cleared":
            self._reported_occupancy.pop(transition.alarm_key, None)
        elif state is not None:
            self._reported_occupancy[transition.alarm_key] = state
        for hook in self.transition_hooks:
            hook(transition)
        reading = transition.reading
        log.warning(
            kind,
            extra=fields(
                rule=transition.rule_id,
                device=transition.device_id,
                point=transition.point,
                value=transition.value,
                threshold=transition.threshold,
                severity=transition.severity,
                reason=transition.reason,
                occupancy=state or "",
            ),
        )
        self._submit(
            "event",
            event_body(
                kind,
                transition.ts,
                rule=transition.rule_id,
                rule_kind=transition.rule_kind,
                severity=transition.severity,
                priority=priority(transition.severity, state),
                device=transition.device_id,
                point=transition.point,
                value=transition.value,
                unit=None if reading is None else reading.unit,
                threshold=transition.threshold,
                reason=transition.reason,
                source=transition.source or None,
                occupancy=occupancy,
                location=self._locations.get(transition.device_id),
            ),
        )
        told = (
            transition
            if occupancy is transition.occupancy
            else dataclasses.replace(transition, occupancy=occupancy)
        )
        # The SMS first: its line goes before any call (docs/rules.md, Phone calls).
        if self.sms is not None:
            self.sms.notify(told)
        if self.calls is not None:
            self.calls.notify(told)

    def _keep(self, stored: list[Stored]) -> None:
        """Hand the readings the storage policies kept to the outbox."""
        for reading, window in stored:
            self._submit("telemetry", reading_body(reading, window))

    def _sms_result(self, kind: EventKind, body: dict[str, Any]) -> None:
        self._submit("event", event_body(kind, self.clock.time(), **body))

    def _on_status(self, status: DeviceStatus) -> None:
        kind: EventKind = "device-online" if status.online else "device-offline"
        log.warning(kind, extra=fields(device=status.device_id, reason=status.reason))
        self._submit(
            "event",
            event_body(
                kind,
                status.ts,
                device=status.device_id,
                reason=status.reason,
                location=self._locations.get(status.device_id),
            ),
        )

    def pins_unusable(self) -> list[str]:
        """What of this board's GPIO the config cannot use: the annunciator's outputs, GPIO
        buses whose pin factory does not load. The gateway runs on with them (each is
        reported), but a pushed config that causes one has not proved itself."""
        found = (
            []
            if self.annunciator.failure is None
            else [f"the buzzer cannot sound: {self.annunciator.failure}"]
        )
        for name, driver in self.buses.items():
            if isinstance(driver, UnavailableGpio):
                found.append(f"{name}: {driver.reason}")
        return found

    def _annunciator_failed(self, why: str) -> None:
        """A buzzer that cannot sound is an alarm of its own: it goes to the platform, and by
        SMS where one is set up, while everything else runs on."""
        outputs = self.config.outputs
        log.error(
            "annunciator failed: the buzzer cannot sound",
            extra=fields(error=why, fix=NO_BACKEND_FIX),
        )
        self.report(
            "annunciator-failed",
            severity="fire",
            reason=why,
            fix=NO_BACKEND_FIX,
            buzzer_pin=outputs.buzzer.pin,
            pin_factory=outputs.pin_factory,
        )
        if self.sms is not None:
            self.sms.notify(
                Transition(
                    rule_id="annunciator-failed",
                    kind="raised",
                    severity="fire",
                    device_id=self.config.gateway.id,
                    point="buzzer",
                    ts=self.clock.time(),
                    value=None,
                    threshold=None,
                    reading=None,
                    rule_kind="annunciator",
                    reason="the on-site buzzer cannot sound",
                    scope="",
                )
            )

    def report(self, kind: EventKind, **body: Any) -> None:
        """Submit an event of the gateway's own (commands, config changes), timestamped now."""
        self._submit("event", event_body(kind, self.clock.time(), **body))

    def _submit(self, stream: Stream, body: dict[str, Any]) -> None:
        if self.outbox is not None:
            self.outbox.submit(stream, body)
            return
        if stream == "telemetry":
            if self._pending_readings >= PENDING_LIMIT:
                self.pending_lost.add(body)
                return
            self._pending_readings += 1
        self._pending.append((stream, body))

    # -- services ---------------------------------------------------------------------------

    async def _buffer_service(self) -> None:
        """Open the outbox (the supervisor retries with backoff if the disk refuses)."""
        buffer = self.config.buffer
        try:
            self.outbox = await open_outbox(buffer)
        except OutboxUnwritable as exc:
            # The message names the path and the fix; records wait in memory meanwhile.
            log.error("buffer unwritable; retrying", extra=fields(error=str(exc)))
            raise
        if self.outbox.reset is not None:
            # The outbox wrote a buffer-reset event into the new file itself; this is for the log.
            log.error(
                "buffer-reset",
                extra=fields(
                    moved_to=str(self.outbox.reset.moved_to),
                    reason=self.outbox.reset.reason,
                    epoch=self.outbox.epoch,
                ),
            )
        while self._pending:
            self.outbox.submit(*self._pending.popleft())
        self._pending_readings = 0
        if self.pending_lost:
            body = self.pending_lost.take_event(time.time(), "the buffer was not open")
            log.error(
                "readings-lost", extra=fields(readings=body["readings"], reason=body["reason"])
            )
            self.outbox.submit("event", body)
        log.info(
            "outbox open",
            extra=fields(path=self.config.buffer.path, epoch=self.outbox.epoch),
        )
        self.outbox_ready.set()

    async def _uplink_service(self) -> None:
        await self.outbox_ready.wait()
        assert self.outbox is not None
        self.uplink = Uplink(
            self.config.uplink,
            self.config.gateway.id,
            self.outbox,
            version=__version__,
            boot_time=self.boot_time,
            config_hash=self.config_digest,
            clock_synced=self._clock_synced,
            metadata=self._metadata_message,
            health=self.health,
            aliases=self.aliases,
            command_policy=self.config.commands,
            # The installed TLS files beside the site file, as edge doctor uses them.
            certs=None if self.config_path is None else Path(self.config_path).parent / "certs",
            command_handlers={
                "ping": self._command_ping,
                "get-status": self._command_status,
                "silence": self._command_silence,
                "set-threshold": self._command_set_threshold,
                "storm-mode": self._command_storm_mode,
                "push-config": self._command_push_config,
            },
        )
        await self.uplink.run()

    def _metadata_message(self, epoch: str) -> bytes:
        """The retained device metadata (locations, points, aliases), sent at every connect."""
        return contract.metadata_message(
            self.config.gateway.id,
            epoch,
            self.config,
            self.aliases,
            clock_synced=self._clock_synced(),
            storage=self.storage,
        )

    # -- downlink commands (edge/commands.py validates them and answers) ----------------------

    async def _command_ping(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    async def _command_status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        health = await self.health()
        depth = health["buffer_streams"]
        return {
            "version": __version__,
            "config_hash": self.config_digest,
            "uptime_s": round(time.time() - self.boot_time, 3),
            "buzzer": "on" if self.annunciator.sounding else "off",
            "active_alarms": [
                {"rule": rule, "device": device, "silenced": alarm.silenced}
                for (rule, device), alarm in sorted(self.alarms.alarms.items())
            ],
            "outbox": {"events": depth.get("event", 0), "telemetry": depth.get("telemetry", 0)},
            "uplink": self.uplink.state if self.uplink is not None else "waiting",
            "oldest_unsent_age_s": health["oldest_unsent_age_s"],
            "buses": health["buses"],
            "storm": health["storm"],
            "threshold_overrides": health["threshold_overrides"],
        }

    async def health(self) -> dict[str, Any]:
        """How the gateway is doing, for get-status and the uplink's health messages
        (edge/schemas/health.json): outbox depth per stream and the age of the oldest record
        waiting, per-bus counters, uptime, alarms, storm mode and thresholds set remotely."""
        depth: dict[str, int] = {}
        oldest: float | None = None
        if self.outbox is not None:
            depth = await self.outbox.depth()
            now = time.time()
            for stream in ("event", "telemetry"):
                try:
                    # One row from the left edge of the stream's index: cheap at any depth.
                    first = await self.outbox.peek(stream, 1) if depth.get(stream) else []
                except Exception:
                    continue
                if first:
                    age = max(0.0, now - first[0].created)
                    oldest = age if oldest is None else max(oldest, age)
        buses = bus_health(self.buses)
        return {
            "uptime_s": round(time.time() - self.boot_time, 3),
            "buffer_rows": sum(depth.values()),
            "buffer_streams": {
                "event": depth.get("event", 0),
                "telemetry": depth.get("telemetry", 0),
            },
            "oldest_unsent_age_s": None if oldest is None else round(oldest, 3),
            "pending_in_memory": len(self._pending),
            "readings_lost": self.pending_lost.total
            + (self.outbox.lost.total if self.outbox is not None else 0),
            "log_lines_dropped": lines_dropped(),
            "bus_errors": {
                bus: int(b.get("errors", 0)) + int(b.get("timeouts", 0)) for bus, b in buses.items()
            },
            "buses": buses,
            "active_alarms": len(self.alarms.alarms),
            "buzzer": "on" if self.annunciator.sounding else "off",
            "annunciator": "ok" if self.annunciator.failure is None else "failed",
            "storm": None if self.storm is None else self.storm.describe(),
            "threshold_overrides": [o.dump() for o in self.rules.overrides],
            "storage": {
                "polled": self.storage.polled,
                "stored": self.storage.stored,
                "held_for_alarm_windows": self.storage.ring_size(),
            },
        }

    async def _command_silence(self, params: Mapping[str, Any]) -> dict[str, Any]:
        key = (str(params["rule"]), str(params["device"]))
        alarm = self.alarms.alarms.get(key)
        if alarm is None:
            raise CommandError(f"no active alarm of rule {key[0]!r} on device {key[1]!r}")
        if alarm.silenced and key not in self.rules.latched:
            return {"silenced": 0, "already": True}
        return {"silenced": self.silence("remote", key)}

    def _threshold_refusal(self, params: Mapping[str, Any]) -> str | None:
        """Why a set-threshold is beyond the site file's bounds (edge/command_bounds.py)."""
        rule = next((r for r in self.config.rules if r.id == params["rule"]), None)
        if rule is None:
            return None
        device = params.get("device")
        devices = [str(device)] if device is not None else self.rules.devices_of(rule)
        models = {d.id: d.model for d in self.config.devices}

        def point_range(device_id: str, point: str) -> command_bounds.PointRange | None:
            model = models.get(device_id)
            if model is None or family_of(model) != "modbus":
                return None  # UART and GPIO sensors, derived points: the factor bounds them
            found = load_model(model)
            if not found.has_point(point):
                return None
            spec = found.point(point)
            return command_bounds.reportable_range(spec.type, spec.scale)

        return command_bounds.threshold_refusal(
            self.config,
            str(params["rule"]),
            params.get("field"),
            params["threshold"],
            devices,
            point_range=point_range,
        )

    async def _command_set_threshold(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not self._state_restored:
            # Overrides are stored next to the rule state; restore first so the stored ones
            # are not overwritten by this one alone.
            await self._restore_rule_state(wait=False)
        device = params.get("device")
        # "0.5 A" on a rule in mA is 500: a unit is converted or refused, never dropped.
        rule = next((r for r in self.config.rules if r.id == params["rule"]), None)
        try:
            value = command_threshold(
                params["threshold"], params.get("field"), getattr(rule, "unit", None)
            )
        except ValueError as exc:
            raise CommandError(f"threshold: {exc}") from None
        params = {**params, "threshold": value}
        refusal = self._threshold_refusal(params)
        if refusal is not None:
            raise CommandError(refusal)
        try:
            change = self.rules.set_threshold(
                str(params["rule"]),
                params["threshold"],
                field=params.get("field"),
                device=device,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.report(
            "threshold-changed",
            rule=change.rule,
            field=change.field,
            old=change.old,
            new=change.value,
            device=device,
            devices={d: {"old": change.before[d], "new": change.after[d]} for d in change.after},
            command_id=current_command_id(),
        )
        log.warning(
            "threshold-changed",
            extra=fields(rule=change.rule, field=change.field, old=change.old, new=change.value),
        )
        await self._save_tuning()
        return {
            "rule": change.rule,
            "field": change.field,
            "old": change.old,
            "new": change.value,
            "devices": {d: {"old": change.before[d], "new": change.after[d]} for d in change.after},
            "overrides": [o.dump() for o in self.rules.overrides],
        }

    async def _save_tuning(self) -> None:
        """Store the overrides, tagged with the site file's hash: a different site file (a
        push, or an installer's edit) starts from its own thresholds."""
        store = self._store()
        if store is None or not self._state_restored:
            return
        value = {
            "config_hash": self.config_digest,
            "overrides": [o.dump() for o in self.rules.overrides],
        }
        try:
            await store.state_put(OVERRIDES_KEY, value, schema=STATE_SCHEMA)
        except Exception as exc:
            log.error("threshold overrides not saved", extra=fields(error=repr(exc)))

    async def _restore_tuning(self, store: StateStore) -> None:
        entries = {e.key: e for e in await store.state_items("overrides/")}
        entries.update({e.key: e for e in await store.state_items("storm/")})
        stored = entries.get(OVERRIDES_KEY)
        value = None if stored is None else stored.value
        if isinstance(value, dict) and value.get("config_hash") == self.config_digest:
            overrides = []
            for item in value.get("overrides", []):
                try:
                    overrides.append(Override.load(item))
                except ValueError as exc:
                    log.error("threshold override dropped", extra=fields(error=str(exc)))
            for problem in self.rules.load_overrides(overrides):
                log.error("threshold override dropped", extra=fields(error=problem))
            if overrides:
                log.warning(
                    "threshold overrides restored", extra=fields(count=len(self.rules.overrides))
                )
        storm = entries.get(STORM_KEY)
        if storm is not None and isinstance(storm.value, dict) and storm.value.get("devices"):
            # Storm mode does not survive a restart: the platform hears that it ended and may
            # switch it on again; the buses start at their configured intervals.
            self.report(
                "storm-mode-ended",
                reason="restart",
                devices=storm.value.get("devices"),
                command_id=storm.value.get("command_id"),
            )
            await store.state_put(STORM_KEY, {}, schema=STATE_SCHEMA)

    async def _command_storm_mode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not self._state_restored:
            # The stored storm state is read at restore; a storm started before that would be
            # taken for one a restart ended.
            await self._restore_rule_state(wait=False)
        if not params["on"]:
            if self.storm is None:
                return {"active": False, "already": True}
            await self._end_storm("command")
            return {"active": False}
        duration = params.get("duration_s")
        if duration is None:
            raise CommandError("storm-mode on needs duration_s (it ends by itself after it)")
        _check_number("duration_s", duration, above=0, most=STORM_MAX_DURATION)
        factor = params.get("threshold_factor", 1.0)
        _check_number("threshold_factor", factor, above=0, most=1)
        wanted = params.get("interval_s")
        if wanted is not None:
            _check_number("interval_s", wanted, least=STORM_MIN_INTERVAL, most=86_400.0)
        polled = modbus_devices(self.buses)
        if not polled:
            raise CommandError("no Modbus device is being polled (yet); nothing to speed up")
        devices = params.get("devices")
        if devices is None:
            devices = sorted(polled)
        if not devices:
            raise CommandError("devices is empty; leave it out for every polled device")
        known = {d.id: d for d in self.config.devices}
        for device_id in devices:
            if device_id not in known:
                raise CommandError(f"unknown device {device_id!r}")
            if device_id not in polled:
                raise CommandError(
                    f"device {device_id!r} is not polled over Modbus; storm mode speeds up polls"
                )
        intervals: dict[str, float] = {}
        for device_id in dict.fromkeys(devices):
            device = known[device_id]
            default = device.fast_interval or device.poll_interval / 2
            chosen = float(wanted) if wanted is not None else default
            # Never slower than the site file asks, never faster than the floor.
            intervals[device_id] = max(STORM_MIN_INTERVAL, min(chosen, device.poll_interval))
        renewed = self.storm is not None
        if self.storm is not None:
            for device_id in set(self.storm.intervals) - set(intervals):
                set_interval(self.buses, device_id, None)
            if self._storm_task is not None:
                self._storm_task.cancel()
        for device_id, seconds in intervals.items():
            set_interval(self.buses, device_id, seconds)
        self.rules.set_storm(intervals, float(factor))
        now = self.clock.time()
        self.storm = Storm(
            intervals,
            float(factor),
            now + float(duration),
            self.clock.monotonic() + float(duration),
            current_command_id(),
        )
        self._storm_task = asyncio.create_task(self._storm_expiry(self.storm), name="storm")
        described = self.storm.describe()
        self.report(
            "storm-mode-started",
            **described,
            duration_s=float(duration),
            renewed=renewed,
            command_id=current_command_id(),
        )
        log.warning(
            "storm-mode-started", extra=fields(devices=len(intervals), until=described["until"])
        )
        await self._save_storm()
        return {"active": True, "renewed": renewed, **described}

    async def _storm_expiry(self, storm: Storm) -> None:
        never = asyncio.Event()
        while self.storm is storm:
            remaining = storm.deadline - self.clock.monotonic()
            if remaining <= 0:
                self._storm_task = None  # ending it must not cancel this very task
                await self._end_storm("expired")
                return
            await self.clock.wait(never, remaining)

    async def _end_storm(self, reason: str) -> None:
        storm, self.storm = self.storm, None
        if storm is None:
            return
        if self._storm_task is not None:
            self._storm_task.cancel()
            self._storm_task = None
        for device_id in storm.intervals:
            with contextlib.suppress(ValueError):
                set_interval(self.buses, device_id, None)
        self.rules.set_storm(None)
        self.report(
            "storm-mode-ended",
            reason=reason,
            devices=sorted(storm.intervals),
            command_id=current_command_id() if reason == "command" else storm.command_id,
        )
        log.warning("storm-mode-ended", extra=fields(reason=reason))
        await self._save_storm()

    async def _save_storm(self) -> None:
        store = self._store()
        if store is None or not self._state_restored:
            return
        value = (
            {}
            if self.storm is None
            else {**self.storm.describe(), "command_id": self.storm.command_id}
        )
        try:
            await store.state_put(STORM_KEY, value, schema=STATE_SCHEMA)
        except Exception as exc:
            log.error("storm mode not saved", extra=fields(error=repr(exc)))

    async def _command_push_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if self.config_path is None or self._stop is None:
            raise CommandError("this gateway was not started from a site file; cannot replace it")
        if self.restart is not None or self.confirming:
            # One push at a time: a second one would replace files the first still needs to
            # roll back.
            raise CommandError(
                "a pushed config is still being confirmed; push again once config-applied or "
                "config-rolled-back has been reported"
            )
        path = Path(self.config_path)
        try:
            # In a thread: checking a large site file takes a while, and the loop judges
            # readings meanwhile.
            pushed = await asyncio.to_thread(
                reload.check_pushed,
                params,
                self.config,
                filename=path.name,
                known_models=known_models(),
            )
        except reload.PushRejected as exc:
            self.report(
                "config-rejected",
                command_id=current_command_id(),
                errors=exc.errors[:MAX_REPORTED_ERRORS],
                error_count=len(exc.errors),
            )
            log.error("config-rejected", extra=fields(errors=len(exc.errors)))
            raise
        needs_engineering = command_bounds.engineering_reasons(self.config, pushed.config)
        if needs_engineering and current_key_class() != "engineering":
            raise CommandError(
                "push-config needs the engineering key, not the operations key: "
                + "; ".join(needs_engineering)
            )
        digest = config_hash(pushed.text.encode())
        if digest == self.config_digest and not self.site_unusable:
            # The platform repeating a push that was applied (its first ack lost in the
            # restart): nothing to do, and no second restart.
            return {"config_hash": digest, "unchanged": True}
        try:
            # In a thread: an fsync on an SD card can take long, and the alarms go on meanwhile.
            await asyncio.to_thread(
                reload.write_site,
                path,
                pushed.text,
                pending={"config_hash": digest, "command_id": current_command_id()},
            )
        except OSError as exc:
            raise CommandError(f"cannot write the site file: {exc}") from None
        self.restart = reload.RestartRequest(current_command_id(), digest, self.config_digest)
        log.warning("pushed config written; restarting", extra=fields(config_hash=digest))
        asyncio.get_running_loop().call_later(PUSH_ACK_GRACE, self._stop.set)
        return {
            "config_hash": digest,
            "previous_hash": self.config_digest,
            "restarting": True,
            "confirm_within_s": self.config.uplink.push_confirm_within,
        }

    async def _status_service(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval)
            depth = await self.outbox.depth() if self.outbox is not None else {}
            log.info(
                "status",
                extra=fields(
                    buzzer="on" if self.annunciator.sounding else "off",
                    active_alarms=len(self.alarms.alarms),
                    silenced=sum(1 for a in self.alarms.alarms.values() if a.silenced),
                    outbox_events=depth.get("event", 0),
                    outbox_telemetry=depth.get("telemetry", 0),
                    pending=len(self._pending),
                    uplink=self.uplink.state if self.uplink is not None else "waiting",
                ),
            )

    # -- time-based judgement and rule state ------------------------------------------------

    def tick(self) -> None:
        """Let time pass for the rules, the re-arm timeouts and the occupancy of alarms."""
        now = self.clock.time()
        self._keep(self.storage.tick(now))
        transitions = self.rules.tick(now)
        if transitions:
            self._sound(transitions)
        resounded = self.alarms.tick(now)
        if resounded:
            self.annunciator.show(self.alarms.sounding(), self.alarms.worst())
        updates: list[Transition] = []
        for key, alarm in self.alarms.alarms.items():
            before = self._reported_occupancy.get(key)
            if before is None:
                continue
            report = self.occupancy.report_for(alarm.latest.device_id, now)
            if report is not None and report["state"] != before:
                update = dataclasses.replace(
                    alarm.latest, kind="updated", ts=now, reading=None, occupancy=report
                )
                alarm.latest = update
                updates.append(update)
        self._report([*transitions, *resounded, *updates])

    def _store(self) -> StateStore | None:
        # In the field, rule state lives in the outbox's file (its key-value table).
        return self.state_store if self.state_store is not None else self.outbox

    async def _restore_rule_state(self, *, wait: bool = True) -> None:
        """Resume windows, baselines and active alarms; an active alarm sounds again at once.

        At start the buses wait for this at most :data:`STATE_RESTORE_TIMEOUT`: a buffer that
        opens later has its state restored then (by the rules task), laid over the few
        seconds already judged, so a slow disk costs seconds of a window, never the window.
        """
        if wait and self.state_store is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATE_RESTORE_TIMEOUT):
                    await self.outbox_ready.wait()
        store = self._store()
        if store is None:
            if wait:
                log.warning("rule state not restored yet: the buffer is not open")
            return
        self._state_restored = True
        try:
            dropped = await load_rule_state(store, self.rules, self.alarms)
        except Exception as exc:  # a damaged store must not stop the alarms
            log.error("rule state not restored", extra=fields(error=repr(exc)))
            return
        try:
            await self._restore_tuning(store)
        except Exception as exc:  # the site file's thresholds are a safe place to be
            log.error("threshold overrides not restored", extra=fields(error=repr(exc)))
        self.annunciator.show(self.alarms.sounding(), self.alarms.worst())
        log.info(
            "rule state restored",
            extra=fields(active_alarms=len(self.alarms.alarms), dropped=len(dropped)),
        )
        self._report(dropped)

    async def _save_rule_state(self, *, budget: float | None = None) -> None:
        store = self._store()
        if store is None or not self._state_restored:
            # Saving before restoring would overwrite the stored windows with young ones.
            return
        try:
            async with asyncio.timeout(budget):
                await save_rule_state(store, self.rules, self.alarms, self.clock.monotonic())
        except Exception as exc:  # the next save retries; alarms go on
            log.error("rule state not saved", extra=fields(error=repr(exc)))

    async def _rules_service(self) -> None:
        never = asyncio.Event()
        last_save = self.clock.monotonic()
        while True:
            await self.clock.wait(never, TICK_INTERVAL)
            self.tick()
            if not self._state_restored:
                await self._restore_rule_state(wait=False)
            now = self.clock.monotonic()
            if self._state_due or now - last_save >= STATE_SAVE_INTERVAL:
                self._state_due = False
                last_save = now
                await self._save_rule_state()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(
        self, stop: asyncio.Event, *, on_started: Callable[[], None] | None = None
    ) -> None:
        """Run until ``stop`` is set, then shut down cleanly (drivers, buffer flush, uplink).

        ``on_started`` is called once every service has been started (systemd's READY=1).
        """
        log.info(
            "gateway starting",
            extra=fields(
                gateway=self.config.gateway.id,
                version=__version__,
                buses=len(self.config.buses),
                devices=len(self.config.devices),
                rules=len(self.config.rules),
            ),
        )
        self._submit(
            "event",
            event_body(
                "gateway-started",
                self.boot_time,
                version=__version__,
                config_hash=self.config_digest,
            ),
        )
        if self.annunciator.failure is not None:
            self._annunciator_failed(self.annunciator.failure)
        self.supervisor.start("buffer", self._buffer_service)
        await self._restore_rule_state()
        self.supervisor.start("annunciator", self.annunciator.run)
        self.supervisor.start("rules", self._rules_service)
        if self.sms is not None:
            self.supervisor.start("sms", self.sms.run)
        if self.calls is not None:
            self.supervisor.start("calls", self.calls.run)
        self.supervisor.start("uplink", self._uplink_service)
        self.supervisor.start("status", self._status_service)
        if self.config.control.socket is not None and self.config_path is not None:
            # Only a gateway run from a site file (edge run) listens; never on the alarm path.
            control = ControlServer(
                self, self.config.control.socket, group=self.config.control.group
            )
            self.supervisor.start("control", control.serve)
        self._stop = stop
        bus_names: list[str] = []
        pins = self.annunciator.pin_factory  # PIR sensors share the annunciator's pin factory
        try:
            # Kept: storm mode reaches the buses through these objects.
            self.buses = build_buses(self.config, self.on_sample, pin_factory=pins)
        except BaseException:
            await self.shutdown(bus_names)
            raise
        for name, service in bus_services(self.config, self.on_sample, buses=self.buses).items():
            self.supervisor.start(name, service)
            bus_names.append(name)
        try:
            if on_started is not None:
                on_started()
            await stop.wait()
        finally:
            await self.shutdown(bus_names)

    async def shutdown(self, bus_names: list[str]) -> None:
        started = time.monotonic()
        if self._storm_task is not None:
            # Storm mode stays recorded: the next start reports it ended (reason restart).
            self._storm_task.cancel()
            self._storm_task = None
        await self.supervisor.stop(bus_names)
        self._keep(self.storage.flush())  # the readings a swinging door still held
        await self._save_rule_state(budget=STATE_SAVE_TIMEOUT)
        if self.outbox is not None:
            try:
                await asyncio.wait_for(self.outbox.flush(), FLUSH_TIMEOUT)
            except TimeoutError:
                log.error("outbox flush timed out at shutdown")
        if self.uplink is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.uplink.stop(), UPLINK_STOP_TIMEOUT)
        await self.supervisor.stop()
        if self.outbox is not None:
            await self.outbox.close(grace=OUTBOX_CLOSE_GRACE)
        self.annunciator.close()
        log.info(
            "gateway stopped",
            extra=fields(
                seconds=round(time.monotonic() - started, 3),
                unbuffered=len(self._pending),
            ),
        )


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
