"""Warnings about a valid site file that quietly makes a site worse: a threshold outside its
point's plausible range (a number in the wrong unit), a serial port or TLS file that does not
exist. They print as FILE:LINE:COL: warning: FIELD: MESSAGE, exit 0, and --strict refuses."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.modbus import known_models
from edge.config import load_site
from edge.config.loader import load_site_checked, report_config

SITE = """gateway: {id: gw-1, site: {name: Block 3}}
buses:
  - {id: lan, kind: modbus-tcp, host: 127.0.0.1, port: 1502}
  - {id: uart, kind: serial, port: PORT}
devices:
  - id: efm-1
    model: efm-ref
    bus: lan
    address: 1
    location: &here {building: B3, floor: "1", room: r, venue_type: shop}
  - {id: tilt-1, model: witmotion-uart, bus: uart, gauge_length: 1.0, location: *here}
rules:
RULES
outputs: {pin_factory: mock, buzzer: {pin: 17}}
uplink: {brokers: ["mqtt://127.0.0.1:1883"]}
buffer: {path: outbox.sqlite}
"""


@pytest.fixture
def port(tmp_path: Path) -> Iterator[str]:
    leader, follower = os.openpty()
    link = tmp_path / "ttyUSB0"
    link.symlink_to(os.ttyname(follower))
    yield str(link)
    os.close(leader)
    os.close(follower)


def warnings_of(tmp_path: Path, rules: str, port: str) -> list[str]:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.replace("RULES", rules.rstrip("\n")).replace("PORT", port))
    _, found = load_site_checked(path, known_models=known_models())
    return [f"{w.field}: {w.message}" for w in found if w.kind == "warning"]


def test_a_threshold_in_amps_on_a_point_in_milliamps_is_warned_with_the_meant_value(
    tmp_path: Path, port: str
) -> None:
    found = warnings_of(
        tmp_path,
        "  - {id: rc, kind: over-limit, point: residual_current, raise_at: 0.3, clear_below: 0.27}",
        port,
    )
    assert found == [
        "rules[0].raise_at: 0.3 mA is outside the plausible 30-1000 mA for an alarm on "
        "residual_current: did you mean 300 mA (0.3 A)?",
        "rules[0].clear_below: 0.27 mA is outside the plausible 30-1000 mA for an alarm on "
        "residual_current: did you mean 270 mA (0.27 A)?",
    ]


@pytest.mark.parametrize(
    ("rule", "field", "says"),
    [
        (
            "{id: v, kind: under-limit, point: voltage_a, raise_at: 0.198, clear_above: 0.205}",
            "rules[0].raise_at",
            "did you mean 198 V (0.198 kV)?",
        ),
        (
            "{id: hot, kind: over-limit, point: temperature_1, raise_at: 700, clear_below: 650}",
            "rules[0].raise_at",
            "700 °C is outside the plausible 40-120 °C",
        ),
        (
            "{id: t, kind: sustained, point: pitch_displacement, below: -400, duration: 1h}",
            "rules[0].below",
            "-400 mm is outside the plausible 0.5-50 mm",
        ),
        (
            "{id: rc, kind: over-limit, point: residual_current, raise_at: 300,"
            " clear_below: 270, escalate: {at: 9000}}",
            "rules[0].escalate.at",
            "9000 mA is outside",
        ),
        (
            "{id: rc, kind: over-limit, point: residual_current, raise_at: 300,"
            " clear_below: 270, overrides: {efm-1: {raise_at: 0.5, clear_below: 0.4}}}",
            "rules[0].overrides.efm-1.raise_at",
            "did you mean 500 mA (0.5 A)?",
        ),
    ],
)
def test_every_level_threshold_is_held_to_its_points_range(
    tmp_path: Path, port: str, rule: str, field: str, says: str
) -> None:
    found = warnings_of(tmp_path, f"  - {rule}", port)
    assert any(w.startswith(f"{field}: ") and says in w for w in found), found


def test_plausible_thresholds_and_a_leaning_tilt_say_nothing(tmp_path: Path, port: str) -> None:
    rules = """  - {id: rc, kind: over-limit, point: residual_current, raise_at: 0.3 A,
     clear_below: 270}
  - {id: t, kind: sustained, point: pitch_displacement, below: -4 mm, duration: 1h}
  - {id: lean, kind: under-limit, point: pitch, raise_at: -2, clear_above: -1.5}
"""
    assert warnings_of(tmp_path, rules, port) == []


def test_a_missing_serial_port_is_a_warning_and_strict_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    missing = tmp_path / "ttyUSB7"
    path.write_text(
        SITE.replace("RULES", "  []")
        .replace("rules:\n  []", "rules: []")
        .replace("PORT", str(missing))
    )
    out = io.StringIO()
    assert report_config(str(path), out, known_models=known_models())[0] == 0
    (line, summary) = out.getvalue().splitlines()
    assert line == (
        f"{path}:4:30: warning: buses[1].port: serial port {missing} of bus 'uart' does not "
        "exist: plug in the adapter, or name the port that exists (`ls -l /dev/serial/by-id/` "
        "lists them); the bus stays offline until then"
    )
    assert summary.startswith("ok: ")
    out = io.StringIO()
    assert report_config(str(path), out, known_models=known_models(), strict=True)[0] == 1
    assert ": error: buses[1].port: serial port" in out.getvalue()
    load_site(path, known_models=known_models())  # a warning never stops the gateway


def test_an_unreadable_key_file_is_named(tmp_path: Path, port: str) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    key = tmp_path / "client.key"
    key.write_text("secret")
    key.chmod(0)
    path = tmp_path / "site.yaml"
    text = SITE.replace("RULES", "  []").replace("rules:\n  []", "rules: []").replace("PORT", port)
    text = text.replace(
        'uplink: {brokers: ["mqtt://127.0.0.1:1883"]}',
        f'uplink: {{brokers: ["mqtts://127.0.0.1:8883"], cert_file: {key}, key_file: {key}}}',
    )
    path.write_text(text)
    _, found = load_site_checked(path, known_models=known_models())
    assert any("cannot be read by this user" in w.message for w in found)
