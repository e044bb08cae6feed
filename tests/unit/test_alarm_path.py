"""The alarm path: the buzzer is driven before the reading or its event reach the buffer."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from buffer import Outbox
from drivers import Reading
from edge.annunciator import Annunciator
from edge.config import SiteConfig
from edge.config.model import Outputs, Pin, Relay
from edge.gateway import Gateway

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"


def site(tmp_path: Path) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    return SiteConfig.model_validate(data)


def residual(value: float) -> Reading:
    return Reading("efm-shop-101", "residual_current", value, "mA", time.time(), time.monotonic())


@pytest.fixture
async def gateway_with_spy(
    tmp_path: Path,
) -> AsyncIterator[tuple[Gateway, list[tuple[str, Any, bool]]]]:
    """A gateway on a real outbox whose submit notes the buzzer pin at that instant."""
    pins = MockFactory()
    gateway = Gateway(site(tmp_path), pin_factory=pins)
    outbox = await Outbox.open(tmp_path / "outbox.sqlite")
    seen: list[tuple[str, Any, bool]] = []
    submit = outbox.submit

    def spy(stream: Any, body: Mapping[str, Any], *, at_once: bool = False) -> None:
        seen.append((stream, body.get("kind"), bool(pins.pin(17).state)))
        submit(stream, body, at_once=at_once)

    outbox.submit = spy  # type: ignore[method-assign]
    gateway.outbox = outbox
    yield gateway, seen
    await outbox.close()
    gateway.annunciator.close()


async def test_buzzer_is_on_before_anything_is_buffered(
    gateway_with_spy: tuple[Gateway, list[tuple[str, Any, bool]]],
) -> None:
    gateway, seen = gateway_with_spy
    gateway.on_sample(residual(350))
    assert seen == [("telemetry", None, True), ("event", "alarm-raised", True)]


async def test_reading_below_limit_is_only_buffered(
    gateway_with_spy: tuple[Gateway, list[tuple[str, Any, bool]]],
) -> None:
    gateway, seen = gateway_with_spy
    gateway.on_sample(residual(120))
    assert seen == [("telemetry", None, False)]
    assert not gateway.annunciator.sounding


def test_pin_factory_from_environment_when_config_names_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``outputs.pin_factory``: gpiozero's GPIOZERO_PIN_FACTORY decides."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    outputs = site(tmp_path).outputs.model_copy(update={"pin_factory": None})
    annunciator = Annunciator(outputs)
    try:
        assert annunciator.failure is None
        assert isinstance(annunciator.pin_factory, MockFactory)
        annunciator.show("fire", "fire")
        assert annunciator.pin_factory.pin(outputs.buzzer.pin).state
    finally:
        annunciator.close()


class PinsAtLogTime(logging.Handler):
    """Notes, for each log line, the output pins' states at the moment it was logged."""

    def __init__(self, pins: MockFactory, numbers: dict[str, int]) -> None:
        super().__init__()
        self.pins = pins
        self.numbers = numbers
        self.lines: list[tuple[str, dict[str, bool]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        states = {name: bool(self.pins.pin(n).state) for name, n in self.numbers.items()}
        self.lines.append((record.getMessage(), states))


@pytest.mark.parametrize("sound", [True, False], ids=["alarm", "all-clear"])
def test_every_output_pin_is_driven_before_anything_is_logged(sound: bool) -> None:
    """A log write can block (a stalled journal): buzzer, LED and relay must not wait for it."""
    outputs = Outputs(pin_factory="mock", buzzer=Pin(pin=17), led=Pin(pin=27), relay=Relay(pin=22))
    pins = MockFactory()
    annunciator = Annunciator(outputs, pin_factory=pins)
    spy = PinsAtLogTime(pins, {"buzzer": 17, "led": 27, "relay": 22})
    logger = logging.getLogger("edge.annunciator")
    level = logger.level
    logger.setLevel(logging.INFO)  # the LED's lines are at INFO
    logger.addHandler(spy)
    try:
        if not sound:
            annunciator.show("fire", "fire")
            spy.lines.clear()
        annunciator.show("fire" if sound else None, "fire" if sound else None)
    finally:
        logger.removeHandler(spy)
        logger.setLevel(level)
        annunciator.close()
        pins.reset()
    want = {"buzzer": sound, "led": sound, "relay": sound}
    assert [message for message, _ in spy.lines] == (
        ["led on", "buzzer on"] if sound else ["led off", "buzzer off"]
    )
    for message, states in spy.lines:
        assert states == want, f"{message!r} was logged before every pin was driven: {states}"
