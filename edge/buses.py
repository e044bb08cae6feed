"""From the site file's buses and devices to one driver task per bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from drivers import Sink
from drivers.modbus import ModbusBus, PolledDevice, RtuSettings, TcpSettings, load_model
from edge.config.model import ModbusRtuBus, ModbusTcpBus, SiteConfig


def bus_services(config: SiteConfig, sink: Sink) -> dict[str, Callable[[], Awaitable[None]]]:
    """``{"bus:<id>": run}`` for every bus that has at least one device."""
    services: dict[str, Callable[[], Awaitable[None]]] = {}
    for bus in config.buses:
        devices = [
            PolledDevice(d.id, load_model(d.model), d.address, d.poll_interval)
            for d in config.devices
            if d.bus == bus.id
        ]
        if not devices:
            continue
        settings: TcpSettings | RtuSettings
        if isinstance(bus, ModbusTcpBus):
            settings = TcpSettings(bus.host, bus.port, bus.timeout)
        else:
            assert isinstance(bus, ModbusRtuBus)
            settings = RtuSettings(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.timeout)
        services[f"bus:{bus.id}"] = ModbusBus(bus.id, settings, devices, sink).run
    return services
