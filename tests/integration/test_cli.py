"""The ``edge`` command as systemd and an installer run it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.simulator import Simulator
from tests.fixtures.broker import free_port
from tests.integration.site import EXAMPLE, site_dict, site_for, write_site

pytestmark = pytest.mark.integration

EDGE = [sys.executable, "-m", "edge.cli"]


async def read_until(stream: asyncio.StreamReader, needle: str, seconds: float) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(seconds):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                pytest.fail(f"process ended before logging {needle!r}:\n{''.join(lines)}")
            lines.append(line)
            if needle in line:
                return lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_cleanly_within_5s_and_flushes_buffer(
    tmp_path: Path, signum: signal.Signals
) -> None:
    async with Simulator(
        tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
    ) as sim:
        # No broker: everything the gateway samples must end up in the outbox file.
        site = site_for(
            sim, tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", poll_interval="100ms"
        )
        config = write_site(tmp_path, site)
        process = await asyncio.create_subprocess_exec(
            *EDGE, "run", "--config", str(config), stderr=asyncio.subprocess.PIPE
        )
        assert process.stderr is not None
        await read_until(process.stderr, "outbox open", 15)
        await asyncio.sleep(1.0)  # let readings flow
        process.send_signal(signum)
        sent = time.monotonic()
        try:
            rest = (await asyncio.wait_for(process.stderr.read(), 10)).decode()
        except TimeoutError:
            process.kill()
            rest = (await process.stderr.read()).decode()
            pytest.fail(f"still running 10 s after {signum.name}; its log:\n{rest}")
        code = await process.wait()
        elapsed = time.monotonic() - sent

    assert code == 0, rest
    assert elapsed < 5.0, f"took {elapsed:.2f} s to stop"
    assert "gateway stopped" in rest
    assert "unbuffered=0" in rest
    with sqlite3.connect(tmp_path / "outbox.sqlite") as conn:
        streams = {
            "event": conn.execute("SELECT count(*) FROM events").fetchone()[0],
            "telemetry": conn.execute("SELECT count(*) FROM telemetry").fetchone()[0],
        }
    assert streams["telemetry"] >= 3 * 14, "about one poll of three monitors is the least expected"
    assert streams["event"] >= 1, "gateway-started"


def test_check_config_accepts_the_example_site() -> None:
    result = subprocess.run(
        [*EDGE, "check-config", str(EXAMPLE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gw-demo-0001" in result.stdout


async def test_run_with_bad_config_starts_no_bus_and_names_the_mistake(tmp_path: Path) -> None:
    site = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1", tcp_port=1, rtu_link="x")
    site["devices"][0]["bus"] = "no-such-bus"
    config = write_site(tmp_path, site)
    process = await asyncio.create_subprocess_exec(
        *EDGE,
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"},
    )
    assert process.stderr is not None
    try:
        # Not half a gateway: fault mode (no bus, no rule), which says what is wrong.
        lines = await read_until(process.stderr, "no usable config: fault mode", 30)
    finally:
        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stderr.read(), 10)).decode()
        assert await process.wait() == 0, rest
    text = "".join(lines) + rest
    assert f"{config}:" in text
    assert "no-such-bus" in text
    assert "gateway starting" not in text


async def test_run_logs_the_site_files_warnings_as_logfmt(tmp_path: Path) -> None:
    site = site_dict(
        tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", tcp_port=1, rtu_link="rtu"
    )
    site["uplink"]["protocol"] = "3.1.1"
    config = write_site(tmp_path, site)
    process = await asyncio.create_subprocess_exec(
        *EDGE, "run", "--config", str(config), stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        lines = await read_until(process.stderr, "uplink.protocol: MQTT 3.1.1", 15)
    finally:
        process.terminate()
        await process.wait()
    line = lines[-1]
    assert line.startswith("ts="), line
    assert "level=warning" in line, line
    assert "uplink.protocol: MQTT 3.1.1 cannot say" in line
