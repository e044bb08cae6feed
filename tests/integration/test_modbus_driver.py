"""The Modbus poller against the simulator: real pymodbus servers, real sockets, real ptys.

Each test runs a :class:`ModbusBus` against a :class:`Simulator` (in-process, or as a separate
process for the command line) and checks what reaches the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from drivers.modbus import (
    BusSettings,
    ModbusBus,
    PolledDevice,
    RtuSettings,
    TcpSettings,
    load_model,
)
from drivers.types import DeviceStatus, Reading
from hil.simulator import Simulator, send_control

pytestmark = pytest.mark.integration

EFM = load_model("efm-ref")
TYPICAL = {point.name: point.typical for point in EFM.points}
LOCALHOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


# --- hygiene ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
async def no_tasks_left_behind() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    deadline = time.monotonic() + 1.0
    while True:
        extra = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
        if not extra or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert not extra, f"tasks left behind: {extra}"


# --- helpers ----------------------------------------------------------------------------------


class Recorder:
    """A sink that keeps everything, with waits for what a test expects."""

    def __init__(self) -> None:
        self.events: list[Reading | DeviceStatus] = []

    def __call__(self, event: Reading | DeviceStatus) -> None:
        self.events.append(event)

    def readings(self, device: str, point: str | None = None) -> list[Reading]:
        return [
            e
            for e in self.events
            if isinstance(e, Reading) and e.device_id == device and point in (None, e.point)
        ]

    def statuses(self, device: str) -> list[DeviceStatus]:
        return [e for e in self.events if isinstance(e, DeviceStatus) and e.device_id == device]

    def online(self, device: str) -> list[bool]:
        return [status.online for status in self.statuses(device)]

    def latest(self, device: str) -> dict[str, float]:
        return {reading.point: reading.value for reading in self.readings(device)}

    async def wait_for(self, what: str, condition: Callable[[], bool], within: float = 3) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {within} s; last: {self.events[-3:]}")
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(bus: ModbusBus) -> AsyncIterator[asyncio.Task[None]]:
    """Run the bus for the block, then cancel it; it must still be running by then."""
    task = asyncio.create_task(bus.run(), name=f"bus {bus.bus_id}")
    try:
        yield task
    finally:
        if task.done():
            task.result()  # re-raises whatever ended run()
            pytest.fail("run() returned on its own")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    """A simulator with efm-ref units at addresses 1 and 2 on one of its buses."""

    sim: Simulator
    bus: str

    def settings(self, timeout: float) -> BusSettings:
        if self.bus == "tcp":
            return TcpSettings(LOCALHOST, self.sim.tcp_port, timeout)
        assert self.sim.rtu_link is not None
        return RtuSettings(str(self.sim.rtu_link), 9600, timeout=timeout)

    def two_devices(self, recorder: Recorder, *, timeout: float = 0.3) -> ModbusBus:
        return ModbusBus(
            f"bus-{self.bus}",
            self.settings(timeout),
            [PolledDevice("shop", EFM, 1, 0.1), PolledDevice("restaurant", EFM, 2, 0.1)],
            recorder,
        )


@pytest.fixture(params=["tcp", "rtu"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """Modbus TCP, or RTU at 9600 baud over the simulator's linked pty."""
    if request.param == "tcp":
        simulator = Simulator(tcp=(LOCALHOST, 0), tcp_devices=[1, 2])
    else:
        simulator = Simulator(rtu_link=tmp_path / "rtu", rtu_devices=[1, 2])
    async with simulator:
        yield Served(simulator, request.param)


# --- polling ----------------------------------------------------------------------------------


