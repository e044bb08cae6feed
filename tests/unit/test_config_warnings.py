"""Warnings about a valid site file: placed at the line and column of the setting, never
repeating a secret, errors under ``--strict``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.loader import parse_site_checked

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
SECRET = "hunter2-s3cret"


def site(brokers: list[str], extra: str = "") -> str:
    """The example site with these broker URLs and further uplink lines."""
    text = EXAMPLE.read_text()
    listed = "[" + ", ".join(brokers) + "]"
    text = text.replace("brokers: [mqtt://127.0.0.1:18830]", f"brokers: {listed}")
    assert listed in text
    return text.replace("  topic_prefix: district/v1\n", f"  topic_prefix: district/v1\n{extra}")


def warnings_of(text: str) -> list[str]:
    _, warnings = parse_site_checked(text, "site.yaml")
    return [str(w) for w in warnings]


@pytest.fixture(autouse=True)
def _demo_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Where the example's serial port and command keys exist (the demo makes them), so that
    only the warnings under test are found."""
    (tmp_path / "var/demo/command-keys").mkdir(parents=True)
    # The serial port: a link to a real pseudo-terminal, as the demo's simulator makes it.
    controller, terminal = os.openpty()
    (tmp_path / "var/demo/rtu").symlink_to(os.ttyname(terminal))
    monkeypatch.chdir(tmp_path)
    yield
    os.close(controller)
    os.close(terminal)


def test_the_example_site_has_no_warning() -> None:
    assert warnings_of(EXAMPLE.read_text()) == []


@pytest.mark.parametrize(
    ("brokers", "extra", "field", "says"),
    [
        (
            ["mqtt://broker.example:1883"],
            f"  username: gw\n  password: {SECRET}\n",
            "uplink.brokers[0]",
            "the password goes in clear text to mqtt://broker.example:1883",
        ),
        (
            ["mqtts://broker.example:8883", "mqtt://backup.example:1883"],
            "",
            "uplink.brokers",
            "mixed mqtts:// and mqtt:// brokers",
        ),
        (
            [f"mqtts://gw:{SECRET}@broker.example:8883"],
            "",
            "uplink.brokers[0]",
            "mqtts://***@broker.example:8883 carries a user or password in the URL",
        ),
        (
            ["mqtts://broker.example:1883"],
            "",
            "uplink.brokers[0]",
            "speaks TLS to port 1883",
        ),
        (
            ["mqtt://broker.example:8883"],
            "",
            "uplink.brokers[0]",
            "speaks plain MQTT to port 8883",
        ),
        (
            ["mqtts://broker.example"],
            '  protocol: "3.1.1"\n',
            "uplink.protocol",
            "MQTT 3.1.1 cannot say that the broker refused a message",
        ),
    ],
)
def test_a_risky_uplink_setting_is_a_warning_at_its_line(
    brokers: list[str], extra: str, field: str, says: str
) -> None:
    text = site(brokers, extra)
    found = warnings_of(text)
    ours = [w for w in found if f": warning: {field}: " in w and says in w]
    assert len(ours) == 1, found
    where, _, _ = ours[0].partition(": warning: ")
    filename, line, column = where.split(":")
    assert filename == "site.yaml"
    key = field.split(".")[1].split("[", maxsplit=1)[0]
    # The line of the setting (brokers are listed inline, on the line of their key).
    assert f"{key}:" in text.splitlines()[int(line) - 1]
    assert int(column) >= 1
    assert all(SECRET not in w for w in found), found


def test_a_url_with_credentials_and_plain_mqtt_with_a_password_say_each_once() -> None:
    text = site(
        [f"mqtt://gw:{SECRET}@broker.example:8883", "mqtts://b.example"],
        f"  username: gw\n  password: {SECRET}\n",
    )
    found = warnings_of(text)
    assert len(found) == 4, found  # credentials in URL, port 8883, clear-text password, mixed
    assert all(SECRET not in w for w in found)


def test_check_config_prints_warnings_and_exits_0_and_strict_makes_them_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(site(["mqtt://broker.example:1883"], f"  username: gw\n  password: {SECRET}\n"))
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:" in out
    assert ": warning: uplink.brokers[0]: the password goes in clear text" in out
    assert out.rstrip().splitlines()[-1].startswith("ok: gateway")
    assert main(["check-config", "--strict", str(path)]) == 1
    out = capsys.readouterr().out
    assert ": error: uplink.brokers[0]: the password goes in clear text" in out
    assert "1 warning taken as errors (--strict)" in out
    assert SECRET not in out
    assert main(["check-config", "--strict", str(EXAMPLE)]) == 0
