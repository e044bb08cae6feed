"""The whole gateway, end to end: simulator -> drivers -> rules -> buzzer, and -> outbox -> broker.

Real parts only: a Mosquitto broker on a free loopback port, pymodbus servers over TCP and a
pseudo-terminal (the simulator), a real SQLite outbox, gpiozero's MockFactory pins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge.contract import decode_payload
from edge.gateway import Gateway
from edge.schemas import validate_message
from hil.simulator import Simulator
from tests.fixtures.broker import Collector, Mosquitto, MosquittoFactory, collect, free_port
from tests.integration.site import load, site_for

pytestmark = pytest.mark.integration

PREFIX = "district/v1/gw-demo-0001"


@contextlib.asynccontextmanager
async def simulated_site(tmp_path: Path) -> AsyncIterator[Simulator]:
    """The example site's three monitors: units 1 and 2 over TCP, unit 1 over RTU."""
    async with Simulator(
        tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
    ) as sim:
        yield sim


@contextlib.asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[Gateway]:
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.02)


def alarm_events(collector: Collector, device: str) -> list[dict[str, Any]]:
    return [
        event
        for event in collector.on("/events")
        if event.get("kind") == "alarm-raised" and event["device"] == device
    ]


def received_seqs(collector: Collector) -> set[int]:
    seqs = {r["seq"] for r in collector.readings()}
    return seqs | {e["seq"] for e in collector.on("/events")}


def gaps(seqs: set[int]) -> list[int]:
    return sorted(set(range(min(seqs), max(seqs) + 1)) - seqs) if seqs else []


@dataclass(frozen=True)
class Fault:
    bus: str
    address: int
    device: str
    point: str
    value: float
    threshold: float
    room: str


@pytest.mark.parametrize(
    "fault",
    [
        Fault("tcp", 1, "efm-shop-101", "residual_current", 350.0, 300.0, "Shop 101"),
        Fault("rtu", 1, "efm-workshop-201", "temperature_1", 78.0, 70.0, "Workshop 201"),
    ],
    ids=["modbus-tcp-residual-current", "modbus-rtu-over-temperature"],
)
async def test_injected_fault_sounds_buzzer_and_reaches_platform(
    tmp_path: Path, mosquitto: Mosquitto, fault: Fault
) -> None:
    pins = MockFactory()
    async with simulated_site(tmp_path) as sim, collect(mosquitto, f"{PREFIX}/#") as platform:
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        async with running(Gateway(load(site), pin_factory=pins)):
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 10)
            assert pins.pin(17).state is False

            sim.set(fault.bus, fault.address, fault.point, fault.value)
            await until(lambda: pins.pin(17).state is True, 5, "the buzzer")
            assert pins.pin(27).state is True, "the LED follows the buzzer"
            await platform.wait_for(lambda c: len(alarm_events(c, fault.device)) == 1, 5)

    event = alarm_events(platform, fault.device)[0]
    assert event["gateway_id"] == "gw-demo-0001"
    assert event["point"] == fault.point
    assert event["value"] == pytest.approx(fault.value)
    assert event["threshold"] == fault.threshold
    assert event["severity"] == "critical"
    assert event["location"]["room"] == fault.room
    assert isinstance(event["seq"], int)
    assert event["message_id"]
    status = platform.on("/status")
    assert status[0]["state"] == "online"
    assert status[0]["config_hash"] == ""  # built without a site file's digest
    # Every message the gateway emitted, the offline status of its clean stop included, follows
    # the JSON Schemas of contract v1.
    kinds = {validate_message(decode_payload(bytes(m.payload))) for m in platform.messages}
    assert kinds == {"status", "event", "telemetry", "metadata", "health"}
    assert status[-1]["state"] == "offline"


