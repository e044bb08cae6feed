"""Words of the site file that the running gateway needs without the site model.

The model (edge/config/model.py) uses them for validation; the run path imports them from
here, so it never loads pydantic (docs/architecture.md, "The site file's model stays out of
the running gateway").
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "BCM_PINS",
    "DEFAULT_FAULT_PIN",
    "PHONE_NUMBER",
    "SEVERITIES",
    "SEVERITY_ORDER",
    "PatternName",
    "Severity",
]

#: BCM numbers of the GPIOs on the Raspberry Pi 40-pin header.
BCM_PINS = range(2, 28)
#: BCM pin of the buzzer when no valid configuration says otherwise (the example wiring):
#: fault mode and a refused SD card sound on it.
DEFAULT_FAULT_PIN = 17

Severity = Literal["fire", "critical", "major", "minor"]
#: Most severe first: the annunciator sounds the pattern of the worst unsilenced alarm.
SEVERITIES: tuple[Severity, ...] = ("fire", "critical", "major", "minor")
#: Severity -> rank, 0 the most severe.
SEVERITY_ORDER: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}

PatternName = Literal["continuous", "pulsed", "chirp", "off"]

#: A number the network takes: an optional + (international) and 3-20 ASCII digits (``[0-9]``,
#: not ``\d``: full-width or Arabic-Indic digits would not encode as semi-octets or dial).
PHONE_NUMBER = re.compile(r"\+?[0-9]{3,20}")
