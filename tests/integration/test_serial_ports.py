"""Serial ports as the drivers open them: checked again at open time, opened off the event
loop within a bound, written without ever waiting. Real pseudo-terminals, real FIFOs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.ld2410.driver import Ld2410Radar
from drivers.modbus import ModbusBus, PolledDevice, RtuSettings, load_model
from drivers.serial_link import WRITE_LIMIT, SerialLink
from drivers.types import DeviceStatus, Reading
from hil.port_faults import HeldOpen
from hil.rtu_line import RtuLine
from tests.fixtures.tasks import running

pytestmark = pytest.mark.integration

EFM = load_model("efm-ref")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Reading | DeviceStatus] = []

    def __call__(self, event: Reading | DeviceStatus) -> None:
        self.events.append(event)

    def readings(self, device: str) -> list[Reading]:
        return [e for e in self.events if isinstance(e, Reading) and e.device_id == device]

    def statuses(self, device: str) -> list[DeviceStatus]:
        return [e for e in self.events if isinstance(e, DeviceStatus) and e.device_id == device]


async def until(what: str, condition: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {within} s")
        await asyncio.sleep(0.01)


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A real pseudo-terminal in raw mode: the leader's fd and the follower's path."""
    leader, follower = os.openpty()
    tty.setraw(follower)
    try:
        yield leader, os.ttyname(follower)
    finally:
        os.close(leader)
        os.close(follower)


