"""Tilt angle to displacement: what the district's tilt rule is written in.

The rule is "tilt over 4 mm for two consecutive months" at a gauge length fixed per device
(a storey height, a 1 m reference bar). A sensor reports angles; over a gauge length ``L``
the top of the gauge moves ``d = L x tan(angle)``. At 1 m, 4 mm is 0.229 degrees.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["TILT_AXES", "check_gauge_length", "displacement_mm", "displacement_point"]

#: The angles that tilt a structure; yaw (heading) does not.
TILT_AXES: Final = ("roll", "pitch")


def check_gauge_length(metres: object) -> float:
    """The gauge length as a float, or ``ValueError`` if it is not a positive length."""
    if isinstance(metres, bool) or not isinstance(metres, int | float):
        raise ValueError(f"gauge_length must be a number of metres, not {metres!r}")
    if not (math.isfinite(metres) and 0 < metres <= 1000):
        raise ValueError(f"gauge_length must be in (0, 1000] metres, not {metres!r}")
    return float(metres)


def displacement_mm(angle_deg: float, gauge_length_m: float) -> float:
    """Horizontal displacement in mm at the top of a ``gauge_length_m`` gauge tilted by
    ``angle_deg``; rounded to 0.01 mm (far below what a 0.0055-degree sensor resolves)."""
    return round(gauge_length_m * 1000 * math.tan(math.radians(angle_deg)), 2)


def displacement_point(axis: str) -> str:
    """The reading name of an axis's displacement, e.g. ``roll_displacement``."""
    return f"{axis}_displacement"
