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
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from buffer import CapacityPolicy, Outbox, OutboxUnwritable
from drivers import DeviceStatus, Reading
from edge import __version__
from edge.annunciator import Annunciator
from edge.buses import bus_services
from edge.config.model import SiteConfig
from edge.contract import EventKind, event_body, reading_body
from edge.log import fields
from edge.rules import RuleEngine, Transition
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
    ) -> None:
        self.config = config
        self.config_digest = config_digest
        self.status_interval = status_interval
        self.boot_time = time.time()
        self.rules = RuleEngine(config.rules)
        self.annunciator = Annunciator(config.outputs, pin_factory=pin_factory)
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
            self._on_status(sample)
            return
        transitions = self.rules.evaluate(sample)
        if transitions:
            self.annunciator.apply(transitions)
        self._submit("telemetry", reading_body(sample))
        for transition in transitions:
            self._on_transition(transition)

    def _on_transition(self, transition: Transition) -> None:
        reading = transition.reading
        kind: EventKind = "alarm-raised" if transition.kind == "raised" else "alarm-cleared"
        for hook in self.transition_hooks:
            hook(transition)
        log.warning(
            kind,
            extra=fields(
                rule=transition.rule_id,
                device=reading.device_id,
                point=reading.point,
                value=reading.value,
                threshold=transition.threshold,
                severity=transition.severity,
            ),
        )
        self._submit(
            "event",
            event_body(
                kind,
                reading.ts,
                rule=transition.rule_id,
                severity=transition.severity,
                device=reading.device_id,
                point=reading.point,
                value=reading.value,
                unit=reading.unit,
                threshold=transition.threshold,
                location=self._locations.get(reading.device_id),
            ),
        )

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
        )
        await self.uplink.run()

    async def _status_service(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval)
            depth = await self.outbox.depth() if self.outbox is not None else {}
            log.info(
                "status",
                extra=fields(
                    buzzer="on" if self.annunciator.sounding else "off",
                    active_alarms=len(self.rules.active_alarms()),
                    outbox_events=depth.get("event", 0),
                    outbox_telemetry=depth.get("telemetry", 0),
                    pending=len(self._pending),
                    uplink=self.uplink.state if self.uplink is not None else "waiting",
                ),
            )

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
        self.supervisor.start("uplink", self._uplink_service)
        self.supervisor.start("status", self._status_service)
        bus_names = []
        for name, service in bus_services(self.config, self.on_sample).items():
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