def open_fds_on(path: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == path
    return count


async def received_until(leader: int, what: str, condition: Callable[[bytearray], bool]) -> bytes:
    """What the far end of a pty receives, read as it comes, until ``condition`` holds."""
    received = bytearray()
    os.set_blocking(leader, False)

    def drain() -> None:
        with contextlib.suppress(BlockingIOError):
            received.extend(os.read(leader, 65536))

    loop = asyncio.get_running_loop()
    loop.add_reader(leader, drain)
    try:
        await until(what, lambda: condition(received))
    finally:
        loop.remove_reader(leader)
    return bytes(received)


@pytest.mark.parametrize("target", ["regular file", "/dev/zero", "spy URL"])
async def test_a_port_that_is_no_longer_a_serial_line_is_refused_when_opened(
    tmp_path: Path, pty: tuple[int, str], target: str
) -> None:
    """The site file named a link to a pty (accepted); by the time the driver opens it, the
    link leads elsewhere. The radar driver writes its start-up commands on every open."""
    victim = tmp_path / "outbox.sqlite"
    victim.write_bytes(b"records not sent yet")
    before = victim.stat()
    link = tmp_path / "radar"
    link.symlink_to(pty[1])
    link.unlink()
    if target == "regular file":
        link.symlink_to(victim)
        port, why = str(link), "which is not a serial device"
    elif target == "/dev/zero":
        link.symlink_to("/dev/zero")
        port, why = str(link), "leads to /dev/zero, which is not a serial device"
    else:
        port, why = f"spy://127.0.0.1:1?file={victim}", "only socket:// URLs"
    recorder = Recorder()
    radar = Ld2410Radar("radar", port, recorder)
    async with running(radar.run):
        await until("offline", lambda: bool(recorder.statuses("radar")))
    (status,) = recorder.statuses("radar")
    assert not status.online
    assert why in status.reason
    assert radar.stats.opens == 0
    assert victim.read_bytes() == b"records not sent yet"
    assert victim.stat().st_mtime_ns == before.st_mtime_ns


async def test_a_port_whose_open_hangs_costs_only_its_own_bus(pty: tuple[int, str]) -> None:
    """A USB adapter can hang its driver's open for seconds; here the open of one real pty is
    held in the kernel (hil/port_faults.py) until the test lets it go. Meanwhile another bus
    keeps polling on the same event loop."""
    hung = pty[1]
    recorder = Recorder()
    hung_bus = ModbusBus(
        "hung", RtuSettings(hung, timeout=0.3), [PolledDevice("h", EFM, 1, 0.1)], recorder
    )
    with HeldOpen(hung) as gate:
        async with RtuLine({1: "efm-ref"}) as line:
            live_bus = ModbusBus(
                "live",
                RtuSettings(line.path, timeout=0.3),
                [PolledDevice("a", EFM, 1, 0.1)],
                recorder,
            )
            async with running(live_bus.run):
                async with running(hung_bus.run):
                    await until("the open held", gate.held.is_set)
                    since = time.monotonic()
                    await until(
                        "ten polls of the other bus",
                        lambda: (
                            len({r.mono for r in recorder.readings("a") if r.mono > since}) >= 10
                        ),
                    )
                    await until("the hung device offline", lambda: bool(recorder.statuses("h")))
                    # Its bus keeps trying, but never a second open of the same port.
                    await until("retries", lambda: hung_bus.stats.connect_attempts >= 3)
                    openers = [t for t in threading.enumerate() if t.name == f"open {hung}"]
                    assert len(openers) == 1
                    assert not gate.passed.is_set()
                released = time.monotonic()
                gate.release()
                await until("the held open returned", gate.passed.is_set)
                await until(
                    "the late port closed",
                    lambda: open_fds_on(hung) == 1 and not any(t.is_alive() for t in openers),
                )
    polls_while_held = {r.mono for r in recorder.readings("a") if since < r.mono < released}
    assert len(polls_while_held) >= 10
    (offline,) = recorder.statuses("h")
    assert not offline.online
    assert "did not return within 1 s" in offline.reason
    assert not recorder.readings("h")


async def test_a_line_that_does_not_drain_gets_whole_writes_in_order(
    pty: tuple[int, str],
) -> None:
    """Nobody reads the pty at first: it fills, writes come back short or not at all. What
    the line did not take is sent later, in order; past the limit, writes are dropped whole."""
    leader, path = pty
    chunks = [bytes([i]) * 1000 for i in range(200)]  # 200 kB: far more than a pty holds
    link = await SerialLink.open(path, 9600)
    try:
        for chunk in chunks:
            link.write(chunk)
        assert 0 < link.unsent <= WRITE_LIMIT
        assert link.dropped_writes > 0
        assert link.dropped_writes % 1000 == 0, "a write is dropped whole or not at all"
        expected = len(chunks) * 1000 - link.dropped_writes
        received = await received_until(
            leader,
            "every byte the link kept, nothing left to send",
            lambda got: len(got) >= expected and link.unsent == 0,
        )
    finally:
        await link.close()
    assert len(received) == expected
    blocks = [bytes(received[at : at + 1000]) for at in range(0, len(received), 1000)]
    marks = [block[0] for block in blocks]
    assert all(block == bytes([block[0]]) * 1000 for block in blocks), "no chunk was split"
    assert marks == sorted(marks), "in order"
    assert len(set(marks)) == len(marks), "none twice"
    assert marks[0] == 0


async def test_a_socket_port_without_a_server_is_an_error_not_a_wait() -> None:
    with pytest.raises(ConnectionRefusedError):
        await SerialLink.open("socket://127.0.0.1:1", 9600, connect_timeout=5.0)
    with pytest.raises(ValueError, match="not a serial port"):
        await SerialLink.open("rfc2217://127.0.0.1:1?timeout=4", 9600)


async def test_a_short_write_keeps_its_tail_and_sends_it_before_later_writes(
    pty: tuple[int, str],
) -> None:
    """``os.write`` on a full pty takes part of a write: the part it did not take goes first
    once the line drains, ahead of everything written after it, and nothing is split."""
    leader, path = pty
    size = 777  # not a divisor of the pty's buffer, so one write is cut short
    link = await SerialLink.open(path, 9600)
    written = 0
    try:
        while not link.unsent:
            link.write(bytes([written % 256]) * size)
            written += 1
        assert 0 < link.unsent < size, "the write that filled the line went out in part"
        link.write(bytes([written % 256]) * size)  # queued behind the tail
        written += 1
        assert link.dropped_writes == 0
        received = await received_until(
            leader,
            "every byte, nothing left to send",
            lambda got: len(got) >= written * size and link.unsent == 0,
        )
    finally:
        await link.close()
    assert received == b"".join(bytes([n % 256]) * size for n in range(written))


async def test_a_write_larger_than_the_limit_is_dropped_whole_never_cut(
    pty: tuple[int, str],
) -> None:
    leader, path = pty
    link = await SerialLink.open(path, 9600)
    try:
        link.write(b"\xaa" * (WRITE_LIMIT + 1))
        assert link.dropped_writes == WRITE_LIMIT + 1
        assert link.unsent == 0
        link.write(b"\x01\x03\x00\x00\x00\x01\x84\x0a")  # the next request goes as usual
        received = await received_until(leader, "the request", lambda got: len(got) >= 8)
    finally:
        await link.close()
    assert received == b"\x01\x03\x00\x00\x00\x01\x84\x0a"
