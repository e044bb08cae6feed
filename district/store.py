"""The platform's PostgreSQL schema, and one transaction's worth of rows written at once.

Deduplication is the database's: a reading or event is identified by its gateway, outbox
epoch and seq (``streams`` gives each (gateway, epoch) a small id, so the key is
``(stream_id, seq)``), and every insert is ``ON CONFLICT DO NOTHING``: two receivers that both
got a redelivered message store it once. Gaps and epoch resets are read from these tables
(:func:`gaps`, :func:`epochs`), so every instance sees the same answer.

Tables:

- ``streams``: one row per (gateway, epoch): ``first_seen``, ``last_seen``; a gateway with
  two is an epoch reset, one whose older stream is seen after a newer one replays an old epoch;
- ``points``: one row per (gateway, device, point, unit), so a reading row is numbers only;
- ``readings``: ``(stream_id, seq)`` primary key, ``point_id``, ``ts``, ``value``,
  ``historical``;
- ``events``: ``(stream_id, seq)``, ``kind``, ``ts``, the whole message as JSONB;
- ``statuses``, ``metadata``: the latest per gateway; ``alias_tables``: every table announced;
- ``health``: every health message, once per ``message_id``;
- ``quarantine``: what could not be stored, with the raw payload (cut at 64 KiB, with its
  size) and the reason; ``undecoded`` rows are compact telemetry whose alias table had not
  arrived, taken out again and stored once it has.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import psycopg

from district.contract import removed_range

__all__ = [
    "QUARANTINE_KEEP",
    "SCHEMA_SQL",
    "Batch",
    "create_schema",
    "epochs",
    "gaps",
    "write",
]

#: Bytes of a quarantined payload kept in the table (its full size is kept too).
QUARANTINE_KEEP: Final = 64 * 1024

SCHEMA_SQL: Final = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id serial PRIMARY KEY,
    gateway_id text NOT NULL,
    epoch text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gateway_id, epoch)
);
CREATE TABLE IF NOT EXISTS points (
    point_id serial PRIMARY KEY,
    gateway_id text NOT NULL,
    device text NOT NULL,
    point text NOT NULL,
    unit text NOT NULL,
    UNIQUE (gateway_id, device, point, unit)
);
-- Column order packs the row: 4 + 4 + 8 + 8 + 8 + 1 bytes after the header.
CREATE TABLE IF NOT EXISTS readings (
    stream_id integer NOT NULL,
    point_id integer NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz,
    value double precision,
    historical boolean NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE TABLE IF NOT EXISTS events (
    stream_id integer NOT NULL,
    seq bigint NOT NULL,
    kind text NOT NULL,
    ts timestamptz,
    received_at timestamptz NOT NULL DEFAULT now(),
    body jsonb NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE TABLE IF NOT EXISTS statuses (
    gateway_id text PRIMARY KEY,
    state text NOT NULL,
    sent_at timestamptz NOT NULL,
    body jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS metadata (
    gateway_id text PRIMARY KEY,
    aliases_id text NOT NULL,
    sent_at timestamptz NOT NULL,
    body jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_tables (
    gateway_id text NOT NULL,
    aliases_id text NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (gateway_id, aliases_id)
);
CREATE TABLE IF NOT EXISTS health (
    message_id text PRIMARY KEY,
    gateway_id text NOT NULL,
    sent_at timestamptz NOT NULL,
    body jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic text NOT NULL,
    reason text NOT NULL,
    undecoded boolean NOT NULL DEFAULT false,
    gateway_id text,
    aliases_id text,
    size integer NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_undecoded ON quarantine (gateway_id, aliases_id)
    WHERE undecoded;
"""


