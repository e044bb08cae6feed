"""Which strings are serial ports: by their form, and by what a path leads to on this machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.ports import (
    ALLOWED_FORMS,
    DevicePort,
    PortError,
    SocketPort,
    check_port,
    parse_port,
    resolve_device,
)
from edge.config import ConfigError, load_site
from edge.config.loader import parse_site
from edge.reload import PushRejected, check_pushed
from tests.integration.site import site_dict

REFUSED_FORMS = [
    # pyserial's other URL handlers: files written, seconds blocked, no line at all.
    "spy://127.0.0.1:1?file=/var/lib/city-safety-edge/outbox.sqlite",
    "spy:///dev/ttyUSB0?file=x",
    "rfc2217://127.0.0.1:1?timeout=4",
    "loop://",
    "alt:///dev/ttyUSB0?class=PosixPollSerial",
    "hwgrep://0403:6001",
    "cp2110://0001:0004:00",
    # socket:// in any other shape than host:port.
    "SOCKET://127.0.0.1:4001",
    "Socket://127.0.0.1:4001",
    "socket://127.0.0.1",
    "socket://127.0.0.1:",
    "socket://:4001",
    "socket://127.0.0.1:0",
    "socket://127.0.0.1:65536",
    "socket://127.0.0.1:99999",
    "socket://127.0.0.1:4001/",
    "socket://127.0.0.1:4001?logging=debug",
    "socket://user@127.0.0.1:4001",
    "socket://127.0.0.1:4001#x",
    "socket://127.0.0.1:-1",
    "socket://%31%32%37.0.0.1:4001",
    "127.0.0.1:4001",
    # Devices that are not serial lines, and system files.
    "/dev/mem",
    "/dev/null",
    "/dev/sda",
    "/dev/mmcblk0p1",
    "/dev/watchdog",
    "/dev/tty",
    "/dev/tty1",
    "/dev/ttyUSB",
    "/dev/serial/by-id",
    "/dev/serial/by-id/",
    "/dev",
    "/proc/self/fd/0",
    "/sys/class/tty/ttyUSB0",
    # Paths that climb, hide or encode.
    "../../dev/mem",
    "var/../../dev/mem",
    "/dev/serial/by-id/../../mem",
    "/dev/serial/by-id/..",
    "./rtu",
    "var//rtu",
    "var/rtu/",
    ".rtu",
    "/dev/tty%55SB0",
    "%2Fdev%2Fmem",
    "/dev/ttyUSB0 ",
    " /dev/ttyUSB0",
    "/dev/ttyUSB0\n",
    "/dev/ttyUSB0\x00",
    "var/demo/rtu?x",
    "C:\\COM3",
    "",
]

ACCEPTED_FORMS = [
    ("/dev/ttyUSB0", DevicePort("/dev/ttyUSB0")),
    ("/dev/ttyAMA0", DevicePort("/dev/ttyAMA0")),
    ("/dev/ttyS0", DevicePort("/dev/ttyS0")),
    ("/dev/ttyACM1", DevicePort("/dev/ttyACM1")),
    ("/dev/serial0", DevicePort("/dev/serial0")),
    (
        "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A9ABCDEF-if00-port0",
        DevicePort("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A9ABCDEF-if00-port0"),
    ),
    (
        "/dev/serial/by-path/platform-3f980000.usb-usb-0:1.3:1.0-port0",
        DevicePort("/dev/serial/by-path/platform-3f980000.usb-usb-0:1.3:1.0-port0"),
    ),
    ("/dev/pts/7", DevicePort("/dev/pts/7")),
    ("var/demo/rtu", DevicePort("var/demo/rtu")),
    ("/run/city-safety-edge/rs485", DevicePort("/run/city-safety-edge/rs485")),
    ("socket://127.0.0.1:4001", SocketPort("127.0.0.1", 4001)),
    ("socket://ser2net.site.lan:65535", SocketPort("ser2net.site.lan", 65535)),
    ("socket://[::1]:4001", SocketPort("::1", 4001)),
]


@pytest.mark.parametrize("text", REFUSED_FORMS)
def test_anything_but_the_port_forms_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(PortError) as refused:
        parse_port(text)
    assert ALLOWED_FORMS in str(refused.value)
    with pytest.raises(PortError):
        check_port(text)


@pytest.mark.parametrize(("text", "port"), ACCEPTED_FORMS)
def test_the_port_forms_are_accepted(text: str, port: DevicePort | SocketPort) -> None:
    assert parse_port(text) == port


def test_an_uppercase_scheme_is_told_to_write_it_in_lower_case() -> None:
    with pytest.raises(PortError, match="lower case"):
        parse_port("SOCKET://127.0.0.1:4001")


@pytest.fixture
def pty_path() -> Iterator[str]:
    leader, follower = os.openpty()
    try:
        yield os.ttyname(follower)
    finally:
        os.close(leader)
        os.close(follower)


def test_a_link_to_a_pseudo_terminal_leads_to_it(tmp_path: Path, pty_path: str) -> None:
    near = tmp_path / "rtu"
    near.symlink_to(pty_path)
    far = tmp_path / "again"
    far.symlink_to(near)  # a link to the link, as a udev rule on top of the simulator's
    assert resolve_device(str(near)) == pty_path
    assert resolve_device(str(far)) == pty_path
    assert check_port(str(far)) == DevicePort(str(far))
    assert resolve_device(pty_path) == pty_path


@pytest.mark.parametrize("kind", ["regular file", "directory", "fifo", "hard link"])
def test_what_is_not_a_serial_device_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "port"
    outside = tmp_path / "outbox.sqlite"
    outside.write_bytes(b"the records not sent yet")
    if kind == "regular file":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.link(outside, path)
    with pytest.raises(PortError, match="not a serial device"):
        check_port(str(path))
    with pytest.raises(PortError, match="not a serial device"):
        resolve_device(str(path))
    assert outside.read_bytes() == b"the records not sent yet"


@pytest.mark.parametrize("target", ["/dev/null", "/dev/mem", "/dev/zero", "/etc/passwd"])
def test_a_link_to_what_is_not_a_serial_device_is_refused(tmp_path: Path, target: str) -> None:
    link = tmp_path / "rtu"
    link.symlink_to(target)
    with pytest.raises(PortError, match=f"leads to {target}, which is not a serial device"):
        check_port(str(link))
    hop = tmp_path / "hop"
    hop.symlink_to(link)
    with pytest.raises(PortError, match=f"leads to {target}"):
        resolve_device(str(hop))


def test_a_device_that_is_not_there_yet_is_not_a_form_error(tmp_path: Path) -> None:
    # An adapter plugged in later, a simulator not started: the driver's "offline", not the
    # site file's error.
    assert check_port("/dev/ttyUSB97") == DevicePort("/dev/ttyUSB97")
    assert check_port(str(tmp_path / "rtu")) == DevicePort(str(tmp_path / "rtu"))
    stale = tmp_path / "stale"
    stale.symlink_to("/dev/pts/99999")  # left by a simulator that was killed
    assert check_port(str(stale)) == DevicePort(str(stale))
    for missing in ("/dev/ttyUSB97", str(tmp_path / "rtu"), str(stale)):
        with pytest.raises(FileNotFoundError):
            resolve_device(missing)


def site_with_port(tmp_path: Path, port: str) -> dict[str, Any]:
    return site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1883", tcp_port=502, rtu_link=port)


@pytest.mark.parametrize(
    "port", ["spy://127.0.0.1:1?file=victim", "rfc2217://127.0.0.1:1?timeout=4", "/dev/mem"]
)
def test_check_config_and_push_config_refuse_a_port_that_is_not_one(
    tmp_path: Path, port: str
) -> None:
    site = site_with_port(tmp_path, port)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    with pytest.raises(ConfigError) as refused:
        load_site(path)
    (issue,) = refused.value.issues
    assert issue.field == "buses[1].port"
    assert issue.line > 0
    assert ALLOWED_FORMS in issue.message

    running = parse_site(
        yaml.safe_dump(site_with_port(tmp_path, str(tmp_path / "rtu"))), "site.yaml"
    )
    with pytest.raises(PushRejected) as pushed:
        check_pushed({"site": site}, running, filename="site.yaml", known_models=None)
    assert any(e.startswith("buses[1].port:") for e in pushed.value.errors)


def test_a_site_file_naming_a_link_to_a_regular_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "rtu"
    link.symlink_to(victim)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_with_port(tmp_path, str(link)), sort_keys=False))
    with pytest.raises(ConfigError, match="not a serial device"):
        load_site(path)
    assert victim.read_text() == "keep me"


def test_the_sms_modem_port_is_checked_the_same_way(tmp_path: Path) -> None:
    site = site_with_port(tmp_path, str(tmp_path / "rtu"))
    site["sms"] = {"port": "rfc2217://127.0.0.1:1?timeout=4", "numbers": ["+8613800138000"]}
    with pytest.raises(ConfigError) as refused:
        parse_site(yaml.safe_dump(site, sort_keys=False), "site.yaml")
    assert [issue.field for issue in refused.value.issues] == ["sms.port"]
    site["sms"]["port"] = "/dev/ttyUSB2"
    assert parse_site(yaml.safe_dump(site, sort_keys=False), "site.yaml").sms is not None
