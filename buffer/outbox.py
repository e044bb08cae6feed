"""The SQLite outbox: where readings and events wait until the platform has them.

One process, one writer. Producers (the rules engine, the poll pipeline) call :meth:`Outbox.submit`,
which never blocks and never raises for disk trouble; a writer task group-commits what was
submitted, one transaction per batch. The uplink reads the oldest rows with :meth:`Outbox.peek`
and deletes them with :meth:`Outbox.ack` once the broker has acknowledged them.

Every sqlite call runs on one thread owned by the outbox, so the event loop never waits for the
SD card and the connection is only ever touched by the thread that created it.

The sequence number (``seq``) is the per-gateway message sequence of the contract: it is assigned
here and nowhere else, is strictly increasing across both streams, and is never reused, not even
after every row was acked and deleted or after a restart (``AUTOINCREMENT`` keeps the high-water
mark in ``sqlite_sequence``). The ``epoch`` names one database file: a recreated database starts
again at seq 1 under a new epoch, so ``(epoch, seq)`` is unique for the life of the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar, get_args

__all__ = [
    "SCHEMA_VERSION",
    "STREAMS",
    "CommitListener",
    "Outbox",
    "OutboxClosed",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxUnavailable",
    "Record",
    "Stream",
]

log = logging.getLogger("buffer.outbox")

Stream = Literal["event", "telemetry"]
STREAMS: Final[tuple[Stream, ...]] = get_args(Stream)

#: Called on the event loop after each commit, with the streams that got new rows.
CommitListener = Callable[[frozenset[Stream]], None]

#: The schema this code writes. Older files are migrated on open; newer ones are refused.
SCHEMA_VERSION: Final = 1

# Backoff of the writer while the disk refuses a commit: from the first to the cap, doubling.
_RETRY_FIRST: Final = 0.1
_RETRY_MAX: Final = 5.0

T = TypeVar("T")


class OutboxError(Exception):
    """Base of the errors the outbox raises."""


class OutboxCorrupt(OutboxError):
    """The database file failed its integrity check or is not an outbox at all."""


class OutboxUnavailable(OutboxError):
    """The disk refused a read or a delete (full, read-only, I/O error); try again later."""


class OutboxClosed(OutboxError):
    """The outbox was closed before the operation could complete."""


@dataclass(frozen=True, slots=True)
class Record:
    """One row of the outbox, as stored."""

    seq: int
    stream: Stream
    created: float
    body: dict[str, Any]


@dataclass(slots=True)
class _Pending:
    stream: Stream
    created: float
    body: str
    queued_at: float  # loop.time() at submit, for the commit window
    done: asyncio.Future[int] | None


# --- schema -------------------------------------------------------------------------------------


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (str(uuid.uuid4()),))
    conn.execute(
        """
        CREATE TABLE outbox (
            seq     INTEGER PRIMARY KEY AUTOINCREMENT,
            stream  TEXT NOT NULL CHECK (stream IN ('event', 'telemetry')),
            created REAL NOT NULL,
            body    TEXT NOT NULL
        )
        """
    )
    # peek() reads one stream in seq order.
    conn.execute("CREATE INDEX outbox_stream_seq ON outbox (stream, seq)")


#: MIGRATIONS[n] takes a database from user_version n to n + 1, inside one transaction.
MIGRATIONS: Final[Mapping[int, Callable[[sqlite3.Connection], None]]] = {0: _migrate_0_to_1}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to :data:`SCHEMA_VERSION`, one version per transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise OutboxError(
            f"outbox schema version {version} is newer than this gateway understands "
            f"({SCHEMA_VERSION}); refusing to touch it"
        )
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            # PRAGMA takes no parameters; version is an int we computed.
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("outbox schema migrated from version %d to %d", version, version + 1)
        version += 1


def _connect(path: Path) -> tuple[sqlite3.Connection, str]:
    """Open, check and migrate the database. Runs on the outbox thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; every write below says BEGIN/COMMIT itself.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        try:
            # WAL: readers (peek) never block the writer and a commit appends to one file.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{path}: cannot switch to WAL mode (got {mode!r})")
            # FULL: in WAL mode, NORMAL survives a crash of the process but may lose the last
            # transactions on power loss; FULL syncs the WAL at every commit, so what append()
            # reported as committed survives pulling the plug. Group commit pays for the fsync.
            conn.execute("PRAGMA synchronous = FULL")
            # Tools (the CLI, a technician's sqlite3 shell) may read the file at the same time.
            conn.execute("PRAGMA busy_timeout = 5000")
            problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            raise OutboxCorrupt(f"{path}: not a readable outbox database: {exc}") from exc
        if problems != ["ok"]:
            raise OutboxCorrupt(f"{path}: integrity check failed: {'; '.join(problems[:5])}")
        try:
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise OutboxCorrupt(f"{path}: cannot read or migrate the schema: {exc}") from exc
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None:
            raise OutboxCorrupt(f"{path}: the meta table has no epoch")
        return conn, str(row[0])
    except BaseException:
        conn.close()
        raise


