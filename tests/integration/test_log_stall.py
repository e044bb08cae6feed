"""`edge run` whose stderr does not take its log lines still sounds and reports every alarm.

A real process, a real Mosquitto, the simulated example site. Its stderr is, from the start,
a pipe filled to the brim that nobody reads (journald stalled), a closed descriptor, or a file
on a full disk (a small full tmpfs; /dev/full where this machine will not mount one). What
proves the gateway works is read from the platform's side only: the alarm event and the health
message (buzzer on), never from stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.log import parse_logfmt
from tests.fixtures.broker import Collector, Mosquitto
from tests.integration.site import simulated_site, site_for, write_site
from tests.unit.test_buffer_disk import fill, tmpfs

pytestmark = pytest.mark.integration

EDGE = [sys.executable, "-m", "edge.cli", "run"]
PREFIX = "district/v1/gw-demo-0001"
DEVICE = "efm-shop-101"


def full_pipe() -> tuple[int, int]:
    """A pipe (read, write) whose buffer is full: a blocking write waits for a reader."""
    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"x" * 4096)
    fcntl.fcntl(write, fcntl.F_SETFL, flags)
    return read, write


@contextlib.contextmanager
def full_disk_file(where: Path) -> Iterator[int]:
    """A file on a full disk, open for writing: every write says ENOSPC."""
    with tmpfs(where, "1m") as disk:
        if disk is None:
            fd = os.open("/dev/full", os.O_WRONLY)
        else:
            fd = os.open(disk / "journal.log", os.O_WRONLY | os.O_CREAT, 0o644)
            filler = fill(disk)
            assert os.statvfs(disk).f_bavail == 0
        try:
            yield fd
        finally:
            os.close(fd)
            if disk is not None:
                filler.unlink()


def alarm_raised(platform: Collector) -> bool:
    return any(
        e.get("kind") == "alarm-raised" and e.get("device") == DEVICE
        for e in platform.on("/events")
    )


def health_after_alarm(platform: Collector) -> dict[str, Any] | None:
    """The first health message that says the buzzer is on."""
    return next((h for h in platform.on("/health") if h.get("buzzer") == "on"), None)


async def run_alarm(
    tmp_path: Path,
    mosquitto: Mosquitto,
    command: list[str],
    stderr: int | None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Start the gateway with this stderr, inject an alarm, return the health that shows it
    (``before_stop`` runs once the platform has seen the alarm, while the gateway runs)."""
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        site["uplink"]["health_interval"] = "1s"
        config = write_site(tmp_path, site)
        process = await asyncio.create_subprocess_exec(
            *command,
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            await platform.wait_for(lambda c: len(c.readings()) > 0, 30)
            sim.set("tcp", 1, "residual_current", 350.0)
            await platform.wait_for(alarm_raised, 30)
            await platform.wait_for(lambda c: health_after_alarm(c) is not None, 30)
            if before_stop is not None:
                await before_stop()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert code == 0
    health = health_after_alarm(platform)
    assert health is not None
    return health


async def test_a_stalled_journal_neither_silences_nor_hides_an_alarm(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    read, write = full_pipe()
    journal = bytearray()

    def read_until_the_alarm_line() -> None:
        while b"msg=alarm-raised" not in journal:
            chunk = os.read(read, 65536)
            if not chunk:
                return
            journal.extend(chunk)

    async def journal_comes_back() -> None:
        # The stall ends while the gateway runs: the alarm's lines were kept for it.
        await asyncio.wait_for(asyncio.to_thread(read_until_the_alarm_line), 30)

    try:
        health = await run_alarm(tmp_path, mosquitto, EDGE, write, journal_comes_back)
    finally:
        os.close(read)
        os.close(write)
    assert isinstance(health["log_lines_dropped"], int)
    text = journal.decode(errors="replace").lstrip("x")
    lines = [parse_logfmt(line) for line in text.splitlines()]
    messages = [line.get("msg") for line in lines]
    assert "buzzer on" in messages
    assert messages.index("buzzer on") < messages.index("alarm-raised")
    assert any(
        line.get("msg") == "alarm-raised" and line.get("device") == DEVICE for line in lines
    ), "the alarm's log line never reached the journal"


async def test_a_closed_stderr_neither_silences_nor_stops_the_gateway(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    closed = ["/bin/sh", "-c", 'exec "$@" 2>&-', "edge", *EDGE]
    health = await run_alarm(tmp_path, mosquitto, closed, None)
    assert health["log_lines_dropped"] > 0, "lines the journal never got are counted"


async def test_stderr_on_a_full_disk_neither_silences_nor_stops_the_gateway(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with full_disk_file(tmp_path / "journal") as fd:
        health = await run_alarm(tmp_path, mosquitto, EDGE, fd)
    assert health["log_lines_dropped"] > 0, "lines the disk refused are counted"
