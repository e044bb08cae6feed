"""How the gateway is doing, built in one place: the health message, get-status, the status line.

:func:`gateway_health` gives the fields of the health message (edge/schemas/health.json) that
the gateway knows: the outbox's depth and the age of its oldest record, the readings lost, the
buses' counters, the alarms, the buzzer, storm mode, the thresholds set remotely, the storage
policies' counts. The uplink publishes it with its own numbers added (its counters and state,
the topics a broker refuses) and nothing else; ``get-status`` answers from it.
:func:`log_status` writes the short form to the log every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from buffer import STREAMS, LossTally, Outbox
from edge.annunciator import Annunciator
from edge.buses import FieldDriver, bus_health
from edge.log import fields, lines_dropped
from edge.rules import AlarmBook, RuleEngine
from edge.storage_policy import Storage
from edge.storm import StormMode

if TYPE_CHECKING:
    from edge.uplink import Uplink

__all__ = ["Watched", "buffer_health", "gateway_health", "log_status"]

# The gateway's logger, as before this module was split out of it: the journal reads the same.
log = logging.getLogger("edge.gateway")


class Watched(Protocol):
    """What the health of a gateway is read from (:class:`edge.gateway.Gateway` has it)."""

    @property
    def boot_time(self) -> float: ...
    @property
    def outbox(self) -> Outbox | None: ...
    @property
    def uplink(self) -> Uplink | None: ...
    @property
    def buses(self) -> Mapping[str, FieldDriver]: ...
    @property
    def alarms(self) -> AlarmBook: ...
    @property
    def annunciator(self) -> Annunciator: ...
    @property
    def rules(self) -> RuleEngine: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def pending_lost(self) -> LossTally: ...
    @property
    def pending_in_memory(self) -> int: ...
    @property
    def storm(self) -> StormMode: ...


async def buffer_health(outbox: Outbox | None, now: float | None = None) -> dict[str, Any]:
    """``buffer_rows``, ``buffer_streams`` and ``oldest_unsent_age_s`` (None when nothing
    waits, or before the outbox is open) at ``now`` (POSIX seconds, default: now)."""
    depth: dict[str, int] = {}
    oldest: float | None = None
    if outbox is not None:
        depth = await outbox.depth()
        now = time.time() if now is None else now
        for stream in STREAMS:
            try:
                # One row from the left edge of the stream's index: cheap at any depth.
                first = await outbox.peek(stream, 1) if depth.get(stream) else []
            except Exception:
                continue
            if first:
                age = max(0.0, now - first[0].created)
                oldest = age if oldest is None else max(oldest, age)
    return {
        "buffer_rows": sum(depth.values()),
        "buffer_streams": {"event": depth.get("event", 0), "telemetry": depth.get("telemetry", 0)},
        "oldest_unsent_age_s": None if oldest is None else round(oldest, 3),
    }


async def gateway_health(gateway: Watched) -> dict[str, Any]:
    """The gateway's part of the health message: everything but the uplink's own numbers."""
    buffer = await buffer_health(gateway.outbox)
    buses = bus_health(gateway.buses)
    outbox = gateway.outbox
    return {
        "uptime_s": round(time.time() - gateway.boot_time, 3),
        **buffer,
        "pending_in_memory": gateway.pending_in_memory,
        "readings_lost": gateway.pending_lost.total + (0 if outbox is None else outbox.lost.total),
        "log_lines_dropped": lines_dropped(),
        "bus_errors": {
            bus: int(b.get("errors", 0)) + int(b.get("timeouts", 0)) for bus, b in buses.items()
        },
        "buses": buses,
        "active_alarms": len(gateway.alarms.alarms),
        "buzzer": "on" if gateway.annunciator.sounding else "off",
        "annunciator": "ok" if gateway.annunciator.failure is None else "failed",
        "storm": gateway.storm.describe(),
        "threshold_overrides": [o.dump() for o in gateway.rules.overrides],
        "storage": {
            "polled": gateway.storage.polled,
            "stored": gateway.storage.stored,
            "held_for_alarm_windows": gateway.storage.ring_size(),
        },
    }


async def log_status(gateway: Watched, interval: float) -> None:
    """Log a status line every ``interval`` seconds: buzzer, alarms, outbox, uplink."""
    while True:
        await asyncio.sleep(interval)
        outbox = gateway.outbox
        depth = await outbox.depth() if outbox is not None else {}
        uplink = gateway.uplink
        log.info(
            "status",
            extra=fields(
                buzzer="on" if gateway.annunciator.sounding else "off",
                active_alarms=len(gateway.alarms.alarms),
                silenced=sum(1 for a in gateway.alarms.alarms.values() if a.silenced),
                outbox_events=depth.get("event", 0),
                outbox_telemetry=depth.get("telemetry", 0),
                pending=gateway.pending_in_memory,
                uplink=uplink.state if uplink is not None else "waiting",
            ),
        )
