"""The outbox's schema, its version and the migrations between versions.

The version is ``PRAGMA user_version``. ``MIGRATIONS[n]`` takes a file from version ``n`` to
``n + 1``; :func:`migrate` runs each one inside its own transaction together with the new
``user_version``, so a file is always at exactly one version, even after a crash mid-upgrade.

Version 2 (this code) keeps the two streams in two tables. Events are JSON text, one row each.
Telemetry is stored compactly: what identifies a series (device, point, unit: every body field
but ``ts`` and ``value``) is written once to ``points``, and each reading is one small row
``(seq, point, ts, value)``. That is what keeps a reading near 30 bytes in the file instead of
the ~150 of its JSON (see docs/buffer.md, "Storage").
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "canonical_series", "migrate"]

log = logging.getLogger("buffer.outbox")

#: The schema this code writes. Older files are migrated on open; newer ones are refused.
SCHEMA_VERSION: Final = 2

#: Meta keys holding integers, with their value in a new database.
COUNTERS: Final[Mapping[str, int]] = {
    # The highest seq handed out when meta was last written. Written in every transaction
    # that deletes rows (ack, thin, drop) and at least every few seconds with inserts; the
    # next seq is max(last_seq, max(seq) in the tables) + 1, so it is never reused: a row
    # above last_seq can only disappear in a transaction that writes last_seq first.
    "last_seq": 0,
    # Rows per stream with seq <= counted_through. Rows above it (inserted since meta was
    # last written) are counted on open: a short range at the right edge of each table.
    "rows_event": 0,
    "rows_telemetry": 0,
    "counted_through": 0,
    # Telemetry rows with seq <= this were already thinned once; thinning moves forward only.
    "thinned_through": 0,
    # Totals over the life of the file, for `edge buffer stats`.
    "thinned_rows": 0,
    "dropped_rows": 0,
    # Seqs up to this may have been handed out by commits not yet synced to the card (readings
    # are committed every window but synced every buffer.sync_interval). Only a synced commit
    # raises it, and a commit that would pass it is synced, so a power cut that undoes the last
    # commits cannot make a seq the uplink may have sent be handed out again: an open after a
    # reboot starts above it (docs/buffer.md, "The durability contract"). Files of version 2
    # written before it get the key on open.
    "seq_reserved": 0,
}


def canonical_series(fields: Mapping[str, Any]) -> str:
    """The text that names one series in ``points``: sorted, compact JSON."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _create_v2(conn: sqlite3.Connection, epoch: str) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)")
    conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", COUNTERS.items())
    conn.execute("CREATE TABLE points (id INTEGER PRIMARY KEY, series TEXT NOT NULL UNIQUE)")
    # seq is the rowid: rows are appended in seq order to the right edge of one b-tree, and
    # reading the oldest is a walk from its left edge. No second index to write.
    conn.execute(
        """
        CREATE TABLE telemetry (
            seq   INTEGER PRIMARY KEY,
            point INTEGER NOT NULL,
            ts    REAL NOT NULL,
            value REAL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE events (
            seq     INTEGER PRIMARY KEY,
            created REAL NOT NULL,
            body    TEXT NOT NULL
        )
        """
    )
    # Rule-engine state (buffer/state.py): one versioned JSON value per key.
    conn.execute(
        """
        CREATE TABLE state (
            key      TEXT PRIMARY KEY,
            revision INTEGER NOT NULL,
            schema   INTEGER NOT NULL,
            value    TEXT NOT NULL,
            updated  REAL NOT NULL
        )
        """
    )


def _migrate_0_to_2(conn: sqlite3.Connection) -> None:
    """A new, empty file: straight to the current layout (there is nothing to carry over)."""
    _create_v2(conn, str(uuid.uuid4()))


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 1 kept both streams as JSON in one ``outbox`` table with AUTOINCREMENT seqs.

    Everything is carried over under the same epoch and the same seqs, and the high-water mark
    of ``sqlite_sequence`` becomes ``last_seq``, so no seq handed out before is reused.
    """
    epoch_row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    if epoch_row is None:
        raise sqlite3.DatabaseError("version 1 outbox without an epoch")
    epoch = str(epoch_row[0])
    conn.execute("ALTER TABLE meta RENAME TO meta_v1")
    _create_v2(conn, epoch)
    conn.execute("DROP TABLE meta_v1")

    points: dict[str, int] = {}
    events: list[tuple[int, float, str]] = []
    telemetry: list[tuple[int, int, float, float | None]] = []
    for seq, stream, created, body in conn.execute(
        "SELECT seq, stream, created, body FROM outbox ORDER BY seq"
    ):
        if stream == "event":
            events.append((int(seq), float(created), str(body)))
            continue
        try:
            fields = json.loads(body)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            # Not a reading we can take apart: keep its text whole rather than lose it.
            fields = {"v1_body": str(body)}
        ts = fields.pop("ts", None)
        value = fields.pop("value", None)
        # A version 1 reading without a usable time or value keeps its row: the time it was
        # stored stands in for the first, the second becomes null.
        if not _is_number(ts):
            ts = float(created)
        if not _is_number(value):
            value = None
        series = canonical_series(fields)
        point = points.setdefault(series, len(points) + 1)
        telemetry.append((int(seq), point, float(ts), value))
    conn.executemany(
        "INSERT INTO points (id, series) VALUES (?, ?)", ((i, s) for s, i in points.items())
    )
    conn.executemany("INSERT INTO events (seq, created, body) VALUES (?, ?, ?)", events)
    conn.executemany("INSERT INTO telemetry (seq, point, ts, value) VALUES (?, ?, ?, ?)", telemetry)
    high = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    last_seq = max(int(high[0]) if high else 0, max((r[0] for r in events), default=0))
    last_seq = max(last_seq, max((r[0] for r in telemetry), default=0))
    conn.executemany(
        "UPDATE meta SET value = ? WHERE key = ?",
        [
            (last_seq, "last_seq"),
            (last_seq, "counted_through"),
            (len(events), "rows_event"),
            (len(telemetry), "rows_telemetry"),
        ],
    )
    conn.execute("DROP TABLE outbox")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: MIGRATIONS[n] takes a database from user_version n to the version it returns, in one
#: transaction. 0 (a new file) goes straight to the current version.
MIGRATIONS: Final[Mapping[int, tuple[int, Callable[[sqlite3.Connection], None]]]] = {
    0: (2, _migrate_0_to_2),
    1: (2, _migrate_1_to_2),
}


class SchemaTooNew(Exception):
    """The file was written by a newer gateway."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the version found."""
    found = version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"outbox schema version {version} is newer than this gateway understands "
            f"({SCHEMA_VERSION}); refusing to touch it"
        )
    while version < SCHEMA_VERSION:
        target, step = MIGRATIONS[version]
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            # PRAGMA takes no parameters; target is an int from the table above.
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version:
            log.info("outbox schema migrated from version %d to %d", version, target)
        version = target
    return found
