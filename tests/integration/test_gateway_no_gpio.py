"""A gateway on a machine with no GPIO backend (this one: no Raspberry Pi library) runs on:
it polls, judges and delivers, and its silent buzzer is an alarm of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from edge.doctor import gpio_backend
from tests.fixtures.broker import Mosquitto
from tests.integration.site import simulated_site, site_for, write_site

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        gpio_backend(None) is not None, reason="a GPIO library is installed: a backend may load"
    ),
]


async def test_without_a_gpio_backend_the_gateway_runs_and_reports_a_fire_severity_fault(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        site["outputs"].pop("pin_factory", None)
        site["uplink"]["health_interval"] = "1s"
        path = write_site(tmp_path, site)
        env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            str(path),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await platform.wait_for(
                lambda c: any(e["kind"] == "annunciator-failed" for e in c.on("/events")), 30
            )
            (failed,) = [e for e in platform.on("/events") if e["kind"] == "annunciator-failed"]
            assert failed["severity"] == "fire"
            assert "no GPIO backend works" in failed["reason"]
            assert failed["fix"]
            # Polling, judging and delivery go on: an injected fault reaches the platform.
            sim.set("tcp", 1, "residual_current", 350.0)
            await platform.wait_for(
                lambda c: any(e["kind"] == "alarm-raised" for e in c.on("/events")), 30
            )
            await platform.wait_for(
                lambda c: any(
                    h.get("annunciator") == "failed" and h.get("buzzer") == "on"
                    for h in c.on("/health")
                ),
                30,
            )
            assert process.returncode is None, "no crash, no restart loop"
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 15) == 0