def create_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the tables if missing; safe to run from every instance at once."""
    with conn.transaction():
        # One instance at a time: CREATE ... IF NOT EXISTS races on the catalogue otherwise.
        conn.execute("SELECT pg_advisory_xact_lock(7100017)")
        conn.execute(SCHEMA_SQL)


@dataclass
class Batch:
    """The rows of a batch of messages, written in one transaction by :func:`write`."""

    #: (gateway, epoch, seq, (device, point, unit), ts, value, historical)
    readings: list[tuple[str, str, int, tuple[str, str, str], datetime | None, float | None, bool]]
    #: (gateway, epoch, seq, kind, ts, body)
    events: list[tuple[str, str, int, str, datetime | None, str]]
    #: (gateway, state, sent_at, body)
    statuses: list[tuple[str, str, datetime, str]]
    #: (gateway, aliases_id, sent_at, body)
    metadata: list[tuple[str, str, datetime, str]]
    #: (message_id, gateway, sent_at, body)
    health: list[tuple[str, str, datetime, str]]
    #: (topic, reason, undecoded, gateway, aliases_id, payload)
    quarantine: list[tuple[str, str, bool, str | None, str | None, bytes]]
    #: Quarantine rows this batch decoded at last (deleted in the same transaction).
    released: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Batch:
        return cls([], [], [], [], [], [])

    def extend(self, other: Batch) -> None:
        """Append the rows of ``other``."""
        self.readings += other.readings
        self.events += other.events
        self.statuses += other.statuses
        self.metadata += other.metadata
        self.health += other.health
        self.quarantine += other.quarantine
        self.released += other.released

    def __len__(self) -> int:
        return sum(
            len(x)
            for x in (
                self.readings,
                self.events,
                self.statuses,
                self.metadata,
                self.health,
                self.quarantine,
                self.released,
            )
        )


class Ids:
    """Stream and point ids already committed, so a batch looks up only what is new."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], int] = {}
        self.points: dict[tuple[str, str, str, str], int] = {}


def _stream_ids(
    conn: psycopg.Connection[Any], ids: Ids, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    found = {k: ids.streams[k] for k in wanted if k in ids.streams}
    missing = sorted(set(wanted) - found.keys())
    if missing:
        gateways, epochs_ = [m[0] for m in missing], [m[1] for m in missing]
        conn.execute(
            "INSERT INTO streams (gateway_id, epoch) SELECT * FROM unnest(%s::text[], "
            "%s::text[]) ON CONFLICT DO NOTHING",
            (gateways, epochs_),
        )
        for sid, gateway, epoch in conn.execute(
            "SELECT stream_id, gateway_id, epoch FROM streams WHERE (gateway_id, epoch) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[]))",
            (gateways, epochs_),
        ):
            found[(gateway, epoch)] = sid
    return found


def _point_ids(
    conn: psycopg.Connection[Any], ids: Ids, wanted: Iterable[tuple[str, str, str, str]]
) -> dict[tuple[str, str, str, str], int]:
    wanted = set(wanted)
    found = {k: ids.points[k] for k in wanted if k in ids.points}
    missing = sorted(wanted - found.keys())
    if missing:
        cols = [list(c) for c in zip(*missing, strict=True)]
        conn.execute(
            "INSERT INTO points (gateway_id, device, point, unit) SELECT * FROM unnest("
            "%s::text[], %s::text[], %s::text[], %s::text[]) ON CONFLICT DO NOTHING",
            cols,
        )
        for pid, *key in conn.execute(
            "SELECT point_id, gateway_id, device, point, unit FROM points WHERE "
            "(gateway_id, device, point, unit) IN (SELECT * FROM unnest(%s::text[], "
            "%s::text[], %s::text[], %s::text[]))",
            cols,
        ):
            found[(key[0], key[1], key[2], key[3])] = pid
    return found


def write(conn: psycopg.Connection[Any], batch: Batch, ids: Ids) -> tuple[int, int]:
    """Write ``batch`` in one transaction; return (readings, events) newly stored (the rest
    were duplicates). The ids learnt are kept in ``ids`` only once the transaction commits."""
    with conn.transaction():
        streams = _stream_ids(
            conn,
            ids,
            {(r[0], r[1]) for r in batch.readings} | {(e[0], e[1]) for e in batch.events},
        )
        points = _point_ids(conn, ids, {(r[0], *r[3]) for r in batch.readings})
        stored_readings = stored_events = 0
        if batch.readings:
            stored_readings = conn.execute(
                "INSERT INTO readings (stream_id, point_id, seq, ts, value, historical) "
                "SELECT * FROM unnest(%s::integer[], %s::integer[], %s::bigint[], "
                "%s::timestamptz[], %s::float8[], %s::boolean[]) ON CONFLICT DO NOTHING",
                (
                    [streams[(r[0], r[1])] for r in batch.readings],
                    [points[(r[0], *r[3])] for r in batch.readings],
                    [r[2] for r in batch.readings],
                    [r[4] for r in batch.readings],
                    [r[5] for r in batch.readings],
                    [r[6] for r in batch.readings],
                ),
            ).rowcount
        if batch.events:
            stored_events = conn.execute(
                "INSERT INTO events (stream_id, seq, kind, ts, body) SELECT * FROM unnest("
                "%s::integer[], %s::bigint[], %s::text[], %s::timestamptz[], %s::jsonb[]) "
                "ON CONFLICT DO NOTHING",
                (
                    [streams[(e[0], e[1])] for e in batch.events],
                    [e[2] for e in batch.events],
                    [e[3] for e in batch.events],
                    [e[4] for e in batch.events],
                    [e[5] for e in batch.events],
                ),
            ).rowcount
        if streams:
            conn.execute(
                "UPDATE streams SET last_seen = now() WHERE stream_id = ANY(%s)",
                (sorted(set(streams.values())),),
            )
        for gateway, state, sent_at, body in batch.statuses:
            # Retained and sent again at every connect: only a newer one replaces it.
            conn.execute(
                "INSERT INTO statuses VALUES (%s, %s, %s, %s) ON CONFLICT (gateway_id) DO "
                "UPDATE SET state = excluded.state, sent_at = excluded.sent_at, "
                "body = excluded.body WHERE statuses.sent_at <= excluded.sent_at",
                (gateway, state, sent_at, body),
            )
        for gateway, aliases_id, sent_at, body in batch.metadata:
            conn.execute(
                "INSERT INTO metadata VALUES (%s, %s, %s, %s) ON CONFLICT (gateway_id) DO "
                "UPDATE SET aliases_id = excluded.aliases_id, sent_at = excluded.sent_at, "
                "body = excluded.body WHERE metadata.sent_at <= excluded.sent_at",
                (gateway, aliases_id, sent_at, body),
            )
            conn.execute(
                "INSERT INTO alias_tables VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (gateway, aliases_id, body),
            )
        if batch.health:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO health VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    batch.health,
                )
        if batch.quarantine:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO quarantine (topic, reason, undecoded, gateway_id, aliases_id, "
                    "size, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        # Undecoded telemetry is kept whole: it is decoded from here later.
                        (t, r, u, g, a, len(p), p if u else p[:QUARANTINE_KEEP])
                        for t, r, u, g, a, p in batch.quarantine
                    ],
                )
        if batch.released:
            conn.execute("DELETE FROM quarantine WHERE id = ANY(%s)", (batch.released,))
    ids.streams.update(streams)
    ids.points.update(points)
    return stored_readings, stored_events


