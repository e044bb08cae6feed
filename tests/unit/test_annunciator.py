"""Buzzer and LED follow the active alarms, on gpiozero's MockFactory pins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from drivers import Reading
from edge.annunciator import Annunciator, make_pin_factory
from edge.config.model import Outputs, Pin
from edge.rules import Transition

OUTPUTS = Outputs(pin_factory="mock", buzzer=Pin(pin=17), led=Pin(pin=27))


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.reset()


def transition(kind: str, device: str = "efm-1", rule: str = "residual") -> Transition:
    reading = Reading(device, "residual_current", 350.0, "mA", 0.0, 0.0)
    return Transition(rule, kind, "critical", 300.0, reading)  # type: ignore[arg-type]


def test_buzzer_and_led_on_while_any_alarm_active(factory: MockFactory) -> None:
    annunciator = Annunciator(OUTPUTS, pin_factory=factory)
    buzzer, led = factory.pin(17), factory.pin(27)
    assert (buzzer.state, led.state) == (False, False)

    annunciator.apply([transition("raised", "a")])
    assert (buzzer.state, led.state) == (True, True)
    annunciator.apply([transition("raised", "b")])
    annunciator.apply([transition("cleared", "a")])
    assert buzzer.state is True, "b is still in alarm"
    annunciator.apply([transition("cleared", "b")])
    assert (buzzer.state, led.state) == (False, False)
    annunciator.close()


def test_active_low_buzzer_drives_pin_low(factory: MockFactory) -> None:
    outputs = Outputs(buzzer=Pin(pin=5, active_high=False))
    annunciator = Annunciator(outputs, pin_factory=factory)
    assert factory.pin(5).state is True
    annunciator.apply([transition("raised")])
    assert factory.pin(5).state is False
    assert annunciator.sounding
    annunciator.close()


def test_pin_history_shows_one_switch_per_state_change(factory: MockFactory) -> None:
    annunciator = Annunciator(OUTPUTS, pin_factory=factory)
    for _ in range(3):
        annunciator.apply([transition("raised")])
    annunciator.apply([transition("cleared")])
    states = [change.state for change in factory.pin(17).states]
    assert states == [False, True, False]
    annunciator.close()


def test_pin_factory_by_name() -> None:
    assert isinstance(make_pin_factory("mock"), MockFactory)
    assert make_pin_factory(None) is None
