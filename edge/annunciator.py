"""The on-site voice of the gateway: buzzer, LED, relay and silence button through gpiozero.

:meth:`Annunciator.show` is called synchronously from the reading that raised an alarm, before
that reading is buffered or sent, and drives the buzzer pin at once: a full disk or a dead
uplink can never delay the first sound. The rest of a pattern (the off phase of a pulse, the
next chirp) is driven by :meth:`Annunciator.run`, an asyncio task on an injectable clock.
gpiozero's own ``beep``/``blink`` are not used: they run threads that would drive pins behind
the event loop's back.

Patterns by severity (``outputs.patterns``; timings in :data:`PATTERNS`): continuous for fire,
pulsed for critical and major (electrical faults), short chirps for minor (device faults).
The LED is on while any alarm is active, silenced or not; the optional relay is closed while
an alarm at least as severe as ``outputs.relay.severity`` is active.

Pin factories are chosen by configuration (``outputs.pin_factory``), else by gpiozero's own
``GPIOZERO_PIN_FACTORY`` environment variable, else lgpio (every Raspberry Pi, the Pi 5
included), then RPi.GPIO; tests and the demo use gpiozero's MockFactory.

An annunciator whose pins cannot be claimed (no GPIO backend, a pin held by another process,
an output that does not read back as driven) does not stop the gateway: it keeps its state as
if the pins were there, :attr:`Annunciator.failure` says why, and the gateway raises an
``annunciator-failed`` event of severity fire (edge/gateway.py), so a silent buzzer is itself
an alarm rather than a crash loop.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpiozero import LED, Button, Buzzer, OutputDevice

from edge.clock import Clock, SystemClock
from edge.config.terms import SEVERITY_ORDER, PatternName, Severity
from edge.log import fields

if TYPE_CHECKING:
    from edge.config.model import Outputs

__all__ = [
    "AUTO_PIN_FACTORIES",
    "FAULT_PATTERN",
    "NO_BACKEND_FIX",
    "PATTERNS",
    "PIN_FACTORIES",
    "Annunciator",
    "NoPinBackend",
    "make_pin_factory",
    "pattern_state",
    "phase_state",
]

log = logging.getLogger("edge.annunciator")

#: Config name -> (module, class) of gpiozero's pin factories. Imported lazily: most of them
#: need Raspberry Pi libraries that do not exist on a development machine.
PIN_FACTORIES = {
    "mock": ("gpiozero.pins.mock", "MockFactory"),
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
}
#: Tried in this order when neither the site file nor GPIOZERO_PIN_FACTORY names a factory:
#: lgpio drives every Pi's GPIO chip (the Pi 5's RP1 included) through the kernel's character
#: device; RPi.GPIO is the older library on Pis that have it.
AUTO_PIN_FACTORIES = ("lgpio", "rpigpio")
#: What an installer does when no backend works (docs/deploy.md#gpio).
NO_BACKEND_FIX = (
    "reinstall with deploy/install.sh on the Pi (its environment carries lgpio), or install "
    "python3-lgpio; on a bench without GPIO set outputs.pin_factory: mock"
)

#: Each pattern is a cycle of (buzzer on?, seconds) phases, starting with sound.
PATTERNS: dict[PatternName, tuple[tuple[bool, float], ...]] = {
    "continuous": ((True, math.inf),),
    # 1 Hz, half on: unmistakably different from a fire's continuous tone.
    "pulsed": ((True, 0.5), (False, 0.5)),
    # A smoke alarm's low-battery chirp: noticeable, not alarming.
    "chirp": ((True, 0.1), (False, 4.9)),
    "off": ((False, math.inf),),
}

#: A gateway that has no config to run (edge/fault.py): three short beeps every ten seconds,
#: unlike every alarm pattern, so that nobody takes it for a fire or lets it pass for quiet.
FAULT_PATTERN: tuple[tuple[bool, float], ...] = (
    (True, 0.15),
    (False, 0.15),
    (True, 0.15),
    (False, 0.15),
    (True, 0.15),
    (False, 9.25),
)


_RESOLUTION = 1e-6


def pattern_state(pattern: PatternName, elapsed: float) -> tuple[bool, float]:
    """Whether the buzzer is on ``elapsed`` seconds into ``pattern``, and for how much longer."""
    return phase_state(PATTERNS[pattern], elapsed)


def phase_state(phases: tuple[tuple[bool, float], ...], elapsed: float) -> tuple[bool, float]:
    """:func:`pattern_state` of any cycle of (on?, seconds) phases, e.g. :data:`FAULT_PATTERN`."""
    period = sum(seconds for _, seconds in phases)
    position = elapsed % period if math.isfinite(period) else elapsed
    for on, seconds in phases:
        # A phase that has less than a microsecond left is over: clocks in float seconds
        # since 1970 cannot resolve less, and waiting "1e-9 s" would spin.
        if position < seconds - _RESOLUTION:
            return on, seconds - position
        position -= seconds
    return phases[0][0], phases[0][1]  # the cycle starts again


class NoPinBackend(RuntimeError):
    """No GPIO backend could be loaded; the message names each one tried and why."""


def make_pin_factory(name: str | None) -> Any:
    """A gpiozero pin factory for ``name``; ``None``: ``GPIOZERO_PIN_FACTORY``, else the first of
    :data:`AUTO_PIN_FACTORIES` that loads. Raises :class:`NoPinBackend` naming what failed."""
    names = (name,) if name is not None else _wanted_factories()
    failures: list[str] = []
    for candidate in names:
        if candidate not in PIN_FACTORIES:
            failures.append(f"{candidate}: not a pin factory ({', '.join(PIN_FACTORIES)})")
            continue
        module, cls = PIN_FACTORIES[candidate]
        try:
            return getattr(importlib.import_module(module), cls)()
        except Exception as exc:  # ImportError, no /dev/gpiochip*, not a Pi: try the next one
            failures.append(f"{candidate}: {_why(exc)}")
    raise NoPinBackend("no GPIO backend works (" + "; ".join(failures) + f"); {NO_BACKEND_FIX}")


def _wanted_factories() -> tuple[str, ...]:
    chosen = os.environ.get("GPIOZERO_PIN_FACTORY", "").strip().lower()
    return (chosen,) if chosen else AUTO_PIN_FACTORIES


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Unwired:
    """Stands in for an output whose pin could not be claimed: it remembers what it was told,
    so the annunciator's state (and what health reports) stays right without a pin."""

    def __init__(self) -> None:
        self.value: bool = False

    def on(self) -> None:
        self.value = True

    def off(self) -> None:
        self.value = False

    def close(self) -> None:
        self.value = False


