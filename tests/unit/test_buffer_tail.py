"""The outbox's tail of recent telemetry: what it holds, lets go and refuses."""

from __future__ import annotations

import pytest

from buffer import Record
from buffer.tail import TelemetryTail


def rows(*seqs: int) -> list[Record]:
    return [Record(seq, "telemetry", float(seq), {"point": "p", "value": 1.0}) for seq in seqs]


def test_holds_rows_above_its_start_and_answers_like_the_store() -> None:
    tail = TelemetryTail(10)
    tail.add(rows(11, 12, 14, 15))  # 13 is an event
    assert not tail.covers(9)
    assert [r.seq for r in tail.peek(10, after=10)] == [11, 12, 14, 15]
    assert [r.seq for r in tail.peek(2, after=11)] == [12, 14]
    assert [r.seq for r in tail.peek(10, after=11, through=14)] == [12, 14]
    assert tail.peek(10, after=15) == []


def test_deleted_rows_are_skipped_and_the_front_is_let_go() -> None:
    tail = TelemetryTail(0)
    tail.add(rows(1, 2, 3, 4))
    tail.delete([3, 99, -1])  # unknown seqs are ignored
    assert [r.seq for r in tail.peek(10, after=0)] == [1, 2, 4]
    tail.delete([1, 2])
    assert [r.seq for r in tail.peek(10, after=0)] == [4]
    assert len(tail) == 1
    tail.delete([4])
    assert len(tail) == 0
    assert tail.peek(10, after=0) == []


def test_beyond_twice_its_limit_the_oldest_go_and_its_start_rises() -> None:
    tail = TelemetryTail(0, limit=3)
    tail.add(rows(1, 2, 3, 4, 5, 6))
    assert tail.start == 0
    tail.add(rows(7))
    assert tail.start == 4
    assert not tail.covers(3)
    assert [r.seq for r in tail.peek(10, after=4)] == [5, 6, 7]


def test_restart_forgets_everything() -> None:
    tail = TelemetryTail(0)
    tail.add(rows(1, 2))
    tail.restart(5)
    assert len(tail) == 0
    assert not tail.covers(2)
    tail.add(rows(6))
    assert [r.seq for r in tail.peek(10, after=5)] == [6]


def test_refuses_rows_out_of_order_a_look_it_does_not_cover_and_no_room() -> None:
    tail = TelemetryTail(5)
    with pytest.raises(ValueError, match="not newer"):
        tail.add(rows(5))
    tail.add(rows(7))
    with pytest.raises(ValueError, match="not newer"):
        tail.add(rows(6))
    with pytest.raises(ValueError, match="not above 4"):
        tail.peek(10, after=4)
    with pytest.raises(ValueError, match="at least one row"):
        TelemetryTail(0, limit=0)
