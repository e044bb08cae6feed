"""Buzzer patterns, LED, relay, silence button and self-test on gpiozero's MockFactory pins,
driven on a virtual clock: the assertions are on the pins' own state history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from edge.annunciator import Annunciator, make_pin_factory, pattern_state
from edge.clock import VirtualClock
from edge.config.model import Outputs, Pin, Relay, SilenceButton

OUTPUTS = Outputs(
    pin_factory="mock",
    buzzer=Pin(pin=17),
    led=Pin(pin=27),
    relay=Relay(pin=22, severity="fire"),
    silence_button=SilenceButton(pin=5),
)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.reset()


@pytest.fixture
async def running(factory: MockFactory) -> AsyncIterator[tuple[Annunciator, VirtualClock]]:
    """An annunciator whose pattern task runs on a virtual clock."""
    clock = VirtualClock()
    annunciator = Annunciator(OUTPUTS, pin_factory=factory, clock=clock)
    task = asyncio.create_task(annunciator.run())
    await clock.advance(0)
    yield annunciator, clock
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    annunciator.close()


def history(factory: MockFactory, pin: int) -> list[bool]:
    return [change.state for change in factory.pin(pin).states]


@pytest.mark.parametrize(
    ("pattern", "elapsed", "expected"),
    [
        ("continuous", 1e6, (True, float("inf"))),
        ("pulsed", 0.0, (True, 0.5)),
        ("pulsed", 0.75, (False, 0.25)),
        ("pulsed", 10.25, (True, 0.25)),
        ("chirp", 0.05, (True, 0.05)),
        ("chirp", 3.0, (False, 2.0)),
    ],
)
def test_pattern_state(pattern: str, elapsed: float, expected: tuple[bool, float]) -> None:
    on, remaining = pattern_state(pattern, elapsed)  # type: ignore[arg-type]
    assert on is expected[0]
    assert remaining == pytest.approx(expected[1])


async def test_pulsed_pattern_for_electrical_alarms_on_the_pin(
    running: tuple[Annunciator, VirtualClock], factory: MockFactory
) -> None:
    annunciator, clock = running
    annunciator.show("critical", "critical")
    assert factory.pin(17).state is True, "on at once, before any task runs"
    await clock.advance(2.0)
    # Initial off, then 1 Hz: on 0.5 s, off 0.5 s, twice in two seconds, and on again at 2 s.
    assert history(factory, 17) == [False] + [True, False] * 2 + [True]
    assert factory.pin(22).state is False, "the relay is for fire"


async def test_fire_is_continuous_and_closes_the_relay(
    running: tuple[Annunciator, VirtualClock], factory: MockFactory
) -> None:
    annunciator, clock = running
    annunciator.show("fire", "fire")
    await clock.advance(60.0)
    assert history(factory, 17) == [False, True]
    assert factory.pin(22).state is True
    assert factory.pin(27).state is True


async def test_device_faults_chirp(
    running: tuple[Annunciator, VirtualClock], factory: MockFactory
) -> None:
    annunciator, clock = running
    annunciator.show("minor", "minor")
    await clock.advance(9.0)
    # 0.1 s chirps at 0 s and 5 s.
    pin = factory.pin(17)
    assert history(factory, 17) == [False, True, False, True, False]
    assert pin.state is False


async def test_worse_alarm_switches_pattern_and_silence_leaves_led_on(
    running: tuple[Annunciator, VirtualClock], factory: MockFactory
) -> None:
    annunciator, clock = running
    annunciator.show("minor", "minor")
    await clock.advance(1.0)
    annunciator.show("fire", "fire")
    await clock.advance(3.0)
    assert history(factory, 17) == [False, True, False, True]
    annunciator.show(None, "fire")
    await clock.advance(3.0)
    assert factory.pin(17).state is False
    assert factory.pin(27).state is True, "the LED shows an active, silenced alarm"
    annunciator.show(None, None)
    assert (factory.pin(27).state, factory.pin(22).state) == (False, False)


async def test_silence_button_press_reaches_the_event_loop(
    running: tuple[Annunciator, VirtualClock], factory: MockFactory
) -> None:
    annunciator, _ = running
    pressed = asyncio.Event()
    annunciator.on_silence = pressed.set
    factory.pin(5).drive_low()  # pull-up button: pressed connects the pin to ground
    await asyncio.wait_for(pressed.wait(), 2.0)
    factory.pin(5).drive_high()


async def test_self_test_runs_every_output_and_restores_quiet(
    running: tuple[Annunciator, VirtualClock], factory: MockFactory
) -> None:
    annunciator, clock = running
    test = asyncio.create_task(annunciator.self_test(seconds=1.0))
    await clock.advance(6.0)
    assert await test == [
        "buzzer continuous",
        "buzzer pulsed",
        "buzzer chirp",
        "led",
        "relay",
    ]
    assert factory.pin(17).state is False
    assert [c.state for c in factory.pin(22).states] == [False, True, False]
    assert not annunciator.sounding


async def test_a_real_alarm_ends_the_self_test(
    running: tuple[Annunciator, VirtualClock], factory: MockFactory
) -> None:
    annunciator, clock = running
    test = asyncio.create_task(annunciator.self_test(seconds=1.0))
    await clock.advance(1.5)
    annunciator.show("fire", "fire")
    await clock.advance(5.0)
    assert await test == ["buzzer continuous"]
    assert annunciator.pattern == "continuous"
    assert factory.pin(17).state is True


def test_active_low_buzzer_drives_pin_low(factory: MockFactory) -> None:
    annunciator = Annunciator(Outputs(buzzer=Pin(pin=6, active_high=False)), pin_factory=factory)
    assert factory.pin(6).state is True
    annunciator.show("fire", "fire")
    assert factory.pin(6).state is False
    assert annunciator.sounding
    annunciator.close()


def test_pin_factory_by_name() -> None:
    assert isinstance(make_pin_factory("mock"), MockFactory)


def test_the_led_is_logged_once_per_change_right_after_its_pin(
    factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    annunciator = Annunciator(OUTPUTS, pin_factory=factory)
    caplog.set_level("INFO", logger="edge.annunciator")
    try:
        annunciator.show("fire", "fire")
        annunciator.show("fire", "fire")  # unchanged: not logged again
        annunciator.show(None, "minor")  # silenced but still active: still lit
        annunciator.show(None, None)
        led = [r.getMessage() for r in caplog.records if r.getMessage().startswith("led")]
        assert led == ["led on", "led off"]
        assert history(factory, 27) == [False, True, False]
    finally:
        annunciator.close()
