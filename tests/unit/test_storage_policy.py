"""Storage policies (edge/storage_policy.py): what is stored in place of every polled reading
stays within the stated band of it, and the full-rate readings around an alarm are kept.

The bound is checked the way a platform sees it: the stored readings are reconstructed with
:func:`edge.storage_policy.reconstruct` (a step for deadband, a line for swinging door) at the
time of every polled reading, in the milliseconds the wire carries.
"""

from __future__ import annotations

import math
import random
import tracemalloc
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.types import Reading
from edge.storage_policy import Policy, Storage, Stored, reconstruct, wire_ms
from tests.fixtures.traces import EFM_SHAPES, T0, device_readings

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Realistic traces are thousands of polls each: fewer of them.
_LONG = settings(_SETTINGS, max_examples=25)


def _reading(ts: float, value: float, point: str = "p", device: str = "d") -> Reading:
    return Reading(device, point, value, "", ts, 0.0)


def _run(policy: Policy, trace: Sequence[tuple[float, float]]) -> list[Stored]:
    storage = Storage({("d", "p"): policy}, pre=0)
    stored: list[Stored] = []
    for ts, value in trace:
        stored += storage.offer(_reading(ts, value))
    return stored + storage.flush()


def _segments(trace: Sequence[tuple[float, float]]) -> list[list[tuple[int, float]]]:
    """The trace cut where its time does not move forward (a clock step back)."""
    segments: list[list[tuple[int, float]]] = [[]]
    for ts, value in trace:
        ms = wire_ms(ts)
        if segments[-1] and ms <= segments[-1][-1][0]:
            segments.append([])
        segments[-1].append((ms, value))
    return segments


def _stored_segments(stored: Sequence[Stored]) -> list[list[tuple[int, float, None]]]:
    segments: list[list[tuple[int, float, None]]] = [[]]
    for s in stored:
        ms = wire_ms(s.reading.ts)
        if segments[-1] and ms <= segments[-1][-1][0]:
            segments.append([])
        segments[-1].append((ms, s.reading.value, None))
    return segments


def _worst(policy: Policy, trace: Sequence[tuple[float, float]], stored: Sequence[Stored]) -> float:
    """The largest error of the reconstruction over the band, every polled reading."""
    polled, kept = _segments(trace), _stored_segments(stored)
    assert len(polled) == len(kept), "each clock step back must show in what was stored"
    worst = 0.0
    for readings, segment in zip(polled, kept, strict=True):
        rebuilt = reconstruct(segment, [ms for ms, _ in readings], policy)
        for (_, value), guess in zip(readings, rebuilt, strict=True):
            assert guess is not None, "a polled reading before anything was stored"
            error = abs(guess - value)
            band = policy.tolerance(value)
            if band == 0:
                assert error == 0, (value, guess)
            else:
                worst = max(worst, error / band)
    return worst


def _policies() -> st.SearchStrategy[Policy]:
    band = st.one_of(st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0]), st.floats(0.01, 50))
    percent = st.sampled_from([0.0, 0.5, 2.0, 10.0])
    heartbeat = st.sampled_from([None, 5.0, 60.0, 900.0])
    return st.one_of(
        st.builds(Policy, st.just("swinging-door"), band, percent, heartbeat),
        st.builds(Policy, st.just("deadband"), st.floats(0, 50), percent, heartbeat),
        st.builds(Policy, st.just("on-change"), st.just(0.0), st.just(0.0), heartbeat),
    )


def _random_traces() -> st.SearchStrategy[list[tuple[float, float]]]:
    """Irregular polls (bursts of a millisecond, gaps of hours, now and then the clock
    stepping back) of a value that wanders by steps of the size of the bands, jumps now and
    then, and sometimes sits on small integers."""
    step = st.one_of(
        st.floats(0.001, 2.0),
        st.floats(2.0, 7200.0),
        st.floats(-30.0, 0.0),  # the clock stepped back (or stood still)
    )
    move = st.one_of(
        st.floats(-3.0, 3.0),
        st.floats(-1e4, 1e4),
        st.integers(-2, 2).map(float),
    )
    return st.lists(st.tuples(step, move), min_size=1, max_size=300).map(_accumulate)


