"""The SQLite outbox: where readings and events wait until the platform has them.

One process, one writer. Producers (the rules engine, the poll pipeline) call :meth:`Outbox.submit`,
which never blocks and never raises for disk trouble; a writer task group-commits what was
submitted, one transaction per batch. The uplink reads the oldest rows with :meth:`Outbox.peek`
and deletes them with :meth:`Outbox.ack` once the broker has acknowledged them.

Every sqlite call runs on one thread owned by the outbox, so the event loop never waits for the
SD card and the connection is only ever used by one thread at a time.

The sequence number (``seq``) is the per-gateway message sequence of the contract: it is assigned
here and nowhere else, at commit, in submit order, strictly increasing across both streams, and
never reused: the high-water mark (``meta.last_seq``) is written in the same transaction as the
rows, and deleting rows never lowers it. The ``epoch`` names one database file: a recreated
database starts again at seq 1 under a new epoch, so ``(epoch, seq)`` is unique for the life of
the gateway. The storage itself is :mod:`buffer.store`; docs/buffer.md has the whole contract.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from buffer.loss import MEMORY_LIMIT, LossTally
from buffer.schema import SCHEMA_VERSION, canonical_series
from buffer.state import (
    StateEntry,
    encode,
    state_delete,
    state_get,
    state_items,
    state_put,
)
from buffer.store import (
    CHECK_AT_OPEN_LIMIT,
    STREAMS,
    CapacityPolicy,
    OutboxCorrupt,
    OutboxError,
    OutboxUnwritable,
    Pending,
    PendingEvent,
    PendingReading,
    Record,
    ResetInfo,
    Store,
    Stream,
    damage_marker,
)
from buffer.tail import TelemetryTail
from drivers.backoff import Backoff

__all__ = [
    "SCHEMA_VERSION",
    "STREAMS",
    "CapacityPolicy",
    "CommitListener",
    "Outbox",
    "OutboxClosed",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxUnavailable",
    "OutboxUnwritable",
    "Record",
    "ResetInfo",
    "Stream",
]

log = logging.getLogger("buffer.outbox")

#: Called on the event loop after each commit, with the streams that got new rows.
CommitListener = Callable[[frozenset[Stream]], None]

# Backoff of the writer while the disk refuses a commit: from the first to the cap, doubling
# (no jitter: the disk is this gateway's own).
_RETRY_FIRST: Final = 0.1
_RETRY_MAX: Final = 5.0
#: While readings are being shed, at most one readings-lost event this often (a disk that
#: takes writes, only slower than the readings come, would otherwise get one per commit).
LOSS_REPORT_INTERVAL: Final = 10.0
#: Body fields that are the reading itself; every other field names the series (the point).
_READING_FIELDS: Final = ("ts", "value")

T = TypeVar("T")


def _text_key(fields: Mapping[Any, Any]) -> tuple[Any, ...] | None:
    """``fields``' names and values sorted by name in one flat tuple, or None unless every
    name is text and every value text or None.

    Only such keys name one series each: 1, 1.0 and True are equal in a tuple (and hash
    alike) but are three series in the file, so are 0.0 and -0.0, and a NaN equals nothing (a
    new key per reading). Text equals only text, and then its JSON is the same."""
    for name, value in fields.items():
        if type(name) is not str or (type(value) is not str and value is not None):
            return None
    return tuple([x for item in sorted(fields.items()) for x in item])


def _series_text(fields: Mapping[str, Any]) -> str:
    try:
        return canonical_series(fields)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"outbox: the telemetry body's fields are not JSON-serialisable ({exc})"
        ) from exc


class OutboxUnavailable(OutboxError):
    """The disk refused a read or a delete (full, read-only, I/O error); try again later."""


class OutboxClosed(OutboxError):
    """The outbox was closed before the operation could complete."""


class Outbox:
    """The store-and-forward buffer of one gateway. Create it with :meth:`open`.

    ``epoch`` is the random id of the database file (see the module docstring); ``reset`` is
    set when :meth:`open` found the file corrupt and started a new one.
    """

    def __init__(
        self,
        *,
        store: Store,
        executor: ThreadPoolExecutor,
        commit_interval: float,
        max_batch: int,
        policy: CapacityPolicy,
        capacity_interval: float,
        memory_limit: int = MEMORY_LIMIT,
        sync_interval: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Use :meth:`open`; this only wires up what it prepared."""
        self.path = store.path
        self.epoch = store.epoch
        self.reset: ResetInfo | None = store.reset
        #: Set (and logged) if the background integrity check of a large file failed.
        self.damaged: str | None = None
        self._store = store
        self._executor = executor
        self._commit_interval = commit_interval
        self._max_batch = max_batch
        self._policy = policy
        self._capacity_interval = capacity_interval
        self._loop = asyncio.get_running_loop()
        # Routine readings are synced to the card at most this long after their commit;
        # events and at-once readings at once (docs/buffer.md, "The durability contract").
        self._sync_interval = sync_interval
        self._clock = clock or self._loop.time
        self._synced_at = self._clock()
        self._queue: collections.deque[Pending] = collections.deque()
        # Events and at-once readings queued and not yet committed: while there is one, the
        # writer does not wait out the commit window (an alarm is durable, so sendable, at once).
        self._waiting_at_once = 0
        # Readings in memory (queued or being committed) and those shed beyond the limit.
        self._memory_limit = memory_limit
        self._waiting_readings = 0
        self.lost = LossTally()
        self._loss_reported = -math.inf
        self._disk_took_last = True
        self._inflight: list[Pending] = []  # the batch being committed
        self._wakeup = asyncio.Event()
        self._submitted = 0  # records ever submitted
        self._committed = 0  # records ever committed (in submit order, so a prefix)
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._listeners: list[CommitListener] = []
        # Series seen by submit(): the body's other fields -> point id. Keyed by the fields'
        # names and values in one flat tuple (cheap to build per reading, and held once per
        # series: 88 bytes for three fields where a tuple of pairs took 232), in the body's
        # order and sorted by name (the gateway's bodies are in that order: one key for
        # both). Only series whose names and values are all text (or None) are keyed so
        # (_text_key says why); the others are found by their canonical text.
        self._point_by_fields: dict[tuple[Any, ...], int] = {}
        # The store reads the file's series only when it opens; of their texts, only those of
        # series not keyed by their fields are kept (a text per series was 95 KiB at 1,000).
        self._point_by_text: dict[str, int] = {}
        self._next_point = max(store.point_ids.values(), default=0) + 1
        for text, point in store.point_ids.items():
            key = _text_key(store.series[point])
            if key is None:
                self._point_by_text[text] = point
            else:
                self._point_by_fields.setdefault(key, point)
        store.point_ids = self._point_by_text
        self._unsaved_points: list[tuple[int, str]] = []
        self._closing = False
        self._closed = False
        #: The newest telemetry rows, so that the uplink's looks at them stay on this thread.
        self._tail = TelemetryTail(int(store.counters["last_seq"]))
        self._check_conn: sqlite3.Connection | None = None
        self._checker: threading.Thread | None = None
        if not store.checked:
            self._start_background_check()
        self._writer = self._loop.create_task(self._write_loop(), name="outbox-writer")

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        commit_interval: float = 0.05,
        max_batch: int = 4096,
        policy: CapacityPolicy | None = None,
        capacity_interval: float = 1.0,
        check_limit: int = CHECK_AT_OPEN_LIMIT,
        memory_limit: int = MEMORY_LIMIT,
        sync_interval: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> Outbox:
        """Open (creating if needed) the outbox at ``path`` and start its writer.

        Creates the parent folder, switches to WAL, checks the file (in full up to
        ``check_limit`` bytes, else in the background) and migrates the schema. A corrupt file
        is moved aside and a new one started (see :attr:`reset`). Raises
        :class:`OutboxUnwritable` when the folder cannot be written (the message names the path
        and the fix) and :class:`OutboxError` for a file from a newer gateway.

        ``memory_limit``: readings that may wait in memory while the disk refuses writes; those
        submitted beyond it are shed and reported by a ``readings-lost`` event (events always
        wait).

        ``sync_interval``: a commit of readings only (none submitted ``at_once``) is not synced
        to the card (fsync) unless the last sync is this many seconds ago; the writer also
        syncs when it has waited that long with unsynced commits. Such a commit survives a
        crash of the process, and a power cut undoes at most the commits of the last
        ``sync_interval``. 0 (the default): every commit is synced. Events, at-once readings,
        deletions and rule state are always synced before they are reported done. ``clock``
        (seconds, default the event loop's) is what the interval is measured on.
        """
        if commit_interval < 0:
            raise ValueError("commit_interval must not be negative")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if memory_limit < 1:
            raise ValueError("memory_limit must be at least 1 (readings that may wait in memory)")
        if not 0 <= sync_interval < math.inf:
            raise ValueError(f"sync_interval must be 0 or more seconds, not {sync_interval!r}")
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            store = await asyncio.get_running_loop().run_in_executor(
                executor, lambda: Store.open(path, check_limit=check_limit)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            store=store,
            executor=executor,
            commit_interval=commit_interval,
            max_batch=max_batch,
            policy=policy or CapacityPolicy(),
            capacity_interval=capacity_interval,
            memory_limit=memory_limit,
            sync_interval=sync_interval,
            clock=clock,
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

    def submit(self, stream: Stream, body: Mapping[str, Any], *, at_once: bool = False) -> None:
        """Queue a record for the next group commit and return at once.

        An event closes the commit window at once, and so does a reading submitted with
        ``at_once`` (the gateway's readings around an alarm: the seconds an investigator needs
        must not wait in memory for the window); the readings queued before either go in the
        same transaction, so the order holds.

        Never blocks and never raises for disk trouble: while the disk refuses commits the records
        wait in memory and the writer retries. Events always wait; readings wait up to the
        outbox's ``memory_limit``, beyond which they are shed, counted in :attr:`lost` and
        reported by a ``readings-lost`` event once the disk takes writes again. A body that
        cannot be stored raises ``TypeError`` or ``ValueError`` saying why, and nothing is
        queued (programming errors):

        - an event body must be JSON-serialisable;
        - a telemetry body needs a finite number ``ts`` (POSIX seconds) and a number or
          ``None`` as ``value`` (a NaN is stored as ``None``); its other fields name the series
          and must be JSON-serialisable.

        After :meth:`close` the record is dropped with an error in the log. Call it on the event
        loop's thread (from another thread, hand over with ``loop.call_soon_threadsafe``).
        """
        self._enqueue(stream, body, None, at_once=at_once)

    async def append(self, stream: Stream, body: Mapping[str, Any]) -> int:
        """Submit a record and wait until it is committed (on disk); return its seq."""
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
        self,
        stream: Stream,
        body: Mapping[str, Any],
        done: asyncio.Future[int] | None,
        *,
        at_once: bool = False,
    ) -> None:
        if stream == "telemetry":
            item: Pending = self._reading(body, done)
        elif stream == "event":
            if not isinstance(body, Mapping):
                raise TypeError(f"outbox: an event body is a mapping, not {type(body).__name__}")
            try:
                text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"outbox: the event body is not JSON-serialisable ({exc})") from exc
            item = PendingEvent(time.time(), text, self._loop.time(), done)
        else:
            raise ValueError(f"unknown outbox stream {stream!r}; expected one of {STREAMS}")
        if self._closing:
            log.error("outbox %s is closed: dropped a %s record", self.path, stream)
            if done is not None:
                done.set_exception(OutboxClosed(f"outbox {self.path} is closed"))
            return
        if isinstance(item, PendingReading):
            if self._waiting_readings >= self._memory_limit:
                self._shed(body, done)
                return
            self._waiting_readings += 1
            if at_once:
                item.at_once = True
                self._waiting_at_once += 1
        else:
            self._waiting_at_once += 1
        self._queue.append(item)
        self._submitted += 1
        # The writer waits for a first record, then for the end of the commit window: a
        # reading inside the window wakes it only when it ends the window (a full batch).
        queued = len(self._queue)
        if queued == 1 or self._waiting_at_once or queued >= self._max_batch:
            self._wakeup.set()

    def _shed(self, body: Mapping[str, Any], done: asyncio.Future[int] | None) -> None:
        if not self.lost:
            log.error(
                "outbox %s: %d readings wait in memory for the disk; shedding new readings "
                "until it takes writes again (a readings-lost event will say how many)",
                self.path,
                self._waiting_readings,
            )
        self.lost.add(body)
        if done is not None:
            done.set_exception(
                OutboxUnavailable(f"outbox {self.path}: the disk refuses writes; reading shed")
            )
        self._wakeup.set()

    def _report_loss(self) -> None:
        """Queue a readings-lost event for the readings shed so far, when it is due: once the
        disk took the last commit (at most every :data:`LOSS_REPORT_INTERVAL`), or at close."""
        if not self.lost:
            return
        due = self._disk_took_last and (
            self._loop.time() >= self._loss_reported + LOSS_REPORT_INTERVAL
        )
        if not (due or self._closing):
            return
        self._loss_reported = self._loop.time()
        body = self.lost.take_event(
            time.time(), f"the disk refused writes while {self._memory_limit} readings waited"
        )
        log.error(
            "outbox %s: readings-lost readings=%d devices=%d",
            self.path,
            body["readings"],
            len(body["devices"]),
        )
        text = json.dumps(body, separators=(",", ":"))
        # Past the closing check: the loss must be recorded even by the last commit.
        self._queue.append(PendingEvent(time.time(), text, self._loop.time(), None))
        self._waiting_at_once += 1
        self._submitted += 1

    def _reading(self, body: Mapping[str, Any], done: asyncio.Future[int] | None) -> Pending:
        """Validate a telemetry body and turn it into a pending row (point, ts, value)."""
        try:
            ts = body["ts"]
            value = body["value"]
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"outbox: a telemetry body needs 'ts' and 'value' fields (got {body!r:.200})"
            ) from exc
        if type(ts) is not float:
            if not isinstance(ts, int | float) or isinstance(ts, bool):
                raise ValueError(f"outbox: telemetry 'ts' must be a number, not {ts!r}")
            ts = float(ts)
        if not math.isfinite(ts):
            raise ValueError(f"outbox: telemetry 'ts' must be finite, not {ts!r}")
        if value is not None and type(value) is not float:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(
                    f"outbox: telemetry 'value' must be a number or None, not {value!r}"
                )
            value = float(value)
        key = tuple([x for item in body.items() if item[0] not in _READING_FIELDS for x in item])
        try:
            point = self._point_by_fields.get(key)
        except TypeError:  # an unhashable field value (a list): go by the canonical text
            point = None
            key = None  # type: ignore[assignment]
        if point is None:
            point = self._new_point(body, key)
        return PendingReading(point, ts, value, self._loop.time(), done)

    def _new_point(self, body: Mapping[str, Any], key: tuple[Any, ...] | None) -> int:
        """The point id of a body's series not found by ``key`` (its fields in the body's
        order), a new one if the series is new."""
        fields = {k: v for k, v in body.items() if k not in _READING_FIELDS}
        sorted_key = _text_key(fields)
        text: str | None = None
        if sorted_key is None:
            text = _series_text(fields)
            # Names that are not text (1, True) are text in JSON: go by the fields as the
            # file reads them back, which may be those of a series found by its fields.
            sorted_key = _text_key(json.loads(text))
            if sorted_key is None:
                point = self._point_by_text.get(text)
                if point is None:
                    point = self._point_by_text[text] = self._added(text)
                return point
            key = None  # this body's own names are not text: no key to look it up by
        point = self._point_by_fields.get(sorted_key)
        if point is None:
            if text is None:
                text = _series_text(fields)
            point = self._point_by_fields[sorted_key] = self._added(text)
        if key is not None:
            self._point_by_fields[key] = point  # the same entry where the body was in order
        return point

    def _added(self, text: str) -> int:
        """A new point id for the series ``text``, written with the next commit."""
        point = self._next_point
        self._next_point += 1
        self._unsaved_points.append((point, text))
        return point

    async def _write_loop(self) -> None:
        capacity_due = self._loop.time()
        while True:
            if self._policy_active() and self._loop.time() >= capacity_due:
                over = await self._capacity_step()
                capacity_due = self._loop.time() + (0 if over else self._capacity_interval)
            self._report_loss()
            if not self._queue:
                if self._closing:
                    return
                if self._sync_due():
                    await self._sync()
                    continue
                self._wakeup.clear()
                # asyncio.timeout, not wait_for: no task of its own for each wait (this loop
                # waits once or twice for every commit).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_timeout(capacity_due)):
                        await self._wakeup.wait()
                continue
            # The window opens when the oldest waiting record was submitted, so a slow previous
            # commit does not make it wait a second window. An event or an at-once reading
            # closes it at once: the readings queued before go in the same transaction.
            deadline = self._queue[0].submitted + self._commit_interval
            while (
                len(self._queue) < self._max_batch
                and not self._closing
                and not self._waiting_at_once
            ):
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._wakeup.wait()
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._inflight = batch
            first = await self._commit(batch, self._must_sync(batch))
            self._inflight = []
            self._committed += n
            self._hold(batch, first)
            streams: set[Stream] = set()
            for offset, item in enumerate(batch):
                if isinstance(item, PendingReading):
                    streams.add("telemetry")
                    self._waiting_readings -= 1
                    self._waiting_at_once -= item.at_once
                else:
                    streams.add("event")
                    self._waiting_at_once -= 1
                done = item.done
                if done is not None and not done.done():
                    done.set_result(first + offset)
            self._wake_flushers()
            self._notify(frozenset(streams))

    def _hold(self, batch: list[Pending], first: int) -> None:
        """Keep the telemetry rows just committed in the tail (as the table holds them)."""
        self._tail.add(
            (seq, item.point, item.ts, item.value)
            for seq, item in enumerate(batch, first)
            if isinstance(item, PendingReading)
        )

    def _idle_timeout(self, capacity_due: float) -> float | None:
        """How long the idle writer may sleep: until the next capacity check, loss report or
        sync of unsynced commits."""
        now = self._loop.time()
        dues = []
        if self._policy_active():
            dues.append(capacity_due)
        if self.lost:
            dues.append(self._loss_reported + LOSS_REPORT_INTERVAL)
        if self._store.synced_seq < self.last_seq:
            dues.append(now + self._synced_at + self._sync_interval - self._clock())
        return None if not dues else max(0.0, min(dues) - now)

    def _must_sync(self, batch: list[Pending]) -> bool:
        """Whether ``batch`` is committed synced: when it holds an event or an at-once
        reading (reported stored only once it survives a power cut), or when the last sync
        is ``sync_interval`` ago."""
        if self._sync_interval == 0 or self._clock() >= self._synced_at + self._sync_interval:
            return True
        return any(not isinstance(item, PendingReading) or item.at_once for item in batch)

    def _sync_due(self) -> bool:
        return (
            self._store.synced_seq < self.last_seq
            and self._clock() >= self._synced_at + self._sync_interval
        )

    async def _sync(self) -> None:
        """Sync the commits made unsynced (the writer, idle, found them ``sync_interval`` old)."""
        self._synced_at = self._clock()
        try:
            await self._run(self._store.sync)
        except (sqlite3.Error, OSError) as exc:
            # The commits stay as they are; the next synced commit covers them, and an idle
            # writer tries again in a while (not at once: the disk just refused).
            log.warning("outbox %s: sync failed (%s)", self.path, exc)
            self._synced_at += max(0.0, _RETRY_MAX - self._sync_interval)

    async def _commit(self, batch: list[Pending], sync: bool) -> int:
        """Commit one batch (``sync``: synced to the card), retrying until the disk takes it;
        return its first seq."""
        retry = Backoff(_RETRY_FIRST, _RETRY_MAX, jitter=False)
        failures = 0
        while True:
            delay = retry.next_delay()
            points = list(self._unsaved_points)
            try:
                first = await self._run(self._store.commit, batch, points, sync)
            except (sqlite3.Error, OSError) as exc:
                failures += 1
                self._disk_took_last = False
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
                self._disk_took_last = True
                if self._store.synced_seq == self.last_seq:
                    self._synced_at = self._clock()
                del self._unsaved_points[: len(points)]
                if failures:
                    log.warning(
                        "outbox %s: commit succeeded after %d failed attempts", self.path, failures
                    )
                return first
            await asyncio.sleep(delay)

    def _policy_active(self) -> bool:
        return self._policy.max_size is not None or self._policy.min_free_disk > 0

    async def _capacity_step(self) -> bool:
        """Check the limits and, when one is crossed, make room once; True if still over."""
        try:
            usage = await self._run(self._store.usage, self._policy)
            if usage.reason is None:
                return False
            # Making room deletes telemetry the tail may hold: looks go to the file until
            # new rows are committed.
            self._tail.restart(self.last_seq)
            report = await self._run(self._store.make_room, self._policy, usage.reason)
        except (sqlite3.Error, OSError) as exc:
            log.warning("outbox %s: capacity check failed (%s); trying again later", self.path, exc)
            return False
        if report is None:
            log.error(
                "outbox %s: over %s with no telemetry left to thin or drop (%d bytes live, "
                "%d bytes free on disk); events are kept",
                self.path,
                usage.reason,
                usage.live,
                usage.free_disk,
            )
            return False
        self._notify(frozenset({"event"}))
        return True

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

    @property
    def counters(self) -> dict[str, int]:
        """Rows per stream, last seq, rows thinned and dropped so far (a copy)."""
        return dict(self._store.counters)

    # --- reading and acking ---------------------------------------------------------------------

    async def peek(
        self, stream: Stream, limit: int, *, after: int = 0, through: int | None = None
    ) -> list[Record]:
        """The oldest committed rows of ``stream`` with ``after`` < seq <= ``through`` (no upper
        bound when None), oldest first.

        ``through`` lets the uplink read the backlog that was waiting when it connected apart
        from the rows committed since (see :attr:`last_seq`).
        """
        if stream not in STREAMS:
            raise ValueError(f"unknown outbox stream {stream!r}; expected one of {STREAMS}")
        if not self._closed:
            # Most looks of the uplink are at the newest rows: nothing new (no event for
            # hours) or the telemetry of the last commits. A trip to the outbox's thread costs
            # more than answering them here.
            if self._store.none_after(stream, after, through):
                return []
            if stream == "telemetry" and self._tail.covers(after):
                return self._tail.peek(limit, after, through, series=self._store.series)
        return await self._run_checked(self._store.peek, stream, limit, after, through)

    async def recent_since(self, since: float) -> int:
        """The seq after which every telemetry row's ``ts`` is ``since`` or later (0: all are).

        Found by walking back from the newest row (bounded; ``ts`` has no index), so it is cheap
        when few rows are that recent: the uplink's split between live data and backlog.
        """
        return await self._run_checked(self._store.recent_since, since)

    @property
    def synced_seq(self) -> int:
        """The highest seq whose commit is synced to the card: it survives a power cut. Rows
        above it, up to :attr:`last_seq`, survive a crash of the process."""
        return self._store.synced_seq

    @property
    def last_seq(self) -> int:
        """The highest seq committed so far (0 for a new file): rows committed later have a
        higher one."""
        return int(self._store.counters["last_seq"])

    async def ack(self, seqs: Sequence[int]) -> None:
        """Delete the rows ``seqs`` (the platform has them). Unknown seqs are ignored.

        Raises :class:`OutboxUnavailable` when the disk refuses the delete; the rows then stay
        and the caller may retry.
        """
        if seqs:
            await self._run_checked(self._store.ack, list(seqs))
            self._tail.delete(seqs)

    async def depth(self) -> dict[str, int]:
        """Committed rows per stream, e.g. ``{"event": 0, "telemetry": 12}`` (kept as counters
        in the file, so this costs nothing at any size)."""
        return self._store.depth()

    # --- rule state -----------------------------------------------------------------------------
    # The rules engine's durable key-value state (see buffer/state.py), in the same file. Each
    # call runs on the outbox's one thread; a write returns once its transaction is committed.

    async def state_get(self, key: str) -> StateEntry | None:
        """The entry of ``key``, or None."""
        return await self._run_checked(state_get, self._store.conn, key)

    async def state_items(self, prefix: str = "") -> list[StateEntry]:
        """Every entry whose key starts with ``prefix``, by key."""
        return await self._run_checked(state_items, self._store.conn, prefix)

    async def state_put(
        self, key: str, value: Any, *, schema: int = 1, expect: int | None = None
    ) -> int:
        """Store ``value`` (JSON) under ``key``; return its new revision once committed.

        ``schema`` is the caller's version of the value's layout. With ``expect``, write only if
        the key is at that revision now (0: absent), else raise :class:`buffer.StateConflict`
        and change nothing. A value JSON cannot hold raises ``TypeError`` before anything is
        written.
        """
        text = encode(key, value)
        return await self._run_checked(state_put, self._store.conn, key, text, schema, expect)

    async def state_delete(self, key: str, *, expect: int | None = None) -> bool:
        """Remove ``key``; True if it existed."""
        return await self._run_checked(state_delete, self._store.conn, key, expect)

    # --- background check -----------------------------------------------------------------------

    def _start_background_check(self) -> None:
        conn = self._check_conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        self._checker = threading.Thread(
            target=self._background_check, args=(conn,), name="outbox-check", daemon=True
        )
        self._checker.start()

    def _background_check(self, conn: sqlite3.Connection) -> None:
        """``quick_check`` of a file too large to check before opening (on its own connection
        ``conn``, which WAL lets read while the writer writes)."""
        try:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.Error as exc:
            if self._closing and "interrupt" in str(exc):
                return
            problems = [f"{type(exc).__name__}: {exc}"]
        finally:
            conn.close()
        if problems != ["ok"]:
            text = "; ".join(problems[:5])
            self.damaged = text
            log.error(
                "outbox %s: the integrity check found damage (%s); it is moved aside at the "
                "next start",
                self.path,
                text,
            )
            with contextlib.suppress(OSError):
                damage_marker(self.path).write_text(text + "\n")
        else:
            log.info("outbox %s: integrity check ok", self.path)

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
            async with asyncio.timeout(grace):
                await asyncio.shield(self._writer)
        except TimeoutError:
            log.error(
                "outbox %s: closing with %d records never committed (the disk kept refusing)",
                self.path,
                len(self._queue) + len(self._inflight),
            )
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        finally:
            self._closed = True
            for item in self._queue:
                done = item.done
                if done is not None and not done.done():
                    done.set_exception(OutboxClosed(f"outbox {self.path} was closed"))
            for _target, waiter in self._flush_waiters:
                if not waiter.done():
                    waiter.set_exception(OutboxClosed(f"outbox {self.path} was closed"))
            self._flush_waiters.clear()
            self._queue.clear()
            for item in self._inflight:
                done = item.done
                if done is not None and not done.done():
                    done.set_exception(
                        OutboxClosed(f"outbox {self.path} was closed during the commit")
                    )
            if self._checker is not None and self._check_conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._check_conn.interrupt()
                await self._loop.run_in_executor(None, self._checker.join)
            with contextlib.suppress(Exception):
                await self._loop.run_in_executor(self._executor, self._store.close)
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
