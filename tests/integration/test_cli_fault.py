"""``edge run`` with a site file it cannot use: the last good config runs, or the gateway sounds
a fault and says what is wrong; never a silent restart loop (a real process each time)."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge import lastgood
from edge.atomic import digest_of
from edge.schemas import validate_message
from hil.simulator import Simulator
from tests.fixtures.broker import Collector, Mosquitto, collect, free_port
from tests.integration.site import site_dict, site_for, write_site
from tests.integration.test_cli import EDGE
from tests.integration.test_commands import ack_for, command, send

pytestmark = pytest.mark.integration

#: What systemd is told when there is no config to run.
FAULT_STATUS = b"STATUS=FAULT: no usable config"


def config_invalid(platform: Collector) -> list[dict[str, Any]]:
    found = [e for e in platform.on("/events") if e["kind"] == "config-invalid"]
    for event in found:
        validate_message(event)
    return found


@asynccontextmanager
async def edge_run(
    path: Path, log: Path, *, notify: Path | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``edge run --config path`` until the block ends; then SIGTERM, which must end it."""
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *EDGE, "run", "--config", str(path), env=env, stderr=out
        )
    try:
        yield process
        assert process.returncode is None, f"edge run ended:\n{_text(log)}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0, _text(log)


def _text(log: Path) -> str:
    return log.read_text()


async def datagram(sock: socket.socket, seconds: float) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), seconds)


def notify_socket(tmp_path: Path) -> tuple[socket.socket, Path]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock, path


