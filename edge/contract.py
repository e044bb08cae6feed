"""Message contract v1 between a gateway and the district platform.

Topics and payloads are built here and nowhere else, so the wire format has one owner.
``docs/contract.md`` describes the same thing for the platform side, with examples.

Three kinds of message, all compact UTF-8 JSON:

* telemetry (``{prefix}/{gateway_id}/telemetry``): a batch of readings, ``seq_first``/``seq_last``;
* event (``{prefix}/{gateway_id}/events``): one alarm or device event, ``seq``;
* status (``{prefix}/{gateway_id}/status``, retained, also the MQTT will): online/offline.

``message_id`` of telemetry and events is ``"{epoch}:{first_seq}-{last_seq}"``: the same rows sent
again after a reconnect carry the same id, so the platform can drop the duplicate. Timestamps on
the wire are UTC ISO-8601 with milliseconds and a trailing ``Z``; in the outbox they are float
seconds.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, get_args

from drivers.types import Reading

__all__ = [
    "CONTRACT_VERSION",
    "EVENT_KINDS",
    "SCHEMA_ACK",
    "SCHEMA_COMMAND",
    "SCHEMA_EVENT",
    "SCHEMA_HEALTH",
    "SCHEMA_METADATA",
    "SCHEMA_STATUS",
    "SCHEMA_TELEMETRY",
    "Carried",
    "EventKind",
    "event_body",
    "event_message",
    "events_topic",
    "iso_utc",
    "message_id",
    "reading_body",
    "status_message",
    "status_topic",
    "telemetry_message",
    "telemetry_topic",
]

CONTRACT_VERSION: Final = 1
SCHEMA_TELEMETRY: Final = "edge.telemetry/1"
SCHEMA_EVENT: Final = "edge.event/1"
SCHEMA_STATUS: Final = "edge.status/1"
# Defined by the JSON Schemas in edge/schemas/ (docs/asyncapi.yaml); not all emitted yet.
SCHEMA_HEALTH: Final = "edge.health/1"
SCHEMA_METADATA: Final = "edge.metadata/1"
SCHEMA_COMMAND: Final = "edge.command/1"
SCHEMA_ACK: Final = "edge.ack/1"

EventKind = Literal[
    "alarm-raised",
    "alarm-cleared",
    # The alarm lifecycle (docs/rules.md): worse severity, silenced, sounding again after the
    # re-arm time, the room's occupancy changed while active.
    "alarm-escalated",
    "alarm-silenced",
    "alarm-resounded",
    "alarm-updated",
    # The SMS fallback: one event per message, with its result.
    "sms-sent",
    "sms-failed",
    "device-offline",
    "device-online",
    "gateway-started",
    # What downlink commands changed (docs/commands.md): a rule threshold set remotely, storm
    # mode (faster polling, tighter thresholds) switched on and ended, a pushed site config
    # applied, refused, or rolled back because it did not start.
    "threshold-changed",
    "storm-mode-started",
    "storm-mode-ended",
    "config-applied",
    "config-rejected",
    "config-rolled-back",
    # Written by the outbox itself (buffer/), in the same transaction as what they report.
    "buffer-reset",
    "buffer-thinned",
    "buffer-dropped",
]
EVENT_KINDS: Final[frozenset[str]] = frozenset(get_args(EventKind))

#: Envelope fields of an event message; an event body may not use them for its own fields.
_EVENT_RESERVED: Final = frozenset(
    {
        "schema",
        "gateway_id",
        "epoch",
        "message_id",
        "seq",
        "sent_at",
        "clock_synced",
        "historical",
        "ts",
        "kind",
    }
)


class Carried(Protocol):
    """A stored record a message carries: its seq and its outbox body (``buffer.Record`` fits)."""

    @property
    def seq(self) -> int: ...

    @property
    def body(self) -> Mapping[str, Any]: ...


# --- topics -------------------------------------------------------------------------------------


def telemetry_topic(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/telemetry``."""
    return f"{prefix}/{gateway_id}/telemetry"


