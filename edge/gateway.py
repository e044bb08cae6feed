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
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

from buffer import CapacityPolicy, Outbox, OutboxUnwritable
from drivers import DeviceStatus, Reading
from edge import __version__
from edge.annunciator import Annunciator
from edge.buses import bus_services
from edge.clock import Clock, SystemClock
from edge.commands import CommandError
from edge.config.model import SiteConfig
from edge.contract import EventKind, event_body, reading_body
from edge.log import fields
from edge.occupancy import Occupancy, priority
from edge.rules import (
    AlarmBook,
    RuleEngine,
    StateStore,
    Transition,
    load_rule_state,
    save_rule_state,
)
from edge.sms import SmsNotifier
from edge.supervisor import Supervisor
from edge.uplink import Uplink

log = logging.getLogger("edge.gateway")

Stream = Literal["event", "telemetry"]

#: Records waiting for the outbox to open. Bounded so that a buffer that never opens costs
#: bounded memory; at 1 reading/s per point this is hours of a small site.
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

_EVENT_OF: dict[str, EventKind] = {
    "raised": "alarm-raised",
    "escalated": "alarm-escalated",
    "cleared": "alarm-cleared",
    "silenced": "alarm-silenced",
    "resounded": "alarm-resounded",
    "updated": "alarm-updated",
}


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
    ) -> None:
        self.config = config
        self.config_digest = config_digest
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
        #: Zone state each active alarm last reported, to send an update when it changes.
        self._reported_occupancy: dict[tuple[str, str], str] = {}
        self.state_store = state_store
        self._state_due = False
        self._state_restored = False
        self.annunciator = Annunciator(config.outputs, pin_factory=pin_factory, clock=self.clock)
        self.annunciator.on_silence = self._silence_button
        self.sms = (
            None
            if config.sms is None
            else SmsNotifier(
                config.sms,
                site=config.gateway.site.name,
                places={
                    d.id: f"{d.location.building} {d.location.floor} {d.location.room}"
                    for d in config.devices
                },
                timezone=config.gateway.timezone,
                report=self._sms_result,
                uplink_online=lambda: self.uplink is not None and self.uplink.state == "online",
            )
        )
        self.supervisor = Supervisor()
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.outbox_ready = asyncio.Event()
        self._pending: deque[tuple[Stream, dict[str, Any]]] = deque()
        self.pending_dropped = 0
        self._locations = {d.id: d.location.model_dump() for d in config.devices}
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
            self._report(transitions)
            return
        self.occupancy.observe(sample)
        transitions = self.rules.evaluate(sample)
        if transitions:
            self._sound(transitions)
        self._submit("telemetry", reading_body(sample))
        self._report(transitions)

    def _sound(self, transitions: list[Transition]) -> None:
        """The alarm book follows the transitions; the buzzer follows the book, at once."""
        self.alarms.apply(transitions)
        self.annunciator.show(self.alarms.sounding(), self.alarms.worst())

    def _report(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            self._on_transition(transition)
        if transitions:
            self._state_due = True

    def silence(self, source: str = "remote", alarm: tuple[str, str] | None = None) -> int:
        """Silence the sounding alarms (or one); ``source`` is ``local`` (the button) or
        ``remote`` (the platform). Returns how many were silenced."""
        transitions = self.alarms.silence(self.clock.time(), source, alarm)
        self.annunciator.show(self.alarms.sounding(), self.alarms.worst())
        self._report(transitions)
        return len(transitions)

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
        if self.sms is not None:
            self.sms.notify(
                transition
                if occupancy is transition.occupancy
                else dataclasses.replace(transition, occupancy=occupancy)
            )

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

    def _submit(self, stream: Stream, body: dict[str, Any]) -> None:
        if self.outbox is not None:
            self.outbox.submit(stream, body)
            return
        if len(self._pending) >= PENDING_LIMIT:
            self._pending.popleft()
            self.pending_dropped += 1
        self._pending.append((stream, body))

    # -- services ---------------------------------------------------------------------------

    async def _buffer_service(self) -> None:
        """Open the outbox (the supervisor retries with backoff if the disk refuses)."""
        buffer = self.config.buffer
        try:
            self.outbox = await Outbox.open(
                buffer.path,
                commit_interval=buffer.commit_interval,
                policy=CapacityPolicy(
                    max_size=buffer.max_size,
                    min_free_disk=buffer.min_free_disk,
                    thin_window=buffer.thin_window,
                ),
            )
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
            command_handlers={
                "ping": self._command_ping,
                "get-status": self._command_status,
                "silence": self._command_silence,
            },
        )
        await self.uplink.run()

    # -- downlink commands (edge/commands.py validates them and answers) ----------------------

    async def _command_ping(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    async def _command_status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        depth = await self.outbox.depth() if self.outbox is not None else {}
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
        }

    async def _command_silence(self, params: Mapping[str, Any]) -> dict[str, Any]:
        key = (str(params["rule"]), str(params["device"]))
        alarm = self.alarms.alarms.get(key)
        if alarm is None:
            raise CommandError(f"no active alarm of rule {key[0]!r} on device {key[1]!r}")
        if alarm.silenced:
            return {"silenced": 0, "already": True}
        return {"silenced": self.silence("remote", key)}

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
        self.supervisor.start("buffer", self._buffer_service)
        await self._restore_rule_state()
        self.supervisor.start("annunciator", self.annunciator.run)
        self.supervisor.start("rules", self._rules_service)
        if self.sms is not None:
            self.supervisor.start("sms", self.sms.run)
        self.supervisor.start("uplink", self._uplink_service)
        self.supervisor.start("status", self._status_service)
        bus_names = []
        pins = self.annunciator.pin_factory  # PIR sensors share the annunciator's pin factory
        for name, service in bus_services(self.config, self.on_sample, pin_factory=pins).items():
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
        await self.supervisor.stop(bus_names)
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
