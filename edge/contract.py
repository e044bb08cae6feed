"""Message contract v1 between a gateway and the district platform.

Topics and payloads are built here and nowhere else, so the wire format has one owner.
``docs/contract.md`` describes the same thing for the platform side, with examples.

The kinds of message, all compact UTF-8 JSON (optionally deflated, see :func:`compress`):

* telemetry (``{prefix}/{gateway_id}/telemetry``): a batch of readings, ``seq_first``/``seq_last``;
  ``edge.telemetry/1`` names every reading in full (the readable form), ``edge.telemetry/2`` is
  the compact columnar form that refers to points by the aliases of the metadata message;
* event (``{prefix}/{gateway_id}/events``): one alarm or device event, ``seq``;
* status (``{prefix}/{gateway_id}/status``, retained, also the MQTT will): online/offline;
* metadata (``{prefix}/{gateway_id}/metadata``, retained): the devices, where they are, their
  points with units and aliases;
* health (``{prefix}/{gateway_id}/health``): buffer depth, bus errors, uplink counters.

``message_id`` of telemetry and events is ``"{epoch}:{first_seq}-{last_seq}"``: the same rows sent
again after a reconnect carry the same id, so the platform can drop the duplicate. Timestamps on
the wire are UTC ISO-8601 with milliseconds and a trailing ``Z``; in the outbox they are float
seconds.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

from drivers.catalog import SERIAL_POINTS, device_points
from drivers.types import Reading
from edge.schemas import ContractError

if TYPE_CHECKING:
    from edge.config.model import SiteConfig
    from edge.storage_policy import Storage

__all__ = [
    "COMPRESS_LEVEL",
    "CONTRACT_VERSION",
    "EVENT_KINDS",
    "FIXED_POINTS",
    "MAX_INFLATED",
    "SCHEMA_ACK",
    "SCHEMA_COMMAND",
    "SCHEMA_EVENT",
    "SCHEMA_HEALTH",
    "SCHEMA_METADATA",
    "SCHEMA_STATUS",
    "SCHEMA_TELEMETRY",
    "SCHEMA_TELEMETRY_COMPACT",
    "WINDOWS",
    "Aliases",
    "Carried",
    "ContractError",
    "EventKind",
    "Topics",
    "acks_topic",
    "commands_topic",
    "compress",
    "decode_payload",
    "decode_telemetry",
    "event_body",
    "event_message",
    "events_topic",
    "fleet_filter",
    "gateway_filter",
    "health_message",
    "health_topic",
    "iso_utc",
    "message_id",
    "metadata_message",
    "metadata_topic",
    "reading_body",
    "shared_filter",
    "status_message",
    "status_topic",
    "telemetry_message",
    "telemetry_topic",
]

CONTRACT_VERSION: Final = 1
SCHEMA_TELEMETRY: Final = "edge.telemetry/1"
#: The compact columnar telemetry (docs/contract.md): points by alias, seqs and times implicit.
SCHEMA_TELEMETRY_COMPACT: Final = "edge.telemetry/2"
SCHEMA_EVENT: Final = "edge.event/1"
SCHEMA_STATUS: Final = "edge.status/1"
SCHEMA_HEALTH: Final = "edge.health/1"
SCHEMA_METADATA: Final = "edge.metadata/1"
SCHEMA_COMMAND: Final = "edge.command/1"
#: zlib level of :func:`compress` (tests/benchmarks/wire.py, batches of 100 / 1000 readings):
#: level 1 gives 5.1 / 2.2 bytes a reading, 6 gives 4.9 / 1.8 for under 0.1 µs a reading more,
#: 9 nothing more. The uplink's budget is 20 µs a reading (50 000 a second).
COMPRESS_LEVEL: Final = 6
#: Largest inflated payload :func:`decode_payload` accepts: far above a 10 000-reading batch,
#: far below what hurts a receiver (a deflate bomb inflates 1000:1).
MAX_INFLATED: Final = 16 * 2**20
SCHEMA_ACK: Final = "edge.ack/1"
#: Marks of readings kept at full rate around an alarm (edge/storage_policy.py): ``pre``, from
#: the memory of the seconds before it (not points of the policy's line); ``post``, after it.
WINDOWS: Final = ("pre", "post")

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
    # Alarm phone calls (docs/rules.md): every attempt placed, then answered or failed.
    "call-placed",
    "call-answered",
    "call-failed",
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
    # The site file was unusable at start: the gateway runs its last good config or, without
    # one, only sounds a fault and reports (edge/fault.py).
    "config-invalid",
    # The buzzer, LED or relay pins could not be claimed (no GPIO backend, a pin in use): the
    # gateway runs on, and a silent buzzer is reported as a fire-severity alarm of its own.
    "annunciator-failed",
    # Written by the outbox itself (buffer/), in the same transaction as what they report.
    "buffer-reset",
    "buffer-thinned",
    "buffer-dropped",
    # Readings shed in memory before the outbox (the disk refused writes for long).
    "readings-lost",
    # An installer's commissioning record (edge commission; docs/commissioning.md).
    "commissioned",
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


def metadata_topic(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/metadata`` (retained)."""
    return f"{prefix}/{gateway_id}/metadata"