class Annunciator:
    """Buzzer patterns by severity, alarm LED, relay and silence button."""

    def __init__(
        self, outputs: Outputs, *, pin_factory: Any = None, clock: Clock | None = None
    ) -> None:
        self.outputs = outputs
        self.clock: Clock = clock if clock is not None else SystemClock()
        #: Called (on the event loop) when the silence button is pressed.
        self.on_silence: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buzzer: Any = _Unwired()
        self._led: Any = None if outputs.led is None else _Unwired()
        self._relay: Any = None if outputs.relay is None else _Unwired()
        self._button: Any = None
        #: Why the pins could not be claimed (None: every output is driven).
        self.failure: str | None = None
        self.pin_factory: Any = pin_factory
        try:
            if self.pin_factory is None:
                self.pin_factory = make_pin_factory(outputs.pin_factory)
            self._claim(self.pin_factory)
        except Exception as exc:  # no backend, a pin in use, an output that does not read back
            self.failure = str(exc) if isinstance(exc, NoPinBackend) else _why(exc)
            self._release()
            self._buzzer = _Unwired()
            self._led = None if outputs.led is None else _Unwired()
            self._relay = None if outputs.relay is None else _Unwired()
        self.pattern: PatternName | None = None
        self._started = 0.0
        self._wake: asyncio.Event | None = None
        self._testing = False
        #: The pattern the alarms ask for (what a self-test returns to).
        self._desired: PatternName | None = None

    def _claim(self, factory: Any) -> None:
        """Claim every output and the button, and read each output back as off."""
        outputs = self.outputs
        self._buzzer = Buzzer(
            outputs.buzzer.pin, active_high=outputs.buzzer.active_high, pin_factory=factory
        )
        if outputs.led is not None:
            self._led = LED(
                outputs.led.pin, active_high=outputs.led.active_high, pin_factory=factory
            )
        if outputs.relay is not None:
            self._relay = OutputDevice(
                outputs.relay.pin,
                active_high=outputs.relay.active_high,
                initial_value=False,
                pin_factory=factory,
            )
        for name, device in (("buzzer", self._buzzer), ("led", self._led), ("relay", self._relay)):
            # gpiozero reads an output's value from its pin: an output that is not at the level
            # it was just driven to is wired to something else (or held by another process).
            if device is not None and bool(device.value):
                raise OSError(f"{name} on GPIO {device.pin} does not read back as off")
        if outputs.silence_button is not None:
            self._button = Button(
                outputs.silence_button.pin,
                pull_up=outputs.silence_button.pull_up,
                pin_factory=factory,
            )
            self._button.when_pressed = self._pressed

    def _release(self) -> None:
        for device in (self._buzzer, self._led, self._relay, self._button):
            if device is not None:
                try:
                    device.close()
                except Exception as exc:  # releasing what half-opened must not raise again
                    log.debug("pin release failed", extra=fields(error=repr(exc)))
        self._button = None

    # -- state ------------------------------------------------------------------------------

    @property
    def sounding(self) -> bool:
        """Whether a buzzer pattern is running (the pin may be in an off phase of it)."""
        return self.pattern is not None and self.pattern != "off"

    def show(self, sounding: Severity | None, worst: Severity | None) -> None:
        """Sound the pattern of ``sounding`` (the worst unsilenced alarm; ``None``: quiet) and
        light the LED and relay for ``worst`` (the worst active alarm). The buzzer pin is
        driven before this returns."""
        pattern: PatternName | None = (
            None if sounding is None else getattr(self.outputs.patterns, sounding)
        )
        # Every pin first, every log line after: a log write can block (a stalled journal),
        # and no output may wait for one.
        previous = self.pattern
        buzzer_changed = self._drive_buzzer(pattern)
        led_changed = self._drive_led(worst)
        if self._relay is not None and self.outputs.relay is not None:
            threshold = SEVERITY_ORDER[self.outputs.relay.severity]
            self._relay.value = worst is not None and SEVERITY_ORDER[worst] <= threshold
        if led_changed:
            # Logged like the buzzer, so a test rig (docs/hil.md) sees the pin change.
            lit = worst is not None
            log.info(
                "led on" if lit else "led off",
                extra=fields(led="on" if lit else "off", severity=worst or "none"),
            )
        if buzzer_changed:
            log.warning(
                "buzzer on" if self.sounding else "buzzer off",
                extra=fields(
                    buzzer="on" if self.sounding else "off",
                    pattern=pattern or "none",
                    was=previous or "none",
                    severity=sounding or "none",
                ),
            )

    def _drive_led(self, worst: Severity | None) -> bool:
        """Light the LED while any alarm is active; True if it changed."""
        if self._led is None:
            return False
        lit = worst is not None
        if lit == bool(self._led.value):
            return False
        self._led.value = lit
        return True

    def _drive_buzzer(self, pattern: PatternName | None) -> bool:
        """Start ``pattern`` unless it runs already (or a self-test runs and the alarms ask
        for quiet); True if the buzzer's pattern changed."""
        self._desired = pattern
        if self._testing:
            if pattern is None:
                return False
            # A real alarm ends a self-test at once.
            self._testing = False
        elif pattern == self.pattern:
            return False
        self._start_pattern(pattern)
        return True

    def _start_pattern(self, pattern: PatternName | None) -> None:
        self.pattern = pattern
        self._started = self.clock.monotonic()
        on = False if pattern is None else PATTERNS[pattern][0][0]
        self._buzzer.value = on
        if self._wake is not None:
            self._wake.set()

    # -- the pattern task -------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the phases of the current pattern; runs until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        try:
            while True:
                if self.pattern is None:
                    await wake.wait()
                    wake.clear()
                    continue
                on, remaining = pattern_state(self.pattern, self.clock.monotonic() - self._started)
                self._buzzer.value = on
                if math.isinf(remaining):
                    await wake.wait()
                else:
                    await self.clock.wait(wake, remaining)
                wake.clear()
        finally:
            self._wake = None
            self._loop = None

    # -- silence button ---------------------------------------------------------------------

    def _pressed(self) -> None:
        # gpiozero calls this on its own thread: hand the press to the event loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._silence)

    def _silence(self) -> None:
        pattern = self.pattern
        if self.on_silence is not None:
            self.on_silence()  # drives the buzzer; the log line follows the pins
        log.warning("silence button pressed", extra=fields(pattern=pattern or "none"))

    # -- self-test --------------------------------------------------------------------------

    @property
    def testing(self) -> bool:
        """Whether a self-test drives the outputs now."""
        return self._testing

    async def self_test(
        self, seconds: float = 1.0, outputs: tuple[str, ...] = ("buzzer", "led", "relay")
    ) -> list[str]:
        """Sound every pattern for ``seconds``, flash the LED and pulse the relay (those of
        ``outputs``), then put everything back as it was. Returns what was exercised, for the
        caller's report (a guided commissioning asks about one output at a time)."""
        done: list[str] = []
        led_value = None if self._led is None else self._led.value
        relay_value = None if self._relay is None else self._relay.value
        never = asyncio.Event()
        self._testing = True
        try:
            for pattern in ("continuous", "pulsed", "chirp") if "buzzer" in outputs else ():
                self._start_pattern(pattern)
                await self.clock.wait(never, seconds)
                if not self._testing:
                    break
                done.append(f"buzzer {pattern}")
            for name, device in (("led", self._led), ("relay", self._relay)):
                if device is None or not self._testing or name not in outputs:
                    continue
                device.on()
                await self.clock.wait(never, seconds)
                device.off()
                done.append(name)
        finally:
            aborted = not self._testing
            self._testing = False
            if not aborted:
                self._start_pattern(self._desired)
            if self._led is not None:
                self._led.value = led_value
            if self._relay is not None:
                self._relay.value = relay_value
        log.info(
            "self-test done" if not aborted else "self-test ended by an alarm",
            extra=fields(exercised=",".join(done)),
        )
        return done

    def close(self) -> None:
        """Release the pins (the buzzer goes quiet, the relay opens)."""
        self.pattern = None
        for device in (self._buzzer, self._led, self._relay, self._button):
            if device is not None:
                device.close()
