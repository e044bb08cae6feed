"""Which device models exist and which kind of bus each needs.

Modbus products are data files (``drivers/models/*.yaml``), so adding one is adding a file.
UART and GPIO sensors speak their own protocols and each has a driver; they are listed here by
the model name a site file uses.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

from drivers.modbus.model import known_models as modbus_models

__all__ = ["BUS_FAMILY", "GPIO_MODELS", "SERIAL_MODELS", "Family", "catalog", "family_of"]

Family: TypeAlias = Literal["modbus", "serial", "gpio"]

#: UART sensors: model name -> what it is and its default baud rate.
SERIAL_MODELS: Final[dict[str, tuple[str, int]]] = {
    "witmotion-uart": ("WitMotion tilt module, UART protocol (0x55 frames)", 9600),
    "hlk-ld2410": ("HLK-LD2410 mmWave presence radar", 256000),
}
#: GPIO sensors: model name -> what it is.
GPIO_MODELS: Final[dict[str, str]] = {
    "pir": "PIR motion sensor (gpiozero MotionSensor)",
}
#: Bus kind (site file) -> the family of models it carries.
BUS_FAMILY: Final[dict[str, Family]] = {
    "modbus-tcp": "modbus",
    "modbus-rtu": "modbus",
    "serial": "serial",
    "gpio": "gpio",
}


def catalog() -> dict[str, Family]:
    """Every known model name and its family."""
    models: dict[str, Family] = dict.fromkeys(modbus_models(), "modbus")
    models |= dict.fromkeys(SERIAL_MODELS, "serial")
    models |= dict.fromkeys(GPIO_MODELS, "gpio")
    return models


def family_of(model: str) -> Family | None:
    """The family of ``model``, None if unknown."""
    return catalog().get(model)