def _accumulate(steps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out, t, value = [], T0, 0.0
    for dt, move in steps:
        t += dt
        value = round(value + move, 6)
        out.append((t, value))
    return out


@_SETTINGS
@given(_policies(), _random_traces())
def test_every_polled_reading_is_within_the_band_of_what_a_platform_reconstructs(
    policy: Policy, trace: list[tuple[float, float]]
) -> None:
    stored = _run(policy, trace)
    assert _worst(policy, trace, stored) <= 1.0


@pytest.mark.parametrize(
    "policy",
    [
        Policy("swinging-door", band=1.0),
        Policy("swinging-door", band=0.2, band_percent=2.0, max_interval=60.0),
        Policy("deadband", band=1.0),
        Policy("deadband", band=0.0, band_percent=5.0, max_interval=30.0),
    ],
    ids=repr,
)
@pytest.mark.parametrize("seed", range(5))
def test_long_random_walks_stay_within_the_band_and_reach_it(policy: Policy, seed: int) -> None:
    """Thousands of polls wandering by about the band: the worst reading comes close to the
    band (so the check is not idle) and never passes it."""
    rng = random.Random(seed)
    trace, value, t = [], 50.0, T0
    for _ in range(3000):
        t += rng.choice([0.2, 1.0, 1.0, 1.0, 0.001, 30.0])
        value += rng.uniform(-1.0, 1.0)
        trace.append((t, round(value, 3)))
    stored = _run(policy, trace)
    worst = _worst(policy, trace, stored)
    assert 0.5 < worst <= 1.0
    assert len(stored) < len(trace)


@pytest.mark.slow
@_LONG
@given(
    _policies(),
    st.sampled_from(sorted(EFM_SHAPES)),
    st.integers(0, 2**32),
    st.sampled_from([0.2, 1.0, 5.0]),
)
def test_realistic_traces_drift_noise_and_steps_stay_within_the_band(
    policy: Policy, point: str, seed: int, poll: float
) -> None:
    trace = [(r.ts, r.value) for r in device_readings("d", 1800, poll, seed) if r.point == point]
    stored = _run(policy, trace)
    assert _worst(policy, trace, stored) <= 1.0
    assert len(stored) <= len(trace)


@_SETTINGS
@given(_policies(), _random_traces())
def test_heartbeat_stores_a_reading_at_least_every_max_interval(
    policy: Policy, trace: list[tuple[float, float]]
) -> None:
    storage = Storage({("d", "p"): policy}, pre=0)
    readings = [_reading(ts, value) for ts, value in trace]
    stored: list[Stored] = []
    for reading in readings:
        stored += storage.offer(reading)
    stored += storage.flush()
    kept = {id(s.reading) for s in stored}
    assert len(stored) == len(kept), "a reading is stored once"
    if policy.max_interval is None:
        return
    last: int | None = None
    previous: int | None = None
    for reading in readings:
        ms = wire_ms(reading.ts)
        if previous is not None and ms <= previous:
            last = None  # the clock stepped back: a new segment
        previous = ms
        if id(reading) in kept:
            last = ms
        else:
            assert last is not None
            assert ms - last < policy.max_interval * 1000


def test_swinging_door_stores_the_reading_before_the_one_that_closes_the_door() -> None:
    policy = Policy("swinging-door", band=1.0)
    trace = [(T0 + t, v) for t, v in [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 0.0)]]
    stored = _run(policy, trace)
    # 0 -> 3 is one line; at 4 s the value falls back: 3.0 is stored with its own time.
    assert [(s.reading.ts - T0, s.reading.value) for s in stored] == [
        (0, 0.0),
        (3, 3.0),
        (4, 0.0),
    ]


def test_deadband_stores_a_move_larger_than_the_band_and_a_heartbeat() -> None:
    policy = Policy("deadband", band=5.0, max_interval=10.0)
    trace = [(T0 + t, v) for t, v in [(0, 100.0), (1, 104.0), (2, 106.0), (3, 101.5), (13, 102.0)]]
    stored = _run(policy, trace)
    assert [(s.reading.ts - T0, s.reading.value) for s in stored] == [
        (0, 100.0),
        (2, 106.0),  # moved 6 > 5
        (13, 102.0),  # within the band, but 11 s after the last stored: the heartbeat
    ]