def _insert_batch(conn: sqlite3.Connection, batch: Sequence[_Pending]) -> list[int]:
    """Insert a batch in one transaction and return the seqs. Runs on the outbox thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        seqs: list[int] = []
        for item in batch:
            cur = conn.execute(
                "INSERT INTO outbox (stream, created, body) VALUES (?, ?, ?)",
                (item.stream, item.created, item.body),
            )
            assert cur.lastrowid is not None
            seqs.append(cur.lastrowid)
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT may already have ended the transaction; ROLLBACK then fails too.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return seqs


def _select(conn: sqlite3.Connection, stream: Stream, limit: int) -> list[Record]:
    rows = conn.execute(
        "SELECT seq, stream, created, body FROM outbox WHERE stream = ? ORDER BY seq LIMIT ?",
        (stream, limit),
    ).fetchall()
    return [Record(int(s), st, float(c), json.loads(b)) for s, st, c, b in rows]


def _delete(conn: sqlite3.Connection, seqs: Sequence[int]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Chunks stay under SQLITE_MAX_VARIABLE_NUMBER on any build.
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _count(conn: sqlite3.Connection) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(STREAMS, 0)
    for stream, n in conn.execute("SELECT stream, count(*) FROM outbox GROUP BY stream"):
        counts[str(stream)] = int(n)
    return counts


# --- the outbox ---------------------------------------------------------------------------------


class Outbox:
    """The store-and-forward buffer of one gateway. Create it with :meth:`open`.

    ``epoch`` is the random id of the database file (see the module docstring).
    """

    def __init__(
        self,
        *,
        path: Path,
        conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        epoch: str,
        commit_interval: float,
        max_batch: int,
    ) -> None:
        """Use :meth:`open`; this only wires up what it prepared."""
        self.path = path
        self.epoch = epoch
        self._conn = conn
        self._executor = executor
        self._commit_interval = commit_interval
        self._max_batch = max_batch
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._inflight: list[_Pending] = []  # the batch being committed
        self._wakeup = asyncio.Event()
        self._submitted = 0  # records ever submitted
        self._committed = 0  # records ever committed (in submit order, so a prefix)
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._listeners: list[CommitListener] = []
        self._closing = False
        self._closed = False
        self._writer = self._loop.create_task(self._write_loop(), name="outbox-writer")

    @classmethod
    async def open(
        cls, path: str | Path, *, commit_interval: float = 0.05, max_batch: int = 500
    ) -> Outbox:
        """Open (creating if needed) the outbox at ``path`` and start its writer.

        Creates the parent folder, switches to WAL, runs ``PRAGMA integrity_check`` and migrates
        the schema. Raises :class:`OutboxCorrupt` when the file fails the check.
        """
        if commit_interval < 0:
            raise ValueError("commit_interval must not be negative")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            conn, epoch = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            path=path,
            conn=conn,
            executor=executor,
            epoch=epoch,
            commit_interval=commit_interval,
            max_batch=max_batch,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- writing --------------------------------------------------------------------------------

    def submit(self, stream: Stream, body: Mapping[str, Any]) -> None:
        """Queue a record for the next group commit and return at once.

        Never blocks and never raises for disk trouble: while the disk refuses commits the records
        wait in memory and the writer retries. Raises ``ValueError`` for an unknown stream and
        ``TypeError``/``ValueError`` for a body that is not JSON-serialisable (programming errors).
        After :meth:`close` the record is dropped with an error in the log. Call it on the event
        loop's thread (from another thread, hand over with ``loop.call_soon_threadsafe``).
        """
        self._enqueue(stream, body, None)

    async def append(self, stream: Stream, body: Mapping[str, Any]) -> int:
        """Submit a record and wait until it is committed; return its seq."""
        done: asyncio.Future[int] = self._loop.create_future()
        self._enqueue(stream, body, done)
        return await done

    async def flush(self) -> None:
        """Wait until every record submitted so far is committed."""
        target = self._submitted
        if self._committed >= target:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._flush_waiters.append((target, waiter))
        await waiter

    def _enqueue(
        self, stream: Stream, body: Mapping[str, Any], done: asyncio.Future[int] | None
    ) -> None:
        if stream not in STREAMS:
            raise ValueError(f"unknown outbox stream {stream!r}; expected one of {STREAMS}")
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        if self._closing:
            log.error("outbox %s is closed: dropped a %s record", self.path, stream)
            if done is not None:
                done.set_exception(OutboxClosed(f"outbox {self.path} is closed"))
            return
        self._queue.append(_Pending(stream, time.time(), text, self._loop.time(), done))
        self._submitted += 1
        self._wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The window opens when the oldest waiting record was submitted, so a slow previous
            # commit does not make it wait a second window.
            deadline = self._queue[0].queued_at + self._commit_interval
            while len(self._queue) < self._max_batch and not self._closing:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._inflight = batch
            seqs = await self._commit(batch)
            self._inflight = []
            self._committed += n
            for item, seq in zip(batch, seqs, strict=True):
                if item.done is not None and not item.done.done():
                    item.done.set_result(seq)
            self._wake_flushers()
            self._notify(frozenset(item.stream for item in batch))

    async def _commit(self, batch: list[_Pending]) -> list[int]:
        """Commit one batch, retrying until the disk takes it."""
        delay = _RETRY_FIRST
        failures = 0
        while True:
            try:
                seqs = await self._run(_insert_batch, self._conn, batch)
            except (sqlite3.Error, OSError) as exc:
                failures += 1
                log.warning(
                    "outbox %s: commit of %d records failed (%s: %s); retry %d in %.1f s",
                    self.path,
                    len(batch),
                    type(exc).__name__,
                    exc,
                    failures,
                    delay,
                )
            except Exception:
                # Not a disk error: a bug. Keep the records and the writer anyway.
                failures += 1
                log.exception("outbox %s: unexpected error committing a batch", self.path)
            else:
                if failures:
                    log.warning(
                        "outbox %s: commit succeeded after %d failed attempts", self.path, failures
                    )
                return seqs
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    def _wake_flushers(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._flush_waiters:
            if self._committed >= target:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._flush_waiters = still

    def _notify(self, streams: frozenset[Stream]) -> None:
        for listener in list(self._listeners):
            try:
                listener(streams)
            except Exception:
                log.exception("outbox commit listener %r failed", listener)

    def add_commit_listener(self, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener(streams)`` on the event loop after every commit of new rows.

        Lets a consumer sleep until there is something to read instead of polling. Returns a
        function that removes the listener. A listener must be quick and must not raise.
        """
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    @property
    def pending(self) -> int:
        """Records submitted but not yet committed (they live only in memory)."""
        return self._submitted - self._committed

    # --- reading and acking ---------------------------------------------------------------------

    async def peek(self, stream: Stream, limit: int) -> list[Record]:
        """The oldest committed rows of ``stream``, oldest first, at most ``limit``."""
        if stream not in STREAMS:
            raise ValueError(f"unknown outbox stream {stream!r}; expected one of {STREAMS}")
        return await self._run_checked(_select, self._conn, stream, limit)

    async def ack(self, seqs: Sequence[int]) -> None:
        """Delete the rows ``seqs`` (the platform has them). Unknown seqs are ignored.

        Raises :class:`OutboxUnavailable` when the disk refuses the delete; the rows then stay
        and the caller may retry.
        """
        if seqs:
            await self._run_checked(_delete, self._conn, list(seqs))

    async def depth(self) -> dict[str, int]:
        """Committed rows per stream, e.g. ``{"event": 0, "telemetry": 12}``."""
        return await self._run_checked(_count, self._conn)

    # --- lifecycle ------------------------------------------------------------------------------

    async def close(self, *, grace: float | None = None) -> None:
        """Commit everything submitted, stop the writer and close the database.

        While the disk refuses commits this waits for it; with ``grace`` it gives up after that
        many seconds, logs how many records were lost and fails pending :meth:`append` calls with
        :class:`OutboxClosed`.
        """
        if self._closed:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), grace)
        except TimeoutError:
            log.error(
                "outbox %s: closing with %d records never committed (the disk kept refusing)",
                self.path,
                len(self._queue),
            )
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        finally:
            self._closed = True
            for item in self._queue:
                if item.done is not None and not item.done.done():
                    item.done.set_exception(OutboxClosed(f"outbox {self.path} was closed"))
            for _target, waiter in self._flush_waiters:
                if not waiter.done():
                    waiter.set_exception(OutboxClosed(f"outbox {self.path} was closed"))
            self._flush_waiters.clear()
            self._queue.clear()
            for item in self._inflight:
                if item.done is not None and not item.done.done():
                    item.done.set_exception(
                        OutboxClosed(f"outbox {self.path} was closed during the commit")
                    )
            with contextlib.suppress(Exception):
                await self._loop.run_in_executor(self._executor, self._conn.close)
            self._executor.shutdown(wait=True)

    # --- the one thread -------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the outbox thread."""
        if self._closed:
            raise OutboxClosed(f"outbox {self.path} is closed")
        return await self._loop.run_in_executor(self._executor, fn, *args)

    async def _run_checked(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._run(fn, *args)
        except (sqlite3.OperationalError, OSError) as exc:
            raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc
