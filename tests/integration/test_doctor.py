"""``edge doctor`` against real parts: a Mosquitto that checks passwords, a real pty, real files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from buffer import Outbox
from edge import contract, lastgood
from edge.doctor import Check, run_checks
from tests.fixtures.broker import Mosquitto, MosquittoFactory
from tests.fixtures.certs import write_certificate, write_key
from tests.integration.site import site_dict

pytestmark = pytest.mark.integration

EDGE = [sys.executable, "-m", "edge.cli"]
USER, PASSWORD = "gw-test-0001", "s3cret-for-tests"


@pytest.fixture
def secured_broker(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> Mosquitto:
    """A broker that accepts only USER with PASSWORD."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    password_file = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(password_file), USER, PASSWORD], check=True)
    os.chmod(password_file, 0o600)
    broker = mosquitto_factory(start=False)
    text = broker.config_path.read_text().replace("allow_anonymous true", "allow_anonymous false")
    broker.config_path.write_text(text + f"password_file {password_file}\n")
    broker.start()
    return broker


@pytest.fixture
def tty(tmp_path: Path) -> Iterator[Path]:
    """A real character device standing in for a USB-RS485 adapter: a pty's follower side."""
    leader, follower = os.openpty()
    link = tmp_path / "ttyUSB0"
    link.symlink_to(os.ttyname(follower))
    yield link
    os.close(leader)
    os.close(follower)


def write_site(tmp_path: Path, broker: Mosquitto, port: Path, **uplink: Any) -> Path:
    site = site_dict(tmp_path, broker_url=broker.url, tcp_port=1, rtu_link=port)
    site["buses"] = [b for b in site["buses"] if b["kind"] == "modbus-rtu"]
    site["devices"] = [d for d in site["devices"] if d["bus"] == "rs485-1"]
    site["uplink"].update(uplink)
    path = tmp_path / "etc" / "site.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def test_healthy_gateway_passes(tmp_path: Path, secured_broker: Mosquitto, tty: Path) -> None:
    config = write_site(tmp_path, secured_broker, tty, username=USER, password=PASSWORD)
    checks = by_name(await run_checks(config, user=None, seconds=3))
    # A warning only: the test broker takes the password over plain mqtt://.
    assert checks["config"].level == "warn", checks["config"]
    assert checks["serial rs485-1"].level == "ok", checks["serial rs485-1"]
    broker = checks[f"broker mqtt://127.0.0.1:{secured_broker.port}"]
    assert broker.level == "ok", broker
    assert checks["gpio"].level == "warn", "the example site drives mock pins"
    assert checks["buffer"].level == "ok"
    assert checks["disk"].level in {"ok", "warn"}
    assert checks["clock"].level in {"ok", "warn"}
    assert all(c.level != "fail" for c in checks.values()), checks


async def test_wrong_password_missing_serial_and_expired_certificate_fail_with_fixes(
    tmp_path: Path, secured_broker: Mosquitto
) -> None:
    config = write_site(
        tmp_path, secured_broker, tmp_path / "ttyUSB9", username=USER, password="wrong"
    )
    certs = config.parent / "certs"
    certs.mkdir()
    write_certificate(certs / "client.pem", write_key(certs / "client.key"), days_valid=(-90, -2))
    checks = by_name(await run_checks(config, user=None, seconds=3))

    serial = checks["serial rs485-1"]
    assert serial.level == "fail"
    assert "does not exist" in serial.detail
    assert "/dev/serial/by-id" in serial.fix
    broker = checks[f"broker mqtt://127.0.0.1:{secured_broker.port}"]
    assert broker.level == "fail"
    assert "credentials" in broker.detail
    assert "uplink.password" in broker.fix
    assert checks["certificate client.pem"].level == "fail"
    assert "expired" in checks["certificate client.pem"].detail


async def test_unreachable_broker_and_damaged_buffer(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, tty: Path
) -> None:
    down = mosquitto_factory(start=False)
    config = write_site(tmp_path, down, tty)
    (tmp_path / "outbox.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    checks = by_name(await run_checks(config, user=None, seconds=2))
    broker = checks[f"broker mqtt://127.0.0.1:{down.port}"]
    assert broker.level == "fail"
    assert "not reachable" in broker.detail
    assert "firewall" in broker.fix
    assert checks["buffer"].level == "fail"
    assert "move outbox.sqlite aside" in checks["buffer"].fix


async def test_buffer_waiting_count_is_the_one_edge_buffer_stats_shows(
    tmp_path: Path, tty: Path
) -> None:
    """A real outbox with 40 readings and 2 events: doctor and ``edge buffer stats`` agree."""
    outbox_path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(outbox_path, commit_interval=0.05) as outbox:
        for i in range(2):
            outbox.submit("event", contract.event_body("alarm-raised", time.time(), n=i))
        for i in range(40):
            reading = {"device": "efm-1", "point": "residual_current", "value": float(i)}
            outbox.submit("telemetry", {**reading, "unit": "mA", "ts": time.time()})
        await outbox.flush()
    site = tmp_path / "etc" / "site.yaml"
    site.parent.mkdir()
    data = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1", tcp_port=1, rtu_link=tty)
    site.write_text(yaml.safe_dump(data))
    checks = by_name(await run_checks(site, user=None, seconds=1))
    assert checks["buffer"].level == "ok"
    assert "42 records waiting to be sent (2 events, 40 readings)" in checks["buffer"].detail
    shown = await asyncio.create_subprocess_exec(
        *EDGE, "buffer", "stats", "--json", "--config", str(site), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await shown.communicate()
    assert shown.returncode == 0
    assert json.loads(out)["depth"] == {"event": 2, "telemetry": 40}


async def test_an_outbox_of_an_older_schema_is_not_called_damaged(
    tmp_path: Path, tty: Path
) -> None:
    with sqlite3.connect(tmp_path / "outbox.sqlite") as conn:
        conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    site = tmp_path / "etc" / "site.yaml"
    site.parent.mkdir()
    data = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1", tcp_port=1, rtu_link=tty)
    site.write_text(yaml.safe_dump(data))
    checks = by_name(await run_checks(site, user=None, seconds=1))
    assert checks["buffer"].level == "ok"
    assert "schema 1: the gateway migrates it" in checks["buffer"].detail


def test_command_line_exit_status_and_json(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("gateway: {id: gw-1}\n")
    result = subprocess.run(
        [*EDGE, "doctor", "--config", str(bad), "--json", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["can_run"] is False
    config = report["checks"][0]
    assert config["name"] == "config"
    assert config["level"] == "fail"
    assert "buses" in config["detail"]
    assert config["fix"]

    missing = subprocess.run(
        [*EDGE, "doctor", "--config", str(tmp_path / "absent.yaml"), "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert "FAIL  config" in missing.stdout
    assert "fix: copy the site file" in missing.stdout
    assert "the gateway cannot run until fixed" in missing.stdout


def test_unreadable_site_file_says_to_run_as_root(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("gateway: {id: gw-1}\n")
    site.chmod(0o000)  # nobody may read it, its owner included
    command = [*EDGE, "doctor", "--config", str(site), "--timeout", "1"]
    if os.geteuid() == 0:
        # Root reads any file through two capabilities; without them it is refused like any
        # user. It stays uid 0 rather than becoming another user, so the interpreter and the
        # checkout stay readable wherever the checkout is (a clone inside a folder other users
        # cannot enter, such as /root or a `mktemp -d`).
        dropped = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "permission denied" in result.stdout
    assert "sudo edge doctor" in result.stdout


async def test_delivery_is_proven_by_reading_a_health_message_back(
    tmp_path: Path, secured_broker: Mosquitto, tty: Path
) -> None:
    config = write_site(tmp_path, secured_broker, tty, username=USER, password=PASSWORD)
    checks = by_name(await run_checks(config, user=None, seconds=3))
    delivery = checks[f"delivery mqtt://127.0.0.1:{secured_broker.port}"]
    assert delivery.level == "ok", delivery
    assert "came back" in delivery.detail


@pytest.mark.parametrize(
    ("protocol", "says"),
    [("5", "refuses this gateway's messages: Not authorized (0x87)"), ("3.1.1", "never came back")],
)
async def test_a_broker_whose_acl_denies_the_gateway_fails_the_delivery_check(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, tty: Path, protocol: str, says: str
) -> None:
    # The gateway's user may connect, but the ACL gives it no topic at all: over 3.1.1 the
    # broker still acknowledges every publish, so only the read-back can tell.
    broker = mosquitto_factory(users={USER: PASSWORD}, acl=[f"user {USER}"])
    config = write_site(tmp_path, broker, tty, username=USER, password=PASSWORD, protocol=protocol)
    checks = by_name(await run_checks(config, user=None, seconds=2))
    assert checks[f"broker {broker.url}"].level == "ok"
    delivery = checks[f"delivery {broker.url}"]
    assert delivery.level == "fail", delivery
    assert says in delivery.detail
    assert "per-gateway ACL" in delivery.fix


async def test_a_config_warning_is_a_doctor_warning_without_the_password(
    tmp_path: Path, secured_broker: Mosquitto, tty: Path
) -> None:
    # A password over plain mqtt://: the gateway runs, the doctor says what is at risk.
    config = write_site(tmp_path, secured_broker, tty, username=USER, password=PASSWORD)
    checks = by_name(await run_checks(config, user=None, seconds=3))
    assert checks["config"].level == "warn", checks["config"]
    assert "uplink.brokers[0]: the password goes in clear text" in checks["config"].detail
    assert "gateway" in checks["config"].detail
    assert PASSWORD not in checks["config"].detail


async def test_certificate_lines_are_about_the_files_the_gateway_loads(
    tmp_path: Path, tty: Path
) -> None:
    """The site file names its TLS files: those are checked and named in full, the folder's
    (an expired pair the gateway never loads) are not, and the summary says which are used."""
    site = tmp_path / "etc" / "site.yaml"
    site.parent.mkdir()
    certs = site.parent / "certs"
    certs.mkdir()
    write_certificate(certs / "client.pem", write_key(certs / "client.key"), days_valid=(-90, -2))
    named = tmp_path / "pki"
    named.mkdir()
    write_certificate(named / "ca.pem", write_key(named / "ca.key"), common_name="district CA")
    write_certificate(named / "gw.pem", write_key(named / "gw.key"), days_valid=(-1, 10))
    data = site_dict(tmp_path, broker_url="mqtts://127.0.0.1:1", tcp_port=1, rtu_link=tty)
    data["uplink"].update(
        ca_file=str(named / "ca.pem"),
        cert_file=str(named / "gw.pem"),
        key_file=str(named / "gw.key"),
    )
    site.write_text(yaml.safe_dump(data))
    checks = by_name(await run_checks(site, user=None, seconds=1))
    lines = {name: c for name, c in checks.items() if name.startswith("certificate")}
    assert set(lines) == {
        f"certificate {named / 'ca.pem'}",
        f"certificate {named / 'gw.pem'}",
        f"certificate {named / 'gw.key'}",
        "certificates",
    }
    assert lines[f"certificate {named / 'gw.pem'}"].level == "warn", "expires in 9 days"
    assert lines[f"certificate {named / 'gw.key'}"].level == "ok"
    summary = lines["certificates"].detail
    assert summary == (
        f"TLS uses {named / 'ca.pem'}, client {named / 'gw.pem'} with {named / 'gw.key'} "
        f"(named in uplink; the files in {certs} are not used)"
    )


async def test_certificate_summary_names_the_folders_files_or_the_system_authorities(
    tmp_path: Path, tty: Path
) -> None:
    site = tmp_path / "etc" / "site.yaml"
    site.parent.mkdir()
    certs = site.parent / "certs"
    certs.mkdir()
    data = site_dict(tmp_path, broker_url="mqtts://127.0.0.1:1", tcp_port=1, rtu_link=tty)
    site.write_text(yaml.safe_dump(data))
    checks = by_name(await run_checks(site, user=None, seconds=1))
    assert checks["certificates"].detail == (
        f"TLS uses the system's certificate authorities, no client certificate (from {certs})"
    )
    write_certificate(certs / "client.pem", write_key(certs / "client.key"))
    checks = by_name(await run_checks(site, user=None, seconds=1))
    assert checks["certificates"].detail == (
        f"TLS uses the system's certificate authorities, client {certs / 'client.pem'} with "
        f"{certs / 'client.key'} (from {certs})"
    )
    assert checks["certificate client.key"].detail == "matches client.pem"


async def test_an_unusable_site_file_says_what_runs_instead(
    tmp_path: Path, secured_broker: Mosquitto, tty: Path
) -> None:
    config = write_site(tmp_path, secured_broker, tty, username=USER, password=PASSWORD)
    checks = by_name(await run_checks(config, user=None, seconds=3))
    assert checks["last good config"].level == "ok"
    assert "does not exist" in checks["last good config"].detail
    digest = lastgood.save(config, config.read_bytes())
    good = config.read_text()
    config.write_text(good.replace("modbus-rtu", "modbus-x"))
    checks = by_name(await run_checks(config, user=None, seconds=3))
    assert checks["config"].level == "fail"
    fallback = checks["last good config"]
    assert fallback.level == "warn"
    assert f"runs the last good config {digest}" in fallback.detail
    # The rest is checked on what runs: the last good config's broker and serial port.
    assert checks[f"broker mqtt://127.0.0.1:{secured_broker.port}"].level == "ok"
    assert checks["serial rs485-1"].level == "ok"

    kept = lastgood.path_for(config)
    kept.write_text(kept.read_text().replace(USER, "gw-somebody-else"))
    checks = by_name(await run_checks(config, user=None, seconds=3))
    fault = checks["last good config"]
    assert fault.level == "fail"
    assert "does not match its hash" in fault.detail
    assert "FAULT MODE" in fault.detail
    assert fault.fix

    config.write_text(good)
    checks = by_name(await run_checks(config, user=None, seconds=3))
    assert checks["last good config"].level == "warn", "a damaged copy is worth a look"
    assert checks["config"].level != "fail"  # usable (warnings about MQTT 3.1.1 aside)


async def test_tls_files_and_command_keys_that_do_not_exist_fail(tmp_path: Path, tty: Path) -> None:
    site = site_dict(tmp_path, broker_url="mqtts://127.0.0.1:1", tcp_port=1, rtu_link=tty)
    site["uplink"]["ca_file"] = str(tmp_path / "certs" / "ca.pem")
    site["commands"] = {"keys": str(tmp_path / "no-keys")}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    checks = by_name(await run_checks(path, user=None, seconds=1))
    # check-config only warns (the files may be made on the Pi); on the gateway they fail.
    assert checks["config"].level == "warn"
    assert "uplink.ca_file" in checks["config"].detail
    ca = checks["file uplink.ca_file"]
    assert ca.level == "fail"
    assert ca.detail == f"uplink.ca_file {tmp_path}/certs/ca.pem does not exist"
    assert "provision it" in ca.fix
    assert checks["file commands.keys"].level == "fail"
