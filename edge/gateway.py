"""The gateway: drivers -> rules -> annunciator, then buffer -> uplink.

Data flows one way. A driver hands each sample to :meth:`Gateway.on_sample`, which runs
the rules and drives the buzzer *synchronously*, and only then queues the reading and any
events for the outbox. The outbox and the uplink run in their own supervised tasks: if the
buffer cannot be opened or the broker is gone, readings are still judged and alarms still
sound.

This module is the wiring and that alarm path. The rest lives beside it: the rules' state
across restarts in edge/rule_state.py, storm mode in edge/storm.py, the health message in
edge/health.py, what each downlink command does in edge/command_handlers.py, and the loop that
restarts the gateway for a pushed config in edge/site_runner.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from buffer import CapacityPolicy, LossTally, Outbox, OutboxUnwritable
from drivers import DeviceStatus, Reading
from edge import __version__, contract, heap, reload, timesync
from edge.annunciator import NO_BACKEND_FIX, Annunciator
from edge.buses import FieldDriver, UnavailableGpio, build_buses, bus_services
from edge.clock import Clock, SystemClock
from edge.command_handlers import command_handlers
from edge.config.behaviour import storage_of
from edge.contract import EventKind, event_body, reading_body
from edge.control import ControlServer, LiveReadings
from edge.health import gateway_health, log_status
from edge.log import fields
from edge.occupancy import Occupancy, priority
from edge.rule_state import STATE_SAVE_TIMEOUT, RuleStateKeeper
from edge.rules import AlarmBook, RuleEngine, StateStore, Transition
from edge.storage_policy import Stored
from edge.storm import StormMode
from edge.supervisor import Supervisor
from edge.uplink import Uplink

if TYPE_CHECKING:
    from edge.calls import CallNotifier
    from edge.config.model import BufferConfig, SiteConfig
    from edge.sms import SmsNotifier

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
        sync_interval=buffer.sync_interval,
        policy=CapacityPolicy(
            max_size=buffer.max_size,
            min_free_disk=buffer.min_free_disk,
            thin_window=buffer.thin_window,
        ),
    )


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
        #: True while this gateway's pushed config has not proved itself (edge/site_runner.py).
        self.confirming = False
        #: Set when it runs the last good config because the site file is unusable: a push of
        #: that same config is then not "unchanged", it repairs the file.
        self.site_unusable = False
        self._stop: asyncio.Event | None = None
        #: The field drivers by service name, kept for storm mode (built by :meth:`run`).
        self.buses: dict[str, FieldDriver] = {}
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
        self.annunciator = Annunciator(config.outputs, pin_factory=pin_factory, clock=self.clock)
        self.annunciator.on_silence = self._silence_button
        places = {
            d.id: f"{d.location.building} {d.location.floor} {d.location.room}"
            for d in config.devices
        }
        self.sms: SmsNotifier | None = None
        self.calls: CallNotifier | None = None
        if config.sms is not None:
            # Imported for a site with a modem only: 0.3 MiB that the others do not carry.
            from edge.calls import CallNotifier  # noqa: PLC0415
            from edge.sms import SmsNotifier  # noqa: PLC0415

            self.sms = SmsNotifier(
                config.sms,
                site=config.gateway.site.name,
                places=places,
                timezone=config.gateway.timezone,
                report=self._sms_result,
                uplink_online=lambda: self.uplink is not None and self.uplink.state == "online",
            )
            # Calls share the SMS's modem, whose line puts every message before any call.
            if self.sms.config.calls is not None:
                self.calls = CallNotifier(
                    self.sms.config.calls,
                    site=config.gateway.site.name,
                    places=places,
                    report=self._sms_result,
                    modem=self.sms.modem,
                    uplink_online=lambda: self.uplink is not None and self.uplink.state == "online",
                )
        self.supervisor = Supervisor()
        self.outbox: Outbox | None = None
        #: The point alias table the uplink's compact telemetry and metadata message share.
        self.aliases = contract.Aliases.of_site(config)
        self._clock_synced = timesync.cached(timesync.kernel_clock_synced)
        self.uplink: Uplink | None = None
        self.outbox_ready = asyncio.Event()
        #: The rules' state across restarts: in the outbox's file, or ``state_store`` if given.
        self.rule_state = RuleStateKeeper(
            self.rules,
            self.alarms,
            self.clock,
            store=lambda: state_store if state_store is not None else self.outbox,
            ready=self.outbox_ready,
            fixed=state_store is not None,
            config_digest=config_digest,
        )
        self.storm = StormMode(
            buses=lambda: self.buses,
            rules=self.rules,
            clock=self.clock,
            report=self.report,
            state=self.rule_state,
        )
        self._pending: deque[tuple[Stream, dict[str, Any], bool]] = deque()
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
        if transitions:  # nearly every reading has none: nothing to report
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
            self.rule_state.due = True

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
            # A reading around an alarm is durable at once: if the fire takes the power, the
            # seconds before it are on the card (docs/buffer.md, Commit window).
            self._submit("telemetry", reading_body(reading, window), at_once=window is not None)

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

    def _submit(self, stream: Stream, body: dict[str, Any], *, at_once: bool = False) -> None:
        if self.outbox is not None:
            self.outbox.submit(stream, body, at_once=at_once)
            return
        if stream == "telemetry":
            if self._pending_readings >= PENDING_LIMIT:
                self.pending_lost.add(body)
                return
            self._pending_readings += 1
        self._pending.append((stream, body, at_once))

    @property
    def pending_in_memory(self) -> int:
        """Records waiting in memory for the outbox to open."""
        return len(self._pending)

    async def health(self) -> dict[str, Any]:
        """How the gateway is doing (edge/health.py): the health message's fields but the
        uplink's own numbers."""
        return await gateway_health(self)

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
            stream, body, at_once = self._pending.popleft()
            self.outbox.submit(stream, body, at_once=at_once)
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
        if self.outbox is None:
            raise RuntimeError("the outbox was announced ready but is not open")
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
            command_handlers=command_handlers(self),
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

    # -- a pushed config (edge/command_handlers.py writes it, edge/site_runner.py starts it) --

    def can_restart(self) -> bool:
        """Whether this gateway runs under a stop event that a push may set."""
        return self._stop is not None

    def restart_after(self, request: reload.RestartRequest, delay: float) -> None:
        """Stop in ``delay`` seconds (the ack goes out first) for ``request``'s config."""
        if self._stop is None:
            raise RuntimeError("this gateway runs without a stop event: it cannot restart")
        self.restart = request
        asyncio.get_running_loop().call_later(delay, self._stop.set)

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

    async def restore_rule_state(self, *, wait: bool = True) -> None:
        """Resume windows, baselines, active alarms and thresholds set remotely
        (edge/rule_state.py); an active alarm sounds again at once."""
        dropped = await self.rule_state.restore(wait=wait)
        if dropped is None:
            return
        try:
            await self.storm.end_recorded()
        except Exception as exc:  # the site file's intervals are a safe place to be
            log.error("storm mode not restored", extra=fields(error=repr(exc)))
        self.annunciator.show(self.alarms.sounding(), self.alarms.worst())
        self._report(dropped)

    async def _rules_service(self) -> None:
        never = asyncio.Event()
        while True:
            await self.clock.wait(never, TICK_INTERVAL)
            self.tick()
            if not self.rule_state.restored:
                await self.restore_rule_state(wait=False)
            await self.rule_state.save_if_due()

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
        await self.restore_rule_state()
        self.supervisor.start("annunciator", self.annunciator.run)
        self.supervisor.start("rules", self._rules_service)
        if self.sms is not None:
            self.supervisor.start("sms", self.sms.run)
        if self.calls is not None:
            self.supervisor.start("calls", self.calls.run)
        self.supervisor.start("uplink", self._uplink_service)
        self.supervisor.start("status", lambda: log_status(self, self.status_interval))
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
        # What loading the config and starting left free goes back (a pushed config too).
        heap.trim()
        try:
            if on_started is not None:
                on_started()
            await stop.wait()
        finally:
            await self.shutdown(bus_names)

    async def shutdown(self, bus_names: list[str]) -> None:
        started = time.monotonic()
        self.storm.stop()  # it stays recorded: the next start reports it ended
        await self.supervisor.stop(bus_names)
        self._keep(self.storage.flush())  # the readings a swinging door still held
        await self.rule_state.save(budget=STATE_SAVE_TIMEOUT)
        if self.outbox is not None:
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT):
                    await self.outbox.flush()
            except TimeoutError:
                log.error("outbox flush timed out at shutdown")
        if self.uplink is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UPLINK_STOP_TIMEOUT):
                    await self.uplink.stop()
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