async def test_silent_device_goes_offline_while_others_keep_reporting(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with simulated_site(tmp_path) as sim, collect(mosquitto, f"{PREFIX}/#") as platform:
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        async with running(Gateway(load(site), pin_factory=MockFactory())):
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 10)
            sim.set_silent("tcp", 2, True)

            def offline(c: Collector) -> bool:
                return any(
                    e["kind"] == "device-offline" and e["device"] == "efm-restaurant-102"
                    for e in c.on("/events")
                )

            await platform.wait_for(offline, 10)
            seen_at_offline = len(platform.messages)
            sim.set("tcp", 1, "residual_current", 131)

            def fresh_reading(c: Collector) -> bool:
                return any(
                    r["device"] == "efm-shop-101" and r["value"] == 131 for r in c.readings()
                )

            await platform.wait_for(fresh_reading, 10)
            assert len(platform.messages) > seen_at_offline

            sim.set_silent("tcp", 2, False)

            def online(c: Collector) -> bool:
                return any(
                    e["kind"] == "device-online" and e["device"] == "efm-restaurant-102"
                    for e in c.on("/events")
                )

            await platform.wait_for(online, 15)


async def test_buzzer_sounds_with_uplink_down_and_buffer_unwritable(tmp_path: Path) -> None:
    """The alarm path never waits on the disk or the network."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the buffer's folder should be")
    pins = MockFactory()
    async with simulated_site(tmp_path) as sim:
        site = site_for(sim, tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}")
        site["buffer"]["path"] = str(blocker / "outbox.sqlite")
        gateway = Gateway(load(site), pin_factory=pins)
        async with running(gateway):
            await until(
                lambda: gateway.supervisor.restarts.get("buffer", 0) >= 1,
                10,
                "the buffer to fail to open",
            )
            sim.set("tcp", 1, "residual_current", 500)
            await until(lambda: pins.pin(17).state is True, 5, "the buzzer")
            assert gateway.outbox is None
            alarm = ("residual-current-over-limit", "efm-shop-101")
            assert gateway.rules.active_alarms() == [alarm]


async def test_broker_outage_loses_nothing(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    """Stop the broker, let readings pile up, restart it: every sequence number arrives.

    The broker is stopped and started off the event loop, so the gateway runs on throughout;
    the backlog is what the outbox committed after the uplink saw the broker go.
    """
    broker = mosquitto_factory(persistence=True)
    async with (
        simulated_site(tmp_path) as sim,
        collect(broker, f"{PREFIX}/#", session="platform") as platform,
    ):
        site = site_for(sim, tmp_path, broker_url=broker.url)
        gateway = Gateway(load(site), pin_factory=MockFactory())
        async with running(gateway):
            await platform.wait_for(lambda c: len(c.on("/telemetry")) >= 2, 10)
            outbox = gateway.outbox
            uplink = gateway.uplink
            assert outbox is not None
            assert uplink is not None
            await broker.stop_async()
            await until(
                lambda: uplink.state in {"offline", "connecting"},
                15,
                "the uplink to see the outage",
            )
            offline_from = outbox.last_seq
            await until(lambda: outbox.last_seq - offline_from >= 30, 15, "a backlog of 30 seqs")
            sim.set("tcp", 1, "residual_current", 420)  # an alarm raised during the outage
            await until(lambda: gateway.annunciator.sounding, 5, "the buzzer during the outage")
            piled_up = outbox.last_seq - offline_from
            await broker.start_async()

            async def drained() -> bool:
                depth = await outbox.depth()
                return sum(depth.values()) == 0

            deadline = asyncio.get_running_loop().time() + 15
            while not await drained():
                assert asyncio.get_running_loop().time() < deadline, "backlog not drained"
                await asyncio.sleep(0.1)
            sim.set("tcp", 1, "residual_current", 100)
            await platform.wait_for(
                lambda c: any(e["kind"] == "alarm-cleared" for e in c.on("/events")), 10
            )
            # The clearing reading's telemetry batch may still be on its way behind its event.
            await platform.wait_for(lambda c: gaps(received_seqs(c)) == [], 5)

    unique = received_seqs(platform)
    assert piled_up >= 30
    # Every seq committed while the uplink was offline reached the platform.
    assert set(range(offline_from + 1, offline_from + piled_up + 1)) <= set(unique)
    assert gaps(unique) == []
    assert min(unique) == 1, "the first record (gateway-started) was lost"
    assert any(e["kind"] == "alarm-raised" and e["value"] == 420 for e in platform.on("/events"))
