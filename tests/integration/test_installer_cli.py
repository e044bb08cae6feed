"""``edge scan`` and ``edge read`` as an installer runs them: the real command in its own
process, against the line-timed RTU simulator on a pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import yaml

from hil.rtu_line import RtuLine
from hil.serial_sim import WitMotionSim

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"


async def edge(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_scan_lists_what_answers_and_at_which_baud_rate() -> None:
    async with RtuLine(
        {2: "efm-ref", 5: "acrel-asj10l-ld1a", 9: "efm-ref"}, baudrate=19200
    ) as line:
        line.set_fault(9, "exception", code=2)
        status, out, err = await edge(
            "scan", line.path, "--addresses", "1-10", "--bauds", "9600,19200", "--timeout", "60ms"
        )
    assert status == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "3 answered" in lines[0]
    assert lines[1:] == [
        "address 2 @ 19200 baud: answers; looks like efm-ref",
        # The relay refuses reads across its gaps, so efm-ref's 14-register read fails there.
        "address 5 @ 19200 baud: answers; looks like acrel-asj10l-ld1a",
        "address 9 @ 19200 baud: exception 2 (illegal data address)",
    ]
    assert "at 9600, 19200 baud: 3 answered" in lines[0]  # none at the wrong speed
    assert "20/20 done" in err  # the progress bar reached the end


async def test_scan_of_an_unopenable_port_says_why() -> None:
    status, _, err = await edge("scan", "/nonexistent/ttyUSB7", "--addresses", "1")
    assert status == 1
    assert "scan: cannot open modbus-rtu /nonexistent/ttyUSB7 9600 N1: " in err
    assert "No such file or directory" in err, "the reason, not only the failure"
    assert "the port does not exist: plug in the adapter" in err
    status, _, err = await edge("scan", "tcp://127.0.0.1:1", "--addresses", "1")
    assert status == 1
    assert "scan: cannot open modbus-tcp 127.0.0.1:1: Connection refused" in err


async def test_scan_of_a_file_this_user_may_not_open_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root opens any file")
    leader, follower = os.openpty()
    try:
        link = tmp_path / "ttyUSB3"
        link.symlink_to(os.ttyname(follower))
        os.chmod(os.ttyname(follower), 0)
        status, _, err = await edge("scan", str(link), "--addresses", "1")
    finally:
        os.close(leader)
        os.close(follower)
    assert status == 1
    assert "Permission denied" in err
    assert "dialout" in err


async def test_scan_reports_a_unit_whose_answers_fail_their_crc() -> None:
    async with RtuLine({2: "efm-ref", 4: "efm-ref"}, baudrate=9600) as line:
        line.set_fault(4, "crc")
        status, out, err = await edge("scan", line.path, "--addresses", "1-5", "--timeout", "80ms")
    assert status == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "1 answered, 1 only with CRC errors" in lines[0]
    assert lines[1] == "address 2 @ 9600 baud: answers; looks like efm-ref"
    assert lines[2].startswith("address 4 @ 9600 baud: no valid answer within 0.08 s (CRC error")
    assert "check the baud rate and parity" in lines[2]


async def test_scan_finding_only_garbled_units_fails() -> None:
    async with RtuLine({4: "efm-ref"}, baudrate=9600) as line:
        line.set_fault(4, "crc")
        status, out, _ = await edge("scan", line.path, "--addresses", "3-5", "--timeout", "80ms")
    assert status == 1, "nothing usable answered"
    assert "0 answered, 1 only with CRC errors" in out


async def test_read_prints_every_point_with_its_unit(tmp_path: Path) -> None:
    async with RtuLine({1: "efm-ref", 2: "efm-ref"}, baudrate=9600) as line:
        line.set(1, "residual_current", 350)
        line.set(1, "alarm_bits", 0b1)
        line.set_fault(2, "silent")
        site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
        site["buses"][1]["port"] = line.path
        site["devices"][1].update(bus="rs485-1", address=2)
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
        status, out, err = await edge("read", "efm-workshop-201", "--config", str(path))
        silent_status, _, silent_err = await edge(
            "read", "efm-restaurant-102", "--config", str(path), "--timeout", "3s"
        )
        unknown_status, _, unknown_err = await edge("read", "nope", "--config", str(path))
    assert status == 0, err
    assert out.splitlines()[0] == "efm-workshop-201 (efm-ref on rs485-1)"
    table = [" ".join(line.split()) for line in out.splitlines()]
    assert "residual_current 350 mA" in table
    assert "temperature_1 32 °C" in table
    assert "voltage_a 228.5 V" in table
    assert "alarm_bits 1 (residual_current)" in table
    assert len(table) == 1 + 14
    assert silent_status == 1
    assert "no answer within 0.3 s" in silent_err
    assert unknown_status == 2
    assert "no device 'nope'" in unknown_err


async def test_read_a_uart_tilt_sensor(tmp_path: Path) -> None:
    async with WitMotionSim(rate=10) as tilt:
        tilt.set_angles(-0.458, 0.1, 45.0)
        site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
        site["buses"].append({"id": "tilt-port", "kind": "serial", "port": tilt.path})
        site["devices"].append(
            {
                "id": "tilt-1",
                "model": "witmotion-uart",
                "bus": "tilt-port",
                "gauge_length": 1.0,
                "location": site["devices"][0]["location"],
            }
        )
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
        status, out, err = await edge("read", "tilt-1", "--config", str(path))
    assert status == 0, err
    table = [" ".join(line.split()) for line in out.splitlines()]
    assert table[0] == "tilt-1 (witmotion-uart on tilt-port)"
    assert "roll -0.4559 °" in table  # -0.458 to the sensor's 0.0055-degree step
    assert "roll_displacement -7.96 mm" in table
    assert "yaw 45 °" in table


@pytest.mark.parametrize(
    "port", ["spy://127.0.0.1:1?file={victim}", "rfc2217://127.0.0.1:1?timeout=4", "/dev/mem"]
)
async def test_scan_and_read_refuse_what_is_not_a_serial_port(tmp_path: Path, port: str) -> None:
    victim = tmp_path / "outbox.sqlite"
    victim.write_bytes(b"records not sent yet")
    port = port.format(victim=victim)
    status, _, err = await edge("scan", port, "--addresses", "1")
    assert status == 2
    assert "is not a serial port" in err
    assert "/dev/serial/by-id/NAME" in err, "the message names the forms that are ports"
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["buses"][1]["port"] = port
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
    status, _, err = await edge("read", "efm-workshop-201", "--config", str(path))
    assert status == 2
    assert "buses[1].port" in err
    assert "is not a serial port" in err
    assert victim.read_bytes() == b"records not sent yet"


async def test_scan_says_which_frames_failed_their_crc_and_what_that_means() -> None:
    async with RtuLine({3: "efm-ref"}, baudrate=9600) as line:
        line.set_fault(3, "crc")
        status, _, err = await edge("scan", line.path, "--addresses", "3", "--timeout", "100ms")
    assert status == 1  # nothing answered cleanly
    assert "at 9600 baud failed their CRC check" in err
    assert "the A/B wires" in err


async def test_scan_of_a_busy_port_names_what_holds_it() -> None:
    serial = pytest.importorskip("serial")
    async with RtuLine({1: "efm-ref"}, baudrate=9600) as line:
        holder = serial.Serial(line.path, exclusive=True)
        try:
            status, _, err = await edge("scan", line.path, "--addresses", "1")
        finally:
            holder.close()
    assert status == 1
    assert "the port is busy: another program holds it" in err


async def test_scan_and_read_of_a_missing_port_say_it_does_not_exist(tmp_path: Path) -> None:
    status, _, err = await edge("scan", "/dev/ttyUSB97", "--addresses", "1")
    assert status == 1
    assert "No such file or directory" in err
    assert "the port does not exist: plug in the adapter" in err
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["buses"][1]["port"] = "/dev/ttyUSB97"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
    status, _, err = await edge(
        "read", "efm-workshop-201", "--config", str(path), "--timeout", "3s"
    )
    assert status == 1
    assert "the port does not exist: plug in the adapter" in err
