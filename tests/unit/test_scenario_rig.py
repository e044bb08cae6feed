"""Real-rig files: checked with the reason for every mistake; the site pointed at the rig; the
buzzer read back through an input pin."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from hil.scenario.realrig import BuzzerReadback, RigConfigError, load_rig

RIG = """\
ports: {rs485-1: /dev/ttyUSB0}
tcp: {lan: "192.168.10.2:15020"}
control: "192.168.10.2:15021"
buzzer: {output_pin: 17, readback_pin: 22, pin_factory: lgpio}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    return path


def test_a_rig_file_points_the_site_at_its_adapters_and_real_pins(tmp_path: Path) -> None:
    rig = load_rig(write(tmp_path, RIG))
    site = {
        "buses": [
            {"id": "lan", "kind": "modbus-tcp", "host": "127.0.0.1", "port": 1},
            {"id": "rs485-1", "kind": "modbus-rtu", "port": "/dev/pts/9"},
        ],
        "outputs": {"pin_factory": "mock", "buzzer": {"pin": 5}},
    }
    rig.adapt_site(site)
    assert site["buses"] == [
        {"id": "lan", "kind": "modbus-tcp", "host": "192.168.10.2", "port": 15020},
        {"id": "rs485-1", "kind": "modbus-rtu", "port": "/dev/ttyUSB0"},
    ]
    assert site["outputs"] == {"pin_factory": "lgpio", "buzzer": {"pin": 17}}
    assert (rig.sim_bus("lan", "modbus-tcp"), rig.sim_bus("rs485-1", "modbus-rtu")) == (
        "tcp",
        "rtu",
    )
    with pytest.raises(RigConfigError, match="serves Modbus buses only"):
        rig.sim_bus("tilt-port", "serial")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n", "a rig file is a mapping"),
        (RIG + "colour: red\n", r"unknown key\(s\) colour"),
        (RIG.replace('"192.168.10.2:15021"', "nowhere"), "control: expected HOST:PORT"),
        (RIG.replace("control:", "#"), "control: HOST:PORT of the simulator's control channel"),
        (RIG.replace("readback_pin: 22", "readback_pin: 40"), "readback_pin: a BCM GPIO"),
        (RIG.replace("output_pin: 17", "output_pin: true"), "output_pin: a BCM GPIO"),
        (RIG.replace("lgpio", "wiringpi"), "pin_factory: lgpio, rpigpio"),
        (RIG.replace("ports: {rs485-1: /dev/ttyUSB0}", "ports: [a]"), "ports: a mapping"),
        ("tcp: {lan: 1}\ncontrol: 'h:1'\nbuzzer: {output_pin: 17}\n", r"tcp.lan: expected"),
        ("control: 'h:1'\n", "buzzer: output_pin"),
        ("a: [unclosed\n", "cannot read the rig file"),
    ],
)
def test_a_wrong_rig_file_is_refused_with_the_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(RigConfigError, match=message):
        load_rig(write(tmp_path, text))


def test_a_missing_rig_file_is_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(RigConfigError, match=r"rig.yaml: cannot read the rig file"):
        load_rig(tmp_path / "rig.yaml")


def test_the_buzzer_is_read_back_with_every_edge() -> None:
    pins = MockFactory()
    readback = BuzzerReadback(22, pin_factory=pins)
    try:
        wire = pins.pin(22)
        wire.drive_high()
        wire.drive_low()
        wire.drive_high()
        assert [on for _, on in readback.snapshot()] == [True, False, True]
        times = [at for at, _ in readback.snapshot()]
        assert times == sorted(times)
    finally:
        readback.close()