def epochs(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Per gateway its epochs in the order they were first seen: more than one is an epoch
    reset (the gateway's outbox was recreated)."""
    result: dict[str, list[str]] = {}
    for gateway, epoch in conn.execute(
        "SELECT gateway_id, epoch FROM streams ORDER BY gateway_id, first_seen, stream_id"
    ):
        result.setdefault(gateway, []).append(epoch)
    return result


def gaps(
    conn: psycopg.Connection[Any], gateway: str | None = None
) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Per (gateway, epoch) the seq ranges missing between its lowest and highest seq stored,
    readings and events together, less the ranges ``buffer-thinned`` and ``buffer-dropped``
    events account for. Computed by the database, so any instance gives the same answer."""
    rows = conn.execute(
        "WITH s AS (SELECT stream_id, seq FROM readings UNION ALL "
        "           SELECT stream_id, seq FROM events), "
        "n AS (SELECT stream_id, seq, lead(seq) OVER (PARTITION BY stream_id ORDER BY seq) "
        "      AS next FROM s) "
        "SELECT st.gateway_id, st.epoch, n.seq + 1, n.next - 1 FROM n "
        "JOIN streams st USING (stream_id) WHERE n.next > n.seq + 1 "
        "AND (%s::text IS NULL OR st.gateway_id = %s::text) ORDER BY 1, 2, 3",
        (gateway, gateway),
    ).fetchall()
    removed: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for gw, epoch, body in conn.execute(
        "SELECT st.gateway_id, st.epoch, e.body FROM events e JOIN streams st USING "
        "(stream_id) WHERE e.kind IN ('buffer-thinned', 'buffer-dropped')"
    ):
        cut = removed_range(body if isinstance(body, Mapping) else json.loads(body))
        if cut is not None:
            removed.setdefault((gw, epoch), []).append(cut)
    result: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for gw, epoch, first, last in rows:
        for piece in _less(int(first), int(last), removed.get((gw, epoch), [])):
            result.setdefault((gw, epoch), []).append(piece)
    return result


def _less(first: int, last: int, cuts: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = [(first, last)]
    for low, high in cuts:
        nxt: list[tuple[int, int]] = []
        for a, b in pieces:
            if high < a or low > b:
                nxt.append((a, b))
                continue
            if a < low:
                nxt.append((a, low - 1))
            if b > high:
                nxt.append((high + 1, b))
        pieces = nxt
    return pieces
