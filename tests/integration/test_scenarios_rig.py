"""Real-rig mode: the library against real hardware when ``EDGE_RIG`` names a rig file, and the
same code path on this machine with ``python -m hil.simulator serve`` as the second machine."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil.broker import wait_for_port
from hil.scenario import load_scenario, run_scenario
from hil.scenario.realrig import Rig, load_rig, rig_from_env
from hil.scenario.rig import free_port
from tests.integration.test_scenarios import LIBRARY, SCENARIOS, explain

pytestmark = pytest.mark.integration


@pytest.mark.hil
@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
async def test_library_scenario_on_the_real_rig(path: Path, tmp_path: Path) -> None:
    rig = rig_from_env()
    if rig is None:
        pytest.skip("no real rig configured: set EDGE_RIG to a rig file (docs/hil.md)")
    result = await run_scenario(load_scenario(path), tmp_path / "run", say=print, rig=rig)
    if result.status == "skipped":
        pytest.skip(result.reason)
    assert result.status == "passed", explain(result)


@pytest.fixture
async def second_machine(tmp_path: Path) -> AsyncIterator[Rig]:
    """The simulator serving the library site's buses over TCP, as a second machine would, and
    a rig file pointing the gateway at it (buzzer seen through the log: no loopback wire)."""
    tcp, rtu, control = free_port(), free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.simulator", "serve",
        "--tcp", f"127.0.0.1:{tcp}", "--tcp-devices", "1,2",
        "--rtu-tcp", f"127.0.0.1:{rtu}", "--rtu-devices", "1",
        "--control", f"127.0.0.1:{control}",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", control)
        rig_file = tmp_path / "rig.yaml"
        rig_file.write_text(
            f"tcp: {{lan: '127.0.0.1:{tcp}'}}\n"
            f"ports: {{rs485-1: 'socket://127.0.0.1:{rtu}'}}\n"
            f"control: '127.0.0.1:{control}'\n"
            "buzzer: {output_pin: 17}\n"
        )
        yield load_rig(rig_file)
    finally:
        process.terminate()
        await process.wait()


async def test_rig_mode_drives_the_second_machines_simulator(
    second_machine: Rig, tmp_path: Path
) -> None:
    scenario = load_scenario(LIBRARY / "dead-device.yaml")
    result = await run_scenario(scenario, tmp_path / "run", say=lambda _: None, rig=second_machine)
    assert result.status == "passed", explain(result)
    site = (tmp_path / "run" / "site.yaml").read_text()
    assert f"port: {second_machine.tcp['lan'][1]}" in site
    assert "socket://127.0.0.1:" in site


async def test_rig_mode_skips_what_only_the_simulated_line_can_do(
    second_machine: Rig, tmp_path: Path
) -> None:
    scenario = load_scenario(LIBRARY / "garbage-on-line.yaml")
    result = await run_scenario(scenario, tmp_path / "run", say=lambda _: None, rig=second_machine)
    assert result.status == "skipped"
    assert "step 'noise' (garbage) needs the simulated line" in result.reason
    # Refused before anything started: no site written, no gateway run.
    assert not (tmp_path / "run" / "site.yaml").exists()
    assert not (tmp_path / "run" / "gateway.log").exists()
