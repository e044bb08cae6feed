"""The telemetry rows of the latest commits, held in memory as :meth:`Store.peek` returns them.

The uplink looks at the newest telemetry after every commit (is the next batch full yet?).
Each look at the database is a trip to the outbox's thread, a query and a new record per row:
at 1,000 readings a second that was the outbox's largest cost after the commits themselves.
The outbox, the only writer, knows every row it commits and every row it deletes, so it can
answer a look at the newest rows itself.

Pure bookkeeping, no I/O: :class:`buffer.outbox.Outbox` adds what it committed, deletes what
was acknowledged, and starts again empty whenever rows go another way (the capacity policy).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final

from buffer.store import Record

#: Rows held (up to twice this between two cuts, about 0.6 MiB): what the uplink has not sent
#: yet in normal running is a batch or two. Beyond it (an outage) the oldest go, and a look
#: that far back goes to the database as before.
TAIL_LIMIT: Final = 1_000


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
        self._seqs: list[int] = []
        self._records: list[Record] = []
        #: Seqs deleted from the store but still in the lists (dropped when they reach the front).
        self._gone: set[int] = set()

    def __len__(self) -> int:
        return len(self._seqs) - len(self._gone)

    def covers(self, after: int) -> bool:
        """True when every stored row with a seq above ``after`` is held here."""
        return after >= self.start

    def add(self, records: Iterable[Record]) -> None:
        """Rows just committed, in seq order, each above every row held."""
        for record in records:
            if (self._seqs and record.seq <= self._seqs[-1]) or record.seq <= self.start:
                raise ValueError(f"row {record.seq} is not newer than the tail")
            self._seqs.append(record.seq)
            self._records.append(record)
        if len(self._seqs) > 2 * self._limit:
            # Cut in one go, not one row at a time: the lists shift once per `limit` rows.
            cut = len(self._seqs) - self._limit
            self.start = self._seqs[cut - 1]
            del self._seqs[:cut], self._records[:cut]
            self._gone = {seq for seq in self._gone if seq > self.start}

    def peek(self, limit: int, after: int, through: int | None = None) -> list[Record]:
        """What :meth:`Store.peek` returns for telemetry, for an ``after`` this tail covers."""
        if not self.covers(after):
            raise ValueError(f"the tail holds rows above {self.start}, not above {after}")
        out: list[Record] = []
        gone = self._gone
        records = self._records
        for index in range(bisect.bisect_right(self._seqs, after), len(self._seqs)):
            if len(out) >= limit:
                break
            record = records[index]
            if through is not None and record.seq > through:
                break
            if record.seq not in gone:
                out.append(record)
        return out

    def delete(self, seqs: Iterable[int]) -> None:
        """Rows deleted from the store (acknowledged); seqs not held are ignored."""
        held = self._seqs
        if not held:
            return
        for seq in seqs:
            index = bisect.bisect_left(held, seq)
            if index < len(held) and held[index] == seq:
                self._gone.add(seq)
        # Acknowledgements come oldest first: drop the deleted front in one cut.
        front = 0
        while front < len(held) and held[front] in self._gone:
            self._gone.discard(held[front])
            front += 1
        if front:
            del held[:front], self._records[:front]

    def restart(self, start: int) -> None:
        """Forget every row: rows above ``start`` will be added again as they are committed."""
        self.start = start
        self._seqs.clear()
        self._records.clear()
        self._gone.clear()
