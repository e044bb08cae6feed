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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.backoff import Backoff
from drivers.modbus.logthrottle import throttle_pymodbus_log
from drivers.modbus.model import DeviceModel, decode, read_plan
from drivers.types import DeviceStatus, Reading, Sink

__all__ = [
    "RECONNECT_INITIAL",
    "RECONNECT_MAX",
    "BusSettings",
    "BusStats",
    "ModbusBus",
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

    ``port`` is a pyserial URL: a device path (``/dev/ttyUSB0``), a pseudo-terminal or a link to
    one (the simulator's), or ``socket://host:port`` for RTU frames over TCP (ser2net and
    similar serial servers).
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
    """One device on a bus: what it is, where it answers and how often to ask."""

    device_id: str
    model: DeviceModel
    #: Modbus unit (slave) address.
    address: int
    #: Seconds between polls.
    poll_interval: float

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise ValueError(f"device {self.device_id}: address must be an integer")
        if isinstance(self.poll_interval, bool) or not isinstance(self.poll_interval, int | float):
            raise ValueError(f"device {self.device_id}: poll_interval must be a number")
        if not (math.isfinite(self.poll_interval) and self.poll_interval > 0):
            raise ValueError(f"device {self.device_id}: poll_interval must be positive")


@dataclass(slots=True)
class BusStats:
    """Counters for field debugging; they only ever grow."""

    connect_attempts: int = 0
    connections: int = 0
    requests: int = 0
    answers: int = 0
    #: Requests that got no (valid) answer.
    timeouts: int = 0
    #: Answers that were Modbus exception responses.
    exceptions: int = 0
    readings: int = 0
    #: Poll slots skipped because the bus was still busy when they came.
    skipped_slots: int = 0


@dataclass(slots=True)
class _DeviceState:
    device: PolledDevice
    plan: list[tuple[int, int]]
    next_due: float = 0.0
    #: None until the first answer or failure.
    online: bool | None = None
    units: dict[str, str] = field(default_factory=dict)


class ModbusBus:
    """Polls the devices of one bus until cancelled; see the module docstring."""

    def __init__(
        self,
        bus_id: str,
        settings: BusSettings,
        devices: Sequence[PolledDevice],
        sink: Sink,
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
        self._states = [
            _DeviceState(
                device,
                read_plan(device.model),
                units={point.name: point.unit for point in device.model.points},
            )
            for device in devices
        ]
        self._backoff = Backoff(RECONNECT_INITIAL, RECONNECT_MAX)
        self._link_up: bool | None = None
        self._last_io_end = -math.inf
        throttle_pymodbus_log()

    @property
    def devices_online(self) -> dict[str, bool | None]:
        """device id -> online (None until the device first answered or failed)."""
        return {state.device.device_id: state.online for state in self._states}

    async def run(self) -> None:
        """Poll until cancelled. Raises nothing for I/O trouble; bugs do propagate."""
        if not self._states:
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
                    reason = f"cannot connect to {where}"
                client.close()
                self._connection_down(reason)
                delay = self._backoff.next_delay()
                log.debug("bus %s: next connection attempt in %.2f s", self.bus_id, delay)
                await asyncio.sleep(delay)
        finally:
            client.close()

    # ----------------------------------------------------------------------------------------

    def _new_client(self) -> ModbusBaseClient:
        # retries=0: one poll of a dead device costs one timeout, not (1 + retries) of them.
        # reconnect_delay=0: pymodbus must not reconnect on its own; run() does, with backoff.
        settings = self.settings
        if isinstance(settings, TcpSettings):
            return AsyncModbusTcpClient(
                settings.host,
                port=settings.port,
                name=self.bus_id,
                timeout=settings.timeout,
                retries=0,
                reconnect_delay=0,
            )
        return AsyncModbusSerialClient(
            settings.port,
            framer=FramerType.RTU,
            baudrate=settings.baudrate,
            bytesize=8,
            parity=settings.parity,
            stopbits=settings.stopbits,
            name=self.bus_id,
            timeout=settings.timeout,
            retries=0,
            reconnect_delay=0,
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
                self._sink(DeviceStatus(state.device.device_id, False, now, reason))

    async def _poll_while_connected(self, client: ModbusBaseClient) -> str:
        """Poll due devices until the connection goes; return why it went."""
        where = self.settings.describe()
        now = time.monotonic()
        for state in self._states:
            state.next_due = now
        while True:
            state = min(self._states, key=lambda s: s.next_due)
            delay = state.next_due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if not client.connected:
                return f"connection to {where} lost"
            started = time.monotonic()
            if await self._poll_device(client, state):
                return f"connection to {where} lost"
            self._schedule_next(state, started)

    def _schedule_next(self, state: _DeviceState, started: float) -> None:
        """Set the device's next due time after a poll that started at ``started``.

        A poll that started on time (less than half an interval late) keeps the device's
        phase. A later one restarts the phase from its start: the slots that passed while the
        bus was busy are skipped, not queued, so an overrun never turns into a burst of
        catch-up polls, and two polls of a device are never less than half an interval apart.
        """
        interval = state.device.poll_interval
        late = started - state.next_due
        if late < interval / 2:
            state.next_due += interval
            return
        self.stats.skipped_slots += math.floor(late / interval)
        state.next_due = started + interval

    async def _poll_device(self, client: ModbusBaseClient, state: _DeviceState) -> bool:
        """Read the device's whole plan; return True if the connection was lost on the way.

        A poll is all or nothing: readings go to the sink only once every read of the plan was
        answered, so a device whose last block fails does not flap online/offline each cycle.
        """
        device = state.device
        answered: list[tuple[float, float, dict[str, float]]] = []
        for start, count in state.plan:
            await self._frame_gap()
            self.stats.requests += 1
            try:
                pdu = await self._read(client, device, start, count)
            except ConnectionException:
                return True
            except (ModbusException, OSError) as exc:
                self.stats.timeouts += 1
                if not client.connected:
                    return True
                if isinstance(exc, ModbusIOException) and "No response" in str(exc):
                    why = f"no answer within {self.settings.timeout:g} s"
                else:
                    why = f"no valid answer: {exc}"
                self._device_failed(state, start, count, why)
                return False
            finally:
                self._last_io_end = time.monotonic()
            ts, mono = time.time(), time.monotonic()
            self.stats.answers += 1
            # The line carries answers again: a later outage starts from the shortest delay.
            self._backoff.reset()
            if pdu.isError():
                self.stats.exceptions += 1
                code = pdu.exception_code
                name = EXCEPTION_NAMES.get(code, "unknown")
                self._device_failed(state, start, count, f"exception {code} ({name})")
                return False
            registers = list(pdu.registers)
            if len(registers) != count:
                why = f"answered {len(registers)} registers, not {count}"
                self._device_failed(state, start, count, why)
                return False
            answered.append((ts, mono, decode(device.model, start, registers)))
        self._device_answered(state, answered[0][0])
        for ts, mono, values in answered:
            for name, value in values.items():
                self.stats.readings += 1
                self._sink(Reading(device.device_id, name, value, state.units[name], ts, mono))
        return False

    @staticmethod
    async def _read(
        client: ModbusBaseClient, device: PolledDevice, start: int, count: int
    ) -> ModbusPDU:
        if device.model.registers == "holding":
            return await client.read_holding_registers(start, count=count, device_id=device.address)
        return await client.read_input_registers(start, count=count, device_id=device.address)

    async def _frame_gap(self) -> None:
        if isinstance(self.settings, RtuSettings):
            wait = self._last_io_end + self.settings.frame_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    def _device_failed(self, state: _DeviceState, start: int, count: int, why: str) -> None:
        device = state.device
        if state.online is False:
            log.debug("bus %s: device %s still failing: %s", self.bus_id, device.device_id, why)
            return
        log.warning(
            "bus %s: device %s (address %d) registers %d-%d: %s; marking it offline",
            self.bus_id,
            device.device_id,
            device.address,
            start,
            start + count - 1,
            why,
        )
        state.online = False
        self._sink(DeviceStatus(device.device_id, False, time.time(), why))

    def _device_answered(self, state: _DeviceState, ts: float) -> None:
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
        state.online = True
        self._sink(DeviceStatus(device.device_id, True, ts))
