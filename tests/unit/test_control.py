"""The control socket on a real Unix socket, served by a real gateway on gpiozero's mock pins."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from drivers import DeviceStatus, Reading
from edge import control as control_module
from edge.config import SiteConfig
from edge.control import (
    MAX_CLIENTS,
    MAX_LINE,
    PROTOCOL,
    ControlClient,
    ControlError,
    ControlServer,
    check_socket_owner,
    prepare_socket_path,
)
from edge.gateway import Gateway
from hil.simulator import Simulator

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
DEADLINE = 30.0


def site(tmp_path: Path) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    data["control"] = {"socket": str(tmp_path / "control.sock")}
    return SiteConfig.model_validate(data)


def reading(device: str, point: str, value: float, unit: str) -> Reading:
    return Reading(device, point, value, unit, time.time(), time.monotonic())


async def until(condition: Any) -> None:
    async with asyncio.timeout(DEADLINE):
        while not condition():  # noqa: ASYNC110 -- a counter of the server, no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Gateway, ControlServer, MockFactory]]:
    pins = MockFactory()
    gateway = Gateway(site(tmp_path), pin_factory=pins)
    server = ControlServer(gateway, tmp_path / "control.sock", group=None)
    task = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.ready.wait(), DEADLINE)
    yield gateway, server, pins
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    gateway.annunciator.close()


async def test_status_has_live_values_units_age_and_alarms(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    gateway, _, _ = served
    client = ControlClient(tmp_path / "control.sock")
    hello = await client.connect()
    assert hello["protocol"] == PROTOCOL
    assert hello["gateway"] == "gw-demo-0001"
    first = await client.request("status")
    assert {d["id"]: d["status"] for d in first["devices"]} == {
        "efm-shop-101": "waiting",
        "efm-restaurant-102": "waiting",
        "efm-workshop-201": "waiting",
    }
    gateway.on_sample(reading("efm-shop-101", "residual_current", 350.0, "mA"))
    gateway.on_sample(DeviceStatus("efm-workshop-201", False, time.time(), "no answer"))
    found = await client.request("status")
    shop = next(d for d in found["devices"] if d["id"] == "efm-shop-101")
    assert shop["status"] == "online"
    assert shop["points"]["residual_current"]["value"] == 350.0
    assert shop["points"]["residual_current"]["unit"] == "mA"
    assert shop["points"]["residual_current"]["age_s"] >= 0
    assert shop["address"] == 1
    assert shop["location"]["room"] == "Shop 101"
    workshop = next(d for d in found["devices"] if d["id"] == "efm-workshop-201")
    assert (workshop["status"], workshop["reason"]) == ("offline", "no answer")
    assert found["buzzer"] == "on"
    assert [(a["device"], a["rule"]) for a in found["alarms"]] == [
        ("efm-shop-101", "residual-current-over-limit")
    ]
    await client.close()


async def test_socket_is_group_readable_only(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    mode = (tmp_path / "control.sock").stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_silence_quiets_the_buzzer(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    gateway, _, _ = served
    gateway.on_sample(reading("efm-shop-101", "residual_current", 350.0, "mA"))
    client = ControlClient(tmp_path / "control.sock")
    assert (await client.request("silence"))["silenced"] == 1
    assert not gateway.annunciator.sounding
    assert (await client.request("status"))["alarms"][0]["silenced"] is True
    await client.close()


async def test_selftest_drives_only_the_output_asked_and_is_refused_during_an_alarm(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    gateway, _, pins = served
    client = ControlClient(tmp_path / "control.sock")
    led, buzzer = pins.pin(27), pins.pin(17)
    led.clear_states()
    buzzer.clear_states()
    result = await client.request("selftest", {"outputs": ["led"], "seconds": 0.05})
    assert result == {"exercised": ["led"]}
    assert [s.state for s in led.states][-2:] == [True, False]
    assert not any(s.state for s in buzzer.states)
    with pytest.raises(ControlError, match="outputs must be"):
        await client.request("selftest", {"outputs": ["siren"]})
    with pytest.raises(ControlError, match="this site has no relay"):
        await client.request("selftest", {"outputs": ["relay"], "seconds": 0.05})
    assert (await client.request("status"))["outputs"] == {
        "buzzer": True,
        "led": True,
        "relay": False,
    }
    with pytest.raises(ControlError, match="seconds must be"):
        await client.request("selftest", {"outputs": ["led"], "seconds": 3600})
    gateway.on_sample(reading("efm-shop-101", "residual_current", 350.0, "mA"))
    with pytest.raises(ControlError, match="an alarm is sounding"):
        await client.request("selftest", {"outputs": ["buzzer"], "seconds": 0.05})
    await client.close()


async def test_scan_is_passive_and_an_address_sweep_is_refused(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    gateway, _, _ = served
    gateway.on_sample(reading("efm-shop-101", "residual_current", 120.0, "mA"))
    client = ControlClient(tmp_path / "control.sock")
    found = await client.request("scan", {"bus": "lan"})
    assert found["mode"] == "passive"
    assert [
        (d["device"], d["address"], d["answers"]) for d in found["buses"]["lan"]["devices"]
    ] == [
        ("efm-shop-101", 1, True),
        ("efm-restaurant-102", 2, False),
    ]
    with pytest.raises(ControlError, match=r"polls bus 'lan' .* needs the bus idle"):
        await client.request("scan", {"bus": "lan", "addresses": [1, 2, 3]})
    with pytest.raises(ControlError, match="no bus 'nowhere'"):
        await client.request("scan", {"bus": "nowhere"})
    await client.close()


async def test_an_idle_bus_is_swept_and_one_sweep_runs_at_a_time(tmp_path: Path) -> None:
    """A bus of the site file no device is on yet: the installer sweeps it for addresses."""
    async with Simulator(tcp=("127.0.0.1", 0), tcp_devices=[1, 2]) as sim:
        data = yaml.safe_load(EXAMPLE.read_text())
        data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
        spare = {"id": "spare", "kind": "modbus-tcp", "host": "127.0.0.1", "port": sim.tcp_port}
        # Address 3 is silent: the sweep waits its whole timeout there, time enough to be seen.
        data["buses"].append({**spare, "timeout": "1s"})
        gateway = Gateway(SiteConfig.model_validate(data), pin_factory=MockFactory())
        server = ControlServer(gateway, tmp_path / "control.sock", group=None)
        task = asyncio.create_task(server.serve())
        await asyncio.wait_for(server.ready.wait(), DEADLINE)
        first = ControlClient(tmp_path / "control.sock")
        second = ControlClient(tmp_path / "control.sock")
        try:
            passive = await first.request("scan")
            assert passive["buses"]["spare"]["idle"] is True
            assert passive["buses"]["lan"]["idle"] is False
            sweep = asyncio.create_task(
                first.request("scan", {"bus": "spare", "addresses": [1, 2, 3]}, within=DEADLINE)
            )
            await until(lambda: bool(control_module._sweeping))
            with pytest.raises(ControlError, match="a sweep of bus 'spare' is already running"):
                await second.request("scan", {"bus": "spare", "addresses": [4]})
            found = await sweep
            assert found["mode"] == "sweep"
            assert [(f["address"], f["models"]) for f in found["found"]] == [
                (1, ["efm-ref"]),
                (2, ["efm-ref"]),
            ]
            for bad in ([], [0], [248], ["1"], [True], list(range(1, 249))):
                with pytest.raises(ControlError, match="addresses must be"):
                    await second.request("scan", {"bus": "spare", "addresses": bad})
            with pytest.raises(ControlError, match="a sweep needs a bus of the site file"):
                await second.request("scan", {"addresses": [1]})
        finally:
            await first.close()
            await second.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            gateway.annunciator.close()


async def test_commissioned_record_becomes_an_event_and_a_foreign_one_is_refused(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    gateway, _, _ = served
    client = ControlClient(tmp_path / "control.sock")
    record = {"gateway": "gw-demo-0001", "by": "Li Wei", "devices": [], "selftest": {}}
    assert await client.request("commissioned", {"record": record}) == {"submitted": True}
    events = [
        body for _stream, body, _at_once in gateway._pending if body.get("kind") == "commissioned"
    ]
    assert len(events) == 1
    assert events[0]["by"] == "Li Wei"
    with pytest.raises(ControlError, match="not 'gw-demo-0001'"):
        await client.request("commissioned", {"record": {**record, "gateway": "gw-other"}})
    with pytest.raises(ControlError, match="reserved"):
        await client.request("commissioned", {"record": {**record, "seq": 5}})
    with pytest.raises(ControlError, match="record must be an object"):
        await client.request("commissioned", {"record": "yes"})
    await client.close()


async def test_bad_requests_get_an_answer_and_the_connection_stays(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    reader, writer = await asyncio.open_unix_connection(tmp_path / "control.sock")
    await reader.readline()
    for line, error in [
        (b"not json\n", "not a JSON line"),
        (b"[1]\n", "a request is a JSON object"),
        (b'{"action": "reboot"}\n', "unknown action 'reboot'"),
        (b'{"v": 2, "action": "status"}\n', "protocol version 2"),
    ]:
        writer.write(line)
        answer = json.loads(await asyncio.wait_for(reader.readline(), DEADLINE))
        assert answer["ok"] is False
        assert error in answer["error"]
    writer.write(b'{"action": "status", "id": 7}\n')
    answer = json.loads(await asyncio.wait_for(reader.readline(), DEADLINE))
    assert (answer["ok"], answer["id"]) == (True, 7)
    writer.close()


async def test_a_client_that_never_reads_is_dropped_and_others_are_served(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    gateway, server, _ = served
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(tmp_path / "control.sock"))
    stuck.setblocking(False)
    request = b'{"action": "status"}\n' * 200
    loop = asyncio.get_running_loop()

    async def flood() -> None:
        # Requests until the server stops taking them: it has dropped this client.
        try:
            while True:
                await loop.sock_sendall(stuck, request)
        except OSError:
            return

    flooding = asyncio.create_task(flood())
    client = ControlClient(tmp_path / "control.sock")
    # Served while the stuck client's answers pile up unread.
    gateway.on_sample(reading("efm-shop-101", "residual_current", 350.0, "mA"))
    assert (await client.request("status"))["buzzer"] == "on"
    await until(lambda: server.dropped >= 1)
    await asyncio.wait_for(flooding, DEADLINE)
    assert server.clients == 1  # the other client only
    assert (await client.request("status"))["buzzer"] == "on"
    await client.close()
    stuck.close()


async def test_a_line_beyond_the_limit_closes_the_connection(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    _, server, _ = served
    reader, writer = await asyncio.open_unix_connection(tmp_path / "control.sock")
    await reader.readline()
    writer.write(b"x" * (MAX_LINE + 10))
    assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
    await until(lambda: server.dropped >= 1)
    writer.close()


async def test_clients_beyond_the_limit_are_told_and_closed(
    served: tuple[Gateway, ControlServer, MockFactory], tmp_path: Path
) -> None:
    clients = [ControlClient(tmp_path / "control.sock") for _ in range(MAX_CLIENTS)]
    for client in clients:
        await client.connect()
    one_more = ControlClient(tmp_path / "control.sock")
    with pytest.raises(ControlError, match="too many clients"):
        await one_more.connect()
    await clients[0].close()
    # A place freed is taken again.
    async with asyncio.timeout(DEADLINE):
        while True:
            try:
                await one_more.connect()
                break
            except ControlError:
                await asyncio.sleep(0.05)
    for client in [*clients[1:], one_more]:
        await client.close()


def test_a_stale_socket_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays; nothing listens: a crashed gateway's socket
    prepare_socket_path(path)
    assert not path.exists()


def test_a_live_socket_or_a_plain_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        prepare_socket_path(path)
    assert path.read_text() == "not a socket"
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(ControlError, match="another gateway answers"):
            prepare_socket_path(path)
        assert path.exists()


def test_a_path_too_long_for_a_socket_is_named(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="longer than a Unix socket path"):
        prepare_socket_path(tmp_path / ("x" * 120))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to another user needs root")
def test_a_socket_of_another_user_is_refused_by_both_ends(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        os.chown(path, 65534, 65534)  # nobody
        with pytest.raises(ControlError, match="owned by uid 65534"):
            check_socket_owner(path)
        with pytest.raises(ControlError, match="a socket of uid 65534"):
            prepare_socket_path(path)
        assert path.exists()


def test_the_client_refuses_what_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "control.sock").write_text("")
    with pytest.raises(ControlError, match="not a socket"):
        check_socket_owner(tmp_path / "control.sock")
    with pytest.raises(ControlError, match="no control socket"):
        check_socket_owner(tmp_path / "missing.sock")


async def test_the_gateway_goes_on_when_the_socket_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "control.sock").write_text("in the way")
    gateway = Gateway(site(tmp_path), pin_factory=MockFactory())
    server = ControlServer(gateway, tmp_path / "control.sock", group=None)
    task = asyncio.create_task(server.serve())
    await asyncio.sleep(0)
    gateway.on_sample(reading("efm-shop-101", "residual_current", 350.0, "mA"))
    assert gateway.annunciator.sounding
    assert not task.done()  # waits; it does not crash-loop the supervisor
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (tmp_path / "control.sock").read_text() == "in the way"
    gateway.annunciator.close()
