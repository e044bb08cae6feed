"""Occupancy: is anyone in the room? Zones map presence evidence to rooms.

Each evidence source (an LD2410 radar's target state, a PIR's motion, a load current) is, at a
given moment:

* ``present``: a reading above its ``above`` within the last ``hold``;
* ``absent``: not present, and it has reported within ``stale_after`` (a PIR reports only
  changes, so once it has reported it never goes stale);
* ``unknown``: it has not reported recently enough to say anything.

A zone is ``occupied`` when any of its sources is present, ``vacant`` when none is present and
at least one is absent, ``unknown`` otherwise. Readings of quality ``bad`` are not evidence.
Every smoke or fire alarm of a device in the zone carries the zone's state and its evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from drivers import Reading
from edge.config.terms import Severity

if TYPE_CHECKING:
    from edge.config.model import Evidence, Zone

__all__ = ["DEFAULT_HOLD", "DEFAULT_STALE", "Occupancy", "ZoneState", "priority"]

ZoneState = Literal["occupied", "vacant", "unknown"]

#: How long presence lasts after the last positive reading, by kind of evidence: a radar sees a
#: still person every frame; a PIR sees only motion; a load stays on after people leave.
DEFAULT_HOLD = {"radar": 30.0, "pir": 300.0, "load": 600.0}
#: How long a source may be silent and still count; a PIR reports only changes.
DEFAULT_STALE: dict[str, float | None] = {"radar": 120.0, "pir": None, "load": 120.0}


@dataclass
class _Source:
    zone: str
    evidence: Evidence
    hold: float
    stale_after: float | None
    last_reading: float | None = None
    last_present: float | None = None
    value: float | None = None

    def state(self, now: float) -> Literal["present", "absent", "unknown"]:
        if self.last_present is not None and now - self.last_present <= self.hold:
            return "present"
        if self.last_reading is not None and (
            self.stale_after is None or now - self.last_reading <= self.stale_after
        ):
            return "absent"
        return "unknown"


class Occupancy:
    """The zones of a site and what their evidence says."""

    def __init__(self, zones: Sequence[Zone]) -> None:
        self.zones = {zone.id: zone for zone in zones}
        self._sources: dict[tuple[str, str], list[_Source]] = {}
        self._by_zone: dict[str, list[_Source]] = {zone.id: [] for zone in zones}
        self._zone_of: dict[str, str] = {}
        for zone in zones:
            for device in zone.devices:
                self._zone_of.setdefault(device, zone.id)
            for evidence in zone.evidence:
                source = _Source(
                    zone.id,
                    evidence,
                    evidence.hold if evidence.hold is not None else DEFAULT_HOLD[evidence.kind],
                    evidence.stale_after
                    if evidence.stale_after is not None
                    else DEFAULT_STALE[evidence.kind],
                )
                self._sources.setdefault((evidence.device, evidence.point), []).append(source)
                self._by_zone[zone.id].append(source)

    def observe(self, reading: Reading) -> None:
        """Take a reading as evidence (a dict lookup for readings that are not evidence)."""
        sources = self._sources.get((reading.device_id, reading.point))
        if sources is None or reading.quality != "good":
            return
        for source in sources:
            source.last_reading = reading.ts
            source.value = reading.value
            if reading.value > source.evidence.above:
                source.last_present = reading.ts

    def zone_of(self, device: str) -> str | None:
        return self._zone_of.get(device)

    def state(self, zone: str, now: float) -> ZoneState:
        states = {source.state(now) for source in self._by_zone[zone]}
        if "present" in states:
            return "occupied"
        if "absent" in states:
            return "vacant"
        return "unknown"

    def report(self, zone: str, now: float) -> dict[str, Any]:
        """The zone's state with its evidence, as an alarm event carries it."""
        return {
            "zone": zone,
            "name": self.zones[zone].name,
            "state": self.state(zone, now),
            "evidence": [
                {
                    "device": s.evidence.device,
                    "point": s.evidence.point,
                    "kind": s.evidence.kind,
                    "state": s.state(now),
                    "value": s.value,
                    "last_reading": s.last_reading,
                    "last_present": s.last_present,
                }
                for s in self._by_zone[zone]
            ],
        }

    def report_for(self, device: str, now: float) -> dict[str, Any] | None:
        zone = self._zone_of.get(device)
        return None if zone is None else self.report(zone, now)


def priority(severity: Severity, occupancy: str | None) -> int:
    """Dispatch priority of an alarm, 1 the most urgent: a fire in an occupied room first,
    then a fire where nobody can say (people may be trapped), then a fire in an empty room,
    then the other severities."""
    if severity == "fire":
        if occupancy == "occupied":
            return 1
        if occupancy == "vacant":
            return 3
        return 2
    return {"critical": 4, "major": 5, "minor": 6}[severity]
