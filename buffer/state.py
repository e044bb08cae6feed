"""Durable key-value storage for the rules engine: sustained-condition windows, learned
baselines, active alarms, anything that must survive a restart.

Values are JSON, stored in the outbox's file (table ``state``) so one fsync'd database holds
everything the gateway must not forget. Each key carries two numbers:

- ``revision`` goes up by one with every write of that key, so a writer can say "only if
  nobody changed it since I read revision n" (``expect=n``) and get :class:`StateConflict`
  otherwise;
- ``schema`` is the caller's own version of the value's layout, so a newer rules engine can
  recognise (and convert) state written by an older one.

A write returns once it is committed (WAL, ``synchronous = FULL``), like ``Outbox.append``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from buffer.store import OutboxError

__all__ = ["StateConflict", "StateEntry", "state_delete", "state_get", "state_items", "state_put"]


class StateConflict(OutboxError):
    """A conditional write found another revision than the one it expected."""


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One stored value with its revision (1 for the first write) and its schema."""

    key: str
    value: Any
    revision: int
    schema: int
    updated: float


def encode(key: str, value: Any) -> str:
    """The stored text of ``value``; a clear error for what JSON cannot hold."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a state key is a non-empty string, not {key!r}")
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"state {key!r}: the value is not JSON-serialisable ({exc})") from exc


def state_get(conn: sqlite3.Connection, key: str) -> StateEntry | None:
    row = conn.execute(
        "SELECT key, value, revision, schema, updated FROM state WHERE key = ?", (key,)
    ).fetchone()
    return None if row is None else _entry(row)


def state_items(conn: sqlite3.Connection, prefix: str) -> list[StateEntry]:
    # Range on the primary key rather than LIKE: no escaping of % and _ in prefixes.
    rows = conn.execute(
        "SELECT key, value, revision, schema, updated FROM state "
        "WHERE key >= ? AND key < ? ORDER BY key",
        (prefix, prefix + "\U0010ffff"),
    ).fetchall()
    return [_entry(row) for row in rows]


def state_put(
    conn: sqlite3.Connection, key: str, text: str, schema: int, expect: int | None
) -> int:
    """Write ``key`` in its own transaction; return the new revision."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT revision FROM state WHERE key = ?", (key,)).fetchone()
        current = 0 if row is None else int(row[0])
        if expect is not None and expect != current:
            raise StateConflict(
                f"state {key!r} is at revision {current}, the write expected {expect}"
            )
        conn.execute(
            "INSERT INTO state (key, revision, schema, value, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET revision = excluded.revision, "
            "schema = excluded.schema, value = excluded.value, updated = excluded.updated",
            (key, current + 1, schema, text, time.time()),
        )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return current + 1


def state_delete(conn: sqlite3.Connection, key: str, expect: int | None) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT revision FROM state WHERE key = ?", (key,)).fetchone()
        if expect is not None and (0 if row is None else int(row[0])) != expect:
            raise StateConflict(f"state {key!r} is not at revision {expect}")
        conn.execute("DELETE FROM state WHERE key = ?", (key,))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return row is not None


#: A row of the state table as the queries here select it: key, value (JSON text), revision,
#: schema, updated (POSIX seconds).
StateRow = tuple[str, str, int, int, float]


def _entry(row: StateRow) -> StateEntry:
    key, text, revision, schema, updated = row
    return StateEntry(str(key), json.loads(text), int(revision), int(schema), float(updated))


def _rollback(conn: sqlite3.Connection) -> None:
    # A COMMIT refused by a full disk has already ended the transaction, and a ROLLBACK then
    # fails with "no transaction is active", hiding the real error the caller should see.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