async def test_both_devices_deliver_every_point_with_the_right_values(served: Served) -> None:
    served.sim.set(served.bus, 2, "residual_current", 200)
    served.sim.set(served.bus, 2, "temperature_1", -5.5)
    recorder = Recorder()
    wall, mono = time.time(), time.monotonic()
    async with running(served.two_devices(recorder)):
        await recorder.wait_for(
            "readings of both devices",
            lambda: len(recorder.latest("shop")) == 14 and len(recorder.latest("restaurant")) == 14,
        )
    assert recorder.latest("shop") == TYPICAL
    assert recorder.latest("restaurant") == {
        **TYPICAL,
        "residual_current": 200,
        "temperature_1": -5.5,
    }
    assert recorder.online("shop") == [True]
    assert recorder.online("restaurant") == [True]
    first = recorder.readings("shop")[:14]
    assert {r.unit for r in first if r.point.startswith("temperature_")} == {"°C"}
    assert next(r.unit for r in first if r.point == "residual_current") == "mA"
    # One answer, one timestamp pair, taken when it arrived (after the test started).
    assert len({(r.ts, r.mono) for r in first}) == 1
    assert wall <= first[0].ts <= time.time()
    assert mono <= first[0].mono <= time.monotonic()


async def test_a_changed_value_shows_in_a_later_reading(served: Served) -> None:
    recorder = Recorder()
    async with running(served.two_devices(recorder)):
        await recorder.wait_for("a first reading", lambda: bool(recorder.readings("shop")))
        assert recorder.readings("shop", "residual_current")[0].value == 120
        served.sim.set(served.bus, 1, "residual_current", 350)
        await recorder.wait_for(
            "residual current 350",
            lambda: recorder.readings("shop", "residual_current")[-1].value == 350,
        )
    residuals = [r.value for r in recorder.readings("shop", "residual_current")]
    assert residuals[residuals.index(350) :] == [350] * (len(residuals) - residuals.index(350))
    assert {r.value for r in recorder.readings("restaurant", "residual_current")} == {120}


