"""The Modbus poll schedule on a made-up clock: what goes next, when, how late, the backoff of
a silent device, the line's silence, reconnects. Exact times, no sleeping.

:class:`Line` plays a bus the way :class:`~drivers.modbus.bus.ModbusBus` drives it (wait until
due, keep the t3.5 silence, one read after another, a silent device costs one timeout), with
each read taking a fixed time on the wire. Times are multiples of powers of two where a test
compares them with ``==``, so float arithmetic is exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus import DeviceModel, ModbusBus, Point, RtuSettings, load_model, read_plan
from drivers.modbus.line_budget import poll_seconds, silence_seconds
from drivers.modbus.schedule import (
    EARLY_MAX,
    EARLY_SHARE,
    PROBE_MAX,
    Poll,
    PolledDevice,
    PollSchedule,
)

EFM = load_model("efm-ref")
#: Float slack for the property test, whose stagger offsets (1/3 s ...) are not binary-exact.
EPS = 1e-9
PLAIN = DeviceModel("test-plain", "t", "holding", (Point("a", 0, "u16"),))


def top(low: float, high: float) -> float:
    """Backoff jitter fixed at the top of each range: the delays are exactly 1, 2, 4 ..."""
    del low
    return high


@dataclass(frozen=True)
class Played:
    device: str
    lane: str
    due: float
    started: float
    ended: float
    answered: bool
    #: For a failed poll: whether it made the device offline (its one DeviceStatus).
    went_offline: bool = False


class Line:
    """A bus on a made-up clock. Every read takes ``read`` seconds; a device in ``silent`` makes
    its first read wait ``timeout`` and fail, as :class:`ModbusBus` does."""

    def __init__(
        self,
        schedule: PollSchedule,
        *,
        read: float = 1 / 16,
        timeout: float = 1 / 4,
        silent: Collection[str] = (),
    ) -> None:
        self.schedule = schedule
        self.read = read
        self.timeout = timeout
        self.silent = set(silent)
        self.now = 0.0
        self.played: list[Played] = []
        self.requests: list[float] = []
        schedule.connected(self.now)

    def run(self, until: float) -> list[Played]:
        schedule = self.schedule
        while True:
            poll = schedule.next_poll()
            if poll.due >= until:
                self.now = until
                return self.played
            if not schedule.starts_early(poll, self.now):
                self.now = max(self.now, poll.due)
            started = self.now
            self.played.append(self._poll(poll, started))

    def _poll(self, poll: Poll, started: float) -> Played:
        schedule = self.schedule
        device = poll.device.device_id
        for _ in poll.reads:
            self.now = max(self.now, schedule.send_at())
            self.requests.append(self.now)
            if device in self.silent:
                self.now += self.timeout
                schedule.io_ended(self.now)
                offline = schedule.failed(poll, started, self.now)
                return Played(device, poll.lane, poll.due, started, self.now, False, offline)
            self.now += self.read
            schedule.io_ended(self.now)
            schedule.line_answered()
        schedule.answered(poll, started, self.now)
        return Played(device, poll.lane, poll.due, started, self.now, True)


def polls(played: list[Played], device: str, lane: str = "normal") -> list[Played]:
    return [p for p in played if p.device == device and p.lane == lane]


def starts(played: list[Played], device: str, lane: str = "normal") -> list[float]:
    return [p.started for p in polls(played, device, lane)]


def test_first_polls_are_spread_over_the_interval_and_keep_their_phase() -> None:
    devices = [PolledDevice(f"m{a}", EFM, a, 1.0) for a in range(1, 5)]
    played = Line(PollSchedule(devices)).run(until=3.0)
    for index in range(4):
        assert starts(played, f"m{index + 1}") == [index / 4 + n for n in range(3)]
    assert all(p.started == p.due for p in played)  # never late: the slots do not overlap


def test_a_dead_device_costs_its_bus_one_timeout_per_probe_on_a_doubling_backoff() -> None:
    devices = [PolledDevice(f"m{a}", EFM, a, 1.0) for a in range(1, 9)]
    schedule = PollSchedule(devices, uniform=top)
    played = Line(schedule, silent={"m8"}).run(until=120.0)

    dead = polls(played, "m8")
    # Offline once, at its first poll; then probed 1, 2, 4 ... s after each failed probe, up
    # to PROBE_MAX, never every cycle.
    assert [p.went_offline for p in dead] == [True] + [False] * (len(dead) - 1)
    waits = [b.due - a.ended for a, b in itertools.pairwise(dead)]
    assert waits == [1, 2, 4, 8, 16, 30, 30]
    assert all(p.ended - p.started == 1 / 4 for p in dead)  # one timeout, one read: no more
    assert schedule.online["m8"] is False
    # Every live device keeps every one of its 120 slots; a probe delays a slot by at most
    # the timeout it costs, and never by a whole slot.
    for address in range(1, 8):
        live = polls(played, f"m{address}")
        assert len(live) == 120
        assert all(p.answered for p in live)
        assert max(p.started - p.due for p in live) <= 1 / 4
        assert [p.due for p in live] == [(address - 1) / 8 + n for n in range(120)]
    assert schedule.skipped_slots == 0


def test_ten_monitors_at_9600_baud_keep_their_second_with_one_dead_on_the_line() -> None:
    # The wire times of the line budget: one read of efm-ref's 14 registers, t3.5 apart.
    silence = silence_seconds(9600)
    devices = [PolledDevice(f"m{a}", EFM, a, 1.0) for a in range(1, 12)]
    schedule = PollSchedule(devices, frame_gap=silence, uniform=top)
    line = Line(schedule, read=poll_seconds(EFM, 9600) - silence, timeout=0.3, silent={"m11"})
    played = line.run(until=70.0)
    for address in range(1, 11):
        live = starts(played, f"m{address}")
        assert len(live) == 70, f"m{address}"
        gaps = [b - a for a, b in itertools.pairwise(live)]
        # Each live device keeps its 1 s within one timeout of the dead one, never more.
        assert max(gaps) <= 1.0 + 0.3 + EPS, f"m{address}: {max(gaps)}"
    assert schedule.skipped_slots == 0
    dead = polls(played, "m11")
    assert [b.due - a.ended for a, b in itertools.pairwise(dead)] == pytest.approx(
        [1, 2, 4, 8, 16, 30], abs=EPS
    )
    assert [p.went_offline for p in dead] == [True] + [False] * 6


def test_the_probe_backoff_starts_from_the_interval_and_stops_at_probe_max() -> None:
    schedule = PollSchedule([PolledDevice("slow", EFM, 1, 45.0)], uniform=top)
    played = Line(schedule, silent={"slow"}).run(until=400.0)
    waits = [b.due - a.ended for a, b in itertools.pairwise(polls(played, "slow"))]
    # An interval above PROBE_MAX: the device is probed no more often than it is polled.
    assert waits == [45.0] * len(waits)
    assert len(waits) == 8  # probes at 0, 45.25, 90.5 ... 361.75
    assert schedule.probe_max("slow") == 45.0
    assert PollSchedule([PolledDevice("m", EFM, 1, 1.0)]).probe_max("m") == PROBE_MAX


def test_a_device_back_from_silence_is_polled_on_its_interval_again() -> None:
    schedule = PollSchedule([PolledDevice("m", EFM, 1, 1.0)], uniform=top)
    line = Line(schedule, silent={"m"})
    line.run(until=2.0)  # fails at 0.25, probed at 1.25 (fails at 1.5), next at 3.5
    line.silent.clear()
    played = line.run(until=7.0)
    back = [p for p in played if p.answered]
    assert [p.started for p in back] == [3.5, 4.5, 5.5, 6.5]  # the phase restarts at the probe
    assert schedule.online == {"m": True}
    assert schedule.answered(schedule.next_poll(), 7.5) is True


def test_a_late_poll_keeps_its_phase_and_an_overrun_skips_the_slots_that_passed() -> None:
    schedule = PollSchedule([PolledDevice("m", EFM, 1, 1.0)])
    schedule.connected(0.0)
    first = schedule.next_poll()
    assert first.due == 0.0
    assert schedule.answered(first, 0.375) is None  # 0.375 late: under half an interval
    second = schedule.next_poll()
    assert second.due == 1.0  # phase kept
    schedule.answered(second, 1.75)  # 0.75 late: the phase restarts from the start
    third = schedule.next_poll()
    assert third.due == 2.75
    schedule.answered(third, 6.0)  # the bus was busy for three slots
    assert schedule.skipped_slots == 3
    assert schedule.next_poll().due == 7.0  # no burst of catch-up polls


def test_the_fast_lane_reads_critical_points_between_full_polls_and_wins_a_tie() -> None:
    devices = [
        PolledDevice("watched", EFM, 1, 1.0, fast_interval=0.25),
        PolledDevice("plain", EFM, 2, 1.0),
    ]
    schedule = PollSchedule(devices)
    fast = schedule.next_poll()
    assert fast.lane == "fast"
    assert fast.reads == tuple(read_plan(EFM, [p for p in EFM.points if p.critical]))
    played = Line(schedule, read=1 / 32).run(until=2.0)
    order = [(p.started, p.device, p.lane) for p in played[:4]]
    # At 0 the fast lane and the full poll of "watched" are both due: the fast lane first.
    assert order == [
        (0.0, "watched", "fast"),
        (1 / 32, "watched", "normal"),
        (0.25, "watched", "fast"),
        (0.5, "watched", "fast"),
    ]
    assert starts(played, "watched", "fast") == [n / 4 for n in range(8)]
    assert [p.due for p in polls(played, "watched")] == [0.0, 1.0]
    assert [p.due for p in polls(played, "plain")] == [0.5, 1.5]
    assert polls(played, "plain", "fast") == []


def test_the_fast_lane_pauses_while_its_device_is_offline() -> None:
    devices = [PolledDevice("watched", EFM, 1, 1.0, fast_interval=0.25)]
    played = Line(PollSchedule(devices, uniform=top), silent={"watched"}).run(until=10.0)
    # The first fast poll fails; after that only the normal lane probes, on its backoff.
    assert [(p.lane, p.due) for p in played] == [
        ("fast", 0.0),
        ("normal", 1.25),
        ("normal", 3.5),
        ("normal", 7.75),
    ]


def test_a_shorter_interval_applies_at_once_and_none_restores_the_configured_one() -> None:
    schedule = PollSchedule([PolledDevice("m", EFM, 1, 2.0)])
    line = Line(schedule)
    line.run(until=0.5)
    schedule.set_interval("m", 0.25, 0.5)
    assert schedule.intervals("m") == (0.25, None)
    assert schedule.next_poll().due == 0.5  # no waiting for the 2 s slot
    played = line.run(until=1.5)
    assert starts(played, "m") == [0.0, 0.5, 0.75, 1.0, 1.25]
    schedule.set_interval("m", None, 1.5)
    assert schedule.intervals("m") == (2.0, None)
    played = line.run(until=6.0)
    assert starts(played, "m")[5:] == [1.5, 3.5, 5.5]
    # A fast lane the site file did not configure, switched on at run time.
    schedule.set_interval("m", 0.5, 6.0, lane="fast")
    assert schedule.intervals("m") == (2.0, 0.5)
    played = line.run(until=7.0)
    assert starts(played, "m", "fast") == [6.0, 6.5]
    schedule.set_interval("m", None, 7.0, lane="fast")
    assert schedule.intervals("m") == (2.0, None)
    assert line.run(until=9.0)[-1].lane == "normal"


def test_a_longer_interval_waits_from_the_last_poll() -> None:
    schedule = PollSchedule([PolledDevice("m", EFM, 1, 1.0)])
    line = Line(schedule)
    line.run(until=0.5)
    schedule.set_interval("m", 4.0, 0.5)
    assert schedule.next_poll().due == 1.0  # never later than the next slot of the old plan
    played = line.run(until=10.0)
    assert starts(played, "m") == [0.0, 1.0, 5.0, 9.0]


def test_requests_keep_the_lines_silence() -> None:
    gap = 1 / 128
    devices = [PolledDevice(f"m{a}", EFM, a, 1 / 16) for a in range(1, 4)]
    line = Line(PollSchedule(devices, frame_gap=gap), read=1 / 32)
    played = line.run(until=1.0)
    # Saturated: every request waits exactly the silence after the previous exchange.
    ends = [p.ended for p in played]
    assert [b - a for a, b in itertools.pairwise(line.requests)] == [1 / 32 + gap] * (
        len(line.requests) - 1
    )
    assert ends[0] == 1 / 32
    schedule = PollSchedule(devices, frame_gap=gap)
    assert schedule.send_at() == -math.inf
    schedule.io_ended(2.0)
    assert schedule.send_at() == 2.0 + gap


def test_a_lost_link_makes_each_device_offline_once_and_reconnects_on_its_own_backoff() -> None:
    devices = [PolledDevice(f"m{a}", EFM, a, 1.0) for a in range(1, 4)]
    schedule = PollSchedule(devices, uniform=top)
    line = Line(schedule, silent={"m3"})
    line.run(until=1.0)
    went, delay = schedule.link_down()
    assert went == ["m1", "m2"]  # m3 was offline already: no second status
    assert delay == 0.5
    delays = [schedule.link_down()[1] for _ in range(6)]
    assert delays == [1, 2, 4, 8, 10, 10]
    assert schedule.link_down()[0] == []  # nothing goes offline twice
    # The link is back: every device is probed at once, whatever its backoff was.
    line.silent.clear()
    line.now = 40.0
    schedule.connected(40.0)
    played = line.run(until=40.5)[-3:]
    assert [(p.device, p.due, p.started) for p in played] == [
        ("m1", 0.0, 40.0),
        ("m2", 0.0, 40.0625),
        ("m3", 0.0, 40.125),
    ]
    assert schedule.online == dict.fromkeys(("m1", "m2", "m3"), True)
    # Answers reset the reconnect backoff: the next outage starts again from 0.5 s.
    assert schedule.link_down()[1] == 0.5


def test_nothing_to_poll_is_due_never() -> None:
    schedule = PollSchedule([PolledDevice("m", EFM, 1, 1.0)])
    assert schedule.next_poll().due == math.inf  # not connected yet
    schedule.connected(5.0)
    assert schedule.next_poll().due == 5.0


def test_polls_due_close_together_on_tcp_share_one_wake_up_and_keep_their_phase() -> None:
    # 16 monitors at 1 s: one falls due every 1/16 s, each poll takes 1/64 s. Once a device
    # has answered, the polls due within its lead (a tenth of its interval) go right after the
    # one that woke the bus: about 5 wake-ups a second instead of 16.
    devices = [PolledDevice(f"m{a}", EFM, a, 1.0) for a in range(1, 17)]
    played = Line(PollSchedule(devices), read=1 / 64).run(until=3.0)
    first = [p for p in played if p.due < 1.0]
    assert all(p.started == p.due for p in first)  # nothing is known of a device before it answers
    later = [p for p in played if p.due >= 1.0]
    assert len(later) == 32
    lead = min(EARLY_SHARE * 1.0, EARLY_MAX)
    assert all(0 <= p.due - p.started <= lead for p in later)
    assert any(p.started < p.due for p in later)
    # Each poll either is the one that woke the bus (on time) or follows the one before at
    # once: it shares that wake-up.
    for before, poll in itertools.pairwise(played[len(first) - 1 :]):
        assert poll.started in (poll.due, before.ended), poll
    assert len([p for p in later if p.started == p.due]) == 10
    for device in devices:  # the phase stays: due every second at its first slot
        assert [p.due for p in polls(played, device.device_id)] == [
            (int(device.device_id[1:]) - 1) / 16 + n for n in range(3)
        ]


def test_a_poll_starts_early_only_when_it_ends_before_any_other_is_due() -> None:
    devices = [PolledDevice("m1", EFM, 1, 1.0), PolledDevice("m2", EFM, 2, 1.0)]
    schedule = PollSchedule(devices)
    schedule.connected(0.0)
    first = schedule.next_poll()
    assert not schedule.starts_early(first, -0.05)  # never answered: its duration is unknown
    schedule.answered(first, 0.0, 1 / 16)
    second = schedule.next_poll()
    assert (second.device.device_id, second.due) == ("m2", 0.5)
    assert not schedule.starts_early(second, 0.375)  # 1/8 s before it is due: beyond its lead
    schedule.answered(second, 0.5, 0.5 + 1 / 16)
    third = schedule.next_poll()
    assert (third.device.device_id, third.due) == ("m1", 1.0)
    assert schedule.starts_early(third, 0.9)  # ends long before m2's 1.5
    # m2 now falls due at 1.0 too: m1 started at 0.95 would end after it and make it late.
    schedule.set_interval("m2", 0.5, 0.75)
    again = schedule.next_poll()
    assert again == third
    assert not schedule.starts_early(again, 0.95)
    assert schedule.starts_early(again, 0.9375)  # ends as m2 falls due: not late


def test_rtu_lines_and_probes_never_start_early() -> None:
    devices = [PolledDevice(f"m{a}", EFM, a, 1.0) for a in range(1, 17)]
    rtu = PollSchedule(devices, frame_gap=1 / 256)
    played = Line(rtu, read=1 / 64).run(until=3.0)
    assert all(p.started >= p.due for p in played)  # the t3.5 wait is a wake-up anyway
    schedule = PollSchedule([PolledDevice("m", EFM, 1, 1.0)], uniform=top)
    line = Line(schedule, read=1 / 64)
    line.run(until=1.5)  # answered once: its duration is known
    line.silent.add("m")
    line.run(until=2.5)  # fails at 1.0: offline, its probe is due at 2.25
    probe = schedule.next_poll()
    assert probe.probe
    assert not schedule.starts_early(probe, probe.due - 1 / 64)
    assert all(p.started == p.due for p in line.run(until=20.0)[2:])


def test_set_interval_refuses_bad_input() -> None:
    bus = ModbusBus(
        "rs485",
        RtuSettings("/dev/null"),
        [PolledDevice("m", EFM, 1, 1.0), PolledDevice("p", PLAIN, 2, 1.0)],
        lambda _: None,
    )
    with pytest.raises(ValueError, match="bus rs485: no device 'x'"):
        bus.set_interval("x", 1.0)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1s", [1]):
        with pytest.raises(ValueError, match="interval"):
            bus.set_interval("m", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no fast lane"):
        bus.set_interval("p", 0.1, lane="fast")
    with pytest.raises(ValueError, match="lane must be"):
        bus.set_interval("m", 0.1, lane="slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="marks none"):
        PolledDevice("p", PLAIN, 2, 1.0, fast_interval=0.1)
    assert bus.intervals("m") == (1.0, None)  # nothing changed
    with pytest.raises(ValueError, match="used twice"):
        PollSchedule([PolledDevice("m", EFM, 1, 1.0), PolledDevice("m", EFM, 2, 1.0)])
    with pytest.raises(ValueError, match="frame_gap"):
        PollSchedule([], frame_gap=float("nan"))
    with pytest.raises(LookupError, match="nothing to poll"):
        PollSchedule([]).next_poll()


@settings(max_examples=60, deadline=None)
@given(
    intervals=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0]), min_size=1, max_size=10),
    silent=st.sets(st.integers(0, 9), max_size=3),
    read=st.sampled_from([1 / 256, 1 / 64, 1 / 16, 1 / 4]),
    timeout=st.sampled_from([1 / 8, 1 / 4, 1.0]),
    gap=st.sampled_from([0.0, 1 / 512]),
)
def test_promises_hold_for_any_bus(
    intervals: list[float], silent: set[int], read: float, timeout: float, gap: float
) -> None:
    devices = [PolledDevice(f"m{i}", EFM, i + 1, s) for i, s in enumerate(intervals)]
    dead = {f"m{i}" for i in silent if i < len(devices)}
    schedule = PollSchedule(devices, frame_gap=gap, uniform=top)
    line = Line(schedule, read=read, timeout=timeout, silent=dead)
    played = line.run(until=60.0)
    # Stagger offsets such as 1/3 of an interval are not exact in binary: compare within EPS.
    lead = {d.device_id: min(d.poll_interval * EARLY_SHARE, EARLY_MAX) for d in devices}
    early = [p for p in played if p.started < p.due - EPS]
    assert all(p.due - p.started <= lead[p.device] + EPS for p in early), "a poll went too early"
    assert not (early and gap), "a poll went early on a line with a silence"
    assert not any(p.device in dead for p in early), "a probe went early"
    for index, p in enumerate(played):
        if p.started < p.due - EPS:
            # An early poll ends before any poll after it is due: it makes none late.
            assert all(q.due >= p.ended - EPS for q in played[index + 1 :]), "made a poll late"
    assert all(b - a >= gap - EPS for a, b in itertools.pairwise(line.requests)), "t3.5 broken"
    for device in devices:
        mine = polls(played, device.device_id)
        if device.device_id in dead:
            # Offline once; each probe costs one silence and one timeout, and waits at least an
            # interval after the last.
            assert sum(p.went_offline for p in mine) == 1
            assert all(p.ended - p.started <= gap + timeout + EPS for p in mine)
            assert all(
                b.started - a.ended >= device.poll_interval - EPS
                for a, b in itertools.pairwise(mine)
            )
        else:
            assert all(p.answered for p in mine)
            # Never two polls of a device less than half an interval apart.
            gaps = [b.started - a.started for a, b in itertools.pairwise(mine)]
            assert all(g >= device.poll_interval / 2 - EPS for g in gaps)
