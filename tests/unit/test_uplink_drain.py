"""The uplink's drain policy and its rate buckets, without a broker: decisions on given times,
then hypothesis over whole sessions for the promises of edge/uplink/drain.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config.model import Uplink as UplinkConfig
from edge.uplink.drain import DrainPolicy, Send, TokenBucket, Wait, Waiting

WALL = 1_700_000_000.0
#: The least a simulated clock moves on after a wait.
TICK = 1e-6


def policy(**settings: float | int | None) -> DrainPolicy:
    args: dict[str, float | int | None] = {"window": 10, "batch_size": 100, "batch_interval": 1.0}
    args.update(settings)
    return DrainPolicy(**args)  # type: ignore[arg-type]


def waited(decision: Send | Wait) -> float | None:
    assert isinstance(decision, Wait), decision
    return decision.seconds


# --- the buckets ---------------------------------------------------------------------------------


def test_a_message_bucket_lets_its_rate_through_and_no_more() -> None:
    bucket = TokenBucket(5.0, 1.0, now=0.0)
    sent = 0
    for step in range(1000):  # 10 s in steps of 10 ms, sending whenever the bucket allows
        now = step * 0.01
        if bucket.delay(now) == 0:
            bucket.take(1, now)
            sent += 1
    assert 49 <= sent <= 51


def test_a_byte_bucket_goes_into_debt_for_a_large_message_and_waits_it_off() -> None:
    bucket = TokenBucket(1000.0, 1000.0, now=0.0)
    assert bucket.delay(0.0) == 0
    bucket.take(3000, 0.0)  # larger than the burst: still goes, once
    assert 1.9 < bucket.delay(0.0) <= 2.1
    assert bucket.delay(2.1) == 0


def test_a_bucket_given_an_earlier_time_does_not_refill_backwards() -> None:
    bucket = TokenBucket(10.0, 1.0, now=100.0)
    bucket.take(1, 100.0)
    before = bucket.delay(100.0)
    assert bucket.delay(50.0) == pytest.approx(before)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_a_bucket_without_a_positive_rate_or_burst_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate > 0 and burst > 0"):
        TokenBucket(rate, burst, now=0.0)


@pytest.mark.parametrize("settings", [{"window": 0}, {"batch_size": 0}, {"batch_interval": -1.0}])
def test_a_policy_with_an_impossible_setting_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="window >= 1"):
        policy(**settings)


def test_the_policy_of_a_site_files_uplink_section_takes_its_settings() -> None:
    config = UplinkConfig.model_validate(
        {
            "brokers": ["mqtt://x:1"],
            "inflight": 4,
            "batch_size": 7,
            "batch_interval": "250ms",
            "backfill_bytes_per_s": "16KiB",
        }
    )
    made = DrainPolicy.of(config, now=0.0)
    assert (made.window, made.batch_size, made.batch_interval) == (4, 7, 0.25)
    made.new_session()
    assert made.next(Waiting(), now=0.0, wall=WALL) == Send("backfill")
    made.backfill_sent(16 * 1024 + 1000, now=0.0)  # the burst and 1000 bytes of debt
    decision = made.next(Waiting(), now=0.0, wall=WALL)
    assert isinstance(decision, Wait)
    assert decision.seconds == pytest.approx(1000 / (16 * 1024), rel=0.01)


# --- single decisions ----------------------------------------------------------------------------


def test_an_event_goes_first_whatever_else_waits() -> None:
    drain = policy()
    drain.new_session()
    waiting = Waiting(events=1, live=100, live_created=WALL - 10, backfill_in_flight=9)
    assert drain.next(waiting, now=0.0, wall=WALL) == Send("event")


def test_rows_waiting_when_the_session_starts_go_at_once_then_batches_fill() -> None:
    drain = policy()
    drain.new_session()
    young = Waiting(live=3, live_created=WALL - 0.1)
    assert drain.next(young, now=0.0, wall=WALL) == Send("live")
    # From then on a batch that is neither full nor old waits to fill; the backlog goes meanwhile.
    assert drain.next(young, now=0.0, wall=WALL) == Send("backfill")
    drain.backlog_finished()
    assert waited(drain.next(young, now=0.0, wall=WALL)) == pytest.approx(0.9)
    assert drain.next(Waiting(live=100, live_created=WALL), now=0.0, wall=WALL) == Send("live")
    assert drain.next(young, now=0.0, wall=WALL + 0.9) == Send("live")


def test_live_data_stored_after_now_by_a_stepped_clock_goes_at_once() -> None:
    drain = policy()
    drain.new_session()
    drain.next(Waiting(), now=0.0, wall=WALL)  # nothing live at the start
    drain.backlog_finished()
    ahead = Waiting(live=1, live_created=WALL + 3600)
    assert drain.next(ahead, now=0.0, wall=WALL) == Send("live")


def test_the_backlog_leaves_one_slot_of_the_window_for_an_alarm() -> None:
    drain = policy(window=10)
    drain.new_session()
    assert drain.next(Waiting(backfill_in_flight=8), now=0.0, wall=WALL) == Send("backfill")
    assert drain.next(Waiting(backfill_in_flight=9), now=0.0, wall=WALL) == Wait(None)
    assert drain.next(Waiting(events=1, backfill_in_flight=9), now=0.0, wall=WALL) == Send("event")
    one = policy(window=1)  # a window of one has no slot to spare
    one.new_session()
    assert one.next(Waiting(backfill_in_flight=0), now=0.0, wall=WALL) == Send("backfill")


def test_a_rate_limited_backlog_waits_for_the_sooner_of_its_bucket_and_the_batch() -> None:
    drain = policy(messages_per_s=0.5)
    drain.new_session()
    assert drain.next(Waiting(), now=0.0, wall=WALL) == Send("backfill")
    drain.backfill_sent(500, now=0.0)
    # The bucket is empty, not in debt: the next one goes a moment later and takes it into debt.
    assert waited(drain.next(Waiting(), now=0.0, wall=WALL)) == pytest.approx(0.002)
    assert drain.next(Waiting(), now=0.002, wall=WALL) == Send("backfill")
    drain.backfill_sent(500, now=0.002)
    assert waited(drain.next(Waiting(), now=0.002, wall=WALL)) == pytest.approx(2.0, abs=0.01)
    drain.next(Waiting(live=1, live_created=WALL), now=0.0, wall=WALL)  # the session's first
    batch = Waiting(live=1, live_created=WALL - 0.5)
    assert waited(drain.next(batch, now=0.0, wall=WALL)) == pytest.approx(0.5)
    assert drain.next(Waiting(), now=2.01, wall=WALL + 2) == Send("backfill")


def test_a_new_session_has_its_backlog_to_send_again() -> None:
    drain = policy()
    drain.new_session()
    drain.backlog_finished()
    assert drain.backlog_done
    assert drain.next(Waiting(), now=0.0, wall=WALL) == Wait(None)
    drain.new_session()
    assert not drain.backlog_done
    assert drain.next(Waiting(), now=0.0, wall=WALL) == Send("backfill")


# --- whole sessions, by hypothesis --------------------------------------------------------------


@dataclass
class Outbox:
    """What waits, as the service would peek it: events, live rows (their store times, on the
    same clock as ``now``) and a number of backlog messages."""

    events: int
    live: list[float]
    backlog: int
    sent: list[tuple[float, str, int]] = field(default_factory=list)


def waiting(box: Outbox, batch_size: int) -> Waiting:
    live = box.live[:batch_size]
    return Waiting(events=box.events, live=len(live), live_created=live[0] if live else None)


def step(drain: DrainPolicy, box: Outbox, now: float, size: int) -> Send | Wait:
    """One decision, carried out as the service does; a backlog found empty is said so."""
    while True:
        # One clock for both: store times near 0 keep a float's full precision.
        decision = drain.next(waiting(box, drain.batch_size), now=now, wall=now)
        if isinstance(decision, Wait):
            return decision
        if decision.lane == "event":
            box.events -= 1
        elif decision.lane == "live":
            del box.live[: drain.batch_size]
        elif box.backlog == 0:
            drain.backlog_finished()
            continue
        else:
            box.backlog -= 1
            drain.backfill_sent(size, now)
        box.sent.append((now, decision.lane, size))
        return decision


settings_of_a_link = st.fixed_dictionaries(
    {
        "window": st.integers(1, 20),
        "batch_size": st.integers(1, 200),
        "batch_interval": st.floats(0.0, 5.0),
        "messages_per_s": st.none() | st.floats(0.1, 50.0),
        "bytes_per_s": st.none() | st.floats(1024.0, 100_000.0),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    link=settings_of_a_link,
    events=st.integers(0, 5),
    live=st.integers(0, 400).flatmap(
        lambda n: st.lists(st.floats(-2.0, 0.0), min_size=n, max_size=n).map(sorted)
    ),
    backlog=st.integers(0, 30),
    steps=st.lists(
        st.tuples(st.floats(0.0, 0.5), st.integers(1, 50_000), st.booleans()), max_size=200
    ),
)
def test_events_go_first_and_due_live_data_before_any_backlog(
    link: dict[str, float], events: int, live: list[float], backlog: int, steps: list[Any]
) -> None:
    drain = policy(**link)
    drain.new_session()
    box = Outbox(events, list(live), backlog)
    now = 0.0
    for pause, size, event_arrives in steps:
        now += pause
        if event_arrives:
            box.events += 1
        before = waiting(box, drain.batch_size)
        decision = step(drain, box, now, size)
        if before.events:
            assert decision == Send("event")
        if isinstance(decision, Send) and decision.lane == "backfill":
            # The backlog went: no live batch was due (full, or its oldest a batch interval old).
            assert before.live < drain.batch_size
            if before.live:
                age = now - (before.live_created or 0.0)
                assert 0 <= age < drain.batch_interval


@settings(max_examples=200, deadline=None)
@given(
    link=settings_of_a_link,
    sizes=st.lists(st.integers(1, 50_000), min_size=1, max_size=60),
    pauses=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=60),
)
def test_the_backlog_never_exceeds_its_rates(
    link: dict[str, float], sizes: list[int], pauses: list[float]
) -> None:
    """Over any stretch of time, backlog messages and bytes stay within the bucket: its burst,
    its rate over the stretch, and the one message that may go into debt."""
    drain = policy(**link)
    drain.new_session()
    box = Outbox(0, [], len(sizes))
    now = 0.0
    for i, size in enumerate(sizes):
        decision = step(drain, box, now, size)
        now += pauses[i % len(pauses)] if isinstance(decision, Send) else (decision.seconds or 1.0)
    sent = [(t, size) for t, lane, size in box.sent if lane == "backfill"]
    messages_per_s, bytes_per_s = link["messages_per_s"], link["bytes_per_s"]
    for first in range(len(sent)):
        for last in range(first, len(sent)):
            span = sent[last][0] - sent[first][0]
            stretch = sent[first : last + 1]
            if messages_per_s is not None:
                assert len(stretch) < 2 + messages_per_s * span + 1e-6
            if bytes_per_s is not None:
                volume = sum(size for _, size in stretch)
                assert volume < bytes_per_s + bytes_per_s * span + stretch[-1][1] + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    link=settings_of_a_link,
    events=st.integers(0, 20),
    live=st.lists(st.floats(-10.0, 0.0), max_size=500).map(sorted),
    backlog=st.integers(0, 40),
    size=st.integers(1, 20_000),
)
def test_once_nothing_new_arrives_everything_waiting_goes_in_bounded_time(
    link: dict[str, float], events: int, live: list[float], backlog: int, size: int
) -> None:
    drain = policy(**link)
    drain.new_session()
    box = Outbox(events, list(live), backlog)
    now = 0.0
    for _ in range(3 * (events + len(live) + backlog) + 10):
        decision = step(drain, box, now, size)
        if isinstance(decision, Wait):
            if decision.seconds is None:
                break  # nothing left that time alone would send
            assert decision.seconds > 0
            now += max(decision.seconds, TICK)
    assert (box.events, box.live, box.backlog) == (0, [], 0)
    # Events never waited; the backlog waited for nothing but its buckets.
    assert all(t == 0.0 for t, lane, _ in box.sent if lane == "event")
    bound = drain.batch_interval + 1e-3
    for limit, per_message in ((link["messages_per_s"], 1), (link["bytes_per_s"], size)):
        if limit is not None:
            bound += backlog * max(1.0, per_message) / limit
    assert now <= bound


@settings(max_examples=100, deadline=None)
@given(
    link=settings_of_a_link,
    backlog=st.integers(1, 20),
    rows_per_interval=st.floats(0.1, 0.9),
)
def test_live_data_flowing_below_a_batch_per_interval_does_not_starve_the_backlog(
    link: dict[str, float], backlog: int, rows_per_interval: float
) -> None:
    drain = policy(**{**link, "batch_interval": max(0.1, link["batch_interval"])})
    drain.new_session()
    box = Outbox(0, [], backlog)
    every = drain.batch_interval / max(1.0, rows_per_interval * drain.batch_size)
    now, next_row = 0.0, 0.0
    deadline = 10_000.0
    for _ in range(100_000):
        if not box.backlog or now >= deadline:
            break
        while next_row <= now:
            box.live.append(next_row)
            next_row += every
        decision = step(drain, box, now, 1000)
        if isinstance(decision, Wait):
            assert decision.seconds is None or decision.seconds > 0  # a wait never spins
            # A real clock moves on by at least a tick, even after a wait shorter than one. (Rows
            # arriving meanwhile would wake the service sooner, to the same decisions later.)
            now += max(decision.seconds or every, TICK)
    assert box.backlog == 0
