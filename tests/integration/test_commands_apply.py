"""set-threshold and storm-mode through a real Mosquitto into a running gateway on simulated
Modbus devices: refusals change nothing, changes take effect and are reported."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge import contract
from edge.gateway import Gateway
from edge.schemas import validate_message
from tests.fixtures.broker import Collector, Mosquitto
from tests.integration.site import load, simulated_site, site_for
from tests.integration.test_commands import ack_for, command, send, until

pytestmark = pytest.mark.integration

BUZZER = 17
RULE = "residual-current-over-limit"


def events(platform: Collector, kind: str) -> list[dict[str, Any]]:
    found = [e for e in platform.on("/events") if e["kind"] == kind]
    for event in found:
        validate_message(event)  # every event the commands cause follows the contract
    return found


async def refused(mosquitto: Mosquitto, platform: Collector, cid: str, payload: bytes) -> str:
    await send(mosquitto, payload)
    ack = await ack_for(platform, cid)
    assert ack["result"] == "error", ack
    error: str = ack["error"]
    return error


async def test_set_threshold_refuses_bad_values_and_a_good_one_alarms_and_survives_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pins = MockFactory()
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        sim.set("tcp", 1, "residual_current", 260.0)  # under the site's 300 mA
        stop = asyncio.Event()
        gateway = Gateway(load(site), pin_factory=pins)
        task = asyncio.create_task(gateway.run(stop))
        try:
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)
            bad: dict[str, tuple[dict[str, Any], str]] = {
                "t-unknown": ({"rule": "nope", "threshold": 250}, "no rule 'nope'"),
                "t-kind": ({"rule": RULE, "threshold": 250, "field": "change"}, "no threshold"),
                "t-order": (
                    {"rule": RULE, "threshold": 310, "field": "clear_below"},
                    "clear_below must not be above raise_at",
                ),
                "t-type": ({"rule": RULE, "threshold": "250"}, "threshold"),
                "t-device": ({"rule": RULE, "threshold": 250, "device": "efm-x"}, "efm-x"),
                # A unit is converted or refused, never dropped.
                "t-volts": ({"rule": RULE, "threshold": "250 V"}, "'V' is a unit of voltage"),
                "t-unit": ({"rule": RULE, "threshold": "250 mmm"}, "unknown unit 'mmm'"),
                "t-far": ({"rule": RULE, "threshold": "250 A"}, "beyond the bound"),
            }
            for cid, (params, words) in bad.items():
                error = await refused(
                    mosquitto, platform, cid, command(cid, "set-threshold", params)
                )
                assert words in error, (cid, error)
            # NaN is not JSON, but Python's json (and so a careless platform) writes it.
            nan = command("t-nan", "set-threshold", {"rule": RULE, "threshold": 1.0})
            nan = nan.replace(b'"threshold": 1.0', b'"threshold": NaN')
            assert "finite" in await refused(mosquitto, platform, "t-nan", nan)
            assert gateway.rules.overrides == []
            assert events(platform, "threshold-changed") == []
            assert pins.pin(BUZZER).state is False

            params = {"rule": RULE, "threshold": "0.25 A"}  # 250 mA
            await send(mosquitto, command("t-ok", "set-threshold", params))
            ok = await ack_for(platform, "t-ok")
            assert ok["result"] == "ok", ok
            assert (ok["data"]["old"], ok["data"]["new"]) == (300.0, 250.0)
            await until(lambda: pins.pin(BUZZER).state is True, 5, "the buzzer at 260 > 250 mA")
            await platform.wait_for(lambda c: len(events(c, "threshold-changed")) == 1, 5)
            changed = events(platform, "threshold-changed")[0]
            assert (changed["rule"], changed["field"], changed["old"], changed["new"]) == (
                RULE,
                "raise_at",
                300.0,
                250.0,
            )
            assert changed["command_id"] == "t-ok"
            await send(mosquitto, command("g-1", "get-status", {}))
            status = (await ack_for(platform, "g-1"))["data"]
            assert status["threshold_overrides"] == [
                {"rule": RULE, "field": "raise_at", "value": 250.0, "device": None}
            ]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

        # The same site file again: the override and the alarm come back from the state store.
        stop = asyncio.Event()
        again = Gateway(load(site), pin_factory=MockFactory())
        task = asyncio.create_task(again.run(stop))
        try:
            await until(lambda: bool(again.rules.overrides), 10, "the override restored")
            tuned = again.rules.thresholds(RULE, "efm-shop-101")
            assert tuned is not None
            assert tuned.raise_at == 250.0  # type: ignore[union-attr]
            assert again.rules.active_alarms() == [(RULE, "efm-shop-101")]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_storm_mode_polls_faster_tightens_thresholds_and_ends_by_itself(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pins = MockFactory()
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url, poll_interval="1s")
        sim.set("tcp", 1, "residual_current", 260.0)  # alarms at 300 x 0.8 = 240 only
        stop = asyncio.Event()
        gateway = Gateway(load(site), pin_factory=pins)
        task = asyncio.create_task(gateway.run(stop))
        try:
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)
            shop = "efm-shop-101"
            bad: dict[str, dict[str, Any]] = {
                "s-zero": {"on": True, "duration_s": 0},
                "s-neg": {"on": True, "duration_s": -5},
                "s-week": {"on": True, "duration_s": 7 * 86_400 + 1},
                "s-none": {"on": True},
                "s-dev": {"on": True, "duration_s": 5, "devices": ["efm-nowhere"]},
                "s-fast": {"on": True, "duration_s": 5, "interval_s": 0.01},
                "s-factor": {"on": True, "duration_s": 5, "threshold_factor": 1.5},
            }
            for cid, params in bad.items():
                await refused(mosquitto, platform, cid, command(cid, "storm-mode", params))
            nan = command("s-nan", "storm-mode", {"on": True, "duration_s": 1.0})
            nan = nan.replace(b'"duration_s": 1.0', b'"duration_s": NaN')
            assert "finite" in await refused(mosquitto, platform, "s-nan", nan)
            assert gateway.storm.active is None
            assert events(platform, "storm-mode-started") == []

            async def polls(seconds: float) -> int:
                first = sim.requests("tcp", 1)
                await asyncio.sleep(seconds)
                return sim.requests("tcp", 1) - first

            normal = await polls(2.0)
            params = {
                "on": True,
                "duration_s": 4,
                "devices": [shop],
                "interval_s": 0.2,
                "threshold_factor": 0.8,
            }
            await send(mosquitto, command("s-on", "storm-mode", params))
            ok = await ack_for(platform, "s-on")
            assert ok["result"] == "ok", ok
            assert ok["data"]["intervals"] == {shop: 0.2}
            await until(lambda: pins.pin(BUZZER).state is True, 5, "the tightened alarm")
            raised = [e for e in events(platform, "alarm-raised") if e["device"] == shop]
            during = await polls(2.0)
            # 1 s against 0.2 s: five times as many; a loaded machine still gives twice.
            assert during >= 2 * max(normal, 1), (normal, during)
            await platform.wait_for(lambda c: len(events(c, "storm-mode-ended")) == 1, 10)
            ended = events(platform, "storm-mode-ended")[0]
            assert ended["reason"] == "expired"
            assert gateway.storm.active is None
            assert gateway.rules.thresholds(RULE, shop) == load(site).rules[0]
            await until(lambda: pins.pin(BUZZER).state is False, 5, "the alarm clearing at 260")
            after = await polls(2.0)
            assert after < during, (normal, during, after)
            started = events(platform, "storm-mode-started")[0]
            assert (started["devices"], started["threshold_factor"]) == ([shop], 0.8)
            assert started["command_id"] == "s-on"
            assert raised or [e for e in events(platform, "alarm-raised") if e["device"] == shop]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_storm_mode_off_by_command_restores_at_once_and_a_restart_reports_it_ended(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url, poll_interval="1s")
        stop = asyncio.Event()
        gateway = Gateway(load(site), pin_factory=MockFactory())
        task = asyncio.create_task(gateway.run(stop))
        try:
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)
            await send(mosquitto, command("on-1", "storm-mode", {"on": True, "duration_s": 600}))
            ok = (await ack_for(platform, "on-1"))["data"]
            # Every polled device, at half its 1 s interval (no fast_interval in this site).
            assert ok["intervals"] == {
                "efm-restaurant-102": 0.5,
                "efm-shop-101": 0.5,
                "efm-workshop-201": 0.5,
            }
            health = await gateway.health()
            assert health["storm"]["devices"] == sorted(ok["intervals"])
            assert set(health["buses"]) == {"lan", "rs485-1"}
            assert health["buses"]["lan"]["requests"] > 0
            assert health["buses"]["lan"]["kind"] == "modbus"
            assert isinstance(health["buffer_rows"], int)
            # What the uplink's health message carries: it must pass the health schema.
            contract.health_message("gw-demo-0001", "e-1", health, clock_synced=True)
            renewed = {"on": True, "duration_s": 600, "devices": ["efm-shop-101"]}
            await send(mosquitto, command("on-2", "storm-mode", renewed))
            assert (await ack_for(platform, "on-2"))["data"]["renewed"] is True
            assert gateway.buses["bus:lan"].intervals("efm-restaurant-102") == (1.0, None)  # type: ignore[attr-defined]
            await send(mosquitto, command("off-1", "storm-mode", {"on": False}))
            assert (await ack_for(platform, "off-1"))["data"] == {"active": False}
            assert gateway.buses["bus:lan"].intervals("efm-shop-101") == (1.0, None)  # type: ignore[attr-defined]
            await platform.wait_for(lambda c: len(events(c, "storm-mode-ended")) == 1, 5)
            assert events(platform, "storm-mode-ended")[0]["reason"] == "command"
            await send(mosquitto, command("on-3", "storm-mode", {"on": True, "duration_s": 600}))
            assert (await ack_for(platform, "on-3"))["result"] == "ok"
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        stop = asyncio.Event()
        again = Gateway(load(site), pin_factory=MockFactory())
        task = asyncio.create_task(again.run(stop))
        try:
            await platform.wait_for(lambda c: len(events(c, "storm-mode-ended")) == 2, 15)
            assert events(platform, "storm-mode-ended")[1]["reason"] == "restart"
            assert again.storm.active is None
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