def test_on_change_stores_a_boolean_exactly_when_it_changes() -> None:
    trace = [(T0 + t, float(v)) for t, v in enumerate([0, 0, 1, 1, 1, 0, 0, 1])]
    stored = _run(Policy("on-change"), trace)
    assert [(s.reading.ts - T0, s.reading.value) for s in stored] == [
        (0, 0.0),
        (2, 1.0),
        (5, 0.0),
        (7, 1.0),
    ]


def test_relative_band_is_a_percentage_of_the_value() -> None:
    policy = Policy("deadband", band=0.0, band_percent=10.0)
    trace = [(T0 + t, v) for t, v in enumerate([100.0, 109.0, 112.0, 1.0, 1.1])]
    stored = _run(policy, trace)
    assert [s.reading.value for s in stored] == [100.0, 112.0, 1.0]


def test_nan_is_stored_and_the_next_reading_starts_afresh() -> None:
    policy = Policy("swinging-door", band=1.0)
    trace = [(T0 + t, v) for t, v in enumerate([1.0, 1.0, math.nan, 1.0, 1.0, 1.0])]
    stored = _run(policy, trace)
    values = [s.reading.value for s in stored]
    assert math.isnan(values[2])
    assert [s.reading.ts - T0 for s in stored] == [0, 1, 2, 3, 5]


def test_clock_step_back_stores_both_sides_of_the_step_in_poll_order() -> None:
    policy = Policy("swinging-door", band=1.0)
    trace = [(T0 + t, 5.0) for t in (0, 1, 2, 3)] + [(T0 - 100 + t, 5.0) for t in (0, 1, 2)]
    stored = _run(policy, trace)
    assert [s.reading.ts - T0 for s in stored] == [0, 3, -100, -98]
    assert _worst(policy, trace, stored) <= 1.0


def test_all_stores_every_reading_once_in_poll_order_whatever_the_clock_and_values_do() -> None:
    storage = Storage({}, pre=10, post=20)  # every point takes the default: all
    times = [0, 1, 2, 3, -100, -99, 4, 5, 40, 41, 70]
    values = [1.0, math.nan, 2.0, 2.0, 3.0, math.inf, 4.0, 4.0, 5.0, 5.0, 6.0]
    stored: list[Stored] = []
    for t, value in zip(times, values, strict=True):
        stored += storage.offer(_reading(T0 + t, value))
        if t == 40:
            stored += storage.alarm("d", T0 + t)
    stored += storage.flush()
    assert [s.reading.ts - T0 for s in stored] == times
    assert [s.window for s in stored] == [None] * 9 + ["post", None]
    assert (storage.polled, storage.stored) == (11, 11)


def test_points_stored_in_full_share_nothing_with_their_neighbours_in_an_alarm_window() -> None:
    # Every point stored in full has the same stateless filter: points of the same device
    # under another policy, an alarm window and a clock step keep their own readings.
    band = Policy("deadband", band=100.0)
    storage = Storage({("d", "b"): band, ("e", "a2"): band}, pre=5, post=5)
    stored: list[Stored] = []
    polled: list[Reading] = []
    for t in [*range(20), 12, 13, *range(21, 40)]:
        for device, point in [("d", "a1"), ("d", "b"), ("d", "a2"), ("e", "a1"), ("e", "a2")]:
            reading = _reading(T0 + t, float(t % 7), point, device)
            polled.append(reading)
            stored += storage.offer(reading)
        if t == 30:
            stored += storage.alarm("d", T0 + t)
    stored += storage.flush()
    full = [r for r in polled if (r.device_id, r.point) not in (("d", "b"), ("e", "a2"))]
    assert [s.reading for s in stored if s.reading in full] == full  # each once, in order
    kept_b = {s.reading.ts - T0 for s in stored if s.reading.point == "b"}
    assert set(range(25, 36)) <= kept_b  # d's window
    kept_e = {
        s.reading.ts - T0 for s in stored if (s.reading.device_id, s.reading.point) == ("e", "a2")
    }
    assert not set(range(26, 30)) & kept_e  # e had no alarm: its band rules