async def test_a_silent_device_goes_offline_once_and_the_other_keeps_reporting(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    sim, bus_name = served.sim, served.bus
    recorder = Recorder()
    caplog.set_level(logging.INFO, logger="drivers.modbus.bus")
    async with running(served.two_devices(recorder, timeout=0.5)):
        await recorder.wait_for("both online", lambda: len(recorder.events) >= 30)
        sim.set_silent(bus_name, 2, True)
        await recorder.wait_for(
            "restaurant offline", lambda: False in recorder.online("restaurant")
        )
        shop_before = len(recorder.readings("shop"))
        asked_before = sim.requests(bus_name, 2)
        # Re-probed (on its backoff: tests/unit/test_bus_schedule.py) while the other device
        # keeps reporting; offline only once.
        await recorder.wait_for(
            "probes of the silent device and polls of the other",
            lambda: (
                sim.requests(bus_name, 2) - asked_before >= 2
                and len(recorder.readings("shop")) - shop_before >= 3 * 14
            ),
            within=30,
        )
        assert recorder.online("restaurant") == [True, False]
        silent_since = recorder.statuses("restaurant")[-1]
        sim.set_silent(bus_name, 2, False)
        await recorder.wait_for("restaurant online", lambda: recorder.online("restaurant")[-1])
        await recorder.wait_for(
            "fresh readings", lambda: recorder.readings("restaurant")[-1].ts > silent_since.ts
        )
    assert recorder.online("restaurant") == [True, False, True]
    assert recorder.online("shop") == [True]
    assert silent_since.reason == "no answer within 0.5 s"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "device restaurant (address 2) registers 0-13: no answer" in warnings[0].getMessage()
    assert warnings[0].exc_info is None
    assert any("restaurant (address 2) answers again" in r.getMessage() for r in caplog.records)


async def test_rtu_frames_over_tcp_through_a_socket_url() -> None:
    recorder = Recorder()
    async with Simulator(rtu_tcp=(LOCALHOST, 0), rtu_devices=[7]) as sim:
        sim.set("rtu", 7, "current_c", 12.34)
        settings = RtuSettings(f"socket://{LOCALHOST}:{sim.rtu_tcp_port}", 9600, timeout=0.3)
        bus = ModbusBus("ser2net", settings, [PolledDevice("remote", EFM, 7, 0.1)], recorder)
        async with running(bus):
            await recorder.wait_for("readings", lambda: len(recorder.latest("remote")) == 14)
    assert recorder.latest("remote") == {**TYPICAL, "current_c": 12.34}


async def test_a_modbus_exception_marks_the_device_offline_without_flapping() -> None:
    recorder = Recorder()
    # The Acrel map reads register 0x10, which an efm-ref unit does not have.
    acrel = load_model("acrel-asj10l-ld1a")
    async with Simulator(tcp=(LOCALHOST, 0), tcp_devices=[1]) as sim:
        bus = ModbusBus(
            "lan",
            TcpSettings(LOCALHOST, sim.tcp_port, 0.3),
            [PolledDevice("wrong-model", acrel, 1, 0.05)],
            recorder,
        )
        async with running(bus):
            await recorder.wait_for("offline", lambda: bool(recorder.statuses("wrong-model")))
            await recorder.wait_for("re-probes", lambda: bus.stats.exceptions >= 3, within=30)
    assert recorder.online("wrong-model") == [False]
    assert recorder.statuses("wrong-model")[0].reason == "exception 2 (illegal data address)"
    # A poll is all or nothing: the blocks that did answer produced no readings.
    assert recorder.readings("wrong-model") == []
    assert bus.stats.exceptions >= 3


async def test_a_dead_device_is_probed_and_does_not_stall_the_other() -> None:
    recorder = Recorder()
    async with Simulator(tcp=(LOCALHOST, 0), tcp_devices=[1, 2]) as sim:
        sim.set_silent("tcp", 2, True)
        bus = ModbusBus(
            "lan",
            TcpSettings(LOCALHOST, sim.tcp_port, 0.3),
            [PolledDevice("fast", EFM, 1, 0.1), PolledDevice("dead", EFM, 2, 0.1)],
            recorder,
        )
        async with running(bus):
            await recorder.wait_for(
                "three probes of the dead device and polls of the live one",
                lambda: bus.stats.probes >= 3 and len(recorder.readings("fast")) >= 12 * 14,
                within=30,
            )
            probes, asked = bus.stats.probes, sim.requests("tcp", 2)
    # Its first poll and then only probes: each one request, each one timeout. How far apart
    # they are is the schedule's (tests/unit/test_bus_schedule.py).
    # (the last request may still be on its way to the simulator as the test stops)
    assert probes <= asked <= probes + 1
    assert bus.stats.timeouts >= probes
    assert recorder.online("dead") == [False]
    assert recorder.online("fast") == [True]


# --- connections --------------------------------------------------------------------------------


async def test_nothing_listening_means_offline_once_and_bounded_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    recorder = Recorder()
    bus = ModbusBus(
        "lan",
        TcpSettings(LOCALHOST, port, 0.3),
        [PolledDevice("a", EFM, 1, 0.1), PolledDevice("b", EFM, 2, 0.1)],
        recorder,
    )
    caplog.set_level(logging.WARNING, logger="drivers.modbus.bus")
    async with running(bus):
        await recorder.wait_for(
            "a retried connection", lambda: bus.stats.connect_attempts >= 3, within=30
        )
    # Retried on a backoff (0.5 s doubling to 10 s: tests/unit/test_bus_schedule.py), told once.
    assert bus.stats.connections == 0
    for device in ("a", "b"):
        assert recorder.online(device) == [False]
        # The reason names the bus and, where the socket said, why ("Connection refused").
        assert recorder.statuses(device)[0].reason.startswith(
            f"cannot connect to modbus-tcp {LOCALHOST}:{port}"
        )
    assert not any(isinstance(e, Reading) for e in recorder.events)
    assert len([r for r in caplog.records if r.name == "drivers.modbus.bus"]) == 1


async def test_an_absent_serial_port_is_retried_not_raised(tmp_path: Path) -> None:
    recorder = Recorder()
    port = tmp_path / "no-such-port"
    bus = ModbusBus("rs485", RtuSettings(str(port)), [PolledDevice("a", EFM, 1, 0.1)], recorder)
    async with running(bus):
        await recorder.wait_for("a retry", lambda: bus.stats.connect_attempts >= 2, within=30)
    assert recorder.online("a") == [False]
    assert recorder.statuses("a")[0].reason.startswith(f"cannot connect to modbus-rtu {port}")


async def test_the_bus_reconnects_when_the_server_comes_back() -> None:
    port = free_port()
    recorder = Recorder()
    bus = ModbusBus(
        "lan", TcpSettings(LOCALHOST, port, 0.3), [PolledDevice("a", EFM, 1, 0.1)], recorder
    )
    first = Simulator(tcp=(LOCALHOST, port))
    await first.start()
    try:
        async with running(bus):
            await recorder.wait_for("online", lambda: recorder.online("a") == [True])
            await first.stop()
            await recorder.wait_for("offline", lambda: recorder.online("a") == [True, False])
            lost = recorder.statuses("a")[-1].reason
            assert lost == f"connection to modbus-tcp {LOCALHOST}:{port} lost"
            async with Simulator(tcp=(LOCALHOST, port)) as again:
                again.set("tcp", 1, "residual_current", 333)
                await recorder.wait_for(
                    "readings again",
                    lambda: recorder.readings("a", "residual_current")[-1].value == 333,
                )
    finally:
        await first.stop()
    assert recorder.online("a") == [True, False, True]
    assert bus.stats.connections == 2


async def test_the_rtu_bus_reopens_the_port_when_the_simulator_restarts(tmp_path: Path) -> None:
    link = tmp_path / "rtu"
    recorder = Recorder()
    bus = ModbusBus(
        "rs485", RtuSettings(str(link), timeout=0.5), [PolledDevice("a", EFM, 1, 0.1)], recorder
    )
    first = Simulator(rtu_link=link)
    await first.start()
    try:
        async with running(bus):
            await recorder.wait_for("online", lambda: recorder.online("a") == [True])
            await first.stop()
            await recorder.wait_for("offline", lambda: recorder.online("a") == [True, False])
            async with Simulator(rtu_link=link):
                await recorder.wait_for("online again", lambda: recorder.online("a")[-1], within=10)
    finally:
        await first.stop()
    assert recorder.online("a") == [True, False, True]


# --- the command line ---------------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil.simulator",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_line_serves_controls_and_cleans_up(tmp_path: Path) -> None:
    link = tmp_path / "var" / "demo" / "rtu"
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil.simulator",
        "serve",
        "--tcp", f"{LOCALHOST}:0",
        "--tcp-devices", "1,2",
        "--rtu-link", str(link),
        "--rtu-devices", "1",
        "--control", f"{LOCALHOST}:0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        banner = (await asyncio.wait_for(server.stdout.readline(), 20)).decode()
        tcp = re.search(r"modbus-tcp 127\.0\.0\.1:(\d+) units 1,2", banner)
        control = re.search(r"control 127\.0\.0\.1:(\d+)", banner)
        assert tcp, banner
        assert control, banner
        assert f"modbus-rtu {link}" in banner
        assert link.is_symlink()
        where = ["--control", f"{LOCALHOST}:{control[1]}", "--bus", "tcp"]

        status, _, _ = await run_cli("set", *where, "--address", "1", "residual_current=350")
        assert status == 0
        status, _, err = await run_cli("set", *where, "--address", "1", "nope=1")
        assert status != 0
        assert "no point 'nope'" in err
        status, _, _ = await run_cli("silent", *where, "--address", "2", "on")
        assert status == 0
        status, out, _ = await run_cli("get", *where, "--address", "1", "residual_current")
        assert (status, json.loads(out)) == (0, {"value": 350.0})

        modbus = AsyncModbusTcpClient(LOCALHOST, port=int(tcp[1]), timeout=0.2, retries=0)
        assert await modbus.connect()
        try:
            assert (await modbus.read_holding_registers(0, count=1, device_id=1)).registers == [350]
            with pytest.raises(ModbusIOException):
                await modbus.read_holding_registers(0, count=1, device_id=2)
        finally:
            modbus.close()
        listing = await send_control(LOCALHOST, int(control[1]), {"cmd": "list"})
        assert listing["buses"] == {"tcp": [1, 2], "rtu": [1]}
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(server.wait(), 10)
    assert status == 0
    assert not link.is_symlink()


async def test_the_command_line_reports_an_unreachable_simulator() -> None:
    status, _, err = await run_cli(
        "silent", "--control", f"{LOCALHOST}:{free_port()}", "--bus", "tcp", "--address", "1", "on"
    )
    assert status == 1
    assert "simulator control" in err
