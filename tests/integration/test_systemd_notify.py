"""``edge run`` under a service manager: READY, WATCHDOG and STOPPING on $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil.simulator import Simulator
from tests.fixtures.broker import free_port
from tests.integration.site import site_for, write_site

pytestmark = pytest.mark.integration

EDGE = [sys.executable, "-m", "edge.cli"]


async def next_datagram(sock: socket.socket, seconds: float) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 4096), seconds)


@contextlib.asynccontextmanager
async def gateway_under_systemd(
    tmp_path: Path, watchdog_usec: int
) -> AsyncIterator[tuple[socket.socket, asyncio.subprocess.Process]]:
    """``edge run`` of the example site with a notify socket (the one systemd would read)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        async with Simulator(
            tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
        ) as sim:
            site = site_for(sim, tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}")
            config = write_site(tmp_path, site)
            env = {
                **os.environ,
                "NOTIFY_SOCKET": str(tmp_path / "notify"),
                "WATCHDOG_USEC": str(watchdog_usec),
            }
            with (tmp_path / "gateway.log").open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    *EDGE, "run", "--config", str(config), env=env, stderr=log
                )
                try:
                    yield sock, process
                finally:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()


async def exits_after_sigterm(process: asyncio.subprocess.Process, log: Path) -> int:
    """The exit code, or the test fails with the end of the gateway's log (and its stacks)."""
    process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.send_signal(signal.SIGUSR1)  # every thread's stack, into the log
        await asyncio.sleep(1)
        tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-4000:]
        pytest.fail(f"no exit 10 s after SIGTERM; the gateway's log ends:\n{tail}")


async def test_run_notifies_ready_pings_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    async with gateway_under_systemd(tmp_path, 200_000) as (sock, process):
        first = await next_datagram(sock, 20)
        assert first.split(b"\n")[0] == b"READY=1", first
        assert b"STATUS=gateway gw-demo-0001 running" in first
        pings = [await next_datagram(sock, 2) for _ in range(3)]
        assert pings == [b"WATCHDOG=1"] * 3
        exit_code = asyncio.ensure_future(exits_after_sigterm(process, tmp_path / "gateway.log"))
        rest = [await next_datagram(sock, 5)]
        while rest[-1] == b"WATCHDOG=1":
            rest.append(await next_datagram(sock, 5))
        assert rest[-1] == b"STOPPING=1", rest
        assert await exit_code == 0


async def test_a_service_manager_that_stops_reading_never_holds_the_gateway(
    tmp_path: Path,
) -> None:
    """Its socket's queue fills with pings (ten datagrams by default): a send that waited
    would hold the event loop, the alarms and the stop signal with it."""
    # A ping every 10 ms: the queue is full a tenth of a second after READY.
    async with gateway_under_systemd(tmp_path, 20_000) as (sock, process):
        ready = await next_datagram(sock, 20)
        assert ready.split(b"\n")[0] == b"READY=1", ready
        # Nobody reads: the gateway's own word that the queue is full, not a guessed delay.
        log = tmp_path / "gateway.log"
        for _ in range(300):  # 30 s at most
            if "cannot notify systemd" in await asyncio.to_thread(log.read_text):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the notify socket's queue never filled, or the gateway never said so")
        assert await exits_after_sigterm(process, log) == 0
    log_text = (tmp_path / "gateway.log").read_text(errors="replace")
    assert log_text.count("cannot notify systemd") == 1, log_text[-4000:]


async def test_run_with_a_bad_config_says_ready_with_the_fault_not_a_restart_loop(
    tmp_path: Path,
) -> None:
    notify_path = tmp_path / "notify"
    config = tmp_path / "site.yaml"
    config.write_text("gateway: {id: gw-1}\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        sock.setblocking(False)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "GPIOZERO_PIN_FACTORY": "mock"}
        process = await asyncio.create_subprocess_exec(
            *EDGE,
            "run",
            "--config",
            str(config),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            # Exiting would have systemd restart it in a loop that nobody hears: it stays up,
            # sounds the fault pattern and says so (tests/integration/test_cli_fault.py).
            ready = await next_datagram(sock, 30)
            assert ready.split(b"\n")[0] == b"READY=1", ready
            assert b"STATUS=FAULT: no usable config" in ready
            assert process.returncode is None
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 15) == 0
