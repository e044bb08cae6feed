"""A crashing service is restarted with backoff while the others keep running."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge.supervisor import Supervisor


async def test_crashed_service_restarts_and_others_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(restart_initial=0.01, restart_max=0.05)
    attempts = 0
    steady_ticks = 0
    recovered = asyncio.Event()

    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError(f"driver bug #{attempts}")
        recovered.set()
        await asyncio.Event().wait()

    async def steady() -> None:
        nonlocal steady_ticks
        while True:
            steady_ticks += 1
            await asyncio.sleep(0.005)

    with caplog.at_level(logging.ERROR, logger="edge.supervisor"):
        supervisor.start("bus:flaky", flaky)
        supervisor.start("bus:steady", steady)
        await asyncio.wait_for(recovered.wait(), 2)
        ticks_before = steady_ticks
        await asyncio.sleep(0.03)
        await supervisor.stop()

    assert attempts == 3
    assert supervisor.restarts["bus:flaky"] == 2
    assert steady_ticks > ticks_before
    crashes = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert len(crashes) == 2
    assert crashes[0].exc_info is not None


async def test_duplicate_service_name_is_refused() -> None:
    supervisor = Supervisor()

    async def idle() -> None:
        await asyncio.Event().wait()

    supervisor.start("x", idle)
    with pytest.raises(ValueError, match="already running"):
        supervisor.start("x", idle)
    await supervisor.stop()
