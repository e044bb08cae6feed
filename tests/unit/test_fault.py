"""Fault mode (edge/fault.py): the buzzer pattern of a gateway with no config to run, and which
parts of an unusable site file it can still use."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from edge.clock import VirtualClock
from edge.fault import FaultMode, Salvage, salvage
from tests.integration.site import site_dict


def history(factory: MockFactory, pin: int) -> list[bool]:
    return [change.state for change in factory.pin(pin).states]


@pytest.mark.parametrize(("found", "pin"), [(Salvage(), 17), (None, 23)], ids=["default", "file"])
async def test_fault_mode_beeps_three_times_every_ten_seconds_until_stopped(
    found: Salvage | None, pin: int, tmp_path: object
) -> None:
    if found is None:
        site = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1", tcp_port=1, rtu_link="x")  # type: ignore[arg-type]
        site["outputs"]["buzzer"] = {"pin": 23}
        site["devices"] = "garbage"
        found = salvage(yaml.safe_dump(site))
        assert found.outputs is not None
        assert found.gateway is not None
        assert found.buffer is not None
    factory = MockFactory()
    clock = VirtualClock()
    fault = FaultMode(["site.yaml:1:1: broken"], Salvage(outputs=found.outputs), factory, clock)
    stop = asyncio.Event()
    started: list[str] = []
    task = asyncio.create_task(fault.run(stop, on_started=started.append))
    await clock.advance(20.0)
    assert started == ["FAULT: no usable config (1 problems); see logs"]
    assert history(factory, pin) == [False] + [True, False] * 3 * 2 + [True]
    assert fault.status()["buzzer"] == f"fault pattern on GPIO {pin}"
    stop.set()
    await asyncio.wait_for(task, 5)
    assert factory.pin(pin).state is False  # released


def test_salvage_keeps_only_the_sections_valid_on_their_own() -> None:
    assert salvage(None) == Salvage()
    assert salvage("gateway: [") == Salvage()
    assert salvage("- a list") == Salvage()
    found = salvage("gateway: {id: gw-1}\noutputs: {buzzer: {pin: 99}}\n")
    assert found.outputs is None  # pin 99 does not exist: the default buzzer sounds instead
    assert found.uplink is None
