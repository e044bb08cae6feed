"""Reference receiver: the district platform's side of contract v1, in one command.

    python -m hil.receiver --broker mqtt://127.0.0.1:1883 --prefix district/v1 --db rx.sqlite
    python -m hil.receiver keygen ... | sign ...     (signed commands, see hil/signer.py)

It subscribes to every gateway under the prefix (QoS 1, persistent session, so nothing is
lost while the receiver itself reconnects), inflates deflated payloads, validates every
message against the JSON Schemas in ``edge/schemas/``, drops duplicates by ``message_id``,
stores what it kept in SQLite and prints a summary when it stops (Ctrl-C, SIGTERM or
``--seconds``):

- messages received, kept, duplicates and rejected (with the reason of each rejection), and
  how many were health and metadata messages;
- compact telemetry (``edge.telemetry/2``) is decoded with the alias table of the gateway's
  metadata message that has the same ``aliases_id``; one that names a table not seen yet is
  counted as undecoded and kept raw, and decoded as soon as that metadata arrives;
- per gateway and outbox epoch: the seq range seen and the seqs missing from it that no
  ``buffer-thinned`` or ``buffer-dropped`` event accounts for (a gap is a loss);
- epoch resets: a gateway seen under more than one epoch (its outbox was recreated).

The tests and the demo use it as the platform; :class:`Receiver` is the same thing in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sqlite3
import ssl
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from edge.contract import (
    MAX_INFLATED,
    SCHEMA_TELEMETRY_COMPACT,
    Aliases,
    decode_payload,
    decode_telemetry,
    fleet_filter,
)
from edge.schemas import ContractError, validate_message
from edge.storage_policy import Policy, reconstruct, wire_ms
from edge.uplink import parse_broker_url
from hil import signer

__all__ = ["GatewaySummary", "Receiver", "Reconstruction", "Summary", "main"]

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    epoch TEXT NOT NULL,
    topic TEXT NOT NULL,
    received_at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS readings (
    gateway_id TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    device TEXT, point TEXT, value REAL, unit TEXT, ts TEXT, historical INTEGER NOT NULL,
    window TEXT,
    PRIMARY KEY (gateway_id, epoch, seq)
);
CREATE TABLE IF NOT EXISTS events (
    gateway_id TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, ts TEXT, received_at REAL NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (gateway_id, epoch, seq)
);
CREATE TABLE IF NOT EXISTS statuses (
    gateway_id TEXT PRIMARY KEY, state TEXT NOT NULL, received_at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    received_at REAL NOT NULL, topic TEXT NOT NULL, error TEXT NOT NULL, payload BLOB
);
CREATE TABLE IF NOT EXISTS metadata (
    gateway_id TEXT PRIMARY KEY, aliases_id TEXT NOT NULL, received_at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_tables (
    gateway_id TEXT NOT NULL, aliases_id TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (gateway_id, aliases_id)
);
CREATE TABLE IF NOT EXISTS health (
    gateway_id TEXT NOT NULL, received_at REAL NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS undecoded (
    received_at REAL NOT NULL, topic TEXT NOT NULL, gateway_id TEXT NOT NULL,
    aliases_id TEXT NOT NULL, payload TEXT NOT NULL
);
"""

#: Largest payload the receiver decodes; a bigger one is rejected unread. A deflated payload
#: may inflate to at most edge.contract.MAX_INFLATED.
MAX_PAYLOAD = 1 << 20


@dataclass
class GatewaySummary:
    """What arrived from one gateway."""

    epochs: list[str] = field(default_factory=list)
    #: Per epoch: lowest and highest seq seen, and the seqs missing between them that no
    #: buffer-thinned/buffer-dropped event accounts for.
    seq_range: dict[str, tuple[int, int]] = field(default_factory=dict)
    gaps: dict[str, list[int]] = field(default_factory=dict)
    readings: int = 0
    events: int = 0
    health: int = 0
    metadata: int = 0
    status: str | None = None
    #: The aliases_id of the latest metadata message.
    aliases_id: str | None = None

    @property
    def epoch_resets(self) -> int:
        return max(0, len(self.epochs) - 1)


