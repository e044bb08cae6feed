"""Polling Modbus devices: one asyncio task per bus (a TCP connection or a serial line).

A bus serialises its requests (RS-485 is half duplex, and many TCP-to-RTU gateways are too).
Which device goes next, and when, is decided by :class:`~drivers.modbus.schedule.PollSchedule`,
which never reads a clock; :class:`ModbusBus` is the I/O around it: it tells the schedule the
time, waits until what it says is due, sends the reads and reports the outcome. What a device
answers is decoded with its model and pushed into the sink, one :class:`~drivers.types.Reading`
per point; a device that stops answering, or answers with a Modbus exception, turns into one
``DeviceStatus(online=False)`` and one log warning, not one per cycle. A connection that cannot
be made or is lost is retried with capped, jittered exponential backoff; I/O errors never leave
:meth:`ModbusBus.run`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from drivers.modbus.client import LinkDown, ModbusClient, NoAnswer, RtuClient, TcpClient
from drivers.modbus.codec import ExceptionResponse, ReadResponse
from drivers.modbus.model import decode
from drivers.modbus.schedule import (
    PROBE_MAX,
    RECONNECT_INITIAL,
    RECONNECT_MAX,
    Lane,
    Poll,
    PolledDevice,
    PollSchedule,
)
from drivers.tilt import TILT_AXES, displacement_mm, displacement_point
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


#: Callback for measurements: (device id, lane, due, started, finished), monotonic seconds.
PollObserver: TypeAlias = Callable[[str, Lane, float, float, float], None]


class ModbusBus:
    """Polls the devices of one bus until cancelled; see the module docstring and
    :mod:`drivers.modbus.schedule` for the scheduling rules."""

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
        gap = settings.frame_gap if isinstance(settings, RtuSettings) else 0.0
        self._schedule = PollSchedule(devices, frame_gap=gap)
        self._units = {
            device.device_id: {point.name: point.unit for point in device.model.points}
            for device in devices
        }
        self._critical = {
            device.device_id: frozenset(p.name for p in device.model.points if p.critical)
            for device in devices
        }
        self._link_up: bool | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def devices_online(self) -> dict[str, bool | None]:
        """device id -> online (None until the device first answered or failed)."""
        return self._schedule.online

    def intervals(self, device_id: str) -> tuple[float, float | None]:
        """The device's current (poll interval, fast interval)."""
        try:
            return self._schedule.intervals(device_id)
        except ValueError as exc:
            raise ValueError(f"bus {self.bus_id}: {exc}") from None

    def set_interval(self, device_id: str, seconds: float | None, *, lane: Lane = "normal") -> None:
        """Change how often a device is polled, from now on (storm mode); None restores the
        configured interval.

        A shorter interval takes effect at once: the next poll comes no later than one new
        interval after the last one. ``lane="fast"`` sets (or, with None, restores) the
        fast-lane interval of the device's alarm-critical points. Raises ``ValueError`` for an
        unknown device, a bad interval or a fast lane on a model without critical points.
        """
        try:
            self._schedule.set_interval(device_id, seconds, _now(), lane=lane)
        except ValueError as exc:
            raise ValueError(f"bus {self.bus_id}: {exc}") from None
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def run(self) -> None:
        """Poll until cancelled. Raises nothing for I/O trouble; bugs do propagate."""
        if not self._schedule.devices:
            log.info("bus %s: no devices, nothing to poll", self.bus_id)
            await asyncio.Event().wait()
        where = self.settings.describe()
        client = self._new_client()
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
                delay = self._connection_down(reason)
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

    def _connection_down(self, reason: str) -> float:
        """Every device offline (once); returns the seconds until the next attempt."""
        if self._link_up is not False:
            log.warning(
                "bus %s: %s; its devices are offline, retrying with backoff (%g-%g s)",
                self.bus_id,
                reason,
                RECONNECT_INITIAL,
                RECONNECT_MAX,
            )
        self._link_up = False
        went_offline, delay = self._schedule.link_down()
        now = time.time()
        for device_id in went_offline:
            self.stats.offline_events += 1
            self._sink(DeviceStatus(device_id, False, now, reason))
        return delay

    async def _sleep_until(self, when: float) -> None:
        """Sleep until ``when`` (monotonic), or until :meth:`set_interval` changes the plan."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        delay = when - _now()
        handle = loop.call_at(loop.time() + delay, self._wake) if when < math.inf else None
        try:
            await self._waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _poll_while_connected(self, client: ModbusClient) -> str:
        """Poll what the schedule says until the connection goes; return why it went."""
        lost = f"connection to {self.settings.describe()} lost"
        schedule = self._schedule
        schedule.connected(_now())
        while True:
            poll = schedule.next_poll()
            now = _now()
            if poll.due > now and not schedule.starts_early(poll, now):
                await self._sleep_until(poll.due)
                if _now() < poll.due or not schedule.is_current(poll):
                    continue
            if not client.connected:
                return lost
            started = _now()
            if poll.probe:
                self.stats.probes += 1
            gone = await self._poll(client, poll, started)
            if self._observer is not None:
                self._observer(poll.device.device_id, poll.lane, poll.due, started, _now())
            if gone:
                return lost
            self.stats.skipped_slots = schedule.skipped_slots

    async def _poll(self, client: ModbusClient, poll: Poll, started: float) -> bool:
        """Read the poll's plan; return True if the connection was lost on the way.

        A poll is all or nothing: readings go to the sink only once every read of the plan was
        answered, so a device whose last block fails does not flap online/offline each cycle.
        The first failed read ends the poll, so a dead device costs one timeout, not one per
        block.
        """
        schedule = self._schedule
        device = poll.device
        answered: list[tuple[float, float, dict[str, float]]] = []
        for start, count in poll.reads:
            wait = schedule.send_at() - _now()
            if wait > 0:
                await asyncio.sleep(wait)
            self.stats.requests += 1
            try:
                answer = await client.read(device.address, device.model.function_code, start, count)
            except LinkDown:
                return True
            except NoAnswer as exc:
                self.stats.timeouts += 1
                self._failed(poll, started, start, count, exc.reason)
                return False
            finally:
                schedule.io_ended(_now())
                self.stats.bad_frames = client.bad_frames
            ts, mono = time.time(), _now()
            self.stats.answers += 1
            schedule.line_answered()
            if isinstance(answer, ExceptionResponse):
                self.stats.exceptions += 1
                code = answer.code
                name = EXCEPTION_NAMES.get(code, "unknown")
                self._failed(poll, started, start, count, f"exception {code} ({name})")
                return False
            registers = answer.registers if isinstance(answer, ReadResponse) else ()
            if len(registers) != count:
                self.stats.bad_answers += 1
                why = f"answered {len(registers)} registers, not {count}"
                self._failed(poll, started, start, count, why)
                return False
            answered.append((ts, mono, decode(device.model, start, registers)))
        if not answered:
            return False
        self._answered(poll, started, answered[0][0])
        critical = self._critical[device.device_id] if poll.lane == "fast" else None
        units = self._units[device.device_id]
        gauge = device.gauge_length
        for ts, mono, values in answered:
            for name, value in values.items():
                if critical is not None and name not in critical:
                    continue
                self.stats.readings += 1
                self._sink(Reading(device.device_id, name, value, units[name], ts, mono))
                if gauge is not None and name in TILT_AXES:
                    self.stats.readings += 1
                    shift = displacement_mm(value, gauge)
                    point = displacement_point(name)
                    self._sink(Reading(device.device_id, point, shift, "mm", ts, mono))
        return False

    def _failed(self, poll: Poll, started: float, start: int, count: int, why: str) -> None:
        device = poll.device
        if not self._schedule.failed(poll, started, _now()):
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
            self._schedule.probe_max(device.device_id),
        )
        self.stats.offline_events += 1
        self._sink(DeviceStatus(device.device_id, False, time.time(), why))

    def _answered(self, poll: Poll, started: float, ts: float) -> None:
        before = self._schedule.answered(poll, started, _now())
        if before is True:
            return
        device = poll.device
        if before is False:
            log.info(
                "bus %s: device %s (address %d) answers again",
                self.bus_id,
                device.device_id,
                device.address,
            )
            self.stats.online_events += 1
        self._sink(DeviceStatus(device.device_id, True, ts))


def _now() -> float:
    """The bus's clock: monotonic seconds, the same clock as :attr:`Reading.mono` and the event
    loop's timers. Only the I/O loop reads it; the schedule is told."""
    return time.monotonic()
