"""Reference receiver: the district platform's side of contract v1, in one command.

    python -m hil.receiver --broker mqtt://127.0.0.1:1883 --prefix district/v1 --db rx.sqlite

It subscribes to every gateway under the prefix (QoS 1, persistent session, so nothing is
lost while the receiver itself reconnects), validates every message against the JSON Schemas
in ``edge/schemas/``, drops duplicates by ``message_id``, stores what it kept in SQLite and
prints a summary when it stops (Ctrl-C, SIGTERM or ``--seconds``):

- messages received, kept, duplicates and rejected (with the reason of each rejection);
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
import signal
import sqlite3
import ssl
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from edge.schemas import ContractError, validate_message
from edge.uplink import parse_broker_url

__all__ = ["GatewaySummary", "Receiver", "Summary", "main"]

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
"""

#: Largest payload the receiver decodes; a bigger one is rejected unread.
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
    status: str | None = None

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
    gateways: dict[str, GatewaySummary] = field(default_factory=dict)

    def text(self) -> str:
        lines = [
            f"received {self.received} messages: kept {self.kept}, duplicates {self.duplicates}, "
            f"rejected {self.rejected}"
        ]
        lines += [f"  rejected: {reason}" for reason in self.rejections[:20]]
        for gateway, g in sorted(self.gateways.items()):
            lines.append(
                f"gateway {gateway}: {g.readings} readings, {g.events} events, status "
                f"{g.status or '-'}, epoch resets {g.epoch_resets}"
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
            "gateways": {
                name: {
                    "epochs": g.epochs,
                    "epoch_resets": g.epoch_resets,
                    "seq_range": {e: list(r) for e, r in g.seq_range.items()},
                    "gaps": g.gaps,
                    "readings": g.readings,
                    "events": g.events,
                    "status": g.status,
                }
                for name, g in self.gateways.items()
            },
        }


class Receiver:
    """Validates, de-duplicates and stores contract v1 messages into one SQLite file."""

    def __init__(self, db: Path | str) -> None:
        self._db = sqlite3.connect(str(db))
        self._db.executescript(_SCHEMA_SQL)
        self._counts = Summary()

    def close(self) -> None:
        self._db.close()

    def handle(self, topic: str, payload: bytes, received_at: float | None = None) -> str:
        """Take one message; return ``kept``, ``duplicate`` or ``rejected: <reason>``."""
        now = time.time() if received_at is None else received_at
        self._counts.received += 1
        try:
            message = self._decode(payload)
            kind = validate_message(message)
            self._check_topic(topic, message, kind)
        except ContractError as exc:
            return self._reject(topic, payload, str(exc), now)
        with self._db:
            if kind == "status":
                # Retained and re-sent on every connect: the latest one is what matters.
                self._db.execute(
                    "INSERT OR REPLACE INTO statuses VALUES (?, ?, ?, ?)",
                    (message["gateway_id"], message["state"], now, json.dumps(message)),
                )
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    message["message_id"],
                    message["gateway_id"],
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
                    "INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            message["gateway_id"],
                            message["epoch"],
                            r["seq"],
                            r["device"],
                            r["point"],
                            r["value"],
                            r["unit"],
                            r["ts"],
                            int(message["historical"]),
                        )
                        for r in message["readings"]
                    ],
                )
            elif kind == "event":
                self._db.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        message["gateway_id"],
                        message["epoch"],
                        message["seq"],
                        message["kind"],
                        message["ts"],
                        now,
                        json.dumps(message),
                    ),
                )
        self._counts.kept += 1
        return "kept"

    def summary(self) -> Summary:
        """Counts so far, and per gateway its epochs, seq ranges and gaps, from the database."""
        s = Summary(
            received=self._counts.received,
            kept=self._counts.kept,
            duplicates=self._counts.duplicates,
            rejected=self._counts.rejected,
            rejections=list(self._counts.rejections),
        )
        db = self._db
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
        for gateway, readings, events in db.execute(
            "SELECT gateway_id, "
            "(SELECT COUNT(*) FROM readings r WHERE r.gateway_id = m.gateway_id), "
            "(SELECT COUNT(*) FROM events e WHERE e.gateway_id = m.gateway_id) "
            "FROM messages m GROUP BY gateway_id"
        ):
            g = s.gateways.setdefault(gateway, GatewaySummary())
            g.readings, g.events = int(readings), int(events)
        for gateway, state in db.execute("SELECT gateway_id, state FROM statuses"):
            s.gateways.setdefault(gateway, GatewaySummary()).status = state
        return s

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
    def _decode(payload: bytes) -> Any:
        if len(payload) > MAX_PAYLOAD:
            raise ContractError(f"payload of {len(payload)} bytes, over {MAX_PAYLOAD}")
        try:
            return json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContractError(f"not JSON: {exc}") from exc

    @staticmethod
    def _check_topic(topic: str, message: dict[str, Any], kind: str) -> None:
        parts = topic.split("/")
        expected = {"event": "events"}.get(kind, kind)
        if len(parts) < 3 or parts[-1] != expected or parts[-2] != message["gateway_id"]:
            raise ContractError(
                f"a {kind} message from {message['gateway_id']!r} on topic {topic!r} "
                f"(expected .../{message['gateway_id']}/{expected})"
            )

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
                    await client.subscribe(f"{prefix}/+/#", qos=1)
                    if ready is not None:
                        ready.set()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes | bytearray):
                            receiver.handle(message.topic.value, bytes(message.payload))
            except aiomqtt.MqttError as exc:
                print(f"receiver: {broker.display}: {exc}; reconnecting", file=sys.stderr)
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