@dataclass
class Summary:
    received: int = 0
    kept: int = 0
    duplicates: int = 0
    rejected: int = 0
    #: The reason of each rejection, in arrival order.
    rejections: list[str] = field(default_factory=list)
    #: Compact telemetry naming an alias table no metadata has given yet: an error until the
    #: metadata arrives, when they are decoded (then counted as kept).
    undecoded: int = 0
    health: int = 0
    metadata: int = 0
    gateways: dict[str, GatewaySummary] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            f"received {self.received} messages: kept {self.kept}, duplicates {self.duplicates}, "
            f"rejected {self.rejected}, undecoded {self.undecoded}; "
            f"health {self.health}, metadata {self.metadata}"
        ]
        lines += [f"  rejected: {reason}" for reason in self.rejections[:20]]
        for gateway, g in sorted(self.gateways.items()):
            lines.append(
                f"gateway {gateway}: {g.readings} readings, {g.events} events, "
                f"{g.health} health, {g.metadata} metadata (aliases {g.aliases_id or '-'}), "
                f"status {g.status or '-'}, epoch resets {g.epoch_resets}"
            )
            for epoch in g.epochs:
                low, high = g.seq_range.get(epoch, (0, 0))
                missing = g.gaps.get(epoch, [])
                shown = ", ".join(str(s) for s in missing[:10]) + (
                    " ..." if len(missing) > 10 else ""
                )
                lines.append(
                    f"  epoch {epoch}: seq {low}..{high}, "
                    + (f"{len(missing)} missing: {shown}" if missing else "no gaps")
                )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "kept": self.kept,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejections": self.rejections,
            "undecoded": self.undecoded,
            "health": self.health,
            "metadata": self.metadata,
            "gateways": {
                name: {
                    "epochs": g.epochs,
                    "epoch_resets": g.epoch_resets,
                    "seq_range": {e: list(r) for e, r in g.seq_range.items()},
                    "gaps": g.gaps,
                    "readings": g.readings,
                    "events": g.events,
                    "health": g.health,
                    "metadata": g.metadata,
                    "aliases_id": g.aliases_id,
                    "status": g.status,
                }
                for name, g in self.gateways.items()
            },
        }


@dataclass
class Reconstruction:
    """How well the platform's reconstruction matches the readings the gateway polled."""

    checked: int = 0
    #: Polled readings before the first stored one of their point (nothing to reconstruct).
    missing: int = 0
    #: The largest error over the point's band (at most 1.0 is the promise), and where.
    worst: float = 0.0
    worst_point: str = ""


def _policy_of(described: dict[str, Any]) -> Policy:
    """The :class:`Policy` a metadata point's ``storage`` describes."""
    kind = described.get("policy")
    if kind not in ("all", "on-change", "deadband", "swinging-door"):
        return Policy()
    return Policy(
        kind,
        band=float(described.get("band") or 0.0),
        band_percent=float(described.get("band_percent") or 0.0),
        max_interval=described.get("max_interval_s"),
        min_interval=float(described.get("min_interval_s") or 0.0),
    )


