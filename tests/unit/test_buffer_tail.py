"""The outbox's tail of recent telemetry: what it holds, lets go and refuses."""

from __future__ import annotations

import pytest

from buffer import Record
from buffer.tail import Row, TelemetryTail

#: Point id -> the series' fields, as the store keeps them.
SERIES = {1: {"device": "d", "point": "p", "unit": "mA"}}


def rows(*seqs: int) -> list[Row]:
    return [(seq, 1, float(seq), 1.0) for seq in seqs]


def test_holds_rows_above_its_start_and_answers_like_the_store() -> None:
    tail = TelemetryTail(10)
    tail.add(rows(11, 12, 14, 15))  # 13 is an event
    assert not tail.covers(9)
    assert [r.seq for r in tail.peek(10, after=10, series=SERIES)] == [11, 12, 14, 15]
    assert [r.seq for r in tail.peek(2, after=11, series=SERIES)] == [12, 14]
    assert [r.seq for r in tail.peek(10, after=11, through=14, series=SERIES)] == [12, 14]
    assert tail.peek(10, after=15, series=SERIES) == []


def test_deleted_rows_are_skipped_and_the_front_is_let_go() -> None:
    tail = TelemetryTail(0)
    tail.add(rows(1, 2, 3, 4))
    tail.delete([3, 99, -1])  # unknown seqs are ignored
    assert [r.seq for r in tail.peek(10, after=0, series=SERIES)] == [1, 2, 4]
    tail.delete([1, 2])
    assert [r.seq for r in tail.peek(10, after=0, series=SERIES)] == [4]
    assert len(tail) == 1
    tail.delete([4])
    assert len(tail) == 0
    assert tail.peek(10, after=0, series=SERIES) == []


def test_acks_of_rows_older_or_newer_than_it_holds_leave_its_rows_alone() -> None:
    # A backlog's acks are all older than the tail; they pass without touching it, and the
    # rows it holds among them still go.
    tail = TelemetryTail(100)
    tail.add(rows(101, 102, 104, 105))
    tail.delete([*range(1, 101), 106, 107])
    assert [r.seq for r in tail.peek(10, after=100, series=SERIES)] == [101, 102, 104, 105]
    tail.delete([*range(50, 103), 104])
    assert [r.seq for r in tail.peek(10, after=100, series=SERIES)] == [105]
    assert len(tail) == 1


def test_a_look_past_rows_lets_their_records_go_and_a_look_back_builds_them_again() -> None:
    # Sent rows wait in the tail for their ack; their records must not wait with them.
    tail = TelemetryTail(0)
    tail.add(rows(*range(1, 101)))
    sent = tail.peek(50, after=0, series=SERIES)
    tail.peek(50, after=50, series=SERIES)
    assert sum(record is not None for record in tail._records) == 50  # 51..100 only
    again = tail.peek(50, after=0, series=SERIES)
    assert again == sent  # equal records, built again from the rows
    tail.delete(range(1, 31))
    tail.peek(10, after=60, series=SERIES)
    assert [r.seq for r in tail.peek(100, after=30, series=SERIES)] == list(range(31, 101))
    tail.add(rows(101))
    assert [r.seq for r in tail.peek(5, after=98, series=SERIES)] == [99, 100, 101]


def test_beyond_twice_its_limit_the_oldest_go_and_its_start_rises() -> None:
    tail = TelemetryTail(0, limit=3)
    tail.add(rows(1, 2, 3, 4, 5, 6))
    assert tail.start == 0
    tail.add(rows(7))
    assert tail.start == 4
    assert not tail.covers(3)
    assert [r.seq for r in tail.peek(10, after=4, series=SERIES)] == [5, 6, 7]


def test_restart_forgets_everything() -> None:
    tail = TelemetryTail(0)
    tail.add(rows(1, 2))
    tail.restart(5)
    assert len(tail) == 0
    assert not tail.covers(2)
    tail.add(rows(6))
    assert [r.seq for r in tail.peek(10, after=5, series=SERIES)] == [6]


def test_refuses_rows_out_of_order_a_look_it_does_not_cover_and_no_room() -> None:
    tail = TelemetryTail(5)
    with pytest.raises(ValueError, match="not newer"):
        tail.add(rows(5))
    tail.add(rows(7))
    with pytest.raises(ValueError, match="not newer"):
        tail.add(rows(6))
    with pytest.raises(ValueError, match="not above 4"):
        tail.peek(10, after=4, series=SERIES)
    with pytest.raises(ValueError, match="at least one row"):
        TelemetryTail(0, limit=0)


def test_a_look_gives_the_records_the_store_would() -> None:
    tail = TelemetryTail(0)
    tail.add(
        [(1, 1, 10.0, -0.0), (2, 1, 11.0, None), (3, 1, 12.0, float("nan")), (4, 1, 13.0, 2.5)]
    )
    assert tail.peek(10, after=0, series=SERIES) == [
        Record(1, "telemetry", 10.0, {**SERIES[1], "value": 0.0, "ts": 10.0}),
        Record(2, "telemetry", 11.0, {**SERIES[1], "value": None, "ts": 11.0}),
        Record(3, "telemetry", 12.0, {**SERIES[1], "value": None, "ts": 12.0}),
        Record(4, "telemetry", 13.0, {**SERIES[1], "value": 2.5, "ts": 13.0}),
    ]
    zero = tail.peek(1, after=0, series=SERIES)[0].body["value"]
    assert str(zero) == "0.0"  # -0.0 comes back as 0.0, as from a REAL column


def test_a_whole_commit_of_the_default_batch_is_held() -> None:
    tail = TelemetryTail(0)
    tail.add(rows(*range(1, 4097)))
    tail.add(rows(*range(4097, 8193)))
    assert tail.covers(0)  # two commits of 4096 rows: nothing let go yet
    tail.add(rows(8193))
    assert tail.start == 4097
    assert [r.seq for r in tail.peek(2, after=4097, series=SERIES)] == [4098, 4099]


def test_a_row_becomes_a_record_once_however_often_it_is_looked_at() -> None:
    tail = TelemetryTail(0)
    tail.add(rows(1, 2, 3))
    first = tail.peek(2, after=0, series=SERIES)
    again = tail.peek(10, after=0, series=SERIES)
    assert again[:2] == first
    assert all(a is b for a, b in zip(again, first, strict=False))  # no second object
    tail.delete([1])
    tail.add(rows(4))
    assert [r.seq for r in tail.peek(10, after=0, series=SERIES)] == [2, 3, 4]
    assert tail.peek(1, after=1, series=SERIES)[0] is again[1]
