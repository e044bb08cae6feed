"""No GPIO backend, or a pin held by another process: the annunciator says why and the gateway
runs on. This machine has no Raspberry Pi GPIO library, so "no backend" is real here."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpiozero import Buzzer
from gpiozero.pins.mock import MockFactory

from drivers import DeviceStatus, Reading
from edge.annunciator import NO_BACKEND_FIX, Annunciator, NoPinBackend, make_pin_factory
from edge.buses import build_buses
from edge.config import SiteConfig
from edge.doctor import check_gpio, gpio_backend
from tests.integration.site import EXAMPLE

pytestmark = pytest.mark.skipif(
    gpio_backend(None) is not None, reason="a GPIO library is installed: backends may load here"
)


def site(**outputs: object) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["outputs"].pop("pin_factory", None)
    data["outputs"].update(outputs)
    return SiteConfig.model_validate(data)


def test_no_backend_names_each_one_tried_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    with pytest.raises(NoPinBackend) as caught:
        make_pin_factory(None)
    message = str(caught.value)
    assert "lgpio: " in message
    assert "rpigpio: " in message
    assert message.index("lgpio: ") < message.index("rpigpio: "), "lgpio is tried first"
    assert NO_BACKEND_FIX in message


def test_the_environment_names_the_factory_when_the_site_file_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert isinstance(make_pin_factory(None), MockFactory)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "banana")
    with pytest.raises(NoPinBackend, match="banana: not a pin factory"):
        make_pin_factory(None)


def test_an_annunciator_without_a_backend_keeps_its_state_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    annunciator = Annunciator(site().outputs)
    try:
        assert annunciator.failure is not None
        assert "no GPIO backend works" in annunciator.failure
        annunciator.show("critical", "critical")  # must not raise: the gateway runs on
        assert annunciator.sounding
        annunciator.show(None, None)
        assert not annunciator.sounding
    finally:
        annunciator.close()


def test_a_pin_held_by_another_process_fails_the_annunciator_and_releases_the_rest() -> None:
    pins = MockFactory()
    config = site(led={"pin": 27})
    held = Buzzer(config.outputs.buzzer.pin, pin_factory=pins)
    try:
        annunciator = Annunciator(config.outputs, pin_factory=pins)
        assert annunciator.failure is not None
        assert "PinInUse" in annunciator.failure
        annunciator.close()
    finally:
        held.close()
    # Nothing half-claimed is left behind: the same pins can be claimed once freed.
    again = Annunciator(config.outputs, pin_factory=pins)
    try:
        assert again.failure is None
        again.show("fire", "fire")
        assert pins.pin(config.outputs.buzzer.pin).state
    finally:
        again.close()


def test_pir_sensors_without_a_backend_are_offline_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["outputs"].pop("pin_factory", None)
    data["buses"].append({"id": "gpio", "kind": "gpio"})
    data["devices"].append(
        {
            "id": "pir-1",
            "model": "pir",
            "bus": "gpio",
            "pin": 22,
            "location": data["devices"][0]["location"],
        }
    )
    seen: list[Reading | DeviceStatus] = []
    drivers = build_buses(SiteConfig.model_validate(data), seen.append)

    async def first_step() -> None:
        task = asyncio.create_task(drivers["bus:gpio"].run())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(first_step())
    (status,) = seen
    assert isinstance(status, DeviceStatus)
    assert (status.device_id, status.online) == ("pir-1", False)
    assert "no GPIO backend works" in status.reason


def test_doctor_fails_with_the_fix_when_no_backend_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    (tmp_path / "gpiochip0").write_bytes(b"")  # a chip the user may open, as on a Pi
    check = check_gpio(site(), None, tmp_path)
    assert check.level == "fail", check
    assert "no GPIO backend (lgpio or rpigpio)" in check.detail
    assert check.fix == NO_BACKEND_FIX


def test_selftest_without_a_backend_says_so_in_one_line(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["outputs"].pop("pin_factory", None)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "selftest", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("selftest: the buzzer cannot sound: no GPIO backend works")
    assert "Traceback" not in result.stderr
