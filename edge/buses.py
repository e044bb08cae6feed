"""From the site file's buses and devices to one driver task per bus (or per UART sensor).

:func:`build_buses` makes the driver objects; :func:`bus_services` turns them into the
supervisor's ``{"bus:<id>": run}``. A gateway that wants to change poll intervals at run time
(storm mode) builds the buses first, keeps them, and passes them to :func:`bus_services`; then
:func:`set_interval` reaches the right bus by device id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from drivers import DeviceStatus, Sink
from drivers.catalog import SERIAL_MODELS
from drivers.modbus import Lane, ModbusBus, PolledDevice, RtuSettings, TcpSettings, load_model
from edge.annunciator import NoPinBackend, make_pin_factory

# The UART and GPIO sensor drivers (and their codecs and the serial link) are imported where
# a site has such a bus, as pyserial is: a Modbus-only site never loads them
# (docs/benchmarks.md, import budget).
if TYPE_CHECKING:
    from drivers.pir import PirSensor
    from edge.config.model import (
        Device,
        ModbusRtuBus,
        ModbusTcpBus,
        SerialBus,
        SiteConfig,
    )

__all__ = [
    "FieldDriver",
    "UnavailableGpio",
    "build_buses",
    "bus_health",
    "bus_services",
    "modbus_devices",
    "set_interval",
]


class FieldDriver(Protocol):
    """What the gateway runs per bus: a coroutine that polls until cancelled."""

    async def run(self) -> None: ...


Services: TypeAlias = dict[str, Callable[[], Awaitable[None]]]


class _GpioSensors:
    """All PIR sensors of one GPIO bus, run as one service."""

    def __init__(self, sensors: list[PirSensor]) -> None:
        self.sensors = sensors

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for sensor in self.sensors:
                group.create_task(sensor.run(), name=f"pir {sensor.device_id}")


class UnavailableGpio:
    """The PIR sensors of a GPIO bus whose pin factory cannot be loaded: each is reported
    offline with the reason, once, and the other buses poll on."""

    def __init__(self, devices: list[Device], sink: Sink, reason: str) -> None:
        self.devices = devices
        self.sink = sink
        self.reason = reason

    async def run(self) -> None:
        for device in self.devices:
            self.sink(DeviceStatus(device.id, False, time.time(), self.reason))
        await asyncio.Event().wait()


def build_buses(
    config: SiteConfig, sink: Sink, *, pin_factory: Any = None
) -> dict[str, FieldDriver]:
    """``{"bus:<id>": driver}`` for every bus that has at least one device.

    ``pin_factory`` (a gpiozero factory, the annunciator's) is shared with GPIO sensors whose
    bus names no other factory; else the bus's ``pin_factory``, else the outputs', else the
    first backend that loads (edge/annunciator.py). A GPIO bus without any reports its
    sensors offline with the reason instead of stopping the other buses.
    """
    drivers: dict[str, FieldDriver] = {}
    for bus in config.buses:
        devices = [d for d in config.devices if d.bus == bus.id]
        if not devices:
            continue
        name = f"bus:{bus.id}"
        if bus.kind in {"modbus-tcp", "modbus-rtu"}:
            drivers[name] = _modbus(bus, devices, sink)
        elif bus.kind == "serial":
            # One UART sensor per port (checked when the site file is loaded).
            drivers[name] = _serial(bus, devices[0], sink)
        elif bus.kind != "gpio":
            raise TypeError(f"bus {bus.id!r}: no driver for a {type(bus).__name__}")
        else:
            wanted = bus.pin_factory or config.outputs.pin_factory
            if pin_factory is not None and bus.pin_factory in (None, config.outputs.pin_factory):
                factory = pin_factory  # the annunciator's: one factory per kind of pin access
            else:
                try:
                    factory = make_pin_factory(wanted)
                except NoPinBackend as exc:
                    drivers[name] = UnavailableGpio(devices, sink, str(exc))
                    continue
            from drivers.pir import PirSensor  # noqa: PLC0415 -- GPIO sensor buses only

            sensors = [PirSensor(d.id, _pin(d), sink, pin_factory=factory) for d in devices]
            drivers[name] = _GpioSensors(sensors)
    return drivers


def bus_services(
    config: SiteConfig,
    sink: Sink,
    *,
    buses: Mapping[str, FieldDriver] | None = None,
    pin_factory: Any = None,
) -> Services:
    """``{"bus:<id>": run}`` for every bus that has at least one device (from ``buses`` when
    given, so the caller keeps the objects; else built here with ``pin_factory``)."""
    built = build_buses(config, sink, pin_factory=pin_factory) if buses is None else buses
    return {name: driver.run for name, driver in built.items()}


def set_interval(
    buses: Mapping[str, FieldDriver],
    device_id: str,
    seconds: float | None,
    *,
    lane: Lane = "normal",
) -> None:
    """Change a Modbus device's poll interval at run time (None restores the configured one).

    Raises ``ValueError`` for a device that is on no Modbus bus, or a bad interval.
    """
    for driver in buses.values():
        if isinstance(driver, ModbusBus) and device_id in driver.devices_online:
            driver.set_interval(device_id, seconds, lane=lane)
            return
    raise ValueError(f"no Modbus device {device_id!r} on any bus")


def modbus_devices(buses: Mapping[str, FieldDriver]) -> dict[str, tuple[float, float | None]]:
    """Every polled Modbus device: device id -> its (poll interval, fast interval) now."""
    found: dict[str, tuple[float, float | None]] = {}
    for driver in buses.values():
        if isinstance(driver, ModbusBus):
            for device_id in driver.devices_online:
                found[device_id] = driver.intervals(device_id)
    return found


def bus_health(buses: Mapping[str, FieldDriver]) -> dict[str, dict[str, Any]]:
    """Per bus (by id): what the field technician asks first. For Modbus buses, the
    scheduler's counters (they only grow): requests, timeouts, errors (bad frames, exception
    and wrong-size answers), overruns (poll slots skipped because the bus was still busy) and
    the devices offline now."""
    health: dict[str, dict[str, Any]] = {}
    for name, driver in buses.items():
        bus_id = name.removeprefix("bus:")
        if isinstance(driver, ModbusBus):
            stats = driver.stats
            health[bus_id] = {
                "kind": "modbus",
                "requests": stats.requests,
                "answers": stats.answers,
                "timeouts": stats.timeouts,
                "errors": stats.bad_frames + stats.exceptions + stats.bad_answers,
                "overruns": stats.skipped_slots,
                "offline_devices": sorted(
                    d for d, online in driver.devices_online.items() if online is False
                ),
            }
        elif isinstance(driver, _GpioSensors):
            health[bus_id] = {"kind": "gpio", "devices": len(driver.sensors)}
        else:
            health[bus_id] = {"kind": "serial"}
    return health


def _modbus(bus: ModbusTcpBus | ModbusRtuBus, devices: list[Device], sink: Sink) -> ModbusBus:
    polled = [
        PolledDevice(
            d.id,
            load_model(d.model),
            d.address if d.address is not None else 0,
            d.poll_interval,
            fast_interval=d.fast_interval,
            gauge_length=d.gauge_length,
        )
        for d in devices
    ]
    settings: TcpSettings | RtuSettings
    if bus.kind == "modbus-tcp":
        settings = TcpSettings(bus.host, bus.port, bus.timeout)
    else:
        settings = RtuSettings(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.timeout)
    return ModbusBus(bus.id, settings, polled, sink)


def _serial(bus: SerialBus, device: Device, sink: Sink) -> FieldDriver:
    baudrate = bus.baudrate or SERIAL_MODELS[device.model][1]
    if device.model == "hlk-ld2410":
        from drivers.ld2410.driver import Ld2410Radar  # noqa: PLC0415 -- radar ports only

        return Ld2410Radar(
            device.id,
            bus.port,
            sink,
            baudrate=baudrate,
            report_interval=device.poll_interval,
            silence=bus.silence,
        )
    from drivers.witmotion.driver import WitMotionSensor  # noqa: PLC0415 -- tilt ports only

    return WitMotionSensor(
        device.id,
        bus.port,
        sink,
        baudrate=baudrate,
        report_interval=device.poll_interval,
        gauge_length=device.gauge_length,
        silence=bus.silence,
    )


def _pin(device: Device) -> int:
    if device.pin is None:  # the loader rejects this; a hand-built config might not
        raise ValueError(f"device {device.id}: a GPIO sensor needs a pin")
    return device.pin
