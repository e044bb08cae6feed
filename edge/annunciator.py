"""The on-site voice of the gateway: buzzer and LED through gpiozero.

The annunciator is driven synchronously from the reading that raised an alarm, before that
reading is buffered or sent, so a full disk or a dead uplink can never delay the buzzer.
Pin factories are chosen by configuration (``outputs.pin_factory``), else by gpiozero's own
``GPIOZERO_PIN_FACTORY`` environment variable; tests and the demo use gpiozero's MockFactory.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

from gpiozero import LED, Buzzer

from edge.config.model import Outputs
from edge.log import fields
from edge.rules import Transition

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


def make_pin_factory(name: str | None) -> Any:
    """A gpiozero pin factory for ``name``; ``None`` lets gpiozero choose (env var or default)."""
    if name is None:
        return None
    module, cls = PIN_FACTORIES[name]
    return getattr(importlib.import_module(module), cls)()


class Annunciator:
    """Buzzer and LED on while any alarm is active."""

    def __init__(self, outputs: Outputs, *, pin_factory: Any = None) -> None:
        self.pin_factory = (
            pin_factory if pin_factory is not None else make_pin_factory(outputs.pin_factory)
        )
        self._buzzer = Buzzer(
            outputs.buzzer.pin, active_high=outputs.buzzer.active_high, pin_factory=self.pin_factory
        )
        self._led = (
            None
            if outputs.led is None
            else LED(
                outputs.led.pin, active_high=outputs.led.active_high, pin_factory=self.pin_factory
            )
        )
        self._active: set[tuple[str, str]] = set()

    @property
    def sounding(self) -> bool:
        return bool(self._buzzer.is_active)

    def apply(self, transitions: Iterable[Transition]) -> None:
        """Follow alarm transitions: on at the first active alarm, off when none is left."""
        for transition in transitions:
            if transition.kind == "raised":
                self._active.add(transition.alarm_key)
            else:
                self._active.discard(transition.alarm_key)
        should_sound = bool(self._active)
        if should_sound == self.sounding:
            return
        if should_sound:
            self._buzzer.on()
            if self._led is not None:
                self._led.on()
        else:
            self._buzzer.off()
            if self._led is not None:
                self._led.off()
        log.warning(
            "buzzer on" if should_sound else "buzzer off",
            extra=fields(buzzer="on" if should_sound else "off", active_alarms=len(self._active)),
        )

    def close(self) -> None:
        """Release the pins (the buzzer goes quiet)."""
        self._buzzer.close()
        if self._led is not None:
            self._led.close()