def memory_held_offering(storage: Storage, readings: list[Reading]) -> int:
    """Bytes still allocated after ``storage`` was offered ``readings`` (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for reading in readings:
            storage.offer(reading)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_a_point_stored_in_full_costs_the_policies_no_state_of_its_own() -> None:
    # 1,000 points (50 monitors of 20) stored in full: an entry in their device's table of
    # filters each, about 60 bytes, where a filter and its last reading were 250.
    storage = Storage({}, pre=60)
    readings = [
        Reading(f"efm-{d:02d}", f"point_{n}", 1.0 + t, "V", T0 + t, float(t))
        for t in range(3)
        for d in range(50)
        for n in range(20)
    ]
    held = memory_held_offering(storage, readings)
    assert storage.stored == len(readings)
    assert held / 1000 < 100, f"{held / 1000:.0f} bytes a point"


def test_min_interval_looks_at_readings_no_closer_than_it() -> None:
    policy = Policy("deadband", band=1.0, min_interval=5.0)
    trace = [(T0 + t, float(t)) for t in range(12)]
    stored = _run(policy, trace)
    assert [s.reading.ts - T0 for s in stored] == [0, 5, 10]


def test_an_alarm_keeps_every_reading_from_pre_before_to_post_after() -> None:
    storage = Storage({("d", "p"): Policy("deadband", band=100.0)}, pre=10, post=20)
    stored: list[Stored] = []
    readings = [_reading(T0 + t, 1.0) for t in range(60)]
    for reading in readings:
        stored += storage.offer(reading)
        if reading.ts == T0 + 30:
            stored += storage.alarm("d", reading.ts)
    stored += storage.flush()
    kept = {round(s.reading.ts - T0): s.window for s in stored}
    assert sorted(t for t in kept if 20 <= t <= 50) == list(range(20, 51))
    assert {kept[t] for t in range(20, 30)} == {"pre"}
    assert {kept[t] for t in range(31, 51)} == {"post"}
    assert 51 not in kept  # after the window the band rules again
    assert 19 not in kept
    # A reading of the ring comes back as an equal Reading, not the same object.
    assert len(stored) == len({s.reading for s in stored}), "nothing stored twice"


@_LONG
@given(
    _policies(),
    st.integers(0, 2**32),
    st.lists(st.floats(0, 1800), min_size=1, max_size=4),
)
def test_alarm_windows_are_complete_and_keep_the_bound(
    policy: Policy, seed: int, alarms_at: list[float]
) -> None:
    pre, post = 60.0, 120.0
    storage = Storage({("d", "residual_current"): policy}, pre=pre, post=post)
    readings = [r for r in device_readings("d", 1800, 1.0, seed) if r.point == "residual_current"]
    due = sorted(T0 + a for a in alarms_at)
    stored: list[Stored] = []
    alarm_times: list[float] = []
    for reading in readings:
        stored += storage.offer(reading)
        while due and reading.ts >= due[0]:
            due.pop(0)
            alarm_times.append(reading.ts)
            stored += storage.alarm("d", reading.ts)
    stored += storage.flush()
    kept = {s.reading for s in stored}  # the ring's readings come back equal, not the same
    for at in alarm_times:
        window = [r for r in readings if at - pre <= r.ts <= at + post]
        assert all(r in kept for r in window)
    line = [s for s in stored if s.window != "pre"]
    trace = [(r.ts, r.value) for r in readings]
    ordered = sorted(stored, key=lambda s: s.reading.ts)
    worst = 0.0
    rebuilt = reconstruct(
        [(wire_ms(s.reading.ts), s.reading.value, s.window) for s in stored],
        [wire_ms(ts) for ts, _ in trace],
        policy,
    )
    for (_, value), guess in zip(trace, rebuilt, strict=True):
        assert guess is not None
        band = policy.tolerance(value)
        assert abs(guess - value) <= band
        if band:
            worst = max(worst, abs(guess - value) / band)
    assert worst <= 1.0
    assert [s.reading.ts for s in line] == sorted(s.reading.ts for s in line)
    assert ordered  # something was stored


def test_ring_is_bounded_and_drops_the_oldest() -> None:
    storage = Storage({}, default=Policy("deadband", band=10.0), pre=3600, ring_limit=50)
    for t in range(500):
        storage.offer(_reading(T0 + t, 1.0))
    assert storage.ring_size() == 50
    pre = [s for s in storage.alarm("d", T0 + 499) if s.window == "pre"]
    assert [round(s.reading.ts - T0) for s in pre] == list(range(450, 500))


def test_a_reading_comes_back_from_the_ring_as_it_was_polled() -> None:
    storage = Storage({}, default=Policy("deadband", band=100.0), pre=60)
    first = Reading("d", "count", 7, "n", T0, 1.5)  # an int: kept aside, not as a float
    assert storage.offer(first)  # the first reading of a point is stored
    polled = [
        Reading("d", "count", 8, "n", T0 + 1, 2.5),
        Reading("d", "tilt", 0.1 + 0.2, "mm", T0 + 1, 2.5, "bad"),
        Reading("d", "tilt", 0.30000000000000004, "mm", T0 + 2, 3.5),
    ]
    storage.offer(polled[1])  # the first of its point: stored, so not held
    for reading in (polled[0], polled[2]):
        assert storage.offer(reading) == []
    assert storage.ring_size() == 2
    pre = storage.alarm("d", T0 + 2)
    assert [(s.reading, s.window) for s in pre] == [(polled[0], "pre"), (polled[2], "pre")]
    assert type(pre[0].reading.value) is int
    assert storage.alarm("d", T0 + 2) == []  # a reading is stored once


def test_a_long_run_through_a_small_ring_gives_the_last_readings_back() -> None:
    # Thousands of readings through a ring of 50: its arrays are compacted many times over.
    storage = Storage({}, default=Policy("deadband", band=1e9), pre=10_000, ring_limit=50)
    readings = [
        Reading("d", "p", t if t % 2 else float(t), "V", T0 + t, float(t)) for t in range(5000)
    ]
    for reading in readings:
        storage.offer(reading)
    assert storage.ring_size() == 50
    pre = storage.alarm("d", T0 + 4999)
    assert [s.reading for s in pre] == readings[-50:]
    assert [type(s.reading.value) for s in pre[:2]] == [float, int]


def test_the_ring_holds_a_reading_in_under_48_bytes() -> None:
    # 50 monitors of 20 points at 1 s hold 60,000 readings for a 60 s pre: the objects of a
    # Reading cost about 180 bytes, 10 MB for such a site.
    storage = Storage({}, default=Policy("deadband", band=1e9), pre=3600)
    names = [f"point_{n}" for n in range(20)]
    readings = [
        Reading("d", name, float(t % 97) + n / 10, "V", T0 + t, float(t))
        for t in range(600)
        for n, name in enumerate(names)
    ]
    held = memory_held_offering(storage, readings)
    assert storage.ring_size() == 600 * 20 - 20
    assert held / storage.ring_size() < 48, f"{held / storage.ring_size():.0f} bytes a reading"


def test_pending_reading_is_flushed_by_heartbeat_tick_offline_and_shutdown() -> None:
    policy = Policy("swinging-door", band=1.0, max_interval=60.0)
    storage = Storage({("d", "p"): policy}, pre=0)
    assert storage.offer(_reading(T0, 1.0))
    assert storage.offer(_reading(T0 + 1, 1.0)) == []
    assert storage.tick(T0 + 30) == []
    (late,) = storage.tick(T0 + 61)
    assert late.reading.ts == T0 + 1  # stored with its own time, not the tick's
    (beat,) = storage.offer(_reading(T0 + 62, 1.0))  # 61 s after the last stored one
    assert beat.reading.ts == T0 + 62
    assert storage.offer(_reading(T0 + 63, 1.0)) == []
    (gone,) = storage.offline("d")
    assert gone.reading.ts == T0 + 63
    assert storage.offer(_reading(T0 + 64, 1.0)) == []
    (last,) = storage.flush()
    assert last.reading.ts == T0 + 64
    assert storage.flush() == []


@pytest.mark.parametrize("kind", ["deadband", "swinging-door"])
def test_a_flat_point_costs_one_reading_per_heartbeat(kind: str) -> None:
    policy = Policy(kind, band=1.0, max_interval=900.0)  # type: ignore[arg-type]
    rng = random.Random(1)
    trace = [(T0 + t, 100.0 + rng.uniform(-0.5, 0.5)) for t in range(3600)]
    stored = _run(policy, trace)
    assert 4 <= len(stored) <= 6
