"""Polling Modbus devices: one asyncio task per bus (a TCP connection or a serial line).

A bus serialises its requests (RS-485 is half duplex, and many TCP-to-RTU gateways are too):
the device whose next poll is due soonest goes next. What a device answers is decoded with its
model and pushed into the sink, one :class:`~drivers.types.Reading` per point; a device that
stops answering, or answers with a Modbus exception, turns into one ``DeviceStatus(online=False)``
and one log warning, not one per cycle. A connection that cannot be made or is lost is retried
with capped, jittered exponential backoff; I/O errors never leave :meth:`ModbusBus.run`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from drivers.backoff import Backoff
from drivers.modbus.client import LinkDown, ModbusClient, NoAnswer, RtuClient, TcpClient
from drivers.modbus.codec import ExceptionResponse, ReadResponse
from drivers.modbus.model import DeviceModel, decode, read_plan
from drivers.tilt import TILT_AXES, check_gauge_length, displacement_mm, displacement_point
from drivers.types import DeviceStatus, Reading, Sink

__all__ = [
    "PROBE_MAX",
    "RECONNECT_INITIAL",
    "RECONNECT_MAX",
    "BusSettings",
    "BusStats",
    "Lane",
    "ModbusBus",
    "PollObserver",
    "PolledDevice",
    "RtuSettings",
    "TcpSettings",
]

log = logging.getLogger(__name__)

#: Reconnect backoff bounds, in seconds.
RECONNECT_INITIAL: Final = 0.5
RECONNECT_MAX: Final = 10.0

#: Modbus exception codes (Modbus Application Protocol v1.1b, section 7).
EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

Parity: TypeAlias = Literal["N", "E", "O"]


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """A Modbus TCP server: a device, or a TCP-to-RTU gateway in front of a line."""

    host: str
    port: int = 502
    #: Seconds to wait for a connection, and for each answer.
    timeout: float = 1.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be an integer, not {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 1..65535")
        _check_timeout(self.timeout)

    def describe(self) -> str:
        """Where the bus goes, for messages."""
        return f"modbus-tcp {self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RtuSettings:
    """A serial line with Modbus RTU framing.

    ``port`` is a device path (``/dev/ttyUSB0``), a pseudo-terminal or a link to one (the
    simulator's), or ``socket://host:port`` for RTU frames over TCP (ser2net and similar serial
    servers); :mod:`drivers.ports` has the forms, checked again when the port is opened.
    """

    port: str
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    #: Seconds to wait for each answer.
    timeout: float = 0.3

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("port must not be empty")
        if isinstance(self.baudrate, bool) or not isinstance(self.baudrate, int):
            raise ValueError(f"baudrate must be an integer, not {self.baudrate!r}")
        if self.baudrate <= 0:
            raise ValueError(f"baudrate {self.baudrate} must be positive")
        if self.parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, not {self.parity!r}")
        if self.stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, not {self.stopbits!r}")
        _check_timeout(self.timeout)

    @property
    def frame_gap(self) -> float:
        """The t3.5 silence that must separate frames, in seconds.

        11 bits per character whatever the parity; fixed at 1.75 ms above 19200 baud
        (Modbus over Serial Line v1.02, 2.5.1.1).
        """
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * 11 / self.baudrate

    def describe(self) -> str:
        """Where the bus goes, for messages."""
        return f"modbus-rtu {self.port} {self.baudrate} {self.parity}{self.stopbits}"


BusSettings: TypeAlias = TcpSettings | RtuSettings


@dataclass(frozen=True, slots=True)
class PolledDevice:
    """One device on a bus: what it is, where it answers and how often to ask.

    ``fast_interval`` puts the model's alarm-critical points (``critical: true``) on the bus's
    fast lane: they are read on their own, that often, between the device's full polls.
    """

    device_id: str
    model: DeviceModel
    #: Modbus unit (slave) address.
    address: int
    #: Seconds between full polls.
    poll_interval: float
    #: Seconds between fast-lane polls of the critical points; None: no fast lane.
    fast_interval: float | None = None
    #: For tilt sensors: metres over which roll and pitch turn into a displacement in mm
    #: (``roll_displacement``, ``pitch_displacement`` readings); None: angles only.
    gauge_length: float | None = None

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise ValueError(f"device {self.device_id}: address must be an integer")
        _check_interval(f"device {self.device_id}: poll_interval", self.poll_interval)
        if self.fast_interval is not None:
            _check_interval(f"device {self.device_id}: fast_interval", self.fast_interval)
            if not any(point.critical for point in self.model.points):
                raise ValueError(
                    f"device {self.device_id}: fast_interval needs alarm-critical points, "
                    f"and model {self.model.name} marks none"
                )
        if self.gauge_length is not None:
            check_gauge_length(self.gauge_length)
            if not any(self.model.has_point(axis) for axis in TILT_AXES):
                raise ValueError(
                    f"device {self.device_id}: gauge_length needs a tilt model with roll or "
                    f"pitch points, and {self.model.name} has neither"
                )


def _check_interval(what: str, seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{what} must be a number of seconds, not {seconds!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be positive and finite, not {seconds!r}")
    return float(seconds)


@dataclass(slots=True)
class BusStats:
    """Counters for field debugging; they only ever grow."""

    connect_attempts: int = 0
    connections: int = 0
    requests: int = 0
    answers: int = 0
    #: Requests that got no valid answer in time: silence, and answers lost to CRC errors or
    #: garbage (the reason says which).
    timeouts: int = 0
    #: Received frames that failed their CRC or length checks.
    bad_frames: int = 0
    #: Answers that were Modbus exception responses.
    exceptions: int = 0
    #: Answers of the wrong size.
    bad_answers: int = 0
    readings: int = 0
    #: Poll slots skipped because the bus was still busy when they came.
    skipped_slots: int = 0
    #: Polls of offline devices (re-probes on the backoff schedule).
    probes: int = 0
    #: Devices that went offline / came back.
    offline_events: int = 0
    online_events: int = 0


#: A device that stopped answering is re-probed with exponential backoff, from its poll
#: interval up to this many seconds.
PROBE_MAX: Final = 30.0

Lane: TypeAlias = Literal["normal", "fast"]
#: Callback for measurements: (device id, lane, due, started, finished), monotonic seconds.
PollObserver: TypeAlias = Callable[[str, Lane, float, float, float], None]


@dataclass(slots=True)
class _DeviceState:
    device: PolledDevice
    plan: list[tuple[int, int]]
    fast_plan: list[tuple[int, int]]
    critical: frozenset[str]
    backoff: Backoff
    #: None until the first answer or failure.
    online: bool | None = None
    #: While offline: when the next probe may go.
    retry_at: float = 0.0
    units: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Job:
    """One lane of one device: what to read and when."""

    state: _DeviceState
    lane: Lane
    interval: float | None
    configured: float | None
    next_due: float = math.inf

    def due(self) -> float:
        """When this job wants the bus; offline devices wait for their re-probe, fast lanes
        pause while their device is offline (its probe is the normal poll)."""
        if self.interval is None:
            return math.inf
        if self.state.online is False:
            return self.state.retry_at if self.lane == "normal" else math.inf
        return self.next_due


class ModbusBus:
    """Polls the devices of one bus until cancelled; see the module docstring.

    The scheduler keeps one job per device and lane. The job due soonest goes next; on a tie
    the fast lane wins, so alarm-critical reads never queue behind bulk reads. A device's
    first polls are spread over its interval, so devices that share an interval do not all
    fall due at the same instant and wait for each other.
    """

    def __init__(
        self,
        bus_id: str,
        settings: BusSettings,
        devices: Sequence[PolledDevice],
        sink: Sink,
        *,
        observer: PollObserver | None = None,
    ) -> None:
        lowest, highest = (1, 247) if isinstance(settings, RtuSettings) else (0, 255)
        seen_ids: set[str] = set()
        seen_addresses: dict[int, str] = {}
        for device in devices:
            if device.device_id in seen_ids:
                raise ValueError(f"bus {bus_id}: device id {device.device_id} is used twice")
            seen_ids.add(device.device_id)
            if not lowest <= device.address <= highest:
                raise ValueError(
                    f"bus {bus_id}: device {device.device_id} address {device.address} "
                    f"is not in {lowest}..{highest}"
                )
            if device.address in seen_addresses:
                raise ValueError(
                    f"bus {bus_id}: devices {seen_addresses[device.address]} and "
                    f"{device.device_id} share address {device.address}"
                )
            seen_addresses[device.address] = device.device_id
        self.bus_id = bus_id
        self.settings = settings
        self.stats = BusStats()
        self._sink = sink
        self._observer = observer
        self._states: list[_DeviceState] = []
        self._jobs: list[_Job] = []
        self._by_id: dict[str, tuple[_Job, _Job | None]] = {}
        for device in devices:
            critical = [point for point in device.model.points if point.critical]
            state = _DeviceState(
                device,
                read_plan(device.model),
                read_plan(device.model, critical),
                frozenset(point.name for point in critical),
                Backoff(device.poll_interval, max(device.poll_interval, PROBE_MAX)),
                units={point.name: point.unit for point in device.model.points},
            )
            self._states.append(state)
            normal = _Job(state, "normal", device.poll_interval, device.poll_interval)
            fast = None
            if critical:
                fast = _Job(state, "fast", device.fast_interval, device.fast_interval)
                self._jobs.append(fast)
            self._jobs.append(normal)
            self._by_id[device.device_id] = (normal, fast)
        self._backoff = Backoff(RECONNECT_INITIAL, RECONNECT_MAX)
        self._link_up: bool | None = None
        self._last_io_end = -math.inf
        self._waiter: asyncio.Future[None] | None = None
        self._client: ModbusClient | None = None

    @property
    def devices_online(self) -> dict[str, bool | None]:
        """device id -> online (None until the device first answered or failed)."""
        return {state.device.device_id: state.online for state in self._states}

    def intervals(self, device_id: str) -> tuple[float, float | None]:
        """The device's current (poll interval, fast interval)."""
        normal, fast = self._jobs_of(device_id)
        assert normal.interval is not None  # the normal lane always has one
        return normal.interval, fast.interval if fast is not None else None

    def set_interval(self, device_id: str, seconds: float | None, *, lane: Lane = "normal") -> None:
        """Change how often a device is polled, from now on (storm mode); None restores the
        configured interval.

        A shorter interval takes effect at once: the next poll comes no later than one new
        interval after the last one. ``lane="fast"`` sets (or, with None, restores) the
        fast-lane interval of the device's alarm-critical points. Raises ``ValueError`` for an
        unknown device, a bad interval or a fast lane on a model without critical points.
        """
        normal, fast = self._jobs_of(device_id)
        job = normal if lane == "normal" else fast
        if job is None:
            raise ValueError(
                f"bus {self.bus_id}: device {device_id} has no alarm-critical points, "
                "so no fast lane"
            )
        if lane not in ("normal", "fast"):
            raise ValueError(f"lane must be 'normal' or 'fast', not {lane!r}")
        if seconds is None:
            interval = job.configured
        else:
            interval = _check_interval(f"device {device_id}: {lane} interval", seconds)
        if interval is None:
            job.interval = None
            job.next_due = math.inf
        else:
            previous = job.interval
            job.interval = interval
            now = time.monotonic()
            if previous is None or job.next_due == math.inf:
                job.next_due = now
            else:
                # The last poll started at next_due - previous (or later); do not wait longer
                # than the new interval from it.
                job.next_due = min(job.next_due, max(now, job.next_due - previous + interval))
        if lane == "normal" and interval is not None:
            job.state.backoff = Backoff(interval, max(interval, PROBE_MAX))
        self._wake()

    def _jobs_of(self, device_id: str) -> tuple[_Job, _Job | None]:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise ValueError(f"bus {self.bus_id} has no device {device_id!r}") from None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self) -> None:
        """Poll until cancelled. Raises nothing for I/O trouble; bugs do propagate."""
        if not self._states:
            log.info("bus %s: no devices, nothing to poll", self.bus_id)
            await asyncio.Event().wait()
        where = self.settings.describe()
        client = self._new_client()
        self._client = client
        try:
            while True:
                self.stats.connect_attempts += 1
                if await client.connect():
                    self.stats.connections += 1
                    again = " again" if self._link_up is False else ""
                    log.info("bus %s: connected to %s%s", self.bus_id, where, again)
                    self._link_up = True
                    reason = await self._poll_while_connected(client)
                else:
                    why = f": {client.last_error}" if client.last_error else ""
                    reason = f"cannot connect to {where}{why}"
                client.close()
                self._connection_down(reason)
                delay = self._backoff.next_delay()
                log.debug("bus %s: next connection attempt in %.2f s", self.bus_id, delay)
                await asyncio.sleep(delay)
        finally:
            client.close()

    # ----------------------------------------------------------------------------------------

    def _new_client(self) -> ModbusClient:
        settings = self.settings
        if isinstance(settings, TcpSettings):
            return TcpClient(settings.host, settings.port, settings.timeout)
        return RtuClient(
            settings.port,
            settings.baudrate,
            settings.parity,
            settings.stopbits,
            settings.timeout,
        )

    def _connection_down(self, reason: str) -> None:
        if self._link_up is not False:
            log.warning(
                "bus %s: %s; its devices are offline, retrying with backoff (%g-%g s)",
                self.bus_id,
                reason,
                RECONNECT_INITIAL,
                RECONNECT_MAX,
            )
        self._link_up = False
        now = time.time()
        for state in self._states:
            if state.online is not False:
                state.online = False
                self.stats.offline_events += 1
                self._sink(DeviceStatus(state.device.device_id, False, now, reason))
            # Once the link is back every device is probed at once; the link was the problem.
            state.retry_at = 0.0
            state.backoff.reset()

    def _stagger(self) -> None:
        """Spread first polls over each lane's interval, in device order."""
        now = time.monotonic()
        for lane in ("fast", "normal"):
            jobs = [job for job in self._jobs if job.lane == lane]
            for index, job in enumerate(jobs):
                if job.interval is None:
                    job.next_due = math.inf
                else:
                    job.next_due = now + job.interval * index / len(jobs)

    def _next_job(self) -> tuple[_Job, float]:
        """The job due soonest; on a tie the fast lane goes first. A linear scan: a bus has
        tens of jobs, and the scan costs less than keeping a heap in step with backoffs and
        run-time interval changes. Jobs without an interval (fast lanes not configured) are
        skipped without a call."""
        best = self._jobs[0]
        best_due = math.inf
        for job in self._jobs:
            if job.interval is None:
                continue
            due = job.due()
            if due < best_due or (due == best_due and job.lane == "fast"):
                best, best_due = job, due
        return best, best_due

    async def _poll_while_connected(self, client: ModbusClient) -> str:
        """Poll due jobs until the connection goes; return why it went."""
        where = self.settings.describe()
        self._stagger()
        loop = asyncio.get_running_loop()
        while True:
            job, due = self._next_job()
            delay = due - time.monotonic()
            if delay > 0:
                # Sleep until due, unless set_interval() changes the plan meanwhile.
                self._waiter = loop.create_future()
                handle = loop.call_at(loop.time() + delay, self._wake) if due < math.inf else None
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                    if handle is not None:
                        handle.cancel()
                if time.monotonic() < due or job.due() != due:
                    continue
            if not client.connected:
                return f"connection to {where} lost"
            started = time.monotonic()
            probing = job.state.online is False
            if probing:
                self.stats.probes += 1
            lost = await self._poll_job(client, job)
            if self._observer is not None:
                self._observer(job.state.device.device_id, job.lane, due, started, time.monotonic())
            if lost:
                return f"connection to {where} lost"
            self._schedule_next(job, started, due)

    def _schedule_next(self, job: _Job, started: float, due: float) -> None:
        """Set the job's next due time after a poll that started at ``started``.

        A device that failed waits for its backoff (set when it failed). A poll that started on
        time (less than half an interval late) keeps the job's phase. A later one restarts the
        phase from its start: the slots that passed while the bus was busy are skipped and
        counted, not queued, so an overrun never turns into a burst of catch-up polls, and two
        polls of a device are never less than half an interval apart.
        """
        interval = job.interval
        if interval is None:
            job.next_due = math.inf
            return
        if job.state.online is False:
            # Back online later restarts the phase from the successful probe.
            job.next_due = job.state.retry_at
            return
        if job.next_due == math.inf or due != job.next_due:
            # This poll was a probe (or the interval changed): restart the phase from it.
            job.next_due = started + interval
            return
        late = started - job.next_due
        if late < interval / 2:
            job.next_due += interval
            return
        self.stats.skipped_slots += math.floor(late / interval)
        job.next_due = started + interval

    async def _poll_job(self, client: ModbusClient, job: _Job) -> bool:
        """Read the job's plan; return True if the connection was lost on the way.

        A poll is all or nothing: readings go to the sink only once every read of the plan was
        answered, so a device whose last block fails does not flap online/offline each cycle.
        The first failed read ends the poll, so a dead device costs one timeout, not one per
        block.
        """
        state = job.state
        device = state.device
        plan = state.plan if job.lane == "normal" else state.fast_plan
        answered: list[tuple[float, float, dict[str, float]]] = []
        for start, count in plan:
            await self._frame_gap()
            self.stats.requests += 1
            try:
                answer = await client.read(device.address, device.model.function_code, start, count)
            except LinkDown:
                return True
            except NoAnswer as exc:
                self.stats.timeouts += 1
                self._device_failed(state, start, count, exc.reason)
                return False
            finally:
                self._last_io_end = time.monotonic()
                self.stats.bad_frames = client.bad_frames
            ts, mono = time.time(), time.monotonic()
            self.stats.answers += 1
            # The line carries answers again: a later outage starts from the shortest delay.
            self._backoff.reset()
            if isinstance(answer, ExceptionResponse):
                self.stats.exceptions += 1
                code = answer.code
                name = EXCEPTION_NAMES.get(code, "unknown")
                self._device_failed(state, start, count, f"exception {code} ({name})")
                return False
            registers = answer.registers if isinstance(answer, ReadResponse) else ()
            if len(registers) != count:
                self.stats.bad_answers += 1
                why = f"answered {len(registers)} registers, not {count}"
                self._device_failed(state, start, count, why)
                return False
            answered.append((ts, mono, decode(device.model, start, registers)))
        if not answered:
            return False
        self._device_answered(state, answered[0][0])
        fast = job.lane == "fast"
        units = state.units
        gauge = device.gauge_length
        for ts, mono, values in answered:
            for name, value in values.items():
                if fast and name not in state.critical:
                    continue
                self.stats.readings += 1
                self._sink(Reading(device.device_id, name, value, units[name], ts, mono))
                if gauge is not None and name in TILT_AXES:
                    self.stats.readings += 1
                    shift = displacement_mm(value, gauge)
                    point = displacement_point(name)
                    self._sink(Reading(device.device_id, point, shift, "mm", ts, mono))
        return False

    async def _frame_gap(self) -> None:
        if isinstance(self.settings, RtuSettings):
            wait = self._last_io_end + self.settings.frame_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    def _device_failed(self, state: _DeviceState, start: int, count: int, why: str) -> None:
        device = state.device
        state.retry_at = time.monotonic() + state.backoff.next_delay()
        if state.online is False:
            log.debug("bus %s: device %s still failing: %s", self.bus_id, device.device_id, why)
            return
        log.warning(
            "bus %s: device %s (address %d) registers %d-%d: %s; marking it offline, "
            "re-probing with backoff up to %g s",
            self.bus_id,
            device.device_id,
            device.address,
            start,
            start + count - 1,
            why,
            state.backoff.maximum,
        )
        state.online = False
        self.stats.offline_events += 1
        self._sink(DeviceStatus(device.device_id, False, time.time(), why))

    def _device_answered(self, state: _DeviceState, ts: float) -> None:
        state.backoff.reset()
        if state.online is True:
            return
        device = state.device
        if state.online is False:
            log.info(
                "bus %s: device %s (address %d) answers again",
                self.bus_id,
                device.device_id,
                device.address,
            )
            self.stats.online_events += 1
        state.online = True
        self._sink(DeviceStatus(device.device_id, True, ts))
