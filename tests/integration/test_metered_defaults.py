"""The gateway with the uplink's and the outbox's shipped defaults, made for a metered link
(docs/config.md, "What goes over the link"): readings wait minutes for their batch, an alarm
does not wait for anything.

Real parts only: Mosquitto, the simulator's Modbus servers, a SQLite outbox, MockFactory pins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config.model import BufferConfig
from edge.config.model import Uplink as UplinkConfig
from edge.gateway import Gateway
from hil.simulator import Simulator
from tests.fixtures.broker import Mosquitto, collect
from tests.integration.site import load, site_for

pytestmark = pytest.mark.integration

PREFIX = "district/v1/gw-demo-0001"


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_an_alarm_event_overtakes_the_readings_waiting_for_their_batch(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with (
        Simulator(
            tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
        ) as sim,
        collect(mosquitto, f"{PREFIX}/#") as platform,
    ):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        # The example site as shipped: the defaults of the uplink and the outbox, the storage
        # policies of the model (the test helper's overrides taken back).
        del site["uplink"]["batch_interval"]
        site.pop("storage")
        config = load(site)
        defaults = UplinkConfig.model_validate({"brokers": ["mqtt://x:1"]})
        assert config.uplink.batch_interval == defaults.batch_interval == 300.0
        assert config.buffer.commit_interval == BufferConfig(path="x").commit_interval == 2.0

        gateway = Gateway(config, pin_factory=MockFactory())
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        try:
            await platform.wait_for(lambda c: len(c.on("/metadata")) > 0, 20)
            await until(lambda: gateway.storage.stored > 0, 20, "the first stored readings")
            sim.set("tcp", 1, "residual_current", 350.0)
            await platform.wait_for(
                lambda c: any(e.get("kind") == "alarm-raised" for e in c.on("/events")), 20
            )
            (raised,) = [e for e in platform.on("/events") if e.get("kind") == "alarm-raised"]
            outbox = gateway.outbox
            assert outbox is not None
            # Readings committed before the alarm (its full-rate window among them) still wait
            # in the outbox for their batch: the event went past them.
            waiting = await outbox.peek("telemetry", 1)
            assert waiting, "no reading waits: the batch did not hold them"
            assert waiting[0].seq < raised["seq"]
            sent = {r["seq"] for r in platform.readings()}
            assert waiting[0].seq not in sent
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
