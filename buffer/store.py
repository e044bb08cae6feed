"""The synchronous half of the outbox: one SQLite connection and everything done with it.

Every method runs on the outbox's one thread (see :class:`buffer.Outbox`); nothing here knows
about asyncio. The command line (``edge buffer ...``) uses the read-only helpers at the end.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from buffer.schema import COUNTERS, SCHEMA_VERSION, SchemaTooNew, migrate

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "STREAMS",
    "CapacityPolicy",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxUnwritable",
    "Pending",
    "PendingEvent",
    "PendingReading",
    "Record",
    "ResetInfo",
    "Store",
    "Stream",
]

log = logging.getLogger("buffer.outbox")

Stream = Literal["event", "telemetry"]
STREAMS: Final[tuple[Stream, ...]] = get_args(Stream)

#: A file up to this size is checked in full (``PRAGMA quick_check``) before the outbox opens;
#: a larger one is opened after a structural check and then checked in the background, so a
#: gateway with a day of backlog on an SD card still starts in about a second.
CHECK_AT_OPEN_LIMIT: Final = 64 * 2**20

#: Rows examined per thinning or dropping step: bounded, so that the writer goes back to
#: committing new records between steps.
CAPACITY_CHUNK: Final = 20_000

#: Inserts write the counters in meta at most this often (seconds); deletions always do. Each
#: meta write is a 4 KiB page in the WAL (and again at the checkpoint): at a gateway's pace
#: of a few readings per commit, writing it with every commit would double the bytes written,
#: and so would every 5 s with a commit every 2 s. Opening the file counts the rows inserted
#: since (live_counters): a short range at the right edge of each table.
META_INTERVAL: Final = 60.0

#: The page size of a new file. A commit appends every page it changed to the WAL, whole: at a
#: gateway's pace (a few dozen readings every 2 s) that is the last page of the telemetry table
#: and, when that one is full, the new one and the pages that point to it. Unsynced commits
#: share the card's 4 KiB blocks, so smaller pages write less: with the reference site's
#: policies 512-byte pages cost the card about half of what SQLite's 4 KiB did (docs/buffer.md,
#: "What a commit writes"), and ingest and drain rates stay where they were. A file keeps the
#: page size it was made with.
PAGE_SIZE: Final = 512

#: The WAL is copied into the database once it holds this much (SQLite counts it in pages):
#: the larger, the more commits of the same page one copy covers; bounded, so that a burst
#: does not keep a large WAL (journal_size_limit cuts it back).
WAL_CHECKPOINT_BYTES: Final = 4 * 2**20

#: How far ahead a synced commit reserves seqs for the commits that follow it unsynced (see
#: ``seq_reserved`` in buffer.schema.COUNTERS). A commit that would pass the reservation is
#: synced, so at 1,000 readings a second that is at least one sync a minute, whatever
#: ``sync_interval`` says; after a power cut at most this many seqs are skipped.
SEQ_RESERVE: Final = 65_536

#: Acked seqs in a run at least this long are deleted with one range delete, shorter runs
#: by an IN list (Store.ack): measured on 512-byte pages, a range per run of one cost 4.2 µs
#: a row where the list costs 0.8.
RANGE_DELETE_MIN: Final = 4

#: Changes at every boot of the kernel: how an open tells a restart of the gateway (the page
#: cache, and with it every commit, survived) from a reboot or a power cut (unsynced commits
#: may be gone).
BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot's id, or None where the kernel does not say (then every open is taken for
    the first after a reboot)."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


@dataclass(slots=True)
class PendingReading:
    """A reading submitted and not yet committed: its series (``point``, the id in the points
    table), time and value; when it was submitted (the event loop's clock: the commit window
    opens at the oldest record waiting) and the future :meth:`Outbox.append` waits on."""

    point: int
    ts: float
    value: float | None
    submitted: float
    done: asyncio.Future[int] | None
    #: Committed without waiting for the commit window (readings around an alarm).
    at_once: bool = False


@dataclass(slots=True)
class PendingEvent:
    """An event submitted and not yet committed: when (POSIX seconds), its body as JSON text,
    and the outbox's bookkeeping as for :class:`PendingReading`."""

    created: float
    body: str
    submitted: float
    done: asyncio.Future[int] | None


#: A record between :meth:`Outbox.submit` and its commit by :meth:`Store.commit`.
Pending = PendingReading | PendingEvent


class OutboxError(Exception):
    """Base of the errors the outbox raises."""


class OutboxCorrupt(OutboxError):
    """The database file failed its integrity check or is not an outbox at all."""


