"""Downlink commands through a real Mosquitto into a running gateway, acks back."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from gpiozero.pins.mock import MockFactory

from edge.gateway import Gateway
from edge.schemas import validate
from tests.fixtures.broker import Collector, Mosquitto
from tests.fixtures.command_keys import signed_command
from tests.integration.site import load, simulated_site, site_for

pytestmark = pytest.mark.integration

GATEWAY = "gw-demo-0001"
PREFIX = f"district/v1/{GATEWAY}"


def command(
    cid: str,
    name: str,
    params: dict[str, Any],
    issued_at: float | None = None,
    *,
    key: str | None = "operations",
) -> bytes:
    """A command to the example site's gateway, signed with the test key ``key`` (None:
    unsigned)."""
    return signed_command(GATEWAY, cid, name, params, issued_at=issued_at, key=key)


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


async def test_only_signed_commands_within_the_bounds_change_a_running_gateway(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rule = "residual-current-over-limit"
    pins = MockFactory()
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        # A retained command waits on the broker; the gateway gets it at its subscribe.
        async with aiomqtt.Client(mosquitto.host, mosquitto.plain_port, timeout=5) as client:
            retained = command("r-1", "set-threshold", {"rule": rule, "threshold": 250})
            await client.publish(f"{PREFIX}/commands", retained, qos=1, retain=True)
        stop = asyncio.Event()
        gateway = Gateway(load(site), pin_factory=pins)
        task = asyncio.create_task(gateway.run(stop))
        try:
            assert "retained" in (await ack_for(platform, "r-1"))["error"]
            async with aiomqtt.Client(mosquitto.host, mosquitto.plain_port, timeout=5) as client:
                await client.publish(f"{PREFIX}/commands", b"", qos=1, retain=True)  # clear it
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)

            def raise_at() -> float | None:
                judged = gateway.rules.thresholds(rule, "efm-shop-101")
                return getattr(judged, "raise_at", None)

            # The attack from outside: one command silences every residual-current alarm.
            attack = {"rule": rule, "threshold": 1e308}
            forged = json.loads(
                command("a-forged", "set-threshold", {"rule": rule, "threshold": 250})
            )
            forged["params"] = attack  # the signature covered 250
            now = time.time()
            cases = {
                "a-unsigned": (
                    command("a-unsigned", "set-threshold", attack, key=None),
                    "not signed",
                ),
                "a-forged": (json.dumps(forged).encode(), "bad signature"),
                "a-signed": (command("a-signed", "set-threshold", attack), "beyond the bound"),
                "a-nan": (
                    command("a-nan", "set-threshold", {"rule": rule, "threshold": 1.0}).replace(
                        b'"threshold": 1.0', b'"threshold": NaN'
                    ),
                    "cannot be checked",
                ),
                "a-future": (
                    command("a-future", "ping", {}, issued_at=now + 3600),
                    "in the future",
                ),
            }  # fmt: skip
            for cid, (payload, words) in cases.items():
                await send(mosquitto, payload)
                ack = await ack_for(platform, cid)
                assert ack["result"] == "error", (cid, ack)
                assert words in ack["error"], (cid, ack["error"])
            assert raise_at() == 300
            assert gateway.rules.overrides == []

            # The same attack with the sensor at 5,000 mA still sounds the buzzer.
            sim.set("tcp", 1, "residual_current", 5000.0)
            await until(lambda: pins.pin(17).state is True, 5, "the buzzer")

            fine = command("t-1", "set-threshold", {"rule": rule, "threshold": 250})
            await send(mosquitto, fine)
            assert (await ack_for(platform, "t-1"))["result"] == "ok"
            assert raise_at() == 250
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

        # After a restart the same signed command, replayed, is refused and changes nothing.
        again = Gateway(load(site), pin_factory=MockFactory())
        stop = asyncio.Event()
        task = asyncio.create_task(again.run(stop))
        try:
            await platform.wait_for(lambda c: c.on("/status")[-1].get("state") == "online", 15)
            await send(mosquitto, command("p-after", "ping", {}))
            await ack_for(platform, "p-after")  # the new gateway answers
            await send(mosquitto, fine)
            replay = await ack_for(platform, "t-1", count=2)
            assert replay["result"] == "error"
            assert "was run before" in replay["error"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    # At-least-once delivery may bring an event twice; the same message_id says it is one.
    changed = {
        e["message_id"]: e for e in platform.on("/events") if e["kind"] == "threshold-changed"
    }
    assert [e["command_id"] for e in changed.values()] == ["t-1"]


async def test_the_reference_platforms_keygen_and_signer_command_a_real_gateway(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def cli(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hil.receiver", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    keys = tmp_path / "platform-keys"
    code, out, _ = await cli("keygen", "--out", str(keys), "--key-id", "operations-2026a")
    assert code == 0, out
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "operations-2026a.pub").write_bytes((keys / "operations-2026a.pub").read_bytes())
    private = str(keys / "operations-2026a.private.pem")
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        site["commands"] = {"keys": str(certs)}
        stop = asyncio.Event()
        gateway = Gateway(load(site), pin_factory=MockFactory())
        task = asyncio.create_task(gateway.run(stop))
        try:
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)
            params = '{"rule": "residual-current-over-limit", "threshold": 250}'
            sign = ["sign", "--key", private, "--gateway", GATEWAY, "--command", "set-threshold"]
            code, out, err = await cli(*sign, "--params", params, "--send", mosquitto.url)
            assert code == 0, (out, err)
            assert '"result": "ok"' in out
            judged = gateway.rules.thresholds("residual-current-over-limit", "efm-shop-101")
            assert getattr(judged, "raise_at", None) == 250
            # Beyond the bound: the ack says which, and the exit status says it failed.
            code, out, _ = await cli(*sign, "--params", params.replace("250", "1e308"),
                                     "--send", mosquitto.url)  # fmt: skip
            assert code == 1
            assert "beyond the bound" in out
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_a_site_without_command_keys_runs_and_refuses_every_command(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pins = MockFactory()
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        del site["commands"]
        stop = asyncio.Event()
        gateway = Gateway(load(site), pin_factory=pins)
        task = asyncio.create_task(gateway.run(stop))
        try:
            await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)
            sim.set("tcp", 1, "residual_current", 350.0)
            await until(lambda: pins.pin(17).state is True, 5, "the buzzer")
            rule, device = gateway.rules.active_alarms()[0]
            await send(mosquitto, command("s-1", "silence", {"rule": rule, "device": device}))
            ack = await ack_for(platform, "s-1")
            assert ack["result"] == "error"
            assert "no command keys" in ack["error"]
            assert pins.pin(17).state is True  # not silenced
            await platform.wait_for(
                lambda c: any(e["kind"] == "alarm-raised" for e in c.on("/events")), 10
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
