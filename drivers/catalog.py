"""Which device models exist, which kind of bus each needs, and the points each reports.

Modbus products are data files (``drivers/models/*.yaml``), so adding one is adding a file.
UART and GPIO sensors speak their own protocols and each has a driver; they are listed here by
the model name a site file uses, with the points their drivers report (:data:`SERIAL_POINTS`).

The point catalogue (:func:`points_of`) is the one list of what a device of a model can
report: the site file's rules are checked against it, the compact telemetry aliases are
numbered from it, and each point's plausible range of thresholds warns about a value in the
wrong unit. A test holds the fixed points to what the drivers really report.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Final, Literal, TypeAlias

from drivers.modbus.model import ModelError, load_model
from drivers.modbus.model import known_models as modbus_models
from drivers.tilt import TILT_AXES, displacement_point

__all__ = [
    "BUS_FAMILY",
    "GPIO_MODELS",
    "SERIAL_MODELS",
    "SERIAL_POINTS",
    "Family",
    "PointSpec",
    "catalog",
    "device_points",
    "family_of",
    "points_of",
]

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


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One point a device of a model reports."""

    name: str
    unit: str
    #: Names of the bits of a status word, bit 0 first where named.
    bits: tuple[str, ...] = ()
    #: Where an alarm threshold on this point sensibly lies, in its unit (a standard's or the
    #: product's range); a threshold outside it is warned about, never refused. For angles
    #: and lengths (tilt, displacement), which lean either way, it bounds the size.
    plausible: tuple[float, float] | None = None


#: Displacement at the top of a tilt sensor's gauge length: movements that matter to a
#: structure lie between half a millimetre and a few centimetres.
_DISPLACEMENT_PLAUSIBLE: Final = (0.5, 50.0)

#: Points of the UART and GPIO sensor models, in the order their drivers report them
#: (drivers/witmotion/driver.py, drivers/ld2410/driver.py, drivers/pir.py).
SERIAL_POINTS: Final[dict[str, tuple[PointSpec, ...]]] = {
    "witmotion-uart": (
        PointSpec("roll", "°", plausible=(0.05, 30.0)),
        PointSpec("pitch", "°", plausible=(0.05, 30.0)),
        PointSpec("yaw", "°"),
    ),
    "hlk-ld2410": (
        PointSpec("presence", "", plausible=(0.0, 1.0)),
        PointSpec("target_state", "", plausible=(0.0, 3.0)),
        # The radar sees 0.75 m to 6 m.
        PointSpec("moving_distance", "cm", plausible=(20.0, 600.0)),
        PointSpec("moving_energy", "", plausible=(0.0, 100.0)),
        PointSpec("still_distance", "cm", plausible=(20.0, 600.0)),
        PointSpec("still_energy", "", plausible=(0.0, 100.0)),
        PointSpec("detection_distance", "cm", plausible=(20.0, 600.0)),
    ),
    "pir": (PointSpec("presence", "", plausible=(0.0, 1.0)),),
}


@cache
def points_of(model: str) -> tuple[PointSpec, ...] | None:
    """The points a device of ``model`` reports, in its driver's order; None if the model is
    unknown (or its file is broken, which ``edge check-config`` reports on its own)."""
    if model in SERIAL_POINTS:
        return SERIAL_POINTS[model]
    try:
        loaded = load_model(model)
    except (ModelError, OSError):
        return None
    return tuple(
        PointSpec(p.name, p.unit, tuple(name for _, name in p.bits), p.plausible)
        for p in loaded.points
    )


def device_points(model: str, *, gauged: bool = False) -> tuple[PointSpec, ...] | None:
    """The points of one device: its model's, and with a gauge length
    ``<axis>_displacement`` (mm) right after each tilt angle, as the drivers report them."""
    points = points_of(model)
    if points is None or not gauged:
        return points
    result: list[PointSpec] = []
    for point in points:
        result.append(point)
        if point.name in TILT_AXES:
            result.append(
                PointSpec(displacement_point(point.name), "mm", plausible=_DISPLACEMENT_PLAUSIBLE)
            )
    return tuple(result)
