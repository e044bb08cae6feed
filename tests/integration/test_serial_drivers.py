"""UART sensor drivers against their simulators over real pseudo-terminals, and PIR on
gpiozero's mock pins."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.ld2410.codec import CALIBRATED, CALIBRATING
from drivers.ld2410.driver import Ld2410Radar
from drivers.pir import PirSensor
from drivers.types import DeviceStatus, Reading
from drivers.witmotion import codec as wit
from drivers.witmotion.driver import WitMotionSensor
from hil.serial_sim import Ld2410Sim, WitMotionSim
from tests.fixtures.tasks import running

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self) -> None:
        self.events: list[Reading | DeviceStatus] = []

    def __call__(self, event: Reading | DeviceStatus) -> None:
        self.events.append(event)

    def values(self, point: str) -> list[float]:
        return [e.value for e in self.events if isinstance(e, Reading) and e.point == point]

    def statuses(self) -> list[DeviceStatus]:
        return [e for e in self.events if isinstance(e, DeviceStatus)]

    async def wait_for(self, what: str, condition: Callable[[], bool], within: float = 5) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {within} s; last: {self.events[-3:]}")
            await asyncio.sleep(0.01)


async def test_witmotion_angles_and_displacement_over_a_pty() -> None:
    recorder = Recorder()
    async with WitMotionSim(rate=20) as sim:
        sim.set_angles(0.229, -0.1, 12.0)
        sensor = WitMotionSensor("tilt", sim.path, recorder, report_interval=0.2, gauge_length=1.0)
        async with running(sensor.run):
            await recorder.wait_for("readings", lambda: len(recorder.values("roll")) >= 3)
    assert recorder.values("roll")[-1] == pytest.approx(0.229, abs=0.006)
    assert recorder.values("pitch")[-1] == pytest.approx(-0.1, abs=0.006)
    assert recorder.values("roll_displacement")[-1] == pytest.approx(4.0, abs=0.1)
    assert "yaw_displacement" not in {e.point for e in recorder.events if isinstance(e, Reading)}
    assert [s.online for s in recorder.statuses()] == [True]
    # 20 frames a second, reported at most every 0.2 s: the rest are counted, not sent.
    assert sensor.stats.suppressed >= sensor.stats.frames // 2


async def test_witmotion_bad_checksums_garbage_and_silence() -> None:
    recorder = Recorder()
    async with WitMotionSim(rate=20, seed=1) as sim:
        sensor = WitMotionSensor("tilt", sim.path, recorder, report_interval=0, silence=0.5)
        async with running(sensor.run):
            await recorder.wait_for("online", lambda: bool(recorder.statuses()))
            sim.set_fault("garbage")
            before = sensor.stats.frames
            await asyncio.sleep(0.5)
            # Garbage between frames: every frame still found, the noise dropped and counted.
            assert sensor.stats.frames - before >= 5
            assert sensor.stats.dropped_bytes > 0
            sim.set_fault("checksum")
            await recorder.wait_for("offline", lambda: recorder.statuses()[-1].online is False)
            assert "no valid frame" in recorder.statuses()[-1].reason
            assert sensor.stats.bad_frames >= 5
            sim.set_fault("silent")
            await asyncio.sleep(0.7)
            sim.set_fault("none")
            await recorder.wait_for("online again", lambda: recorder.statuses()[-1].online)
    assert [s.online for s in recorder.statuses()] == [True, False, True]


async def test_witmotion_over_a_socket_url() -> None:
    recorder = Recorder()
    frame = wit.encode(wit.AngleFrame.from_degrees(1.0, 2.0, 3.0))

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(50):
                writer.write(frame)
                await writer.drain()
                await asyncio.sleep(0.02)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sensor = WitMotionSensor("tilt", f"socket://127.0.0.1:{port}", recorder)
        async with running(sensor.run):
            await recorder.wait_for("a reading", lambda: bool(recorder.values("pitch")))
    finally:
        server.close()
        await server.wait_closed()
    assert recorder.values("pitch")[0] == pytest.approx(2.0, abs=0.006)


async def test_a_port_that_cannot_be_opened_is_offline_once_and_retried() -> None:
    recorder = Recorder()
    sensor = WitMotionSensor("tilt", "/nonexistent/ttyUSB9", recorder)
    async with running(sensor.run):
        await asyncio.sleep(1.2)
    assert [s.online for s in recorder.statuses()] == [False]
    assert "cannot open /nonexistent/ttyUSB9" in recorder.statuses()[0].reason
    with pytest.raises(ValueError, match="gauge_length"):
        WitMotionSensor("tilt", "/dev/null", recorder, gauge_length=-1)


async def test_ld2410_is_configured_then_reports_presence_changes_at_once() -> None:
    recorder = Recorder()
    async with Ld2410Sim(rate=20) as sim:
        sim.set_target(3, 120, 95)
        radar = Ld2410Radar("room", sim.path, recorder, report_interval=5.0)
        async with running(radar.run):
            await recorder.wait_for("presence", lambda: recorder.values("presence") == [1.0])
            await recorder.wait_for("configured", lambda: radar.configured)
            assert not sim.engineering  # switched to basic frames at start-up
            assert not sim.config_mode
            changed = time.monotonic()
            sim.set_target(0)
            await recorder.wait_for("absence", lambda: recorder.values("presence")[-1] == 0.0)
            # Reported on the next frame, not after the 5 s report interval.
            assert time.monotonic() - changed < 1.0
    assert recorder.values("moving_distance")[0] == 120.0
    assert recorder.values("target_state") == [3.0, 0.0]


async def test_ld2410_calibrating_is_a_working_radar_that_reports_no_presence() -> None:
    recorder = Recorder()
    async with Ld2410Sim(rate=20) as sim:
        sim.set_target(3, 120, 95)
        radar = Ld2410Radar("room", sim.path, recorder, report_interval=0.2, silence=1.0)
        async with running(radar.run):
            await recorder.wait_for("presence", lambda: recorder.values("presence") == [1.0])
            sim.set_target(CALIBRATING)
            await recorder.wait_for(
                "calibrating", lambda: float(CALIBRATING) in recorder.values("target_state")
            )
            # Three times the silence window of calibration frames: still online, no verdict.
            seen = len(recorder.values("target_state"))
            await recorder.wait_for(
                "more calibration frames",
                lambda: len(recorder.values("target_state")) >= seen + 10,
                within=10,
            )
            sim.set_target(CALIBRATED)
            await recorder.wait_for(
                "calibrated", lambda: float(CALIBRATED) in recorder.values("target_state")
            )
            sim.set_target(0)
            await recorder.wait_for("absence", lambda: recorder.values("presence")[-1] == 0.0)
    # Presence was never claimed either way while the radar calibrated.
    assert recorder.values("presence") == [1.0, 0.0]
    assert [s.online for s in recorder.statuses()].count(False) == 0
    assert radar.stats.bad_frames == 0


async def test_ld2410_flood_costs_decoding_only() -> None:
    recorder = Recorder()
    async with Ld2410Sim(rate=20, flood_burst=40) as sim:
        sim.set_target(1, 200)
        sim.set_fault("flood")
        radar = Ld2410Radar("room", sim.path, recorder, report_interval=0.5)
        async with running(radar.run):
            await asyncio.sleep(1.2)
    assert radar.stats.frames >= 200
    # Presence never changed: at most one report per 0.5 s, 7 readings each.
    assert len(recorder.values("presence")) <= 4
    assert radar.stats.suppressed >= radar.stats.frames - 4 - 3  # reports, start-up ACKs


async def test_ld2410_at_the_wrong_baud_rate_and_without_acks() -> None:
    recorder = Recorder()
    async with Ld2410Sim(rate=20, seed=2) as sim:
        sim.set_fault("wrong-baud")
        radar = Ld2410Radar("room", sim.path, recorder, silence=0.6)
        async with running(radar.run):
            await recorder.wait_for("offline", lambda: bool(recorder.statuses()), within=3)
            status = recorder.statuses()[0]
            assert status.online is False
            assert "wrong baud rate?" in status.reason
            assert not radar.configured
            sim.set_fault("no-ack")
            sim.set_target(2, 0, 80)
            await recorder.wait_for("frames", lambda: bool(recorder.values("presence")), within=3)
    assert not radar.configured
    assert recorder.values("still_distance")[-1] == 80.0


async def test_pir_edges_become_presence_readings() -> None:
    recorder = Recorder()
    factory = MockFactory()
    sensor = PirSensor("hall", 17, recorder, pin_factory=factory)
    pin = factory.pin(17)
    async with running(sensor.run):
        await recorder.wait_for("initial state", lambda: recorder.values("presence") == [0.0])
        pin.drive_high()
        await recorder.wait_for("motion", lambda: recorder.values("presence")[-1] == 1.0)
        pin.drive_low()
        await recorder.wait_for("no motion", lambda: recorder.values("presence")[-1] == 0.0)
    assert recorder.values("presence") == [0.0, 1.0, 0.0]
    assert sensor.edges == 2
    with pytest.raises(ValueError, match="BCM"):
        PirSensor("hall", 40, recorder, pin_factory=factory)
