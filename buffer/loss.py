"""Readings shed in memory before they reach the outbox, and the event that reports them.

While the disk refuses writes, submitted records wait in memory. Events always wait (they are
few and each one matters); telemetry waits up to a limit, and what comes beyond it is shed.
Nothing is shed silently: a :class:`LossTally` counts the shed readings per device with their
time range, and the outbox records a ``readings-lost`` event from it as soon as the disk takes
writes again (docs/buffer.md, "Memory in front of the outbox").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["MEMORY_LIMIT", "LossTally"]

#: Readings that may wait in memory for the disk: at 1,000 readings/s more than three minutes,
#: about 40 MiB. Events are never limited.
MEMORY_LIMIT: Final = 200_000


class LossTally:
    """Readings shed since the last report: how many, per device, and their time range."""

    def __init__(self) -> None:
        #: Every reading ever shed (the health message's ``readings_lost``).
        self.total = 0
        self._devices: dict[str, int] = {}
        self._count = 0
        self._first = math.inf
        self._last = -math.inf

    def __bool__(self) -> bool:
        return self._count > 0

    def __len__(self) -> int:
        return self._count

    def add(self, body: Mapping[str, Any]) -> None:
        """Count one shed telemetry body (its ``device`` and ``ts`` fields)."""
        device = body.get("device")
        name = device if isinstance(device, str) else "unknown"
        self._devices[name] = self._devices.get(name, 0) + 1
        self._count += 1
        self.total += 1
        ts = body.get("ts")
        if isinstance(ts, int | float) and math.isfinite(ts):
            self._first = min(self._first, float(ts))
            self._last = max(self._last, float(ts))

    def take_event(self, now: float, reason: str) -> dict[str, Any]:
        """The ``readings-lost`` event body for what was shed so far; starts a new tally."""
        body: dict[str, Any] = {
            "kind": "readings-lost",
            "ts": now,
            "reason": reason,
            "readings": self._count,
            "devices": dict(sorted(self._devices.items())),
            "from": _iso(self._first) if math.isfinite(self._first) else None,
            "to": _iso(self._last) if math.isfinite(self._last) else None,
        }
        self._devices = {}
        self._count = 0
        self._first = math.inf
        self._last = -math.inf
        return body


def _iso(ts: float) -> str | None:
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
