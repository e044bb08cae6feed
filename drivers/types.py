"""The values a driver hands to the gateway core."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Reading:
    """One scaled value of one point of one device, as sampled on the wire.

    ``ts`` is wall-clock UTC seconds (for the platform); ``mono`` is ``time.monotonic()`` at
    the same instant, so latency figures do not jump when the clock is stepped by NTP.
    """

    device_id: str
    point: str
    value: float
    unit: str
    ts: float
    mono: float
    #: ``"bad"`` when the device flagged the value as unreliable (sensor error, out of range):
    #: it is kept and sent, but never raises an alarm by itself.
    quality: Literal["good", "bad"] = "good"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device went offline (stopped answering) or came back online."""

    device_id: str
    online: bool
    ts: float
    reason: str = ""


#: Drivers push what they sample into a sink. It is synchronous on purpose: the alarm path
#: (rules -> buzzer) runs inside this call, before the driver polls again.
Sink = Callable[[Reading | DeviceStatus], None]
