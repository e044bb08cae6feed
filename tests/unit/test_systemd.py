"""sd_notify over a real unix datagram socket, as systemd listens for it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.systemd import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.start_watchdog() is None


def test_ready_and_stopping_arrive_as_datagrams(tmp_path: Path, listener: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert notifier.ready("gateway gw-1 running")
    assert notifier.stopping()
    assert listener.recv(4096) == b"READY=1\nSTATUS=gateway gw-1 running"
    assert listener.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket() -> None:
    name = f"edge-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"


def test_a_vanished_listener_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.notify("READY=1") is False


def test_a_manager_that_stops_reading_never_blocks_the_caller(
    tmp_path: Path, listener: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    """Its queue fills up (net.unix.max_dgram_qlen): the rest is dropped and said once."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    sent: list[bool] = []

    def ping() -> None:
        sent.extend(notifier.notify("WATCHDOG=1") for _ in range(2000))

    # In a thread: a send that waits for the reader would hang here, not the test run.
    pinger = threading.Thread(target=ping, name="pinger", daemon=True)
    pinger.start()
    pinger.join(30)
    assert not pinger.is_alive(), "a notification waited for a manager that does not read"
    assert sent[0] is True
    assert sent[-1] is False
    assert [r.message for r in caplog.records] == ["cannot notify systemd"]
    listener.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while listener.recv(4096):
            pass
    assert notifier.stopping() is True
    assert notifier.notify("WATCHDOG=1") is True


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_period(env: dict[str, str], expected: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", **env}).watchdog_interval == expected


def test_watchdog_pings_stop_while_the_event_loop_hangs(
    tmp_path: Path, listener: socket.socket
) -> None:
    """The pings come from the loop itself: a blocked loop is a silent watchdog."""
    arrivals: list[float] = []
    done = threading.Event()

    def receive() -> None:
        listener.settimeout(0.05)
        while not done.is_set():
            try:
                data = listener.recv(4096)
            except TimeoutError:
                continue
            assert data == b"WATCHDOG=1"
            arrivals.append(time.monotonic())

    receiver = threading.Thread(target=receive, name="notify-receiver")
    receiver.start()
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "100000"})

    async def scenario() -> None:
        task = notifier.start_watchdog()
        assert task is not None
        await asyncio.sleep(0.4)
        time.sleep(0.8)  # noqa: ASYNC251 - the hang itself: nothing else on this loop may run
        await asyncio.sleep(0.4)
        task.cancel()

    try:
        asyncio.run(scenario())
    finally:
        done.set()
        receiver.join()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 6, arrivals
    assert max(gaps) >= 0.75, "a ping was sent while the loop was blocked"
    assert sorted(gaps)[len(gaps) // 2] < 0.2, "pings come every half period otherwise"