async def test_a_site_file_that_does_not_validate_and_no_last_good_is_a_fault_not_a_loop(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    site = site_dict(tmp_path, broker_url=mosquitto.url, tcp_port=1, rtu_link="x")
    site["devices"][0]["bus"] = "no-such-bus"
    path = write_site(tmp_path, site)
    original = path.read_bytes()
    sock, notify = notify_socket(tmp_path)
    with sock:
        async with (
            collect(mosquitto, "district/v1/#") as platform,
            edge_run(path, tmp_path / "gateway.log", notify=notify),
        ):
            # systemd hears READY, with the fault as the status: it does not restart the
            # process in a loop, and `systemctl status` shows what is wrong.
            ready = await datagram(sock, 30)
            assert ready.split(b"\n")[0] == b"READY=1", ready
            assert FAULT_STATUS in ready
            # The gateway, uplink and buffer sections are usable: the platform is told.
            await platform.wait_for(lambda c: len(config_invalid(c)) == 1, 20)
            event = config_invalid(platform)[0]
            assert event["running"] == "fault"
            assert any("devices[0].bus" in p and "no-such-bus" in p for p in event["problems"])
            assert any("no last good config kept" in p for p in event["problems"])
            assert event["problem_count"] == len(event["problems"])
            assert event["buzzer"] == "fault pattern on GPIO 17"
            await send(mosquitto, command("s-1", "get-status", {}))
            status = (await ack_for(platform, "s-1"))["data"]
            assert status["mode"] == "fault"
            assert status["problems"] == event["problems"]
            # Nothing was polled: no telemetry, no device state.
            assert platform.on("/telemetry") == []
    log = (tmp_path / "gateway.log").read_text()
    assert "no usable config: fault mode" in log
    assert path.read_bytes() == original  # the installer's file is theirs to fix


async def test_a_site_file_that_does_not_parse_sounds_the_fault_on_the_default_buzzer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("gateway: [\n  id: gw-demo-0001\n")
    sock, notify = notify_socket(tmp_path)
    with sock:
        async with edge_run(path, tmp_path / "gateway.log", notify=notify):
            ready = await datagram(sock, 30)
            assert FAULT_STATUS in ready
    log = (tmp_path / "gateway.log").read_text()
    assert 'buzzer="GPIO 17"' in log
    assert "YAML syntax error" in log
    assert "the platform cannot be told" in log


@asynccontextmanager
async def example_site(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[dict[str, Any]]:
    async with Simulator(
        tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
    ) as sim:
        yield site_for(sim, tmp_path, broker_url=mosquitto.url)


BREAKAGES: dict[str, Callable[[Path], object]] = {
    "does not parse": lambda p: p.write_text(p.read_text()[:-40] + "\n  - [unclosed\n"),
    "does not validate": lambda p: p.write_text(p.read_text().replace("modbus-tcp", "modbus-x")),
    "is missing": lambda p: p.unlink(),
    "is not UTF-8": lambda p: p.write_bytes(b"\xff\xfe" + p.read_bytes()),
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
async def test_an_unusable_site_file_runs_the_last_good_config_and_says_so(
    tmp_path: Path, mosquitto: Mosquitto, breakage: str
) -> None:
    async with example_site(tmp_path, mosquitto) as site:
        path = write_site(tmp_path, site)
        good = path.read_bytes()
        good_hash = lastgood.save(path, good)
        assert good_hash == digest_of(good)
        BREAKAGES[breakage](path)
        sock, notify = notify_socket(tmp_path)
        with sock:
            async with (
                collect(mosquitto, "district/v1/#") as platform,
                edge_run(path, tmp_path / "gateway.log", notify=notify),
            ):
                ready = await datagram(sock, 30)
                assert ready.split(b"\n")[0] == b"READY=1", ready
                assert b"running on the LAST GOOD config: the site file is unusable" in ready
                await platform.wait_for(lambda c: len(config_invalid(c)) == 1, 30)
                event = config_invalid(platform)[0]
                assert event["running"] == "last-good"
                assert event["config_hash"] == good_hash
                assert event["problems"], event
                # It runs: telemetry comes, and the platform sees which config runs.
                await platform.wait_for(lambda c: len(c.readings()) > 0, 20)
                online = [s for s in platform.on("/status") if s["state"] == "online"]
                assert online[-1]["config_hash"] == good_hash
    assert "running the last good config" in (tmp_path / "gateway.log").read_text()


DAMAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "cut short": (lambda p: p.write_bytes(p.read_bytes()[:50]), "is corrupt"),
    "edited": (
        lambda p: p.write_text(p.read_text().replace("gw-demo-0001", "gw-demo-0002")),
        "does not match its hash",
    ),
    "not an object": (lambda p: p.write_text("[1, 2]"), "is corrupt"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
async def test_a_damaged_last_good_config_is_not_run_and_the_fault_names_it(
    tmp_path: Path, mosquitto: Mosquitto, damage: str
) -> None:
    site = site_dict(tmp_path, broker_url=mosquitto.url, tcp_port=1, rtu_link="x")
    path = write_site(tmp_path, site)
    lastgood.save(path, path.read_bytes())
    spoil, words = DAMAGES[damage]
    spoil(lastgood.path_for(path))
    site["buses"][0]["kind"] = "modbus-x"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    async with (
        collect(mosquitto, "district/v1/#") as platform,
        edge_run(path, tmp_path / "gateway.log"),
    ):
        await platform.wait_for(lambda c: len(config_invalid(c)) == 1, 30)
        event = config_invalid(platform)[0]
        assert event["running"] == "fault"
        assert any(words in p for p in event["problems"]), event["problems"]
        assert any("buses[0]" in p for p in event["problems"]), event["problems"]


async def test_a_config_that_reached_the_platform_is_kept_as_the_last_good_one(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with example_site(tmp_path, mosquitto) as site:
        path = write_site(tmp_path, site)
        kept = lastgood.path_for(path)
        async with (
            collect(mosquitto, "district/v1/#") as platform,
            edge_run(path, tmp_path / "gateway.log"),
        ):
            await platform.wait_for(lambda c: len(c.on("/status")) > 0, 30)
            deadline = asyncio.get_running_loop().time() + 20
            while not kept.exists():
                assert asyncio.get_running_loop().time() < deadline, "no last good config kept"
                await asyncio.sleep(0.1)
    record = json.loads(kept.read_bytes())
    assert record["config_hash"] == digest_of(path.read_bytes())
    assert record["site_yaml"].encode() == path.read_bytes()
    assert lastgood.load(path).digest == record["config_hash"]
    assert kept.stat().st_mode & 0o777 == 0o600  # it may hold broker credentials


async def test_in_fault_mode_the_platform_can_push_a_config_that_proves_itself_or_goes_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with example_site(tmp_path, mosquitto) as site:
        good = yaml.safe_dump(site, sort_keys=False)
        broken = copy.deepcopy(site)
        broken["devices"][0]["bus"] = "no-such-bus"
        path = write_site(tmp_path, broken)
        original = path.read_bytes()
        unreachable = copy.deepcopy(site)
        unreachable["uplink"]["brokers"] = [f"mqtt://127.0.0.1:{free_port()}"]
        unreachable["uplink"]["push_confirm_within"] = "5s"
        async with (
            collect(mosquitto, "district/v1/#") as platform,
            edge_run(path, tmp_path / "gateway.log"),
        ):
            await platform.wait_for(lambda c: len(config_invalid(c)) == 1, 30)
            # A push that cannot reach the platform: tried, then the file goes back and fault
            # mode resumes, saying so.
            # Nothing running bounds what a push changes here: the operations key may not.
            await send(mosquitto, command("ops-1", "push-config", {"site_yaml": good}))
            refused = await ack_for(platform, "ops-1")
            assert refused["result"] == "error"
            assert "needs the engineering key" in refused["error"]
            params = {"site": unreachable}
            await send(mosquitto, command("try-1", "push-config", params, key="engineering"))
            ack = await ack_for(platform, "try-1")
            assert ack["result"] == "ok", ack
            await platform.wait_for(lambda c: len(config_invalid(c)) == 2, 40)
            back = [e for e in platform.on("/events") if e["kind"] == "config-rolled-back"]
            assert [e["command_id"] for e in back] == ["try-1"]
            assert "did not reach the platform within 5 s" in back[0]["reason"]
            assert back[0]["rejected_hash"] == ack["data"]["config_hash"]
            assert path.read_bytes() == original
            again = config_invalid(platform)[1]
            assert again["running"] == "fault"
            assert any("rolled back: did not reach" in p for p in again["problems"])
            # A good push: the gateway runs it, proves it, keeps it.
            await send(
                mosquitto,
                command("try-2", "push-config", {"site_yaml": good}, key="engineering"),
            )
            ack = await ack_for(platform, "try-2")
            assert ack["result"] == "ok", ack
            await platform.wait_for(
                lambda c: any(
                    e["kind"] == "config-applied" and e["command_id"] == "try-2"
                    for e in c.on("/events")
                ),
                40,
            )
            await platform.wait_for(lambda c: len(c.readings()) > 0, 20)
            assert path.read_text() == good
            kept = lastgood.path_for(path)
            deadline = asyncio.get_running_loop().time() + 20
            while not kept.exists():
                assert asyncio.get_running_loop().time() < deadline, "no last good config kept"
                await asyncio.sleep(0.1)
            assert lastgood.load(path).digest == digest_of(good.encode())
