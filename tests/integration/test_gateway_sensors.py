"""The gateway with every kind of bus at once: Modbus TCP and RTU monitors, a WitMotion tilt
module and an LD2410 radar on their own serial ports, and a PIR on the GPIO header; their
readings reach the platform through the real outbox and a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge.gateway import Gateway
from hil.serial_sim import Ld2410Sim, WitMotionSim
from hil.simulator import Simulator
from tests.fixtures.broker import Collector, Mosquitto, collect
from tests.integration.site import load, site_for

pytestmark = pytest.mark.integration

PREFIX = "district/v1/gw-demo-0001"
LOCATION = {"building": "Block 3", "floor": "2", "room": "Workshop 201", "venue_type": "workshop"}


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def latest(collector: Collector, device: str, point: str) -> float | None:
    values = [
        r["value"] for r in collector.readings() if r["device"] == device and r["point"] == point
    ]
    return values[-1] if values else None


async def test_serial_and_gpio_sensors_reach_the_platform(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pins = MockFactory()
    async with (
        Simulator(
            tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
        ) as sim,
        WitMotionSim(rate=20) as tilt,
        Ld2410Sim(rate=20) as radar,
        collect(mosquitto, f"{PREFIX}/#") as platform,
    ):
        tilt.set_angles(0.229, 0.0)
        radar.set_target(1, 150)
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        site["buses"] += [
            {"id": "tilt-port", "kind": "serial", "port": tilt.path, "silence": "1s"},
            {"id": "radar-port", "kind": "serial", "port": radar.path},
            {"id": "header", "kind": "gpio"},
        ]
        site["devices"] += [
            {"id": "tilt-1", "model": "witmotion-uart", "bus": "tilt-port", "gauge_length": 1.0,
             "poll_interval": "200ms", "location": LOCATION},
            {"id": "radar-1", "model": "hlk-ld2410", "bus": "radar-port",
             "poll_interval": "200ms", "location": LOCATION},
            {"id": "pir-1", "model": "pir", "bus": "header", "pin": 5, "location": LOCATION},
        ]  # fmt: skip
        async with running(Gateway(load(site), pin_factory=pins)):
            await platform.wait_for(
                lambda c: (
                    latest(c, "tilt-1", "roll_displacement") is not None
                    and latest(c, "radar-1", "presence") == 1.0
                    and latest(c, "pir-1", "presence") == 0.0
                ),
                10,
            )
            # The PIR shares the annunciator's pin factory: the test drives its pin.
            pins.pin(5).drive_high()
            await platform.wait_for(lambda c: latest(c, "pir-1", "presence") == 1.0, 10)
            radar.set_target(0)
            await platform.wait_for(lambda c: latest(c, "radar-1", "presence") == 0.0, 10)
            tilt.set_fault("silent")

            def tilt_offline(c: Collector) -> bool:
                return any(
                    e["kind"] == "device-offline" and e["device"] == "tilt-1"
                    for e in c.on("/events")
                )

            await platform.wait_for(tilt_offline, 10)
    assert latest(platform, "tilt-1", "roll_displacement") == pytest.approx(4.0, abs=0.1)
    assert latest(platform, "efm-shop-101", "residual_current") == 120.0
