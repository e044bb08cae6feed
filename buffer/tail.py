"""The telemetry rows of the latest commits, held in memory as :meth:`Store.peek` returns them.

The uplink looks at the newest telemetry after every commit (is the next batch full yet?).
Each look at the database is a trip to the outbox's thread, a query and a new record per row:
at 1,000 readings a second that was the outbox's largest cost after the commits themselves.
The outbox, the only writer, knows every row it commits and every row it deletes, so it can
answer a look at the newest rows itself.

A row is held as the table has it (seq, point id, time, value: 28 bytes in four arrays) and
becomes a :class:`Record` when a look first returns it (kept for the next look: the uplink looks
at a batch that is not full yet again after the next commit; let go once a look goes past it),
so a commit costs no object per row and the tail can hold a whole commit (up to the outbox's
``max_batch``): a look at rows of the last commit never goes to the database.

Pure bookkeeping, no I/O: :class:`buffer.outbox.Outbox` adds what it committed, deletes what
was acknowledged, and starts again empty whenever rows go another way (the capacity policy).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Mapping
from typing import Any, Final

from buffer.store import Record

#: Rows held (up to twice this between two cuts, about 0.2 MiB): a whole commit of the outbox's
#: default ``max_batch``, and what the uplink has not sent yet in normal running. Beyond it (an
#: outage) the oldest go, and a look that far back goes to the database as before.
TAIL_LIMIT: Final = 4096

#: One committed telemetry row: seq, point id, time, value (None: null).
Row = tuple[int, int, float, float | None]


class TelemetryTail:
    """Every telemetry row with a seq above :attr:`start` that is still stored, oldest first.

    ``start`` begins at the store's last seq (nothing above it exists yet) and rises when the
    oldest rows are let go to stay within ``limit``.
    """

    def __init__(self, start: int, limit: int = TAIL_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"a tail holds at least one row, not {limit}")
        self.start = start
        self._limit = limit
        self._seqs = array("q")
        self._points = array("q")
        self._ts = array("d")
        #: NaN for a null value (a REAL column gives NaN back as null too).
        self._values = array("d")
        #: The record of each row once a look has returned it (None before, and again once a
        #: look has gone past it).
        self._records: list[Record | None] = []
        #: Records before this index are let go (see :meth:`peek`).
        self._released = 0
        #: Seqs deleted from the store but still in the arrays (dropped when they reach the front).
        self._gone: set[int] = set()

    def __len__(self) -> int:
        return len(self._seqs) - len(self._gone)

    def covers(self, after: int) -> bool:
        """True when every stored row with a seq above ``after`` is held here."""
        return after >= self.start

    def add(self, rows: Iterable[Row]) -> None:
        """Rows just committed, in seq order, each above every row held."""
        seqs, points, times, values = self._seqs, self._points, self._ts, self._values
        for seq, point, ts, value in rows:
            if (seqs and seq <= seqs[-1]) or seq <= self.start:
                raise ValueError(f"row {seq} is not newer than the tail")
            seqs.append(seq)
            points.append(point)
            # As a REAL column gives them back: -0.0 as 0.0 (x + 0.0), NaN as null.
            times.append(ts + 0.0)
            values.append(math.nan if value is None else value + 0.0)
            self._records.append(None)
        if len(seqs) > 2 * self._limit:
            # Cut in one go, not one row at a time: the arrays shift once per `limit` rows.
            self._cut(len(seqs) - self._limit)

    def _cut(self, count: int) -> None:
        self.start = self._seqs[count - 1]
        self._drop_front(count)
        self._gone = {seq for seq in self._gone if seq > self.start}

    def peek(
        self,
        limit: int,
        after: int,
        through: int | None = None,
        *,
        series: Mapping[int, Mapping[str, Any]],
    ) -> list[Record]:
        """What :meth:`Store.peek` returns for telemetry, for an ``after`` this tail covers;
        ``series`` gives each point id's fields (:attr:`Store.series`)."""
        if not self.covers(after):
            raise ValueError(f"the tail holds rows above {self.start}, not above {after}")
        out: list[Record] = []
        gone = self._gone
        seqs, records = self._seqs, self._records
        first = bisect.bisect_right(seqs, after)
        if first > self._released:
            # A look past a row means the reader has it (the uplink moves on once a message
            # is built; the message keeps its payload, not the records). The row stays until
            # it is acked, its record goes now: behind a slow link the tail's 8,192 rows would
            # otherwise keep a record each, about 2 MiB. A look back builds it again.
            for index in range(self._released, first):
                records[index] = None
            self._released = first
        for index in range(first, len(seqs)):
            if len(out) >= limit:
                break
            seq = seqs[index]
            if through is not None and seq > through:
                break
            if seq in gone:
                continue
            record = records[index]
            if record is None:
                number = self._values[index]
                ts = self._ts[index]
                body = {**series[self._points[index]]}
                body["value"] = None if math.isnan(number) else number
                body["ts"] = ts
                record = records[index] = Record(seq, "telemetry", ts, body)
            out.append(record)
        return out

    def delete(self, seqs: Iterable[int]) -> None:
        """Rows deleted from the store (acknowledged); seqs not held are ignored."""
        held = self._seqs
        if not held:
            return
        # While a backlog drains, every acked seq is older than the tail: a comparison sends
        # it past, where a search per seq cost the event loop half a microsecond a reading.
        oldest, newest = held[0], held[-1]
        for seq in seqs:
            if seq < oldest or seq > newest:
                continue
            index = bisect.bisect_left(held, seq)
            if index < len(held) and held[index] == seq:
                self._gone.add(seq)
        # Acknowledgements come oldest first: drop the deleted front in one cut.
        front = 0
        while front < len(held) and held[front] in self._gone:
            self._gone.discard(held[front])
            front += 1
        if front:
            self._drop_front(front)

    def _drop_front(self, count: int) -> None:
        for column in (self._seqs, self._points, self._ts, self._values):
            del column[:count]
        del self._records[:count]
        self._released = max(0, self._released - count)

    def restart(self, start: int) -> None:
        """Forget every row: rows above ``start`` will be added again as they are committed."""
        self.start = start
        self._drop_front(len(self._seqs))
        self._gone.clear()