def health_topic(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/health``."""
    return f"{prefix}/{gateway_id}/health"


def commands_topic(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/commands``: the platform's commands to one gateway."""
    return f"{prefix}/{gateway_id}/commands"


def acks_topic(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/acks``: the gateway's answers to them."""
    return f"{prefix}/{gateway_id}/acks"


def gateway_filter(prefix: str, gateway_id: str) -> str:
    """``{prefix}/{gateway_id}/#``: every topic of one gateway (a subscription filter)."""
    return f"{prefix}/{gateway_id}/#"


def fleet_filter(prefix: str, kind: str = "#") -> str:
    """``{prefix}/+/{kind}``: one kind of topic (``events``, ``status``, ...) of every gateway,
    or all of them with the default ``#`` (a subscription filter)."""
    return f"{prefix}/+/{kind}"


def shared_filter(group: str, topic_filter: str) -> str:
    """``$share/{group}/{topic_filter}``: an MQTT 5 shared subscription, each message to one
    subscriber of the group."""
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one gateway under one prefix."""

    telemetry: str
    events: str
    status: str
    metadata: str
    health: str
    commands: str
    acks: str

    @classmethod
    def of(cls, prefix: str, gateway_id: str) -> Topics:
        return cls(
            telemetry=telemetry_topic(prefix, gateway_id),
            events=events_topic(prefix, gateway_id),
            status=status_topic(prefix, gateway_id),
            metadata=metadata_topic(prefix, gateway_id),
            health=health_topic(prefix, gateway_id),
            commands=commands_topic(prefix, gateway_id),
            acks=acks_topic(prefix, gateway_id),
        )


# --- outbox bodies: what producers submit --------------------------------------------------------


def reading_body(reading: Reading, window: str | None = None) -> dict[str, Any]:
    """The outbox body of one reading (stream ``"telemetry"``); ``window`` (``pre`` or
    ``post``) marks a reading kept at full rate around an alarm (edge/storage_policy.py)."""
    body = {
        "device": reading.device_id,
        "point": reading.point,
        "value": reading.value,
        "unit": reading.unit,
        "ts": reading.ts,
    }
    if window is not None:
        body["window"] = window
    return body


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
    aliases: Aliases | None = None,
    sent_at: float | None = None,
) -> bytes:
    """A telemetry batch carrying ``records`` (outbox telemetry rows, oldest first).

    ``historical``: the rows waited through an outage (backfill) rather than being live data.
    Without ``aliases``, the readable ``edge.telemetry/1`` that names every reading in full;
    with them, the compact ``edge.telemetry/2`` (docs/contract.md), whose records must come in
    ascending seq order (``ValueError`` otherwise). :func:`decode_telemetry` reads both.
    """
    if not records:
        raise ValueError("a telemetry message carries at least one record")
    if aliases is not None:
        return _compact_telemetry(
            gateway_id,
            epoch,
            records,
            aliases,
            clock_synced=clock_synced,
            historical=historical,
            sent_at=sent_at,
        )
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
    for reading, r in zip(readings, records, strict=True):
        window = r.body.get("window")
        if window in WINDOWS:
            reading["window"] = window
    return _dumps(
        {
            **_envelope(
                SCHEMA_TELEMETRY,
                gateway_id,
                epoch,
                clock_synced=clock_synced,
                sent_at=sent_at,
                carries=(first, last),
            ),
            "seq_first": first,
            "seq_last": last,
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
            **_envelope(
                SCHEMA_STATUS, gateway_id, epoch, clock_synced=clock_synced, sent_at=sent_at
            ),
            "state": state,
            "version": version,
            "boot_time": iso_utc(boot_time),
            "config_hash": config_hash,
        }
    )


# --- aliases: points as small numbers ------------------------------------------------------------

#: Points of the UART and GPIO sensor models, which have no model file, in the order their
#: drivers report them: the point catalogue's (drivers/catalog.py), as (point, unit) pairs.
FIXED_POINTS: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    model: tuple((p.name, p.unit) for p in points) for model, points in SERIAL_POINTS.items()
}


class Aliases:
    """A stable table (device id, point) -> alias, a small int, with each point's unit.

    Compact telemetry names a point by its alias; the retained metadata message publishes the
    table, and ``table_id`` (a short hash of the table) ties the two together. Devices come in
    order of id and each device's points in the order its driver reports them, so one poll of a
    device is a run of consecutive aliases and the same site file always gives the same table.
    """

    __slots__ = ("_index", "_keys", "table_id", "units")

    def __init__(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """``entries``: (device, point, unit) in alias order (alias = position)."""
        listed = [(device, point, unit) for device, point, unit in entries]
        self._index: dict[tuple[str, str], int] = {}
        for alias, (device, point, unit) in enumerate(listed):
            if not all(isinstance(part, str) for part in (device, point, unit)):
                raise ValueError(f"alias {alias}: device, point and unit must be strings")
            if (device, point) in self._index:
                raise ValueError(f"point {point!r} of device {device!r} is listed twice")
            self._index[(device, point)] = alias
        # The table is held as the index's own (device, point) keys and the units beside
        # them, not as a third tuple per point (64 bytes each, 62 KiB at 1,000 points).
        self._keys: tuple[tuple[str, str], ...] = tuple(self._index)
        #: The unit of each alias: ``units[alias]``.
        self.units: tuple[str, ...] = tuple(unit for _, _, unit in listed)
        canonical = json.dumps(listed, separators=(",", ":"), ensure_ascii=False)
        self.table_id: str = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def of_site(cls, config: SiteConfig) -> Aliases:
        """Every point every device of ``config`` can report.

        Modbus devices: the points of their model file; UART and GPIO sensors: their
        :data:`FIXED_POINTS`; a tilt sensor with a gauge length also reports
        ``<axis>_displacement`` (mm) right after each tilt angle. Derived points are not
        aliased: the rules compute them, the outbox never receives them.
        """
        entries: list[tuple[str, str, str]] = []
        for device in sorted(config.devices, key=lambda d: d.id):
            gauged = device.gauge_length is not None
            for point in device_points(device.model, gauged=gauged) or ():
                entries.append((device.id, point.name, point.unit))
        return cls(entries)

    @classmethod
    def from_metadata(cls, message: Mapping[str, Any]) -> Aliases:
        """The table a metadata message publishes; :class:`ContractError` if it is not whole
        (aliases not exactly 0..n-1) or does not hash to its ``aliases_id``."""
        devices = message.get("devices")
        if not isinstance(devices, list):
            raise ContractError("metadata: devices must be a list")
        found: dict[int, tuple[str, str, str]] = {}
        for device in devices:
            points = device.get("points") if isinstance(device, dict) else None
            if not isinstance(points, list) or not isinstance(device.get("id"), str):
                raise ContractError("metadata: every device needs an id and a list of points")
            for point in points:
                if not isinstance(point, dict):
                    raise ContractError("metadata: a point is an object")
                alias, name, unit = point.get("alias"), point.get("point"), point.get("unit")
                if alias is None:
                    continue
                if type(alias) is not int or not isinstance(name, str):
                    raise ContractError(f"metadata: point {name!r}: alias must be an integer")
                if alias in found:
                    raise ContractError(f"metadata: alias {alias} given twice")
                found[alias] = (device["id"], name, unit if isinstance(unit, str) else "")
        if sorted(found) != list(range(len(found))):
            raise ContractError("metadata: aliases must be exactly 0..n-1")
        try:
            table = cls(found[alias] for alias in range(len(found)))
        except ValueError as exc:
            raise ContractError(f"metadata: {exc}") from exc
        if message.get("aliases_id") != table.table_id:
            raise ContractError(
                f"metadata: aliases_id {message.get('aliases_id')!r} does not match its "
                f"points (they hash to {table.table_id!r})"
            )
        return table

    def alias(self, device: str, point: str) -> int | None:
        """The alias of ``point`` of ``device``; ``None`` when the table has no such point."""
        return self._index.get((device, point))

    def entry(self, alias: int) -> tuple[str, str, str]:
        """(device, point, unit) of ``alias``; ``IndexError`` if there is no such alias."""
        if alias < 0:
            raise IndexError(f"no alias {alias}")
        device, point = self._keys[alias]
        return device, point, self.units[alias]

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return (
            (device, point, unit)
            for (device, point), unit in zip(self._keys, self.units, strict=True)
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Aliases) and other._keys == self._keys and other.units == self.units
        )

    def __hash__(self) -> int:
        return hash((self._keys, self.units))

    def __repr__(self) -> str:
        return f"Aliases({len(self._keys)} points, table_id={self.table_id!r})"


# --- metadata and health --------------------------------------------------------------------------


def metadata_message(
    gateway_id: str,
    epoch: str,
    config: SiteConfig,
    aliases: Aliases,
    *,
    clock_synced: bool,
    sent_at: float | None = None,
    storage: Storage | None = None,
) -> bytes:
    """The retained device metadata: the site, each device with its model, bus, location and
    points (unit and alias), and ``aliases_id``, the table compact telemetry refers to.

    With ``storage``, each point also says which storage policy and band produced its
    telemetry (so the platform knows how to reconstruct it), and the message the alarm window.

    ``ValueError`` if ``aliases`` names a device the site does not have (a table built from
    another site file would be published incomplete).
    """
    bus_kinds = {bus.id: bus.kind for bus in config.buses}
    points: dict[str, list[dict[str, Any]]] = {}
    for alias, (device, point, unit) in enumerate(aliases):
        entry: dict[str, Any] = {"point": point, "unit": unit, "alias": alias}
        if storage is not None:
            entry["storage"] = storage.policies.get((device, point), storage.default).describe()
        points.setdefault(device, []).append(entry)
    devices = [
        {
            "id": d.id,
            "model": d.model,
            "bus": d.bus,
            "bus_kind": bus_kinds.get(d.bus),
            "poll_interval_s": d.poll_interval,
            "location": d.location.model_dump(),
            "points": points.pop(d.id, []),
        }
        for d in sorted(config.devices, key=lambda d: d.id)
    ]
    if points:
        raise ValueError(f"aliases name devices the site does not have: {sorted(points)}")
    site = config.gateway.site
    return _dumps(
        {
            **_envelope(
                SCHEMA_METADATA, gateway_id, epoch, clock_synced=clock_synced, sent_at=sent_at
            ),
            "site": {
                "name": site.name,
                "district": site.district,
                "address": site.address,
                "latitude": site.latitude,
                "longitude": site.longitude,
                "timezone": config.gateway.timezone,
            },
            "aliases_id": aliases.table_id,
            "devices": devices,
            **(
                {}
                if storage is None
                else {
                    "alarm_window": {
                        "pre_s": storage.pre_ms / 1000,
                        "post_s": storage.post_ms / 1000,
                    }
                }
            ),
        }
    )


def health_message(
    gateway_id: str,
    epoch: str,
    health: Mapping[str, Any],
    *,
    clock_synced: bool,
    sent_at: float | None = None,
) -> bytes:
    """A health message: the envelope, then the fields of ``health`` (edge/schemas/health.json).

    Required: ``uptime_s``, ``buffer_rows`` (records waiting), ``oldest_unsent_age_s`` (None
    when nothing waits) and ``bus_errors`` ({bus id: errors since boot}). Optional:
    ``buffer_streams`` ({stream: records waiting}), ``buses`` (per bus id, what
    :func:`edge.buses.bus_health` gives: ``kind``, counters such as ``timeouts`` and
    ``errors``, ``offline_devices``), ``uplink`` ({counter: number}, e.g. published, acked,
    reconnects); ``Gateway.health()`` fits as it is. :class:`ContractError` names the field
    that is missing or wrong.
    """
    envelope = _envelope(
        SCHEMA_HEALTH, gateway_id, epoch, clock_synced=clock_synced, sent_at=sent_at
    )
    message = _finite({**envelope, **{k: v for k, v in health.items() if k not in envelope}})
    from edge.schemas import validate  # noqa: PLC0415 -- jsonschema only where health is built

    validate("health", message)
    return _dumps(message)


# --- compact telemetry ---------------------------------------------------------------------------

_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
#: Floats that print shorter as ints without changing value (doubles hold every int below 2**53).
_INT_EXACT: Final = float(2**53)


def _ms_of(ts: object) -> int | None:
    """Milliseconds since the epoch, the very ones :func:`iso_utc` prints; None if unprintable."""
    if type(ts) is not float and type(ts) is not int:
        return None
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return (moment - _EPOCH_UTC) // _MS


def _iso_of_ms(ms: int) -> str:
    moment = _EPOCH_UTC + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _compact_telemetry(
    gateway_id: str,
    epoch: str,
    records: Sequence[Carried],
    aliases: Aliases,
    *,
    clock_synced: bool,
    historical: bool,
    sent_at: float | None,
) -> bytes:
    index = aliases._index  # the hot loop skips the method call
    units = aliases.units
    groups: list[list[Any]] = []
    fallback: list[list[Any]] = []
    skip: list[list[int]] = []
    windows: dict[str, list[list[int]]] = {}
    t0: int | None = None
    group: list[Any] = []
    group_ms: int | None = None
    next_alias = -1
    last_ts: object = None
    last_ms: int | None = None
    previous: int | None = None
    for record in records:
        seq = record.seq
        if previous is not None:
            if seq <= previous:
                raise ValueError(f"records must be in ascending seq order ({seq} after {previous})")
            if seq > previous + 1:
                skip.append([previous + 1, seq - 1])
        previous = seq
        body = record.body
        window = body.get("window")
        if window is not None and window in WINDOWS:
            ranges = windows.setdefault(window, [])
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1][1] = seq
            else:
                ranges.append([seq, seq])
        device, point, value = body.get("device"), body.get("point"), body.get("value")
        ts = body.get("ts")
        if ts != last_ts:  # one poll's readings share their time: convert it once
            last_ts, last_ms = ts, _ms_of(ts)
        ms = last_ms
        alias = (
            index.get((device, point))
            if type(device) is str and type(point) is str and ms is not None
            else None
        )
        if type(value) is float:
            if not math.isfinite(value):
                value = None
            elif (
                value.is_integer()
                and -_INT_EXACT < value < _INT_EXACT
                and (value or math.copysign(1.0, value) > 0)  # -0.0 keeps its sign
            ):
                value = int(value)  # 35.0 mA travels as 35: two bytes less, the same number
        elif type(value) is not int and value is not None:
            alias = None  # not a number: only the fallback row carries it as it is
        if alias is None or ms is None or body.get("unit") != units[alias]:
            fallback.append(
                [seq, device, point, body.get("value"), body.get("unit"), _iso_or_none(ts)]
            )
            continue
        if ms == group_ms and alias == next_alias:
            group.append(value)
        else:
            if t0 is None:
                t0 = ms
            group = [ms - t0, alias, value]
            groups.append(group)
            group_ms = ms
        next_alias = alias + 1
    if previous is None:
        raise ValueError("a telemetry message carries at least one record")
    first, last = records[0].seq, previous
    message: dict[str, Any] = {
        **_envelope(
            SCHEMA_TELEMETRY_COMPACT,
            gateway_id,
            epoch,
            clock_synced=clock_synced,
            sent_at=sent_at,
            carries=(first, last),
        ),
        "seq_first": first,
        "seq_last": last,
        "historical": historical,
        "aliases_id": aliases.table_id,
        "t0": 0 if t0 is None else t0,
    }
    if skip:
        message["skip"] = skip
    if fallback:
        message["fallback"] = fallback
    for window in WINDOWS:
        if window in windows:
            message[f"window_{window}"] = windows[window]
    message["groups"] = groups
    return _dumps(message)


def decode_telemetry(
    message: Mapping[str, Any], aliases: Aliases | None = None
) -> list[dict[str, Any]]:
    """The readings of a telemetry message, as ``edge.telemetry/1`` lists them: one dict per
    reading with ``seq``, ``device``, ``point``, ``value``, ``unit`` and ``ts`` (ISO, ms), in
    seq order.

    A compact message needs ``aliases``, the table its ``aliases_id`` names (see
    :meth:`Aliases.from_metadata`). :class:`ContractError` for anything malformed or
    inconsistent: a wrong table, seqs that do not add up, an unknown alias, a wrong type.
    """
    if not isinstance(message, Mapping):
        raise ContractError(f"a message is a JSON object, not {type(message).__name__}")
    schema = message.get("schema")
    if schema == SCHEMA_TELEMETRY:
        readings = message.get("readings")
        if not isinstance(readings, list) or not all(isinstance(r, dict) for r in readings):
            raise ContractError("telemetry: readings must be a list of objects")
        return [dict(r) for r in readings]
    if schema != SCHEMA_TELEMETRY_COMPACT:
        raise ContractError(f"not a telemetry message: schema {schema!r}")
    wanted = message.get("aliases_id")
    if aliases is None:
        raise ContractError(f"telemetry: no metadata with aliases_id {wanted!r} to decode it")
    if wanted != aliases.table_id:
        raise ContractError(
            f"telemetry: aliases_id {wanted!r} is not the table given ({aliases.table_id!r})"
        )
    first, last, t0 = (_whole(message, name) for name in ("seq_first", "seq_last", "t0"))
    if not 1 <= first <= last:
        raise ContractError(f"telemetry: seq_first {first} and seq_last {last} out of order")
    skip = _skip_ranges(message.get("skip", []), first, last)
    rows: list[dict[str, Any]] = []
    taken: set[int] = set()
    fallback = message.get("fallback", [])
    if not isinstance(fallback, list):
        raise ContractError("telemetry: fallback must be a list")
    for row in fallback:
        rows.append(_fallback_row(row, first, last, skip, taken))
    groups = message.get("groups")
    if not isinstance(groups, list):
        raise ContractError("telemetry: groups must be a list")
    carried = sum(len(g) - 2 for g in groups if isinstance(g, list))
    expected = last - first + 1 - sum(b - a + 1 for a, b in skip)
    if carried + len(taken) != expected:
        raise ContractError(
            f"telemetry: {carried + len(taken)} readings carried, but seqs {first}..{last} "
            f"less skip make {expected}"
        )
    seqs = _implicit_seqs(first, last, skip, taken)
    size = len(aliases)
    for position, group in enumerate(groups):
        if not isinstance(group, list) or len(group) < 3:
            raise ContractError(f"telemetry: groups/{position}: [dt_ms, alias, value, ...]")
        dt, alias, *values = group
        if type(dt) is not int or type(alias) is not int:
            raise ContractError(f"telemetry: groups/{position}: dt_ms and alias are integers")
        if alias < 0 or alias + len(values) > size:
            raise ContractError(
                f"telemetry: groups/{position}: aliases {alias}..{alias + len(values) - 1} "
                f"outside the table of {size}"
            )
        try:
            ts = _iso_of_ms(t0 + dt)
        except (OverflowError, ValueError) as exc:
            raise ContractError(f"telemetry: groups/{position}: time out of range") from exc
        for offset, value in enumerate(values):
            if not (value is None or type(value) is int or type(value) is float):
                raise ContractError(f"telemetry: groups/{position}: value {value!r} not a number")
            device, point, unit = aliases.entry(alias + offset)
            rows.append(
                {
                    "seq": next(seqs),
                    "device": device,
                    "point": point,
                    "value": value,
                    "unit": unit,
                    "ts": ts,
                }
            )
    rows.sort(key=lambda r: int(r["seq"]))
    for window in WINDOWS:
        _mark_window(rows, window, message.get(f"window_{window}", []), first, last)
    return rows


def _mark_window(
    rows: list[dict[str, Any]], window: str, value: object, first: int, last: int
) -> None:
    """Mark the rows whose seqs ``window_<window>`` lists: [first, last] ranges, ascending."""
    if not isinstance(value, list):
        raise ContractError(f"telemetry: window_{window} must be a list of [first, last] ranges")
    floor = first
    marked: list[tuple[int, int]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(type(part) is int for part in item)
            or not floor <= item[0] <= item[1] <= last
        ):
            raise ContractError(
                f"telemetry: window_{window}: {item!r} is not a [first, last] seq range inside "
                f"{first}..{last}, ascending"
            )
        marked.append((item[0], item[1]))
        floor = item[1] + 1
    if not marked:
        return
    seqs = [int(row["seq"]) for row in rows]
    for a, b in marked:
        for index in range(bisect.bisect_left(seqs, a), bisect.bisect_right(seqs, b)):
            rows[index]["window"] = window


def _whole(message: Mapping[str, Any], name: str) -> int:
    value = message.get(name)
    if type(value) is not int:
        raise ContractError(f"telemetry: {name} must be an integer, not {value!r}")
    return value


def _skip_ranges(value: object, first: int, last: int) -> list[tuple[int, int]]:
    if not isinstance(value, list):
        raise ContractError("telemetry: skip must be a list of [first, last] seq ranges")
    ranges: list[tuple[int, int]] = []
    floor = first
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(type(part) is int for part in item)
        ):
            raise ContractError(f"telemetry: skip: {item!r} is not a [first, last] seq range")
        a, b = item
        if not floor < a <= b < last:
            raise ContractError(
                f"telemetry: skip: range {a}..{b} must lie inside {first}..{last}, ascending, "
                "apart from the ones before"
            )
        ranges.append((a, b))
        floor = b + 1
    return ranges


def _fallback_row(
    row: object, first: int, last: int, skip: list[tuple[int, int]], taken: set[int]
) -> dict[str, Any]:
    if not isinstance(row, list) or len(row) != 6:
        raise ContractError(f"telemetry: fallback row {row!r} is not [seq, device, point, ...]")
    seq, device, point, value, unit, ts = row
    if type(seq) is not int or not first <= seq <= last or seq in taken:
        raise ContractError(f"telemetry: fallback seq {seq!r} outside {first}..{last} or repeated")
    if any(a <= seq <= b for a, b in skip):
        raise ContractError(f"telemetry: fallback seq {seq} is also skipped")
    for name, part in (("device", device), ("point", point), ("unit", unit), ("ts", ts)):
        if not (part is None or isinstance(part, str)):
            raise ContractError(f"telemetry: fallback seq {seq}: {name} {part!r} is not text")
    if not (value is None or type(value) is int or type(value) is float):
        raise ContractError(f"telemetry: fallback seq {seq}: value {value!r} is not a number")
    taken.add(seq)
    return {"seq": seq, "device": device, "point": point, "value": value, "unit": unit, "ts": ts}


def _implicit_seqs(
    first: int, last: int, skip: list[tuple[int, int]], taken: set[int]
) -> Iterator[int]:
    """The seqs of ``first..last`` not skipped and not in a fallback row, ascending; the walk
    jumps over skipped ranges, so a huge range costs nothing."""
    seq = first
    for a, b in [*skip, (last + 1, last + 1)]:
        while seq < a:
            if seq not in taken:
                yield seq
            seq += 1
        seq = b + 1


# --- payload encoding ----------------------------------------------------------------------------


def compress(payload: bytes) -> bytes:
    """``payload`` deflated as a zlib stream (RFC 1950), which starts with byte 0x78; JSON
    starts with ``{``, so :func:`decode_payload` tells the two apart by the first byte."""
    return zlib.compress(payload, COMPRESS_LEVEL)


def decode_payload(payload: bytes, *, max_inflated: int = MAX_INFLATED) -> dict[str, Any]:
    """The JSON object a payload carries: plain JSON when it starts with ``{``, a zlib stream
    when it starts with 0x78 (inflated to at most ``max_inflated`` bytes, so a deflate bomb
    costs nothing). Anything else, or a broken stream, is a :class:`ContractError` that says
    what was wrong."""
    if not payload:
        raise ContractError("empty payload")
    lead = payload[0]
    if lead == 0x78:
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(payload, max_inflated + 1)
        except zlib.error as exc:
            raise ContractError(f"broken zlib stream: {exc}") from exc
        if len(text) > max_inflated:
            raise ContractError(f"zlib payload inflates to over {max_inflated} bytes")
        if not inflater.eof:
            raise ContractError("truncated zlib stream")
        if inflater.unused_data:
            raise ContractError(f"{len(inflater.unused_data)} bytes after the zlib stream")
        if not text.startswith(b"{"):
            raise ContractError("the zlib stream does not hold a JSON object")
    elif lead == ord("{"):
        text = payload
    else:
        raise ContractError(
            f"payload starts with byte 0x{lead:02x}: neither a JSON object ('{{') nor a zlib "
            "stream (0x78)"
        )
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ContractError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ContractError(f"a message is a JSON object, not {type(message).__name__}")
    return message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _envelope(
    schema: str,
    gateway_id: str,
    epoch: str,
    *,
    clock_synced: bool,
    sent_at: float | None,
    carries: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The fields every message starts with. ``carries``: the first and last seq of the
    outbox rows the message carries, which make its id; without rows the id is a fresh UUID
    (nothing to de-duplicate against)."""
    return {
        "schema": schema,
        "gateway_id": gateway_id,
        "epoch": epoch,
        "message_id": str(uuid.uuid4()) if carries is None else message_id(epoch, *carries),
        "sent_at": iso_utc(time.time() if sent_at is None else sent_at),
        "clock_synced": clock_synced,
    }


def _iso_or_none(ts: object) -> str | None:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        try:
            return iso_utc(float(ts))
        except (OverflowError, OSError, ValueError):
            return None  # outside years 1..9999: no real reading, and no reason to wedge a batch
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
