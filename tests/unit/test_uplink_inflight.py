"""The uplink's messages in flight, without a broker: claims, resends, and the packet limit
learnt from a broker that drops a message over and over."""

from __future__ import annotations

from buffer import Record
from edge.uplink.drain import Lane
from edge.uplink.inflight import REFUSED_AFTER, SMALLEST_LIMIT, InFlight
from edge.uplink.messages import Message


def message(*seqs: int, size: int = 100, lane: Lane = "live") -> Message:
    return Message("d/gw/telemetry", b"x" * size, seqs, lane)


def row(seq: int) -> Record:
    return Record(seq, "telemetry", 0.0, {})


def test_rows_in_a_message_stay_claimed_until_deleted_not_just_acknowledged() -> None:
    kept = InFlight()
    sent = message(1, 2, 3, lane="backfill")
    kept.add(sent)
    assert (len(kept), kept.backfill, kept.claimed(2)) == (1, 1, True)
    kept.acknowledged(sent)
    assert (len(kept), kept.backfill, kept.claimed(2)) == (0, 0, True)
    kept.deleted(sent.seqs)
    assert not kept.claimed(2)


def test_the_first_unclaimed_run_stops_at_the_next_claimed_row() -> None:
    kept = InFlight()
    kept.add(message(3, 4))
    rows = [row(s) for s in (1, 2, 3, 4, 5, 6)]
    assert [r.seq for r in kept.unclaimed_run(rows) or []] == [1, 2]
    assert [r.seq for r in kept.unclaimed_run(rows[2:]) or []] == [5, 6]
    assert kept.unclaimed_run(rows[2:4]) is None  # every one claimed: read further on
    assert kept.unclaimed_run([]) == []


def test_what_a_connection_left_goes_again_oldest_first_and_unchanged() -> None:
    kept = InFlight()
    first, second = message(1), message(2)
    kept.add(first)
    kept.add(second)
    kept.acknowledged(first)
    assert kept.resend() == [second]
    assert kept.payloads() == [second.payload]


def test_a_message_dropped_with_its_connection_again_and_again_is_taken_apart() -> None:
    kept = InFlight()
    large, small = message(1, 2, size=8000, lane="backfill"), message(3, size=500)
    kept.add(large)
    kept.add(small)
    for _ in range(REFUSED_AFTER - 1):
        kept.resend()
        kept.session_ended([])
        assert kept.learnt_limit is None
    kept.resend()
    kept.session_ended([])
    assert kept.learnt_limit == 4000
    # The large one is dropped (its rows read again into smaller messages); the small one stays.
    assert kept.resend() == [small]
    assert (kept.claimed(1), kept.claimed(3), kept.backfill) == (False, True, 0)


def test_sessions_that_did_not_resend_it_or_heard_a_refusal_do_not_count() -> None:
    kept = InFlight()
    kept.add(message(1, size=8000))
    for _ in range(REFUSED_AFTER * 2):
        kept.session_ended([])  # ended before draining: nothing was sent again
        kept.resend()
        kept.session_ended(["d/gw/telemetry"])  # the broker read it and refused it
    assert kept.learnt_limit is None
    assert len(kept) == 1


def test_a_small_message_is_never_taken_apart() -> None:
    kept = InFlight()
    kept.add(message(1, size=SMALLEST_LIMIT))
    for _ in range(REFUSED_AFTER * 2):
        kept.resend()
        kept.session_ended([])
    assert kept.learnt_limit is None
