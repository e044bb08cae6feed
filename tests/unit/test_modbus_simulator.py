"""The simulator on its own: register image, silence, writes, pty link, control channel.

Real pymodbus servers and clients, real pseudo-terminals; nothing mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from drivers.modbus.model import encode, load_model
from hil.pty_bridge import PtyBridge
from hil.simulator import Simulator, send_control

EFM = load_model("efm-ref")
LOCALHOST = "127.0.0.1"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(
        tcp=(LOCALHOST, 0), tcp_devices=[1, 2], control=(LOCALHOST, 0)
    ) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = AsyncModbusTcpClient(
        LOCALHOST, port=sim.tcp_port, timeout=0.5, retries=0, reconnect_delay=0
    )
    assert await modbus.connect()
    yield modbus
    modbus.close()


async def read_all(client: AsyncModbusTcpClient, unit: int) -> list[int]:
    answer = await client.read_holding_registers(0, count=14, device_id=unit)
    assert not answer.isError(), answer
    return list(answer.registers)


async def test_units_serve_the_model_encoding_of_their_values(
    sim: Simulator, client: AsyncModbusTcpClient
) -> None:
    assert sim.tcp_port > 0
    sim.set("tcp", 2, "temperature_1", -20.0)
    typical = encode(EFM, {p.name: p.typical for p in EFM.points})
    assert await read_all(client, 1) == [typical[a] for a in range(14)]
    registers = await read_all(client, 2)
    assert registers[1] == 0xFF38
    assert registers[0] == 120
    assert registers[5:8] == [2285, 2291, 2278]


async def test_alarm_bits_follow_the_setpoints(
    sim: Simulator, client: AsyncModbusTcpClient
) -> None:
    assert sim.get("tcp", 1, "alarm_bits") == 0
    sim.set("tcp", 1, "residual_current", 350)
    assert sim.get("tcp", 1, "alarm_bits") == 0b01
    sim.set("tcp", 1, "temperature_3", 75.5)
    sim.set("tcp", 1, "alarm_bits", 0b100000)  # phase loss is set by hand
    assert (await read_all(client, 1))[11] == 0b100011
    sim.set("tcp", 1, "residual_setpoint", 400)
    assert sim.get("tcp", 1, "alarm_bits") == 0b100010


async def test_a_silent_unit_does_not_answer_at_all(
    sim: Simulator, client: AsyncModbusTcpClient
) -> None:
    sim.set_silent("tcp", 2, True)
    assert sim.is_silent("tcp", 2)
    started = time.monotonic()
    with pytest.raises(ModbusIOException, match="No response"):
        await client.read_holding_registers(0, count=14, device_id=2)
    assert time.monotonic() - started >= 0.19
    # The other unit on the same server answers all the while.
    assert (await read_all(client, 1))[0] == 120
    sim.set_silent("tcp", 2, False)
    assert (await read_all(client, 2))[0] == 120
    assert sim.requests("tcp", 2) == 2


async def test_an_address_nobody_serves_gets_no_answer(client: AsyncModbusTcpClient) -> None:
    with pytest.raises(ModbusIOException, match="No response"):
        await client.read_holding_registers(0, count=1, device_id=7)


async def test_the_master_can_write_setpoints_but_not_measurements(
    sim: Simulator, client: AsyncModbusTcpClient
) -> None:
    written = await client.write_register(12, 450, device_id=1)
    assert not written.isError()
    assert sim.get("tcp", 1, "residual_setpoint") == 450
    assert (await read_all(client, 1))[12] == 450
    written = await client.write_registers(12, [500, 855], device_id=2)
    assert not written.isError()
    assert sim.values("tcp", 2)["temperature_setpoint"] == 85.5
    refused = await client.write_register(0, 999, device_id=1)
    assert refused.isError()
    assert refused.exception_code == 2  # illegal data address
    assert sim.get("tcp", 1, "residual_current") == 120
    wrong_table = await client.read_input_registers(0, count=1, device_id=1)
    assert wrong_table.isError()
    assert wrong_table.exception_code == 1  # illegal function: efm-ref has holding registers


async def test_reading_past_the_map_is_an_exception(client: AsyncModbusTcpClient) -> None:
    answer = await client.read_holding_registers(0, count=15, device_id=1)
    assert answer.isError()
    assert answer.exception_code == 2


async def test_set_refuses_what_does_not_exist_or_does_not_fit(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="out of range for u16"):
        sim.set("tcp", 1, "residual_current", 70000)
    with pytest.raises(ValueError, match="no point 'resdual_current'"):
        sim.set("tcp", 1, "resdual_current", 1)
    with pytest.raises(ValueError, match=r"no device at address 3 on the tcp bus \(served: 1,2\)"):
        sim.set("tcp", 3, "residual_current", 1)
    with pytest.raises(ValueError, match="serves no rtu bus"):
        sim.set("rtu", 1, "residual_current", 1)
    assert sim.get("tcp", 1, "residual_current") == 120


async def test_noise_varies_measurements_only_and_stays_in_bounds() -> None:
    async with Simulator(tcp=(LOCALHOST, 0), noise=0.05, seed=3) as sim:
        modbus = AsyncModbusTcpClient(LOCALHOST, port=sim.tcp_port, timeout=0.5, retries=0)
        assert await modbus.connect()
        try:
            reads = [await read_all(modbus, 1) for _ in range(5)]
        finally:
            modbus.close()
    residuals = [r[0] for r in reads]
    assert len(set(residuals)) > 1
    assert all(114 <= r <= 126 for r in residuals)
    assert {tuple(r[11:14]) for r in reads} == {(0, 300, 700)}


# --- the RTU pseudo-terminal ------------------------------------------------------------------


async def test_pty_bridge_copies_both_ways() -> None:
    bridge = PtyBridge()
    await bridge.start()
    try:
        server = os.open(bridge.server_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        client = os.open(bridge.client_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            for source, target, data in (
                (client, server, b"\x01\x03\x00"),
                (server, client, b"\xff\n\r"),
            ):
                os.write(source, data)
                received = b""
                for _ in range(100):
                    await asyncio.sleep(0.005)
                    try:
                        received += os.read(target, 100)
                    except BlockingIOError:
                        continue
                    if len(received) >= len(data):
                        break
                # Raw mode: no echo, no newline translation.
                assert received == data
        finally:
            os.close(server)
            os.close(client)
    finally:
        bridge.close()


async def test_rtu_is_served_on_a_linked_pty_and_the_link_is_removed(tmp_path: Path) -> None:
    link = tmp_path / "var" / "demo" / "rtu"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "stale-pty")  # left behind by a simulator that was killed
    async with Simulator(rtu_link=link, rtu_devices=[1, 5]) as sim:
        assert sim.rtu_link == link
        assert os.readlink(link) == sim.rtu_device
        assert sim.rtu_device.startswith("/dev/")
        sim.set("rtu", 5, "voltage_b", 199.0)
        serial = AsyncModbusSerialClient(
            str(link), baudrate=9600, timeout=0.5, retries=0, reconnect_delay=0
        )
        assert await serial.connect()
        try:
            answer = await serial.read_holding_registers(5, count=3, device_id=5)
            assert answer.registers == [2285, 1990, 2278]
            sim.set_silent("rtu", 1, True)
            with pytest.raises(ModbusIOException):
                await serial.read_holding_registers(0, count=1, device_id=1)
        finally:
            serial.close()
    assert not link.is_symlink()
    assert not link.exists()


async def test_a_regular_file_at_the_link_path_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "rtu"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="not a symbolic link"):
        async with Simulator(rtu_link=path):
            pass
    assert path.read_text() == "keep me"


# --- the control channel ----------------------------------------------------------------------


async def test_control_commands_and_their_answers(sim: Simulator) -> None:
    port = sim.control_port
    assert await send_control(LOCALHOST, port, {"cmd": "list"}) == {
        "ok": True,
        "model": "efm-ref",
        "buses": {"tcp": [1, 2]},
    }
    ok = await send_control(
        LOCALHOST,
        port,
        {"cmd": "set", "bus": "tcp", "address": 1, "point": "residual_current", "value": 350},
    )
    assert ok == {"ok": True}
    assert sim.get("tcp", 1, "residual_current") == 350
    get = {"cmd": "get", "bus": "tcp", "address": 1, "point": "residual_current"}
    assert await send_control(LOCALHOST, port, get) == {"ok": True, "value": 350.0}
    silent = {"cmd": "silent", "bus": "tcp", "address": 2, "on": True}
    assert await send_control(LOCALHOST, port, silent) == {"ok": True}
    assert sim.is_silent("tcp", 2)
    everything = await send_control(LOCALHOST, port, {"cmd": "get", "bus": "tcp", "address": 2})
    assert everything["silent"] is True
    assert everything["values"]["temperature_1"] == 32.0


async def test_bad_commands_get_error_answers_on_the_same_connection(sim: Simulator) -> None:
    reader, writer = await asyncio.open_connection(LOCALHOST, sim.control_port)
    set_ = {"cmd": "set", "bus": "tcp", "address": 1, "point": "residual_current"}
    lines = [
        b"{not json\n",
        b"[1, 2]\n",
        b'{"cmd": "reboot"}\n',
        json.dumps({**set_, "value": 350, "point": "nope"}).encode() + b"\n",
        json.dumps({**set_, "value": 350, "address": 9}).encode() + b"\n",
        json.dumps({**set_, "value": 350, "bus": "can"}).encode() + b"\n",
        json.dumps(set_).encode() + b"\n",
        json.dumps({**set_, "value": "350"}).encode() + b"\n",
        json.dumps({**set_, "value": True}).encode() + b"\n",
        json.dumps({**set_, "value": 1e9}).encode() + b"\n",
        json.dumps({"cmd": "silent", "bus": "tcp", "address": 1, "on": "yes"}).encode() + b"\n",
        b"\xff\xfe\n",
        b"\n",
        json.dumps({**set_, "value": 351}).encode() + b"\n",
    ]
    expected_errors = [
        "bad JSON",
        "a command is a JSON object",
        "unknown cmd 'reboot'",
        "no point 'nope'",
        "no device at address 9",
        "unknown bus 'can'",
        "value is missing",
        "value must be a number",
        "value must be a number",
        "out of range",
        "on must be true or false",
        "bad JSON",
    ]
    try:
        writer.write(b"".join(lines))
        await writer.drain()
        for expected in expected_errors:
            answer = json.loads(await asyncio.wait_for(reader.readline(), 2))
            assert answer["ok"] is False
            assert expected in answer["error"]
        # The blank line is skipped; the last, good command still works.
        assert json.loads(await asyncio.wait_for(reader.readline(), 2)) == {"ok": True}
    finally:
        writer.close()
        await writer.wait_closed()
    assert sim.get("tcp", 1, "residual_current") == 351


async def test_an_overlong_line_is_refused_and_the_simulator_keeps_serving(sim: Simulator) -> None:
    reader, writer = await asyncio.open_connection(LOCALHOST, sim.control_port)
    try:
        writer.write(b"x" * 70_000 + b"\n")
        await writer.drain()
        answer = json.loads(await asyncio.wait_for(reader.readline(), 2))
        assert answer == {"ok": False, "error": "command line too long"}
    finally:
        writer.close()
        await writer.wait_closed()
    assert (await send_control(LOCALHOST, sim.control_port, {"cmd": "list"}))["ok"] is True
