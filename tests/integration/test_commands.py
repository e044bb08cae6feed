"""Downlink commands through a real Mosquitto into a running gateway, acks back."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from gpiozero.pins.mock import MockFactory

from edge import contract
from edge.gateway import Gateway
from edge.schemas import validate
from tests.fixtures.broker import Collector, Mosquitto
from tests.integration.site import load, simulated_site, site_for

pytestmark = pytest.mark.integration

PREFIX = "district/v1/gw-demo-0001"


def command(cid: str, name: str, params: dict[str, Any], issued_at: float | None = None) -> bytes:
    return json.dumps(
        {
            "schema": "edge.command/1",
            "command_id": cid,
            "command": name,
            "issued_at": contract.iso_utc(time.time() if issued_at is None else issued_at),
            "params": params,
        }
    ).encode()


async def send(broker: Mosquitto, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.plain_port, timeout=5) as client:
        await client.publish(f"{PREFIX}/commands", payload, qos=1)


def acks(c: Collector) -> list[dict[str, Any]]:
    return c.on("/acks")


async def ack_for(c: Collector, cid: str | None, count: int = 1) -> dict[str, Any]:
    await c.wait_for(lambda c: sum(a["command_id"] == cid for a in acks(c)) >= count, 10)
    found = [a for a in acks(c) if a["command_id"] == cid]
    validate("ack", found[-1])
    return found[-1]


async def until(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_commands_are_answered_and_bad_ones_change_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pins = MockFactory()
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        stop = asyncio.Event()
        gateway = Gateway(load(site), pin_factory=pins)
        task = asyncio.create_task(gateway.run(stop))
        try:
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)

            await send(mosquitto, command("p-1", "ping", {}))
            assert (await ack_for(platform, "p-1"))["data"] == {"pong": True}

            sim.set("tcp", 1, "residual_current", 350.0)
            await until(lambda: pins.pin(17).state is True, 5, "the buzzer")
            rule, device = gateway.rules.active_alarms()[0]

            # Bad commands: each answered with the reason, the buzzer keeps sounding.
            await send(mosquitto, b"{not json")
            bad = await ack_for(platform, None)
            assert bad["result"] == "error"
            assert "not JSON" in bad["error"]
            await send(mosquitto, command("s-0", "silence", {"rule": rule, "device": 7}))
            assert "device" in (await ack_for(platform, "s-0"))["error"]
            await send(mosquitto, command("s-old", "silence", {"rule": rule, "device": device},
                                          issued_at=time.time() - 3600))  # fmt: skip
            assert "TTL" in (await ack_for(platform, "s-old"))["error"]
            await send(mosquitto, command("x-1", "reboot", {}))
            assert (await ack_for(platform, "x-1"))["result"] == "error"
            await send(mosquitto, command("s-9", "silence", {"rule": "nope", "device": device}))
            assert "no active alarm" in (await ack_for(platform, "s-9"))["error"]
            assert pins.pin(17).state is True

            await send(mosquitto, command("s-1", "silence", {"rule": rule, "device": device}))
            ok = await ack_for(platform, "s-1")
            assert (ok["result"], ok["data"]) == ("ok", {"silenced": 1})
            await until(lambda: pins.pin(17).state is False, 5, "the buzzer to go quiet")
            await send(mosquitto, command("s-1", "silence", {"rule": rule, "device": device}))
            again = await ack_for(platform, "s-1", count=2)
            assert again == ok  # the same answer, not run twice

            await send(mosquitto, command("g-1", "get-status", {}))
            status = (await ack_for(platform, "g-1"))["data"]
            assert status["active_alarms"] == [{"rule": rule, "device": device, "silenced": True}]
            assert status["uplink"] == "online"
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    silenced = [e for e in platform.on("/events") if e["kind"] == "alarm-silenced"]
    assert len(silenced) == 1
    assert silenced[0]["source"] == "remote"
