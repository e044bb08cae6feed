"""Units of measurement a site file may write a threshold in, and how they convert.

A point declares its unit (``mA``, ``mm``, ``°C``...). A threshold written in another unit of
the same dimension is converted to the point's unit (``0.4 cm`` on a point in mm is 4 mm); a
unit of another dimension, or one not listed here, is refused. Only units that differ from
each other by a factor are convertible: temperatures are taken in degrees Celsius only,
because a Fahrenheit or kelvin threshold converted by a factor would be wrong and converted
with an offset is too easy to misread on site.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final

__all__ = ["UnitError", "convert", "dimension_of", "format_quantity", "spellings"]


class UnitError(ValueError):
    """A unit that is unknown, or cannot be converted to the wanted one."""


@dataclass(frozen=True, slots=True)
class _Unit:
    dimension: str
    #: Value in the dimension's base unit = value x factor.
    factor: float


_UNITS: Final[dict[str, _Unit]] = {
    # current
    "A": _Unit("current", 1.0),
    "mA": _Unit("current", 1e-3),
    "µA": _Unit("current", 1e-6),
    "kA": _Unit("current", 1e3),
    # voltage
    "V": _Unit("voltage", 1.0),
    "mV": _Unit("voltage", 1e-3),
    "kV": _Unit("voltage", 1e3),
    # length and displacement
    "m": _Unit("length", 1.0),
    "cm": _Unit("length", 1e-2),
    "mm": _Unit("length", 1e-3),
    "µm": _Unit("length", 1e-6),
    # temperature: Celsius only (see the module's docstring)
    "°C": _Unit("temperature", 1.0),
    # angle
    "°": _Unit("angle", 1.0),
    # power
    "W": _Unit("power", 1.0),
    "kW": _Unit("power", 1e3),
    # time
    "s": _Unit("time", 1.0),
    "ms": _Unit("time", 1e-3),
    # smoke obscuration
    "%/m": _Unit("obscuration", 1.0),
    # ratios
    "%": _Unit("ratio", 1.0),
}

#: Other ways of writing a unit: ASCII stand-ins for µ and °, and common spellings.
_ALIASES: Final[dict[str, str]] = {
    "uA": "µA",
    "μA": "µA",  # Greek mu, which NFKC does not fold into the micro sign
    "um": "µm",
    "μm": "µm",
    "degC": "°C",
    "℃": "°C",
    "C": "°C",
    "deg": "°",
    "degree": "°",
    "degrees": "°",
}

#: Units refused with a reason rather than as unknown.
_REFUSED: Final[dict[str, str]] = {
    "°F": "temperatures are in degrees Celsius (°C); convert the value",
    "degF": "temperatures are in degrees Celsius (°C); convert the value",
    "℉": "temperatures are in degrees Celsius (°C); convert the value",
    "F": "temperatures are in degrees Celsius (°C); convert the value",
    "K": "temperatures are in degrees Celsius (°C); convert the value",
}


def _canonical(unit: str) -> str:
    text = unit.strip()
    if text in _UNITS or text in _ALIASES:
        return _ALIASES.get(text, text)
    folded = unicodedata.normalize("NFKC", text)
    return _ALIASES.get(folded, folded)


def dimension_of(unit: str) -> str | None:
    """The dimension of ``unit`` (``current``, ``length``...), None for a unit not listed."""
    known = _UNITS.get(_canonical(unit))
    return None if known is None else known.dimension


def spellings(dimension: str) -> list[str]:
    """The units of ``dimension``, for messages."""
    return [name for name, unit in _UNITS.items() if unit.dimension == dimension]


def convert(value: float, written: str, wanted: str) -> float:
    """``value`` in unit ``written``, expressed in unit ``wanted``.

    Raises :class:`UnitError` when ``written`` is unknown, refused, or of another dimension
    than ``wanted``. A point without a unit (``""``) takes only numbers with no unit.
    """
    source, target = _canonical(written), _canonical(wanted)
    if source == target:
        return value
    if source in _REFUSED or written.strip() in _REFUSED:
        raise UnitError(_REFUSED.get(source) or _REFUSED[written.strip()])
    if target == "":
        raise UnitError(f"the point has no unit; write the number alone (not '{written}')")
    have, want = _UNITS.get(source), _UNITS.get(target)
    if have is None:
        hint = f"; the point is in '{wanted}'"
        if want is not None:
            hint += f" (units of the same kind: {', '.join(spellings(want.dimension))})"
        raise UnitError(f"unknown unit '{written}'{hint}")
    if want is None or have.dimension != want.dimension:
        raise UnitError(
            f"'{written}' is a unit of {have.dimension}, but the point is in '{wanted}'"
        )
    # Round away the binary noise of the factors (0.4 cm is 4 mm, not 4.000000000000001).
    return float(f"{value * have.factor / want.factor:.12g}")


def format_quantity(value: float, unit: str) -> str:
    """``4 mm``, ``300 mA``, ``2`` (no unit)."""
    return f"{value:g} {unit}" if unit else f"{value:g}"