def _ms_of_iso(ts: str) -> int:
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (moment - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _UnknownTable(LookupError):
    """Compact telemetry naming an alias table no metadata message has given yet."""


class Receiver:
    """Validates, de-duplicates and stores contract v1 messages into one SQLite file."""

    def __init__(self, db: Path | str) -> None:
        self._db = sqlite3.connect(str(db))
        self._db.executescript(_SCHEMA_SQL)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(readings)")}
        if "window" not in columns:  # a file of a receiver from before alarm windows
            with self._db:
                self._db.execute("ALTER TABLE readings ADD COLUMN window TEXT")
        self._counts = Summary()
        #: Alias tables by (gateway, aliases_id), from every metadata message kept, so a
        #: restarted receiver still decodes what a gateway sends before its next metadata.
        self._tables: dict[tuple[str, str], Aliases] = {}
        for gateway, aliases_id, payload in self._db.execute(
            "SELECT gateway_id, aliases_id, payload FROM alias_tables"
        ):
            with contextlib.suppress(ContractError, ValueError):
                self._tables[(gateway, aliases_id)] = Aliases.from_metadata(json.loads(payload))

    def close(self) -> None:
        self._db.close()

    def handle(self, topic: str, payload: bytes, received_at: float | None = None) -> str:
        """Take one message; return ``kept``, ``duplicate``, ``undecoded: <reason>`` (compact
        telemetry whose alias table has not arrived: kept raw until it does) or
        ``rejected: <reason>``."""
        now = time.time() if received_at is None else received_at
        if topic.endswith("/commands"):
            # The platform's own downlink, seen because the subscription covers the gateway's
            # whole subtree: not a gateway message, neither kept nor counted.
            return "ignored: a command to the gateway"
        self._counts.received += 1
        try:
            message = self._decode(payload)
            kind = validate_message(message)
            self._check_topic(topic, message, kind)
            table = Aliases.from_metadata(message) if kind == "metadata" else None
            rows = self.readings_of(message) if kind == "telemetry" else []
        except _UnknownTable as exc:
            return self._hold(topic, message, str(exc), now)
        except ContractError as exc:
            return self._reject(topic, payload, str(exc), now)
        result = self._store(topic, message, kind, rows, now)
        if table is not None:
            self._learn(message, table)
        return result

    def readings_of(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The readings of a telemetry message, compact ones decoded with the alias table of
        the gateway's metadata; :class:`ContractError` if the message is malformed."""
        table = None
        if message.get("schema") == SCHEMA_TELEMETRY_COMPACT:
            gateway, aliases_id = message["gateway_id"], str(message.get("aliases_id"))
            table = self._tables.get((gateway, aliases_id))
            if table is None:
                raise _UnknownTable(
                    f"no metadata with aliases_id {aliases_id!r} from {gateway!r} yet"
                )
        return decode_telemetry(message, table)

    def _store(
        self, topic: str, message: dict[str, Any], kind: str, rows: list[dict[str, Any]], now: float
    ) -> str:
        gateway = message["gateway_id"]
        with self._db:
            if kind == "status":
                # Retained and re-sent on every connect: the latest one is what matters.
                self._db.execute(
                    "INSERT OR REPLACE INTO statuses VALUES (?, ?, ?, ?)",
                    (gateway, message["state"], now, json.dumps(message)),
                )
            elif kind == "metadata":
                # Retained too; every table stays known for telemetry still on its way.
                text = json.dumps(message)
                self._db.execute(
                    "INSERT OR REPLACE INTO metadata VALUES (?, ?, ?, ?)",
                    (gateway, message["aliases_id"], now, text),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO alias_tables VALUES (?, ?, ?)",
                    (gateway, message["aliases_id"], text),
                )
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    message["message_id"],
                    gateway,
                    kind,
                    message["epoch"],
                    topic,
                    now,
                    json.dumps(message),
                ),
            ).rowcount
            if not inserted:
                self._counts.duplicates += 1
                return "duplicate"
            if kind == "telemetry":
                self._db.executemany(
                    "INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            gateway,
                            message["epoch"],
                            r["seq"],
                            r["device"],
                            r["point"],
                            r["value"],
                            r["unit"],
                            r["ts"],
                            int(message["historical"]),
                            r.get("window"),
                        )
                        for r in rows
                    ],
                )
            elif kind == "event":
                self._db.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        gateway,
                        message["epoch"],
                        message["seq"],
                        message["kind"],
                        message["ts"],
                        now,
                        json.dumps(message),
                    ),
                )
            elif kind == "health":
                self._db.execute(
                    "INSERT INTO health VALUES (?, ?, ?)", (gateway, now, json.dumps(message))
                )
        self._counts.kept += 1
        return "kept"

    def _learn(self, message: dict[str, Any], table: Aliases) -> None:
        """Keep the table, and decode the telemetry that waited for it."""
        gateway = message["gateway_id"]
        self._tables[(gateway, table.table_id)] = table
        waiting = self._db.execute(
            "SELECT rowid, received_at, topic, payload FROM undecoded "
            "WHERE gateway_id = ? AND aliases_id = ? ORDER BY rowid",
            (gateway, table.table_id),
        ).fetchall()
        for rowid, received_at, topic, payload in waiting:
            with self._db:
                self._db.execute("DELETE FROM undecoded WHERE rowid = ?", (rowid,))
            held = json.loads(payload)
            try:
                rows = decode_telemetry(held, table)
            except ContractError as exc:
                self._reject(topic, payload.encode(), str(exc), received_at)
                continue
            self._store(topic, held, "telemetry", rows, received_at)

    def summary(self) -> Summary:
        """Counts so far, and per gateway its epochs, seq ranges and gaps, from the database."""
        db = self._db
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM messages GROUP BY kind").fetchall())
        s = Summary(
            received=self._counts.received,
            kept=self._counts.kept,
            duplicates=self._counts.duplicates,
            rejected=self._counts.rejected,
            rejections=list(self._counts.rejections),
            undecoded=int(db.execute("SELECT COUNT(*) FROM undecoded").fetchone()[0]),
            health=int(kinds.get("health", 0)),
            metadata=int(kinds.get("metadata", 0)),
        )
        order = db.execute(
            "SELECT gateway_id, epoch FROM messages WHERE kind IN ('telemetry', 'event') "
            "GROUP BY gateway_id, epoch ORDER BY MIN(received_at)"
        ).fetchall()
        for gateway, epoch in order:
            g = s.gateways.setdefault(gateway, GatewaySummary())
            g.epochs.append(epoch)
            seqs = {
                int(row[0])
                for row in db.execute(
                    "SELECT seq FROM readings WHERE gateway_id = ? AND epoch = ? "
                    "UNION SELECT seq FROM events WHERE gateway_id = ? AND epoch = ?",
                    (gateway, epoch, gateway, epoch),
                )
            }
            low, high = min(seqs), max(seqs)
            g.seq_range[epoch] = (low, high)
            removed = self._removed_ranges(gateway, epoch)
            g.gaps[epoch] = [
                seq
                for seq in range(low, high + 1)
                if seq not in seqs and not any(a <= seq <= b for a, b in removed)
            ]
        for gateway, readings, events, health, metadata in db.execute(
            "SELECT gateway_id, "
            "(SELECT COUNT(*) FROM readings r WHERE r.gateway_id = m.gateway_id), "
            "(SELECT COUNT(*) FROM events e WHERE e.gateway_id = m.gateway_id), "
            "SUM(kind = 'health'), SUM(kind = 'metadata') "
            "FROM messages m GROUP BY gateway_id"
        ):
            g = s.gateways.setdefault(gateway, GatewaySummary())
            g.readings, g.events = int(readings), int(events)
            g.health, g.metadata = int(health), int(metadata)
        for gateway, state in db.execute("SELECT gateway_id, state FROM statuses"):
            s.gateways.setdefault(gateway, GatewaySummary()).status = state
        for gateway, aliases_id in db.execute("SELECT gateway_id, aliases_id FROM metadata"):
            s.gateways.setdefault(gateway, GatewaySummary()).aliases_id = aliases_id
        return s

    def policies(self, gateway: str) -> dict[tuple[str, str], Policy]:
        """The storage policy of each point, as the gateway's latest metadata says (a point
        whose metadata names none: every reading is sent)."""
        row = self._db.execute(
            "SELECT payload FROM metadata WHERE gateway_id = ?", (gateway,)
        ).fetchone()
        if row is None:
            return {}
        policies: dict[tuple[str, str], Policy] = {}
        for device in json.loads(row[0]).get("devices", []):
            for point in device.get("points", []):
                described = point.get("storage")
                if isinstance(described, dict):
                    policies[(device["id"], point["point"])] = _policy_of(described)
        return policies

    def reconstruct(
        self, gateway: str, device: str, point: str, times: Iterable[float]
    ) -> list[float | None]:
        """What this platform knows of ``point`` at each of ``times`` (POSIX seconds): the
        stored reading at that time, else the point's storage policy's reconstruction from
        the readings it was sent (docs/contract.md); ``None`` before the first one."""
        policy = self.policies(gateway).get((device, point), Policy())
        stored = [
            (_ms_of_iso(ts), value, window)
            for ts, value, window in self._db.execute(
                "SELECT ts, value, window FROM readings WHERE gateway_id = ? AND device = ? "
                "AND point = ? AND ts IS NOT NULL ORDER BY epoch, seq",
                (gateway, device, point),
            )
        ]
        return reconstruct(stored, [wire_ms(t) for t in times], policy)

    def check_reconstruction(
        self, gateway: str, polled: Iterable[tuple[str, str, float, float]]
    ) -> Reconstruction:
        """Compare the reconstruction with the readings the gateway polled, ``(device, point,
        ts, value)`` each (a test or a rig records them): how far the worst one is from what
        this platform reconstructs, as a fraction of the point's band (1.0: at the band)."""
        by_point: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for device, point, ts, value in polled:
            by_point.setdefault((device, point), []).append((ts, value))
        policies = self.policies(gateway)
        result = Reconstruction()
        for (device, point), readings in sorted(by_point.items()):
            policy = policies.get((device, point), Policy())
            rebuilt = self.reconstruct(gateway, device, point, [ts for ts, _ in readings])
            for (_, value), guess in zip(readings, rebuilt, strict=True):
                result.checked += 1
                if guess is None:
                    result.missing += 1
                    continue
                error = abs(guess - value)
                band = policy.tolerance(value)
                ratio = (0.0 if error == 0 else math.inf) if band == 0 else error / band
                if ratio > result.worst:
                    result.worst, result.worst_point = ratio, f"{device}/{point}"
        return result

    def _removed_ranges(self, gateway: str, epoch: str) -> list[tuple[int, int]]:
        ranges = []
        for (payload,) in self._db.execute(
            "SELECT payload FROM events WHERE gateway_id = ? AND epoch = ? "
            "AND kind IN ('buffer-thinned', 'buffer-dropped')",
            (gateway, epoch),
        ):
            body = json.loads(payload)
            if isinstance(body.get("seq_first"), int) and isinstance(body.get("seq_last"), int):
                ranges.append((body["seq_first"], body["seq_last"]))
        return ranges

    @staticmethod
    def _decode(payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_PAYLOAD:
            raise ContractError(f"payload of {len(payload)} bytes, over {MAX_PAYLOAD}")
        return decode_payload(payload, max_inflated=MAX_INFLATED)

    @staticmethod
    def _check_topic(topic: str, message: dict[str, Any], kind: str) -> None:
        parts = topic.split("/")
        # The topics of events and acks are plural (docs/contract.md).
        expected = {"event": "events", "ack": "acks"}.get(kind, kind)
        # A command carries no gateway_id: it is the platform's, never a gateway's message.
        gateway = message.get("gateway_id")
        if len(parts) < 3 or parts[-1] != expected or parts[-2] != gateway:
            raise ContractError(
                f"a {kind} message from {gateway!r} on topic {topic!r} "
                f"(expected .../{gateway}/{expected})"
            )

    def _hold(self, topic: str, message: dict[str, Any], reason: str, now: float) -> str:
        with self._db:
            self._db.execute(
                "INSERT INTO undecoded VALUES (?, ?, ?, ?, ?)",
                (now, topic, message["gateway_id"], message["aliases_id"], json.dumps(message)),
            )
        return f"undecoded: {reason}"

    def _reject(self, topic: str, payload: bytes, reason: str, now: float) -> str:
        self._counts.rejected += 1
        self._counts.rejections.append(f"{topic}: {reason}")
        with self._db:
            self._db.execute(
                "INSERT INTO rejected VALUES (?, ?, ?, ?)", (now, topic, reason, payload[:4096])
            )
        return f"rejected: {reason}"


async def receive(
    receiver: Receiver,
    broker_url: str,
    prefix: str,
    *,
    stop: asyncio.Event,
    client_id: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Subscribe to ``{prefix}/+/#`` and hand every message to ``receiver`` until ``stop``.

    Reconnects after a broker outage under the same persistent session, so the broker keeps
    the QoS 1 messages that arrive meanwhile.
    """
    broker = parse_broker_url(broker_url)
    identifier = client_id or f"receiver-{uuid.uuid4().hex[:8]}"
    context = ssl.create_default_context(cafile=ca_file) if broker.tls else None

    async def session() -> None:
        last_error: str | None = None
        while True:
            client = aiomqtt.Client(
                broker.host,
                broker.port,
                identifier=identifier,
                username=username,
                password=password,
                clean_session=False,
                tls_context=context,
                timeout=10,
            )
            try:
                async with client:
                    await client.subscribe(fleet_filter(prefix), qos=1)
                    if ready is not None:
                        ready.set()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes | bytearray):
                            receiver.handle(message.topic.value, bytes(message.payload))
            except aiomqtt.MqttError as exc:
                # Said once per outage, not at every 0.2 s retry.
                text = f"{broker.display}: {exc}"
                if text != last_error:
                    print(f"receiver: {text}; reconnecting", file=sys.stderr)
                    last_error = text
            else:
                last_error = None
            await asyncio.sleep(0.2)

    task = asyncio.create_task(session(), name="receiver")
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hil.receiver",
        description="Receive, validate and store what gateways publish (contract v1).",
    )
    parser.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    parser.add_argument("--prefix", default="district/v1", help="topic prefix (district/v1)")
    parser.add_argument("--db", required=True, type=Path, help="SQLite file to store into")
    parser.add_argument("--client-id", help="MQTT client id (a persistent session)")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--ca-file", help="CA file for an mqtts:// broker")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("keygen", "sign"):
        # The platform's other half of the contract: signed commands (hil/signer.py).
        return signer.main(argv)
    args = _args(argv)
    try:
        parse_broker_url(args.broker)
    except ValueError as exc:
        print(f"receiver: {exc}", file=sys.stderr)
        return 2
    receiver = Receiver(args.db)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.seconds is not None:
            loop.call_later(args.seconds, stop.set)
        await receive(
            receiver,
            args.broker,
            args.prefix,
            stop=stop,
            client_id=args.client_id,
            username=args.username,
            password=args.password,
            ca_file=args.ca_file,
        )

    try:
        asyncio.run(run())
        summary = receiver.summary()
    finally:
        receiver.close()
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