class OutboxUnwritable(OutboxError):
    """The outbox's folder or file cannot be written: read-only, not a folder, no permission."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored record. ``created`` is the submit time for events, the reading's ``ts`` for
    telemetry (float POSIX seconds)."""

    seq: int
    stream: Stream
    created: float
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResetInfo:
    """Why the outbox started a new file, and where the old one went."""

    reason: str
    moved_to: Path
    previous_epoch: str | None


@dataclass(frozen=True, slots=True)
class CapacityPolicy:
    """When the outbox must make room: over ``max_size`` bytes of live data (database pages in
    use; the WAL comes on top, at most ~8 MiB), or under ``min_free_disk`` bytes free on its
    file system. ``thin_window`` is the time window (seconds) per point in which thinning keeps
    min, max and last."""

    max_size: int | None = None
    min_free_disk: int = 0
    thin_window: float = 60.0
    #: Room to make once triggered, as a fraction of the limit, so that the policy does not run
    #: again on every commit.
    slack: float = 0.05


@dataclass(slots=True)
class _Usage:
    live: int
    free_disk: int
    reason: str | None = None
    excess: int = 0


@dataclass(slots=True)
class Store:
    """An open outbox database. Create it with :meth:`open`."""

    path: Path
    conn: sqlite3.Connection
    epoch: str
    counters: dict[str, int]
    #: id -> the series fields of that point (body fields other than ts and value).
    series: dict[int, dict[str, Any]]
    #: canonical series text -> id as the file had them when opened: the submit side's to
    #: take (:class:`buffer.Outbox` keeps in it only the series it does not find by their
    #: fields, and keeps it up to date from then on).
    point_ids: dict[str, int]
    page_size: int
    checked: bool
    reset: ResetInfo | None = None
    found_version: int = SCHEMA_VERSION
    #: The highest seq of an event row (0: none), so that a look for newer events can be
    #: answered without the database (:meth:`none_after`).
    last_event_seq: int = 0
    #: The highest seq whose commit is synced: it survives a power cut (commits up to
    #: ``counters["last_seq"]`` survive a crash of the process).
    synced_seq: int = 0
    _meta_due: float = 0.0
    _closed: bool = field(default=False)

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, check_limit: int = CHECK_AT_OPEN_LIMIT) -> Store:
        """Open (creating if missing), check and migrate the outbox at ``path``.

        A file that is not a database, fails its check or lacks the outbox's tables is moved
        aside (``<name>.corrupt-<UTC time>``, kept for inspection) and a new one is started;
        :attr:`reset` then says so. A folder that cannot be written raises
        :class:`OutboxUnwritable`; a file from a newer gateway raises :class:`OutboxError`.
        """
        _check_writable(path)
        marker = damage_marker(path)
        try:
            if marker.exists():
                if not path.exists():
                    marker.unlink()
                else:
                    reason = marker.read_text(errors="replace").strip()
                    raise OutboxCorrupt(f"the last integrity check found damage ({reason})")
            return cls._open(path, check_limit)
        except OutboxCorrupt as exc:
            previous = _read_epoch(path)
            try:
                moved = _move_aside(path)
            except OSError as move_error:
                raise OutboxUnwritable(
                    f"{path}: {exc}, and it cannot be moved aside ({move_error}); {_FIX}"
                ) from move_error
            marker.unlink(missing_ok=True)
            log.error("outbox %s: %s; moved it to %s and started a new one", path, exc, moved.name)
            store = cls._open(path, check_limit)
            store.reset = ResetInfo(str(exc), moved, previous)
            # The platform hears of it from the new file's first event: why, where the old
            # file is kept, and which epoch's numbers end here.
            now = time.time()
            body = {
                "kind": "buffer-reset",
                "ts": now,
                "reason": str(exc),
                "moved_to": moved.name,
                "previous_epoch": previous,
            }
            text = json.dumps(body, separators=(",", ":"))
            store.commit([PendingEvent(now, text, time.monotonic(), None)], [])
            return store

    @classmethod
    def _open(cls, path: Path, check_limit: int) -> Store:
        fresh = not path.exists() or path.stat().st_size == 0
        try:
            # isolation_level=None: no implicit transactions; every write says BEGIN itself.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise _unwritable(path, exc) from exc
        try:
            checked = fresh or path.stat().st_size <= check_limit
            try:
                _configure(conn, path, fresh=fresh)
                if checked and not fresh:
                    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
                    if problems != ["ok"]:
                        raise OutboxCorrupt(f"integrity check failed: {'; '.join(problems[:5])}")
                found = migrate(conn)
                if found == 1:
                    # Version 1 files were made without auto_vacuum; VACUUM rebuilds the file
                    # with it (they were small: the walking skeleton's outbox).
                    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                    conn.execute("VACUUM")
                store = cls._load(path, conn, checked)
                store.found_version = found
                store._start_session()
            except SchemaTooNew as exc:
                raise OutboxError(f"{path}: {exc}") from exc
            except sqlite3.OperationalError as exc:
                if _is_corruption(exc):
                    raise OutboxCorrupt(f"not a readable outbox database: {exc}") from exc
                raise _unwritable(path, exc) from exc
            except sqlite3.DatabaseError as exc:
                raise OutboxCorrupt(f"not a readable outbox database: {exc}") from exc
            except (KeyError, ValueError, TypeError) as exc:
                raise OutboxCorrupt(f"the outbox's tables are not as expected: {exc}") from exc
            return store
        except BaseException:
            conn.close()
            raise

    @classmethod
    def _load(cls, path: Path, conn: sqlite3.Connection, checked: bool) -> Store:
        epoch = str(conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])
        counters = live_counters(conn)
        series: dict[int, dict[str, Any]] = {}
        point_ids: dict[str, int] = {}
        for point, text in conn.execute("SELECT id, series FROM points"):
            series[int(point)] = series_fields(text)
            point_ids[str(text)] = int(point)
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        store = cls(path, conn, epoch, counters, series, point_ids, page_size, checked)
        top = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        store.last_event_seq = int(top or 0)
        return store

    def _start_session(self) -> None:
        """Note this boot in the file, after a reboot skipping the seqs that commits a power
        cut undid may have handed out.

        Readings committed unsynced may have been sent by the uplink and then lost with the
        power: their seqs must never name other records. So when the kernel booted since the
        file was last written and the reservation (``seq_reserved``) is above the last seq
        found, the seqs up to it are skipped and a ``buffer-dropped`` event (reason
        ``power-loss``) names them. A restart without a reboot finds every commit (the page
        cache kept them) and skips nothing; nor does a reboot after a clean close. The write
        is synced, so everything in the file is from then on.
        """
        conn = self.conn
        boot = boot_id()
        row = conn.execute("SELECT value FROM meta WHERE key = 'boot_id'").fetchone()
        previous = None if row is None else str(row[0])
        found = self.counters["last_seq"]
        reserved = self.counters["seq_reserved"]
        skipped = reserved > found and (boot is None or boot != previous)
        last = reserved if skipped else found
        counters = {"last_seq": last, "counted_through": last, "seq_reserved": last}
        event: tuple[int, float, str] | None = None
        if skipped:
            event = self._power_loss_event(found + 1, reserved)
            last = event[0]
            counters.update(
                last_seq=last,
                counted_through=last,
                seq_reserved=last,
                rows_event=self.counters["rows_event"] + 1,
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", COUNTERS.items()
            )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('boot_id', ?)", (boot or "",)
            )
            if event is not None:
                conn.execute("INSERT INTO events (seq, created, body) VALUES (?, ?, ?)", event)
            _write_counters(conn, {**self.counters, **counters})
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            if event is not None or _is_corruption(exc):
                raise
            # A full disk or a lock: the file is as the last gateway left it, and the next
            # open judges it again; this one goes on without a reservation (its first commit
            # is synced).
            log.warning("outbox %s: cannot note this boot in the file (%s)", self.path, exc)
            self.synced_seq = 0
            return
        self.counters.update(counters)
        self.synced_seq = last
        if event is not None:
            self.last_event_seq = last
            log.error(
                "outbox %s: the system restarted without closing the outbox; seqs %d..%d may "
                "have been handed out by commits the power cut undid and are skipped",
                self.path,
                found + 1,
                reserved,
            )

    def _power_loss_event(self, first: int, through: int) -> tuple[int, float, str]:
        """The ``buffer-dropped`` event row for the seqs ``first``..``through``, at the seq
        after them."""
        now = time.time()
        newest = self.conn.execute("SELECT ts FROM telemetry ORDER BY seq DESC LIMIT 1").fetchone()
        body = {
            "kind": "buffer-dropped",
            "ts": now,
            "reason": "power-loss",
            "seq_first": first,
            "seq_last": through,
            "from": _iso(now if newest is None else float(newest[0])),
            "to": _iso(now),
            # At most: how many of these seqs had been handed out is what the cut undid.
            "rows_removed": through - first + 1,
        }
        return through + 1, now, json.dumps(body, separators=(",", ":"))

    # --- writing ------------------------------------------------------------------------------

    def commit(
        self, batch: Sequence[Pending], new_points: Sequence[tuple[int, str]], sync: bool = True
    ) -> int:
        """Store ``batch`` in one transaction; return the seq of its first record.

        Records get consecutive seqs in batch order. On failure nothing is stored and nothing
        changes here, so the same batch can be committed again later with the same outcome.

        ``sync``: fsync the WAL before returning (``synchronous = FULL``), so the batch and
        every commit before it survive a power cut. Without it (``NORMAL``) the commit
        survives a crash of the process but a power cut may undo it; a batch that would hand
        out seqs beyond the reservation is synced anyway (``seq_reserved``).
        """
        first = self.counters["last_seq"] + 1
        events: list[tuple[int, float, str]] = []
        telemetry: list[tuple[int, int, float, float | None]] = []
        seq = first
        for item in batch:
            if isinstance(item, PendingReading):
                telemetry.append((seq, item.point, item.ts, item.value))
            else:
                events.append((seq, item.created, item.body))
            seq += 1
        last = seq - 1
        counters = {
            "last_seq": last,
            "rows_event": self.counters["rows_event"] + len(events),
            "rows_telemetry": self.counters["rows_telemetry"] + len(telemetry),
        }
        reserved = self.counters["seq_reserved"]
        sync = sync or last > reserved
        if sync and reserved - last < SEQ_RESERVE // 2:
            counters["seq_reserved"] = last + SEQ_RESERVE
        now = time.monotonic()
        write_meta = now >= self._meta_due or "seq_reserved" in counters
        conn = self.conn
        if not sync:
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if new_points:
                conn.executemany(
                    "INSERT OR IGNORE INTO points (id, series) VALUES (?, ?)", new_points
                )
            if telemetry:
                conn.executemany(
                    "INSERT INTO telemetry (seq, point, ts, value) VALUES (?, ?, ?, ?)", telemetry
                )
            if events:
                conn.executemany("INSERT INTO events (seq, created, body) VALUES (?, ?, ?)", events)
            if write_meta:
                _write_counters(conn, {**self.counters, **counters, "counted_through": last})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        finally:
            if not sync:
                # Everything else on this connection (rule state, deletes, the capacity
                # policy's reports) stays synced.
                conn.execute("PRAGMA synchronous = FULL")
        self.counters.update(counters)
        if sync:
            self.synced_seq = last
        if events:
            self.last_event_seq = events[-1][0]
        if write_meta:
            self.counters["counted_through"] = last
            self._meta_due = now + META_INTERVAL
        for point, text in new_points:
            if point not in self.series:
                self.series[point] = series_fields(text)
        return first

    def ack(self, seqs: Sequence[int]) -> int:
        """Delete the rows ``seqs`` (whichever stream they are in); return how many went."""
        # A run of consecutive seqs (the uplink acks whole batches) goes in one range delete:
        # one descent of each table's b-tree instead of one per row, which with the small
        # pages of a new file (PAGE_SIZE) made a backlog drain's deletes cost half as much
        # again. Every seq of a run was acked, so the range deletes exactly the rows listed.
        # Short runs cost more as statements of their own than as rows of an IN list.
        ranges: list[tuple[int, int]] = []
        singles: list[int] = []
        for first, last in seq_runs(seqs):
            if last - first + 1 >= RANGE_DELETE_MIN:
                ranges.append((first, last))
            else:
                singles.extend(range(first, last + 1))
        conn = self.conn
        removed = {"events": 0, "telemetry": 0}
        conn.execute("BEGIN IMMEDIATE")
        try:
            for first, last in ranges:
                for table in removed:
                    cur = conn.execute(
                        f"DELETE FROM {table} WHERE seq >= ? AND seq <= ?", (first, last)
                    )
                    removed[table] += max(cur.rowcount, 0)
            # Chunks stay under SQLITE_MAX_VARIABLE_NUMBER on any build.
            for start in range(0, len(singles), 500):
                chunk = singles[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for table in removed:
                    cur = conn.execute(f"DELETE FROM {table} WHERE seq IN ({marks})", chunk)
                    removed[table] += max(cur.rowcount, 0)
            counters = {
                "rows_event": self.counters["rows_event"] - removed["events"],
                "rows_telemetry": self.counters["rows_telemetry"] - removed["telemetry"],
                "counted_through": self.counters["last_seq"],
            }
            _write_counters(conn, {**self.counters, **counters})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.counters.update(counters)
        self.synced_seq = self.counters["last_seq"]  # a synced transaction: all before it too
        return removed["events"] + removed["telemetry"]

    def sync(self) -> None:
        """Make every commit so far survive a power cut: a synced write of the counters (its
        fsync of the WAL covers the commits before it). Nothing to do when they already do."""
        last = self.counters["last_seq"]
        if self.synced_seq >= last:
            return
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            _write_counters(conn, {**self.counters, "counted_through": last})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.counters["counted_through"] = last
        self._meta_due = time.monotonic() + META_INTERVAL
        self.synced_seq = last

    # --- reading ------------------------------------------------------------------------------

    def peek(
        self, stream: Stream, limit: int, after: int = 0, through: int | None = None
    ) -> list[Record]:
        """The oldest rows of ``stream`` with ``after`` < seq <= ``through``, oldest first."""
        # SQLite integers stop at 2**63 - 1: "no upper bound" as the largest seq there can be.
        upper = 2**63 - 1 if through is None else through
        if stream == "event":
            rows = self.conn.execute(
                "SELECT seq, created, body FROM events WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (after, upper, limit),
            ).fetchall()
            return [Record(seq, "event", created, json.loads(body)) for seq, created, body in rows]
        rows = self.conn.execute(
            "SELECT seq, point, ts, value FROM telemetry WHERE seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?",
            (after, upper, limit),
        ).fetchall()
        series = self.series
        return [
            Record(seq, "telemetry", ts, {**series[point], "value": value, "ts": ts})
            for seq, point, ts, value in rows
        ]

    def none_after(self, stream: Stream, after: int, through: int | None = None) -> bool:
        """True when :meth:`peek` would find no row: every row of ``stream`` has a seq of
        ``after`` or less. Answered from what this store wrote, without the database, so the
        event loop may ask it while a commit runs on the store's thread. The seqs it reads rise
        once that commit's rows are in; a look meanwhile finds what was committed before it,
        and the commit's listeners (:meth:`Outbox.add_commit_listener`), told afterwards, look
        again."""
        if through is not None and through <= after:
            return True
        top = self.last_event_seq if stream == "event" else self.counters["last_seq"]
        return after >= top

    def recent_since(self, since: float, scan_limit: int = 100_000) -> int:
        """The seq after which every telemetry row is from ``since`` or later: walking back from
        the newest row, the first one older than ``since`` (0 when there is none). At most
        ``scan_limit`` rows are looked at (the ``ts`` column has no index); beyond that the
        rest counts as older."""
        before = self.counters["last_seq"] + 1
        scanned = 0
        while scanned < scan_limit:
            rows = self.conn.execute(
                "SELECT seq, ts FROM telemetry WHERE seq < ? ORDER BY seq DESC LIMIT 1000",
                (before,),
            ).fetchall()
            if not rows:
                return 0
            for seq, ts in rows:
                if ts < since:
                    return int(seq)
            before = int(rows[-1][0])
            scanned += len(rows)
        return before - 1

    def depth(self) -> dict[str, int]:
        return {"event": self.counters["rows_event"], "telemetry": self.counters["rows_telemetry"]}

    # --- capacity -----------------------------------------------------------------------------

    def usage(self, policy: CapacityPolicy) -> _Usage:
        """Bytes of live data and free disk, and which limit (if any) is crossed by how much."""
        pages = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
        free_pages = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        # The WAL is left out: it is bounded on its own (checkpoints at ~4 MiB, cut back to
        # journal_size_limit), and counting it would make small limits unreachable.
        live = (pages - free_pages) * self.page_size
        stat = os.statvfs(self.path.parent)
        free_disk = stat.f_bavail * stat.f_frsize
        usage = _Usage(live, free_disk)
        if policy.max_size is not None and live > policy.max_size:
            usage.reason = "max_size"
            usage.excess = live - int(policy.max_size * (1 - policy.slack))
        elif policy.min_free_disk and free_disk < policy.min_free_disk:
            usage.reason = "min_free_disk"
            usage.excess = int(policy.min_free_disk * (1 + policy.slack)) - free_disk
        return usage

    def make_room(self, policy: CapacityPolicy, reason: str) -> dict[str, Any] | None:
        """One bounded step of the capacity policy; return the report event's body, or None
        when there is no telemetry left to thin or drop (events are never touched).

        Thinning first: the oldest telemetry not yet thinned, per point and ``thin_window``,
        keeps the rows with the minimum, the maximum and the last value and deletes the rest.
        Only when everything has been thinned once are the oldest rows dropped. The report is
        an event stored in the same transaction as the deletion, so a thinning is never
        unreported and never reported twice.
        """
        now = time.time()
        conn = self.conn
        through = self.counters["thinned_through"]
        rows = conn.execute(
            "SELECT seq, point, ts, value FROM telemetry WHERE seq > ? ORDER BY seq LIMIT ?",
            (through, CAPACITY_CHUNK),
        ).fetchall()
        if rows:
            doomed = _thin(rows, policy.thin_window)
            kind = "buffer-thinned"
            body: dict[str, Any] = {"kind": kind, "ts": now, "reason": reason}
            body.update(_span(rows))
            body.update(rows_removed=len(doomed), rows_kept=len(rows) - len(doomed))
            body["window_s"] = policy.thin_window
            new_through = rows[-1][0]
            total_key = "thinned_rows"
        else:
            rows = conn.execute(
                "SELECT seq, point, ts, value FROM telemetry ORDER BY seq LIMIT ?",
                (CAPACITY_CHUNK // 4,),
            ).fetchall()
            if not rows:
                return None
            doomed = [row[0] for row in rows]
            body = {"kind": "buffer-dropped", "ts": now, "reason": reason}
            body.update(_span(rows))
            body["rows_removed"] = len(doomed)
            new_through = through
            total_key = "dropped_rows"
        seq = self.counters["last_seq"] + 1
        counters = {
            "last_seq": seq,
            "rows_event": self.counters["rows_event"] + 1,
            "rows_telemetry": self.counters["rows_telemetry"] - len(doomed),
            "thinned_through": new_through,
            total_key: self.counters[total_key] + len(doomed),
            "counted_through": seq,
        }
        text = json.dumps(body, separators=(",", ":"))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM telemetry WHERE seq = ?", ((s,) for s in doomed))
            conn.execute(
                "INSERT INTO events (seq, created, body) VALUES (?, ?, ?)", (seq, now, text)
            )
            _write_counters(conn, {**self.counters, **counters})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.counters.update(counters)
        self.last_event_seq = seq
        self.synced_seq = seq
        if reason == "min_free_disk":
            # Deleted rows free pages inside the file; only this gives them back to the disk.
            # Stepped to the end (fetchall): each step of this pragma frees one page.
            conn.execute("PRAGMA incremental_vacuum").fetchall()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        log.warning(
            "outbox %s: %s %d telemetry rows (seq %s..%s) to stay within %s",
            self.path,
            "thinned" if total_key == "thinned_rows" else "dropped",
            len(doomed),
            body["seq_first"],
            body["seq_last"],
            reason,
        )
        return body

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Up-to-date counters make the next open count nothing (best effort: a full disk
            # may refuse, and then the next open counts the rows since the last write).
            # The reservation goes back to the last seq: a reboot after a clean stop skips none.
            last = self.counters["last_seq"]
            self.conn.execute("BEGIN IMMEDIATE")
            _write_counters(
                self.conn, {**self.counters, "counted_through": last, "seq_reserved": last}
            )
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            _rollback(self.conn)
        finally:
            self.conn.close()


# --- helpers ------------------------------------------------------------------------------------


def series_fields(text: str) -> dict[str, Any]:
    """The fields of a series from its text in ``points``, names and text values interned: a
    site's points repeat the same few device ids, point names and units, and one copy of each
    serves every point (1,000 dicts parsed apart held 6,000 strings)."""
    return json.loads(text, object_pairs_hook=_interned)  # type: ignore[no-any-return]


def _interned(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {sys.intern(k): sys.intern(v) if type(v) is str else v for k, v in pairs}


def seq_runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """``seqs`` as runs of consecutive numbers, (first, last) each, ascending; duplicates
    count once. E.g. [7, 3, 4, 5, 9, 8] -> [(3, 5), (7, 9)]."""
    runs: list[tuple[int, int]] = []
    first = last = None
    for seq in sorted(set(seqs)):
        if last is not None and seq == last + 1:
            last = seq
            continue
        if first is not None and last is not None:
            runs.append((first, last))
        first = last = seq
    if first is not None and last is not None:
        runs.append((first, last))
    return runs


def _configure(conn: sqlite3.Connection, path: Path, *, fresh: bool) -> None:
    if fresh:
        # Both must precede the first table (and the page size the switch to WAL).
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        # Lets a full disk get freed pages back (make_room) with `PRAGMA incremental_vacuum`
        # instead of a VACUUM that needs twice the space.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    # WAL: readers (the uplink's peek, `edge buffer stats`) never block the writer, and a
    # commit appends to one file instead of rewriting pages in place and journalling them.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxUnwritable(f"{path}: cannot switch to WAL mode (got {mode!r})")
    # FULL: in WAL mode NORMAL survives a crash of the process but may lose the last
    # transactions on power loss; FULL fsyncs the WAL at every commit, so what append()
    # reported as committed survives pulling the plug. Routine readings are committed with
    # NORMAL, transaction by transaction (Store.commit), and synced every sync_interval.
    conn.execute("PRAGMA synchronous = FULL")
    # Tools (the CLI, a technician's sqlite3 shell) may hold a lock for a moment.
    conn.execute("PRAGMA busy_timeout = 5000")
    # After a checkpoint the WAL is cut back to this, so a burst does not keep a large file.
    conn.execute("PRAGMA journal_size_limit = 8388608")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, WAL_CHECKPOINT_BYTES // page_size)}")
    # Touch the schema now: a file that is not a database fails here, not at the first write.
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()


def live_counters(conn: sqlite3.Connection) -> dict[str, int]:
    """The counters as they are now: meta's, plus what was inserted since meta was written."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    counters = {key: int(meta.get(key, default)) for key, default in COUNTERS.items()}
    through = counters["counted_through"]
    for table, key in (("events", "rows_event"), ("telemetry", "rows_telemetry")):
        top = conn.execute(f"SELECT max(seq) FROM {table}").fetchone()[0]
        counters["last_seq"] = max(counters["last_seq"], int(top or 0))
        newer = conn.execute(f"SELECT count(*) FROM {table} WHERE seq > ?", (through,))
        counters[key] += int(newer.fetchone()[0])
    return counters


def waiting_records(conn: sqlite3.Connection) -> dict[Stream, int]:
    """Records in the outbox waiting to be sent, by stream: ``edge buffer stats``'s depth and
    ``edge doctor``'s count, from the one place that knows the tables."""
    counters = live_counters(conn)
    return {"event": counters["rows_event"], "telemetry": counters["rows_telemetry"]}


def _write_counters(conn: sqlite3.Connection, counters: Mapping[str, int]) -> None:
    conn.executemany(
        "UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in counters.items()]
    )


def _rollback(conn: sqlite3.Connection) -> None:
    # A failed COMMIT may already have ended the transaction; ROLLBACK then fails too.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _thin(rows: Sequence[tuple[int, int, float, float | None]], window: float) -> list[int]:
    """The seqs to delete so that each (point, window) keeps its min, max and last rows."""
    groups: dict[tuple[int, int], list[tuple[int, int, float, float | None]]] = {}
    for row in rows:
        groups.setdefault((row[1], math.floor(row[2] / window)), []).append(row)
    doomed: list[int] = []
    for members in groups.values():
        if len(members) <= 3:
            continue
        keep = {max(members, key=lambda r: (r[2], r[0]))[0]}  # last: latest ts, then seq
        valued = [r for r in members if r[3] is not None]
        if valued:
            keep.add(min(valued, key=lambda r: r[3])[0])  # type: ignore[arg-type,return-value]
            keep.add(max(valued, key=lambda r: r[3])[0])  # type: ignore[arg-type,return-value]
        doomed.extend(r[0] for r in members if r[0] not in keep)
    doomed.sort()
    return doomed


def _span(rows: Sequence[tuple[int, int, float, float | None]]) -> dict[str, Any]:
    """The seq range and the time range (UTC ISO-8601, as on the wire) of ``rows``."""
    return {
        "seq_first": rows[0][0],
        "seq_last": rows[-1][0],
        "from": _iso(min(r[2] for r in rows)),
        "to": _iso(max(r[2] for r in rows)),
    }


def _iso(ts: float) -> str:
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def damage_marker(path: Path) -> Path:
    """Left by a failed background check: the next open moves the file aside."""
    return path.with_name(path.name + ".damaged")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


_FIX = (
    "make the folder writable by the gateway's user (or remount its file system read-write), "
    "or set buffer.path in the site file to a writable location"
)


def _check_writable(path: Path) -> None:
    """Fail early, naming the path and the fix, where SQLite would fail obscurely later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutboxUnwritable(
            f"{path}: cannot create its folder {path.parent} ({exc.strerror or exc}); {_FIX}"
        ) from exc
    if path.exists() and not path.is_file():
        raise OutboxUnwritable(f"{path}: exists but is not a file; {_FIX}")
    # Root passes os.access whatever the mode, and a read-only mount answers only to a real
    # write, so try one: create and remove an empty file next to the database.
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise OutboxUnwritable(
            f"{path}: cannot write in {path.parent} ({exc.strerror or exc}); {_FIX}"
        ) from exc


def _unwritable(path: Path, exc: Exception) -> OutboxError:
    text = str(exc)
    if "readonly" in text or "unable to open" in text:
        return OutboxUnwritable(f"{path}: {text}; {_FIX}")
    # Disk full, I/O error, locked: not the path's fault; the caller retries later.
    return OutboxError(f"{path}: cannot open the outbox now: {text}")


def _is_corruption(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "no such table" in str(exc)


def _read_epoch(path: Path) -> str | None:
    """The epoch of a damaged file, if it can still be read (for the reset event)."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            return str(row[0]) if row else None
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _move_aside(path: Path) -> Path:
    """Rename the file and its WAL out of the way; keep them (they may still hold data)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(moved)
    wal = _wal(path)
    if wal.exists():
        # Named so that sqlite3 opens the moved file together with its WAL.
        wal.rename(moved.with_name(moved.name + "-wal"))
    shm = path.with_name(path.name + "-shm")
    shm.unlink(missing_ok=True)  # an index of the WAL, rebuilt from it on open
    return moved


# --- read-only access for tools ----------------------------------------------------------------


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection for tools while the gateway may be writing (WAL lets both go on)."""
    if not path.is_file():
        raise OutboxError(f"{path}: no such outbox file")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout = 5000")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise OutboxCorrupt(f"{path}: not a readable outbox database: {exc}") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        raise OutboxError(
            f"{path}: outbox schema version {version}, this tool reads {SCHEMA_VERSION}; "
            "start the gateway once to migrate it"
        )
    return conn


def iter_records(
    conn: sqlite3.Connection, stream: Stream | None = None, chunk: int = 5000
) -> Iterator[Record]:
    """Every record, in seq order (both streams merged when ``stream`` is None)."""
    series = {int(i): json.loads(text) for i, text in conn.execute("SELECT id, series FROM points")}

    def events() -> Iterator[Record]:
        after = 0
        while True:
            rows = conn.execute(
                "SELECT seq, created, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, chunk),
            ).fetchall()
            if not rows:
                return
            for seq, created, body in rows:
                yield Record(seq, "event", created, json.loads(body))
            after = rows[-1][0]

    def telemetry() -> Iterator[Record]:
        after = 0
        while True:
            rows = conn.execute(
                "SELECT seq, point, ts, value FROM telemetry WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, chunk),
            ).fetchall()
            if not rows:
                return
            for seq, point, ts, value in rows:
                yield Record(seq, "telemetry", ts, {**series[point], "value": value, "ts": ts})
            after = rows[-1][0]

    if stream == "event":
        yield from events()
    elif stream == "telemetry":
        yield from telemetry()
    else:
        yield from heapq.merge(events(), telemetry(), key=lambda r: r.seq)


def stats(path: Path) -> dict[str, Any]:
    """What ``edge buffer stats`` shows: depth, oldest age, size, epoch, counts."""
    conn = connect_readonly(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        counters = live_counters(conn)
        depth = waiting_records(conn)
        now = time.time()
        oldest_event = conn.execute("SELECT min(created) FROM events").fetchone()[0]
        first_tel = conn.execute("SELECT min(seq) FROM telemetry").fetchone()[0]
        oldest_tel = None
        if first_tel is not None:
            oldest_tel = conn.execute(
                "SELECT ts FROM telemetry WHERE seq = ?", (first_tel,)
            ).fetchone()[0]
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        points = int(conn.execute("SELECT count(*) FROM points").fetchone()[0])
        state_keys = int(conn.execute("SELECT count(*) FROM state").fetchone()[0])
    finally:
        conn.close()
    return {
        "path": str(path),
        "epoch": str(meta["epoch"]),
        "schema_version": SCHEMA_VERSION,
        "depth": depth,
        "oldest_age_s": {
            "event": None if oldest_event is None else round(now - float(oldest_event), 3),
            "telemetry": None if oldest_tel is None else round(now - float(oldest_tel), 3),
        },
        "last_seq": counters["last_seq"],
        "thinned_rows": counters["thinned_rows"],
        "dropped_rows": counters["dropped_rows"],
        "points": points,
        "state_keys": state_keys,
        "file_bytes": _size(path),
        "wal_bytes": _size(_wal(path)),
        "live_bytes": (pages - free_pages) * page_size,
        "free_bytes_in_file": free_pages * page_size,
    }


def vacuum(path: Path) -> tuple[int, int]:
    """Rebuild the file without its free pages; return its size (with WAL) before and after."""
    connect_readonly(path).close()  # a clear error for a missing, foreign or old file
    before = _size(path) + _size(_wal(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return before, _size(path) + _size(_wal(path))
