"""The site file's buses and devices sections: UART and GPIO sensors, fast lanes, gauge
lengths, and the cross-checks between a device and the kind of its bus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.ld2410.driver import Ld2410Radar
from drivers.modbus import known_models
from drivers.witmotion.driver import WitMotionSensor
from edge.buses import build_buses, set_interval
from edge.config import ConfigError, SiteConfig, parse_site
from edge.config.model import GpioBus, SerialBus

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
LOCATION = {"building": "B", "floor": "1", "room": "101", "venue_type": "shop"}


def site(extra_buses: list[dict[str, Any]], extra_devices: list[dict[str, Any]]) -> str:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["buses"] += extra_buses
    data["devices"] += [{"location": LOCATION, **device} for device in extra_devices]
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def parse(text: str) -> SiteConfig:
    return parse_site(text, "site.yaml", known_models=known_models())


def issues(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return {issue.field: issue.message for issue in caught.value.issues}


SENSORS_BUSES: list[dict[str, Any]] = [
    {"id": "tilt-port", "kind": "serial", "port": "/dev/ttyUSB1"},
    {"id": "radar-port", "kind": "serial", "port": "socket://10.0.0.5:4001", "baudrate": 256000},
    {"id": "header", "kind": "gpio"},
]
SENSORS: list[dict[str, Any]] = [
    {"id": "tilt-1", "model": "witmotion-uart", "bus": "tilt-port", "gauge_length": 3.0},
    {"id": "radar-1", "model": "hlk-ld2410", "bus": "radar-port", "poll_interval": "2s"},
    {"id": "pir-1", "model": "pir", "bus": "header", "pin": 5},
    {"id": "tilt-485", "model": "witmotion-wt901c485", "bus": "rs485-1", "address": 80,
     "gauge_length": 1.0, "fast_interval": "200ms"},
]  # fmt: skip


def test_serial_gpio_and_modbus_sensors_load_and_build() -> None:
    config = parse(site(SENSORS_BUSES, SENSORS))
    assert isinstance(config.buses[2], SerialBus)
    assert config.buses[2].silence == 3.0
    assert isinstance(config.buses[4], GpioBus)
    modbus_tilt = next(d for d in config.devices if d.id == "tilt-485")
    assert (modbus_tilt.gauge_length, modbus_tilt.fast_interval) == (1.0, 0.2)
    built = build_buses(config, lambda _: None, pin_factory=object())
    assert set(built) == {"bus:lan", "bus:rs485-1", "bus:tilt-port", "bus:radar-port", "bus:header"}
    tilt, radar = built["bus:tilt-port"], built["bus:radar-port"]
    assert isinstance(tilt, WitMotionSensor)
    assert tilt.baudrate == 9600  # the model's default
    assert isinstance(radar, Ld2410Radar)
    assert radar.report_interval == 2.0
    # Storm mode reaches a Modbus device through the bus that polls it.
    set_interval(built, "tilt-485", 0.1)
    with pytest.raises(ValueError, match="no Modbus device 'radar-1'"):
        set_interval(built, "radar-1", 0.1)


def test_the_example_site_still_loads() -> None:
    config = parse(EXAMPLE.read_text(encoding="utf-8"))
    assert [d.address for d in config.devices] == [1, 2, 1]


@pytest.mark.parametrize(
    ("bus", "device", "field", "message"),
    [
        (None, {"model": "hlk-ld2410", "bus": "lan"}, "devices[3].model",
         "model 'hlk-ld2410' is a serial device but bus 'lan' is modbus-tcp"),
        (None, {"model": "efm-ref", "bus": "lan"}, "devices[3]", "needs an address"),
        ({"id": "p", "kind": "serial", "port": "/dev/ttyS1"},
         {"model": "witmotion-uart", "bus": "p", "address": 3}, "devices[3].address",
         "only applies to Modbus devices"),
        ({"id": "g", "kind": "gpio"}, {"model": "pir", "bus": "g"}, "devices[3]", "needs a pin"),
        ({"id": "g", "kind": "gpio"}, {"model": "pir", "bus": "g", "pin": 17},
         "devices[3].pin", "GPIO 17 is already used by outputs.buzzer"),
        (None, {"model": "efm-ref", "bus": "lan", "address": 9, "gauge_length": 1.0},
         "devices[3].gauge_length", "model 'efm-ref' has no roll or pitch"),
        (None, {"model": "efm-ref", "bus": "lan", "address": 9, "pin": 4},
         "devices[3].pin", "pin only applies to GPIO sensors"),
        ({"id": "p", "kind": "serial", "port": "var/demo/rtu"},
         {"model": "witmotion-uart", "bus": "p"}, "buses[2].port", "already used by buses[1]"),
        (None, {"model": "efm-ref", "bus": "lan", "address": 9, "gauge_length": -1},
         "devices[3].gauge_length", "greater than 0"),
        ({"id": "p", "kind": "serial", "port": "/dev/ttyS1", "baudrate": 12345},
         {"model": "witmotion-uart", "bus": "p"}, "buses[2].baudrate", ""),
    ],
)  # fmt: skip
def test_devices_that_do_not_fit_their_bus_are_rejected(
    bus: dict[str, Any] | None, device: dict[str, Any], field: str, message: str
) -> None:
    found = issues(site([bus] if bus else [], [{"id": "new-device", **device}]))
    assert field in found, found
    assert message in found[field]


def test_one_uart_sensor_per_serial_port() -> None:
    found = issues(
        site(
            [{"id": "p", "kind": "serial", "port": "/dev/ttyS1"}],
            [
                {"id": "a", "model": "witmotion-uart", "bus": "p"},
                {"id": "b", "model": "witmotion-uart", "bus": "p"},
            ],
        )
    )
    assert "one UART sensor per port" in found["devices[4].bus"]


def test_a_fast_interval_must_be_a_positive_duration() -> None:
    found = issues(
        site(
            [], [{"id": "x", "model": "efm-ref", "bus": "lan", "address": 9, "fast_interval": "0s"}]
        )
    )
    assert "greater than 0" in found["devices[3].fast_interval"]