def events_topic(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/events``."""
    return f"{prefix}/{gateway_id}/events"


def status_topic(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/status`` (retained)."""
    return f"{prefix}/{gateway_id}/status"


# --- outbox bodies: what producers submit --------------------------------------------------------


def reading_body(reading: Reading) -> dict[str, Any]:
    """The outbox body of one reading (stream ``"telemetry"``)."""
    return {
        "device": reading.device_id,
        "point": reading.point,
        "value": reading.value,
        "unit": reading.unit,
        "ts": reading.ts,
    }


def event_body(kind: EventKind, ts: float, **fields: Any) -> dict[str, Any]:
    """The outbox body of one event (stream ``"event"``): ``kind``, ``ts`` and its own fields.

    E.g. ``event_body("alarm-raised", ts, device="efm-1", rule="residual-current", value=312.0)``.
    Field names of the envelope (``seq``, ``message_id``, ...) are refused.
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {sorted(EVENT_KINDS)}")
    clash = _EVENT_RESERVED & fields.keys()
    if clash:
        raise ValueError(f"event fields {sorted(clash)} are reserved by the envelope")
    return {"kind": kind, "ts": ts, **fields}


# --- messages: what goes on the wire -------------------------------------------------------------


def iso_utc(ts: float) -> str:
    """``2024-05-01T08:30:00.125Z`` from POSIX seconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_id(epoch: str, first_seq: int, last_seq: int) -> str:
    """The id of a message carrying the rows ``first_seq..last_seq`` of the outbox ``epoch``."""
    return f"{epoch}:{first_seq}-{last_seq}"


def telemetry_message(
    gateway_id: str,
    epoch: str,
    records: Sequence[Carried],
    *,
    clock_synced: bool,
    historical: bool,
    sent_at: float | None = None,
) -> bytes:
    """A telemetry batch carrying ``records`` (outbox telemetry rows, oldest first).

    ``historical``: the rows waited through an outage (backfill) rather than being live data.
    """
    if not records:
        raise ValueError("a telemetry message carries at least one record")
    first, last = records[0].seq, records[-1].seq
    readings = [
        {
            "seq": r.seq,
            "device": r.body.get("device"),
            "point": r.body.get("point"),
            "value": r.body.get("value"),
            "unit": r.body.get("unit"),
            "ts": _iso_or_none(r.body.get("ts")),
        }
        for r in records
    ]
    return _dumps(
        {
            "schema": SCHEMA_TELEMETRY,
            "gateway_id": gateway_id,
            "epoch": epoch,
            "message_id": message_id(epoch, first, last),
            "seq_first": first,
            "seq_last": last,
            "sent_at": iso_utc(time.time() if sent_at is None else sent_at),
            "clock_synced": clock_synced,
            "historical": historical,
            "readings": readings,
        }
    )


def event_message(
    gateway_id: str,
    epoch: str,
    record: Carried,
    *,
    clock_synced: bool,
    historical: bool,
    sent_at: float | None = None,
) -> bytes:
    """One event carrying one outbox event row: the envelope, then the body's own fields."""
    body = dict(record.body)
    kind = body.pop("kind", None)
    ts = body.pop("ts", None)
    envelope = {
        "schema": SCHEMA_EVENT,
        "gateway_id": gateway_id,
        "epoch": epoch,
        "message_id": message_id(epoch, record.seq, record.seq),
        "seq": record.seq,
        "sent_at": iso_utc(time.time() if sent_at is None else sent_at),
        "clock_synced": clock_synced,
        "historical": historical,
        "ts": _iso_or_none(ts),
        "kind": kind,
    }
    # The envelope wins over a body field of the same name (event_body refuses those anyway).
    return _dumps({**envelope, **{k: v for k, v in body.items() if k not in envelope}})


def status_message(
    gateway_id: str,
    epoch: str,
    state: Literal["online", "offline"],
    *,
    version: str,
    boot_time: float,
    config_hash: str,
    clock_synced: bool,
    sent_at: float | None = None,
) -> bytes:
    """The retained status. The offline one is also the MQTT will, built at connect time.

    ``config_hash`` identifies the site file the gateway runs (empty when unknown).
    """
    return _dumps(
        {
            "schema": SCHEMA_STATUS,
            "gateway_id": gateway_id,
            "epoch": epoch,
            "message_id": str(uuid.uuid4()),
            "sent_at": iso_utc(time.time() if sent_at is None else sent_at),
            "clock_synced": clock_synced,
            "state": state,
            "version": version,
            "boot_time": iso_utc(boot_time),
            "config_hash": config_hash,
        }
    )


def _iso_or_none(ts: object) -> str | None:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return iso_utc(float(ts))
    return None


def _dumps(obj: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        # NaN/Infinity are not JSON; a sensor glitch must not wedge the uplink on one row.
        text = json.dumps(_finite(obj), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
