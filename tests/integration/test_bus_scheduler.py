"""The bus scheduler against the line-timed RTU simulator, over a real pseudo-terminal.

The simulator answers as late as a 9600/19200-baud line would and notes any request sent
before the t3.5 silence, so these tests see the scheduler as a real RS-485 bus would. They
assert what happens and in which order, never how fast: the schedule's times are asserted
exactly on a made-up clock (tests/unit/test_bus_schedule.py), its speed on a real line is a
benchmark (``python -m tests.benchmarks --only drivers``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from drivers.modbus import (
    DeviceModel,
    ModbusBus,
    Point,
    PolledDevice,
    RtuSettings,
    TcpSettings,
    known_models,
    load_model,
)
from drivers.types import DeviceStatus, Reading
from hil.rtu_line import RtuLine
from hil.simulator import Simulator
from tests.fixtures.tasks import running

pytestmark = pytest.mark.integration

EFM = load_model("efm-ref")
ACREL = load_model("acrel-asj10l-ld1a")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Reading | DeviceStatus] = []

    def __call__(self, event: Reading | DeviceStatus) -> None:
        self.events.append(event)

    def polls(self, device: str, point: str = "residual_current") -> list[float]:
        return [
            e.mono
            for e in self.events
            if isinstance(e, Reading) and e.device_id == device and e.point == point
        ]

    def values(self, device: str, point: str) -> list[float]:
        return [
            e.value
            for e in self.events
            if isinstance(e, Reading) and e.device_id == device and e.point == point
        ]

    def online(self, device: str) -> list[bool]:
        return [
            e.online for e in self.events if isinstance(e, DeviceStatus) and e.device_id == device
        ]

    def reasons(self, device: str) -> list[str]:
        return [
            e.reason for e in self.events if isinstance(e, DeviceStatus) and e.device_id == device
        ]

    async def wait_for(self, what: str, condition: Callable[[], bool], within: float = 5) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {within} s; last: {self.events[-3:]}")
            await asyncio.sleep(0.01)


async def test_live_devices_keep_answering_with_one_dead_on_the_bus() -> None:
    recorder = Recorder()
    async with RtuLine(dict.fromkeys(range(1, 12), EFM), baudrate=9600) as line:
        line.set_fault(11, "silent")
        devices = [PolledDevice(f"m{a}", EFM, a, 0.2) for a in range(1, 12)]
        # Room for a loaded test machine (the line answers from this event loop): a live device
        # must never look offline here.
        bus = ModbusBus("rs485", RtuSettings(line.path, 9600, timeout=0.5), devices, recorder)
        async with running(bus.run):
            await recorder.wait_for(
                "the dead device re-probed and every live one polled after it",
                lambda: (
                    line.requests(11) >= 2
                    and all(len(recorder.polls(f"m{a}")) >= 5 for a in range(1, 11))
                ),
                within=60,
            )
        collisions = line.stats.collisions
    for address in range(1, 11):
        assert recorder.online(f"m{address}") == [True]
    assert recorder.online("m11") == [False]
    assert recorder.reasons("m11") == ["no answer within 0.5 s"]
    assert bus.stats.probes >= 1
    assert collisions == 0  # the t3.5 silence was kept before every request


async def test_faults_are_counted_and_the_bus_keeps_going() -> None:
    recorder = Recorder()
    async with RtuLine(dict.fromkeys(range(1, 6), EFM), baudrate=19200) as line:
        line.set_fault(2, "crc")
        line.set_fault(3, "garbage")
        line.set_fault(4, "exception", code=4)
        line.set_fault(5, "slow", delay=0.05)  # late, but within the master's timeout
        devices = [PolledDevice(f"m{a}", EFM, a, 0.2) for a in range(1, 6)]
        # A timeout with room for a loaded test machine: the line answers from this process's
        # event loop, and a healthy device must never look offline here.
        bus = ModbusBus("rs485", RtuSettings(line.path, 19200, timeout=0.5), devices, recorder)
        async with running(bus.run):
            await recorder.wait_for(
                "three devices offline",
                lambda: all(recorder.online(f"m{a}") == [False] for a in range(2, 5)),
                within=30,
            )
            healthy_before = len(recorder.polls("m1"))
            await recorder.wait_for(
                "the healthy device polled on while the others fail",
                lambda: len(recorder.polls("m1")) - healthy_before >= 4,
                within=30,
            )
            for address in range(2, 6):
                line.set_fault(address, "none")
            await recorder.wait_for(
                "all back",
                lambda: all(recorder.online(f"m{a}")[-1:] == [True] for a in range(2, 6)),
                within=60,
            )
    assert recorder.online("m1") == [True]
    assert recorder.online("m5") == [True]  # slow within the timeout is not a failure
    assert recorder.reasons("m4")[0] == "exception 4 (server device failure)"
    # A CRC error is named, not just "no answer", and counted per bus.
    assert recorder.reasons("m2")[0].startswith("no valid answer within 0.5 s (CRC error")
    assert bus.stats.bad_frames >= 1
    assert bus.stats.exceptions >= 1
    assert bus.stats.timeouts >= 2  # a CRC error and garbage both end as timeouts
    assert bus.stats.offline_events == 3
    assert bus.stats.online_events == 3


async def test_an_answer_later_than_the_timeout_disturbs_the_line_but_never_stalls_it() -> None:
    recorder = Recorder()
    async with RtuLine({1: EFM, 2: EFM}, baudrate=19200) as line:
        line.set_fault(2, "slow", delay=0.3)
        devices = [PolledDevice("m1", EFM, 1, 0.2), PolledDevice("late", EFM, 2, 0.2)]
        bus = ModbusBus("rs485", RtuSettings(line.path, 19200, timeout=0.1), devices, recorder)
        async with running(bus.run):
            # A late answer still occupies the wire and garbles requests sent over it, as on
            # a real RS-485 bus; the master cannot hear it coming. RTU has no transaction id,
            # so a late answer landing while the same device is asked again passes for the
            # answer. What the scheduler guarantees is that the bus keeps going.
            await recorder.wait_for(
                "the late device offline, a collision and polls of the other",
                lambda: (
                    recorder.online("late")[:1] == [False]
                    and line.stats.collisions >= 1
                    and len(recorder.polls("m1")) >= 3
                ),
                within=30,
            )
            line.set_fault(2, "none")
            await recorder.wait_for("late back", lambda: recorder.online("late")[-1], within=60)
            await recorder.wait_for("m1 polled", lambda: recorder.online("m1")[-1], within=30)
            settled = len(recorder.polls("m1"))
            await recorder.wait_for(
                "polls after the line settled",
                lambda: len(recorder.polls("m1")) - settled >= 4,
                within=30,
            )


async def test_stuck_values_are_read_as_they_are() -> None:
    recorder = Recorder()
    async with RtuLine({1: EFM}, baudrate=19200) as line:
        bus = ModbusBus(
            "rs485", RtuSettings(line.path, 19200), [PolledDevice("m", EFM, 1, 0.05)], recorder
        )
        line.set_fault(1, "stuck")
        line.set(1, "residual_current", 450)
        async with running(bus.run):
            await recorder.wait_for("polls", lambda: len(recorder.polls("m")) >= 3)
            assert set(recorder.values("m", "residual_current")) == {120.0}
            line.set_fault(1, "none")
            await recorder.wait_for(
                "the new value", lambda: recorder.values("m", "residual_current")[-1] == 450.0
            )


async def test_the_fast_lane_reads_critical_points_between_full_polls() -> None:
    recorder = Recorder()
    async with RtuLine({1: EFM, 2: EFM}, baudrate=19200) as line:
        devices = [
            PolledDevice("watched", EFM, 1, 1.0, fast_interval=0.1),
            PolledDevice("plain", EFM, 2, 1.0),
        ]
        bus = ModbusBus("rs485", RtuSettings(line.path, 19200), devices, recorder)
        async with running(bus.run):
            await recorder.wait_for(
                "fast-lane polls",
                lambda: len(recorder.polls("watched", "alarm_bits")) >= 6,
                within=30,
            )
    fast_reads = len(recorder.polls("watched", "alarm_bits"))
    assert len(recorder.polls("watched", "temperature_1")) == fast_reads
    # Non-critical points come with full polls only, so less often; the plain device has no
    # fast lane at all.
    assert 1 <= len(recorder.polls("watched", "voltage_a")) < fast_reads
    assert len(recorder.polls("plain", "alarm_bits")) == len(recorder.polls("plain", "voltage_a"))


async def test_intervals_change_at_run_time() -> None:
    recorder = Recorder()
    async with RtuLine({1: EFM}, baudrate=19200) as line:
        bus = ModbusBus(
            "rs485", RtuSettings(line.path, 19200), [PolledDevice("m", EFM, 1, 60.0)], recorder
        )
        async with running(bus.run):
            await recorder.wait_for("first poll", lambda: len(recorder.polls("m")) == 1)
            # Storm mode: a shorter interval applies at once, not after the 60 s slot.
            bus.set_interval("m", 0.05)
            assert bus.intervals("m") == (0.05, None)
            await recorder.wait_for("storm polls", lambda: len(recorder.polls("m")) >= 4)
            bus.set_interval("m", None)
            assert bus.intervals("m") == (60.0, None)
            # A fast lane switched on at run time reads the critical points only.
            settled = len(recorder.polls("m", "voltage_a"))
            bus.set_interval("m", 0.05, lane="fast")
            assert bus.intervals("m") == (60.0, 0.05)
            await recorder.wait_for(
                "fast-lane polls", lambda: len(recorder.polls("m", "alarm_bits")) - settled >= 4
            )
    # Back on its 60 s interval, the device got no full poll after the fast lane came.
    assert len(recorder.polls("m", "voltage_a")) <= settled + 1


async def test_sparse_maps_are_read_in_the_fewest_requests() -> None:
    gappy = DeviceModel(
        "test-gappy",
        "t",
        "holding",
        (Point("a", 0, "u16"), Point("b", 6, "u16"), Point("c", 40, "u32")),
    )
    recorder = Recorder()
    async with RtuLine({1: gappy, 2: ACREL}, baudrate=19200) as line:
        bus = ModbusBus(
            "rs485",
            RtuSettings(line.path, 19200),
            [PolledDevice("g", gappy, 1, 0.5), PolledDevice("acrel", ACREL, 2, 0.5)],
            recorder,
        )
        async with running(bus.run):
            await recorder.wait_for("a poll of each", lambda: bool(recorder.polls("g", "c")))
            await recorder.wait_for("acrel", lambda: bool(recorder.polls("acrel")))
    # 'a' and 'b' share a read across their 5-register gap; 'c' is too far: 2 reads. The
    # Acrel relay forbids reading through gaps (max_gap 0): its 5 blocks are 5 reads.
    assert line.requests(1) == 2 * len(recorder.polls("g", "c"))
    assert line.requests(2) == 5 * len(recorder.polls("acrel"))
    assert recorder.online("acrel") == [True]


async def test_tilt_and_smoke_models_on_one_line() -> None:
    tilt, smoke = load_model("witmotion-wt901c485"), load_model("system-sensor-faast")
    recorder = Recorder()
    async with RtuLine({0x50: tilt, 3: smoke}, baudrate=9600) as line:
        line.set(0x50, "roll", 0.229)
        line.set(3, "obscuration", 0.25)
        line.set(3, "relay_status", 0b1001)  # alert + fire1
        devices = [
            PolledDevice("tilt", tilt, 0x50, 0.2, gauge_length=1.0),
            PolledDevice("smoke", smoke, 3, 0.2),
        ]
        bus = ModbusBus("rs485", RtuSettings(line.path, 9600), devices, recorder)
        async with running(bus.run):
            await recorder.wait_for("both", lambda: bool(recorder.polls("smoke", "obscuration")))
            await recorder.wait_for("tilt", lambda: bool(recorder.polls("tilt", "roll")))
    assert recorder.values("tilt", "roll")[0] == pytest.approx(0.229, abs=0.006)
    assert recorder.values("tilt", "roll_displacement")[0] == pytest.approx(4.0, abs=0.1)
    assert recorder.values("smoke", "obscuration")[0] == pytest.approx(0.25)
    assert recorder.values("smoke", "relay_status")[0] == 9.0
    with pytest.raises(ValueError, match="gauge_length needs a tilt model"):
        PolledDevice("x", EFM, 1, 1.0, gauge_length=1.0)


@pytest.mark.parametrize("name", known_models())
async def test_every_shipped_model_is_read_whole_from_the_pymodbus_simulator(name: str) -> None:
    # An independent Modbus implementation on the far end: the master's frames and the read
    # plans (gaps read through included) must suit it too.
    model = load_model(name)
    recorder = Recorder()
    async with Simulator(model=model, tcp=("127.0.0.1", 0), tcp_devices=[7]) as sim:
        bus = ModbusBus(
            "lan",
            TcpSettings("127.0.0.1", sim.tcp_port, 0.5),
            [PolledDevice("d", model, 7, 0.2)],
            recorder,
        )
        async with running(bus.run):
            await recorder.wait_for("a poll", lambda: len(recorder.events) > len(model.points))
    latest = {e.point: e.value for e in recorder.events if isinstance(e, Reading)}
    assert latest == pytest.approx({p.name: p.typical for p in model.points}, rel=1e-6)
    assert recorder.online("d") == [True]
