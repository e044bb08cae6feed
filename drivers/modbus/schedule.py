"""What a Modbus bus reads next, and when: the poll scheduler's decisions, without I/O or clock.

:class:`PollSchedule` never reads a clock, like the rules engine: the bus's I/O loop
(:class:`~drivers.modbus.bus.ModbusBus`) passes the time (monotonic seconds) to every call and
does what the schedule says. That is why its promises are tested on a made-up clock, with exact
times, in milliseconds (tests/unit/test_bus_schedule.py). It decides:

- **what goes next**: one job per device and lane (``normal``: the whole read plan; ``fast``:
  the alarm-critical points only). The job due soonest goes; on a tie the fast lane, so
  alarm-critical reads never queue behind bulk reads.
- **when**: first polls are spread over each lane's interval, in device order, so devices that
  share an interval do not all fall due at once. A poll that started less than half an interval
  late keeps its job's phase; a later one restarts the phase from its start, and the slots that
  passed are skipped and counted (:attr:`PollSchedule.skipped_slots`), never queued as a burst.
- **how late**: :attr:`Poll.due` is when the poll was due; the I/O loop reports its start.
- **a silent device**: offline at its first failed poll, re-probed on a jittered backoff from its
  poll interval up to :data:`PROBE_MAX`; its fast lane pauses meanwhile (the probe is the
  normal poll), so a dead device costs its bus at most one timeout per probe, not per cycle.
- **the line**: on RTU no request goes before the t3.5 silence after the last I/O
  (:meth:`PollSchedule.send_at`); a lost connection makes every device offline once, and the
  next attempt waits for a backoff of its own that the first answer resets.
- **one wake-up for polls due close together**: on a bus without a line silence (Modbus TCP),
  a poll may start a little before it is due when the bus is free and it would end before any
  other poll falls due (:meth:`PollSchedule.starts_early`). Waking the gateway costs a small
  board more CPU than a poll does; phases do not move and no poll is made late by it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from drivers.backoff import Backoff
from drivers.modbus.model import DeviceModel, read_plan
from drivers.tilt import TILT_AXES, check_gauge_length

__all__ = [
    "EARLY_MAX",
    "EARLY_SHARE",
    "PROBE_MAX",
    "RECONNECT_INITIAL",
    "RECONNECT_MAX",
    "Lane",
    "Poll",
    "PollSchedule",
    "PolledDevice",
    "check_interval",
]

#: A device that stopped answering is re-probed with exponential backoff, from its poll
#: interval up to this many seconds.
PROBE_MAX: Final = 30.0
#: Reconnect backoff bounds, in seconds.
RECONNECT_INITIAL: Final = 0.5
RECONNECT_MAX: Final = 10.0
#: On a bus without a line silence, a poll may start up to this share of its interval before
#: it is due, and never more than EARLY_MAX seconds (:meth:`PollSchedule.starts_early`).
EARLY_SHARE: Final = 0.1
EARLY_MAX: Final = 0.1

Lane: TypeAlias = Literal["normal", "fast"]
#: (low, high) -> a number in [low, high]: the backoffs' jitter (``random.uniform``).
Uniform: TypeAlias = Callable[[float, float], float]


def check_interval(what: str, seconds: object) -> float:
    """``seconds`` as a float if it is a positive, finite number; ValueError naming ``what``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{what} must be a number of seconds, not {seconds!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be positive and finite, not {seconds!r}")
    return float(seconds)


@dataclass(frozen=True, slots=True)
class PolledDevice:
    """One device on a bus: what it is, where it answers and how often to ask.

    ``fast_interval`` puts the model's alarm-critical points (``critical: true``) on the bus's
    fast lane: they are read on their own, that often, between the device's full polls.
    """

    device_id: str
    model: DeviceModel
    #: Modbus unit (slave) address.
    address: int
    #: Seconds between full polls.
    poll_interval: float
    #: Seconds between fast-lane polls of the critical points; None: no fast lane.
    fast_interval: float | None = None
    #: For tilt sensors: metres over which roll and pitch turn into a displacement in mm
    #: (``roll_displacement``, ``pitch_displacement`` readings); None: angles only.
    gauge_length: float | None = None

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise ValueError(f"device {self.device_id}: address must be an integer")
        check_interval(f"device {self.device_id}: poll_interval", self.poll_interval)
        if self.fast_interval is not None:
            check_interval(f"device {self.device_id}: fast_interval", self.fast_interval)
            if not any(point.critical for point in self.model.points):
                raise ValueError(
                    f"device {self.device_id}: fast_interval needs alarm-critical points, "
                    f"and model {self.model.name} marks none"
                )
        if self.gauge_length is not None:
            check_gauge_length(self.gauge_length)
            if not any(self.model.has_point(axis) for axis in TILT_AXES):
                raise ValueError(
                    f"device {self.device_id}: gauge_length needs a tilt model with roll or "
                    f"pitch points, and {self.model.name} has neither"
                )


@dataclass(slots=True)
class _Device:
    device: PolledDevice
    backoff: Backoff
    #: None until the first answer or failure.
    online: bool | None = None
    #: While offline: when the next probe may go.
    retry_at: float = 0.0


@dataclass(slots=True)
class _Job:
    """One lane of one device: what to read and when."""

    state: _Device
    lane: Lane
    reads: tuple[tuple[int, int], ...]
    interval: float | None
    configured: float | None
    next_due: float = math.inf
    #: When its last answered poll started and how long it took (inf: none answered yet).
    last_start: float = -math.inf
    took: float = math.inf

    def due(self) -> float:
        """When this job wants the bus; offline devices wait for their re-probe, fast lanes
        pause while their device is offline (its probe is the normal poll)."""
        if self.interval is None:
            return math.inf
        if self.state.online is False:
            return self.state.retry_at if self.lane == "normal" else math.inf
        return self.next_due


@dataclass(frozen=True, slots=True)
class Poll:
    """One poll the schedule asks for: read ``reads`` (start, count) of ``device``."""

    device: PolledDevice
    lane: Lane
    #: When it was due (monotonic seconds); ``math.inf``: nothing is due until a change.
    due: float
    reads: tuple[tuple[int, int], ...]
    #: The device is offline: this poll is a re-probe on its backoff.
    probe: bool
    job: _Job = field(repr=False, compare=False)
    #: When the soonest of the other jobs was due at the time of this decision.
    others_due: float = field(default=math.inf, repr=False, compare=False)


class PollSchedule:
    """The decisions of one bus's scheduler (see the module docstring); every time is the
    caller's monotonic seconds.

    ``frame_gap`` is the silence the line needs between the end of one exchange and the next
    request (t3.5 on RTU, 0 on TCP). ``uniform`` draws the backoffs' jitter (tests pass a fixed
    one to assert exact probe and reconnect times).
    """

    def __init__(
        self,
        devices: Sequence[PolledDevice],
        *,
        frame_gap: float = 0.0,
        uniform: Uniform = random.uniform,
    ) -> None:
        if not (math.isfinite(frame_gap) and frame_gap >= 0):
            raise ValueError(f"frame_gap must be a finite number of seconds >= 0, not {frame_gap}")
        self.frame_gap = frame_gap
        self._uniform = uniform
        #: Poll slots skipped because the bus was still busy when they came.
        self.skipped_slots = 0
        self._devices: list[_Device] = []
        self._jobs: list[_Job] = []
        self._by_id: dict[str, tuple[_Job, _Job | None]] = {}
        for device in devices:
            if device.device_id in self._by_id:
                raise ValueError(f"device id {device.device_id} is used twice")
            critical = [point for point in device.model.points if point.critical]
            state = _Device(device, self._probe_backoff(device.poll_interval))
            self._devices.append(state)
            plan = tuple(read_plan(device.model))
            interval = device.poll_interval
            normal = _Job(state, "normal", plan, interval, interval)
            fast = None
            if critical:
                fast_plan = tuple(read_plan(device.model, critical))
                fast_interval = device.fast_interval
                fast = _Job(state, "fast", fast_plan, fast_interval, fast_interval)
                self._jobs.append(fast)
            self._jobs.append(normal)
            self._by_id[device.device_id] = (normal, fast)
        self._reconnect = Backoff(RECONNECT_INITIAL, RECONNECT_MAX, uniform=uniform)
        self._line_quiet_since = -math.inf

    def _probe_backoff(self, interval: float) -> Backoff:
        return Backoff(interval, max(interval, PROBE_MAX), uniform=self._uniform)

    # --- what the bus asks ----------------------------------------------------------------------

    @property
    def devices(self) -> list[PolledDevice]:
        return [state.device for state in self._devices]

    @property
    def online(self) -> dict[str, bool | None]:
        """device id -> online (None until the device first answered or failed)."""
        return {state.device.device_id: state.online for state in self._devices}

    def intervals(self, device_id: str) -> tuple[float, float | None]:
        """The device's current (poll interval, fast interval)."""
        normal, fast = self._jobs_of(device_id)
        if normal.interval is None:  # set_interval restores the configured one, never None
            raise ValueError(f"device {device_id!r} has no poll interval")
        return normal.interval, fast.interval if fast is not None else None

    def probe_max(self, device_id: str) -> float:
        """The longest a device that stopped answering waits between probes."""
        return self._jobs_of(device_id)[0].state.backoff.maximum

    def next_poll(self) -> Poll:
        """The poll due soonest; on a tie the fast lane goes first. Its ``due`` may be in the
        future (wait for it, or for a change) or ``math.inf`` (nothing to poll).

        A linear scan: a bus has tens of jobs, and the scan costs less than keeping a heap in
        step with backoffs and run-time interval changes.
        """
        if not self._jobs:
            raise LookupError("a schedule without devices has nothing to poll")
        best = self._jobs[0]
        best_due = others_due = math.inf
        for job in self._jobs:
            if job.interval is None:
                continue
            due = job.due()
            if due < best_due or (due == best_due and job.lane == "fast"):
                others_due = best_due
                best, best_due = job, due
            elif due < others_due:
                others_due = due
        state = best.state
        probe = state.online is False
        return Poll(state.device, best.lane, best_due, best.reads, probe, best, others_due)

    def is_current(self, poll: Poll) -> bool:
        """Whether ``poll`` is still due when it said (no interval change or link loss since)."""
        return poll.job.due() == poll.due

    def starts_early(self, poll: Poll, now: float) -> bool:
        """Whether ``poll``, not yet due at ``now``, may start now rather than wait for its due
        time: polls that fall due close together then share one wake-up of the I/O loop.

        Only on a bus without a line silence (a request on RTU waits for t3.5 anyway), only for
        a device that answers (not a probe), at most its lead before it is due (a tenth of its
        interval, at most :data:`EARLY_MAX`), at least half an interval after its last poll
        started, and only when it would end before any other poll falls due (its last poll's
        duration tells), so it never makes another poll late. Its phase stays: the next poll is
        due one interval after this one was. ``poll`` must be fresh from :meth:`next_poll`.
        """
        job = poll.job
        interval = job.interval
        if self.frame_gap > 0 or poll.probe or interval is None:
            return False
        if poll.due - now > min(interval * EARLY_SHARE, EARLY_MAX):
            return False
        if now - job.last_start < interval / 2:
            return False  # after a late poll: two polls stay half an interval apart
        return now + job.took <= poll.others_due

    def send_at(self) -> float:
        """The earliest time the next request may go: the line's silence after its last I/O."""
        return self._line_quiet_since + self.frame_gap

    # --- what the bus tells -----------------------------------------------------------------

    def connected(self, now: float) -> None:
        """A connection is up: spread first polls over each lane's interval, in device order."""
        for lane in ("fast", "normal"):
            jobs = [job for job in self._jobs if job.lane == lane]
            for index, job in enumerate(jobs):
                if job.interval is None:
                    job.next_due = math.inf
                else:
                    job.next_due = now + job.interval * index / len(jobs)

    def io_ended(self, now: float) -> None:
        """A request's exchange ended (answer, timeout or error) at ``now``."""
        self._line_quiet_since = now

    def line_answered(self) -> None:
        """The line carries answers: a later outage starts from the shortest reconnect delay."""
        self._reconnect.reset()

    def answered(self, poll: Poll, started: float, ended: float | None = None) -> bool | None:
        """Every read of ``poll`` (started at ``started``, the last answer at ``ended`` when
        given) was answered. Returns whether the device was online before: None for its first
        answer, False when it is back."""
        state = poll.job.state
        before = state.online
        state.online = True
        state.backoff.reset()
        if ended is not None:
            poll.job.last_start = started
            poll.job.took = max(0.0, ended - started)
        self._schedule_next(poll, started)
        return before

    def failed(self, poll: Poll, started: float, now: float) -> bool:
        """A read of ``poll`` got no usable answer at ``now``; the device is re-probed on its
        backoff. Returns True when this made the device offline (it was not already)."""
        state = poll.job.state
        state.retry_at = now + state.backoff.next_delay()
        went_offline = state.online is not False
        state.online = False
        self._schedule_next(poll, started)
        return went_offline

    def link_down(self) -> tuple[list[str], float]:
        """The connection is gone: (ids of the devices this made offline, seconds until the
        next connection attempt). Once the link is back every device is probed at once: the
        link was the problem, not them."""
        went_offline = []
        for state in self._devices:
            if state.online is not False:
                state.online = False
                went_offline.append(state.device.device_id)
            state.retry_at = 0.0
            state.backoff.reset()
        return went_offline, self._reconnect.next_delay()

    def set_interval(
        self, device_id: str, seconds: float | None, now: float, *, lane: Lane = "normal"
    ) -> None:
        """Change how often a device is polled, from ``now`` on; None restores the configured
        interval. A shorter interval takes effect at once: the next poll comes no later than
        one new interval after the last one. ``lane="fast"`` sets (or restores) the fast lane
        of the device's alarm-critical points. ValueError for an unknown device, a bad interval
        or a fast lane on a model without critical points."""
        if lane not in ("normal", "fast"):
            raise ValueError(f"lane must be 'normal' or 'fast', not {lane!r}")
        normal, fast = self._jobs_of(device_id)
        job = normal if lane == "normal" else fast
        if job is None:
            raise ValueError(f"device {device_id} has no alarm-critical points, so no fast lane")
        if seconds is None:
            interval = job.configured
        else:
            interval = check_interval(f"device {device_id}: {lane} interval", seconds)
        if interval is None:
            job.interval = None
            job.next_due = math.inf
        else:
            previous = job.interval
            job.interval = interval
            if previous is None or job.next_due == math.inf:
                job.next_due = now
            else:
                # The last poll started at next_due - previous (or later); do not wait longer
                # than the new interval from it.
                job.next_due = min(job.next_due, max(now, job.next_due - previous + interval))
        if lane == "normal" and interval is not None:
            job.state.backoff = self._probe_backoff(interval)

    # --------------------------------------------------------------------------------------

    def _jobs_of(self, device_id: str) -> tuple[_Job, _Job | None]:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise ValueError(f"no device {device_id!r}") from None

    def _schedule_next(self, poll: Poll, started: float) -> None:
        """Set the job's next due time after a poll that started at ``started``.

        A device that failed waits for its backoff. A poll that started on time (less than half
        an interval late) keeps the job's phase. A later one restarts the phase from its start:
        the slots that passed while the bus was busy are skipped and counted, not queued, so an
        overrun never turns into a burst of catch-up polls, and two polls of a device are never
        less than half an interval apart.
        """
        job = poll.job
        interval = job.interval
        if interval is None:
            job.next_due = math.inf
            return
        if job.state.online is False:
            # Back online later restarts the phase from the successful probe.
            job.next_due = job.state.retry_at
            return
        if job.next_due == math.inf or poll.due != job.next_due:
            # This poll was a probe (or the interval changed): restart the phase from it.
            job.next_due = started + interval
            return
        late = started - job.next_due
        if late < interval / 2:
            job.next_due += interval
            return
        self.skipped_slots += math.floor(late / interval)
        job.next_due = started + interval
