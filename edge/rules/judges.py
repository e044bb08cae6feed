"""One judge per rule and device: the state of that rule for that device, and its verdicts.

Judges are pure code: they see readings (and, for time-based rules, the time) and return a
:class:`Transition` only when their alarm changes state. They do no I/O; their state is plain
data that :meth:`Judge.dump` and :meth:`Judge.load` turn into JSON and back, so a restart in
the middle of a two-month window resumes it.

Common to every judge on a point:

* readings are taken in time order: a reading not newer than the last one the judge took is
  ignored, so readings replayed after a restart are never counted twice;
* a reading of quality ``bad`` is ignored by every judge except ``sensor-fault`` (for which it
  is a missing reading): it neither raises, nor clears, nor counts towards a debounce (the
  engine makes a NaN or infinite value such a reading);
* time alone only raises: a :meth:`Judge.tick` can raise a missing reading, a stuck sensor or
  a silent device, never clear one, and :meth:`Judge.due` says when the next tick can change
  anything (``edge replay`` jumps over the seconds before it).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from drivers import Reading
from edge.config.terms import Severity
from edge.rules.calendar import BucketUnit, bucket_of, days_in_month, month_of
from edge.rules.types import Transition, TransitionKind

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from edge.config.model import (
        AbnormalRule,
        AlarmBitsRule,
        DeviceOfflineRule,
        OverLimitRule,
        SensorFaultRule,
        SuddenChangeRule,
        SustainedRule,
        UnderLimitRule,
    )

__all__ = [
    "AbnormalJudge",
    "AlarmBitsJudge",
    "DeviceOfflineJudge",
    "Judge",
    "LimitJudge",
    "OverLimitJudge",
    "SensorFaultJudge",
    "SuddenChangeJudge",
    "SustainedJudge",
    "UnderLimitJudge",
    "quantile",
]

#: Interquartile range of a normal distribution in standard deviations: IQR / 1.349 estimates
#: sigma without being dragged by outliers.
IQR_TO_SIGMA = 1.349


class Judge:
    """Base of the judges: identity, the active flag and the time of the last reading."""

    __slots__ = ("active", "device", "last_ts", "point", "rule_id", "severity")
    rule_kind: ClassVar[str] = ""
    #: Judges whose verdict can change with time alone get :meth:`tick` calls.
    ticks: ClassVar[bool] = False
    #: Judges of values see good readings only; those of the sensor itself (a fault, silence)
    #: see every reading.
    any_quality: ClassVar[bool] = False

    def __init__(self, rule_id: str, device: str, point: str, severity: Severity) -> None:
        self.rule_id = rule_id
        self.device = device
        self.point = point
        self.severity: Severity = severity
        self.active = False
        self.last_ts = -math.inf

    def not_its_kind(self, rule: object) -> TypeError:
        """The error for a rule of another kind handed to this judge (a wiring mistake)."""
        return TypeError(
            f"rule {self.rule_id!r}: a {self.rule_kind} judge cannot take a {type(rule).__name__}"
        )

    def feed(self, reading: Reading) -> Transition | None:
        """Judge ``reading``, which is newer than :attr:`last_ts` and good unless
        :attr:`any_quality`: :meth:`RuleEngine.evaluate <edge.rules.engine.RuleEngine.evaluate>`
        holds that guard for every judge, and moves :attr:`last_ts` before calling this."""
        raise NotImplementedError

    def tick(self, now: float) -> list[Transition]:
        return []

    def due(self) -> float:
        """The earliest time at which :meth:`tick` can change this judge (a verdict or its
        state); ticking it before then does nothing. ``-inf``: the next tick must run (the judge
        has not seen the time yet). ``edge replay`` jumps over silences with it."""
        return math.inf

    def retune(self, rule: Any) -> None:
        """Take the thresholds of ``rule`` (the same rule, changed at run time); the judge's
        windows and counts stay. Kinds without thresholds ignore it."""

    # One positional argument per field of the transition reads best at the many call sites.
    def make(  # noqa: PLR0917
        self,
        kind: TransitionKind,
        ts: float,
        value: float | None,
        threshold: float | None,
        reading: Reading | None,
        reason: str,
    ) -> Transition:
        return Transition(
            rule_id=self.rule_id,
            kind=kind,
            severity=self.severity,
            device_id=self.device,
            point=self.point,
            ts=ts,
            value=value,
            threshold=threshold,
            reading=reading,
            rule_kind=self.rule_kind,
            reason=reason,
            scope=self.device,
        )

    # -- persistence ------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "severity": self.severity,
            "last_ts": None if self.last_ts == -math.inf else self.last_ts,
        }

    def load(self, data: dict[str, Any]) -> None:
        self.active = bool(data["active"])
        self.severity = data["severity"]
        self.last_ts = -math.inf if data["last_ts"] is None else float(data["last_ts"])


def _fmt(value: float) -> str:
    return f"{value:g}"


class LimitJudge(Judge):
    """``over-limit`` and ``under-limit``: a threshold with hysteresis, a debounce by count or
    duration, and an optional escalation to a worse severity."""

    __slots__ = (
        "base_severity",
        "clear",
        "count",
        "debounce_count",
        "debounce_time",
        "escalate_at",
        "escalate_severity",
        "escalated",
        "raise_at",
        "since",
        "strict",
        "upward",
    )

    def __init__(self, rule: OverLimitRule | UnderLimitRule, device: str) -> None:
        super().__init__(rule.id, device, rule.point, rule.severity)
        self.upward = rule.kind == "over-limit"
        #: ``more-than`` / ``less-than``: the limit itself is on the quiet side, for raising
        #: and escalating, and on the alarm's side no longer for clearing.
        self.strict = rule.compare in ("more-than", "less-than")
        self.raise_at = rule.raise_at
        self.clear = rule.clear_below if rule.kind == "over-limit" else rule.clear_above
        self.debounce_count = 1
        self.debounce_time: float | None = None
        if rule.debounce is not None:
            if rule.debounce.readings is not None:
                self.debounce_count = rule.debounce.readings
            self.debounce_time = rule.debounce.duration
        self.base_severity: Severity = rule.severity
        self.escalate_at = None if rule.escalate is None else rule.escalate.at
        self.escalate_severity: Severity = (
            rule.severity if rule.escalate is None else rule.escalate.severity
        )
        self.count = 0
        self.since: float | None = None
        self.escalated = False

    def _beyond(self, value: float, limit: float) -> bool:
        if self.upward:
            return value > limit if self.strict else value >= limit
        return value < limit if self.strict else value <= limit

    def _back(self, value: float) -> bool:
        if self.upward:
            return value <= self.clear if self.strict else value < self.clear
        return value >= self.clear if self.strict else value > self.clear

    def _reached(self) -> str:
        if not self.strict:
            return "reached"
        return "over" if self.upward else "under"

    def retune(self, rule: Any) -> None:
        if rule.kind not in ("over-limit", "under-limit"):
            raise self.not_its_kind(rule)
        self.raise_at = rule.raise_at
        self.clear = rule.clear_below if rule.kind == "over-limit" else rule.clear_above
        self.escalate_at = None if rule.escalate is None else rule.escalate.at

    def feed(self, reading: Reading) -> Transition | None:
        ts = reading.ts
        value = reading.value
        if self.active:
            if self._back(value):
                self.active = False
                self.escalated = False
                self.count = 0
                self.since = None
                word = "below" if self.upward else "above"
                if self.strict:
                    word = f"at or {word}"
                return self.make(
                    "cleared",
                    ts,
                    value,
                    self.clear,
                    reading,
                    f"{_fmt(value)} {word} {self.clear:g}",
                )
            if (
                self.escalate_at is not None
                and not self.escalated
                and self._beyond(value, self.escalate_at)
            ):
                self.escalated = True
                self.severity = self.escalate_severity
                return self.make(
                    "escalated",
                    ts,
                    value,
                    self.escalate_at,
                    reading,
                    f"{_fmt(value)} {self._reached()} {self.escalate_at:g}",
                )
            return None
        if not self._beyond(value, self.raise_at):
            self.count = 0
            self.since = None
            return None
        self.count += 1
        if self.since is None:
            self.since = ts
        if self.count < self.debounce_count:
            return None
        if self.debounce_time is not None and ts - self.since < self.debounce_time:
            return None
        self.active = True
        threshold = self.raise_at
        if self.escalate_at is not None and self._beyond(value, self.escalate_at):
            self.escalated = True
            self.severity = self.escalate_severity
            threshold = self.escalate_at
        else:
            self.severity = self.base_severity
        return self.make(
            "raised",
            ts,
            value,
            threshold,
            reading,
            f"{_fmt(value)} {self._reached()} {threshold:g}",
        )

    def dump(self) -> dict[str, Any]:
        return {
            **super().dump(),
            "count": self.count,
            "since": self.since,
            "escalated": self.escalated,
        }

    def load(self, data: dict[str, Any]) -> None:
        super().load(data)
        self.count = int(data["count"])
        self.since = data["since"]
        self.escalated = bool(data["escalated"])


class OverLimitJudge(LimitJudge):
    __slots__ = ()
    rule_kind = "over-limit"


class UnderLimitJudge(LimitJudge):
    __slots__ = ()
    rule_kind = "under-limit"


class SuddenChangeJudge(Judge):
    """``sudden-change``: the reading differs from the lowest (a rise) or highest (a fall)
    reading of the last ``window`` by at least ``change`` or ``change_percent``."""

    __slots__ = (
        "change",
        "direction",
        "highs",
        "lows",
        "percent",
        "strict",
        "window",
        "window_s",
    )
    rule_kind = "sudden-change"

    def __init__(self, rule: SuddenChangeRule, device: str) -> None:
        super().__init__(rule.id, device, rule.point, rule.severity)
        self.change = rule.change
        self.percent = rule.change_percent
        self.window_s = rule.window
        self.direction = rule.direction
        self.strict = rule.compare == "more-than"
        # Monotonic queues of (ts, value): the window's minimum and maximum in O(1).
        self.lows: deque[tuple[float, float]] = deque()
        self.highs: deque[tuple[float, float]] = deque()

    def retune(self, rule: Any) -> None:
        if rule.kind != "sudden-change":
            raise self.not_its_kind(rule)
        self.change = rule.change
        self.percent = rule.change_percent

    def _size(self, delta: float, reference: float) -> float | None:
        """How big a change of ``delta`` from ``reference`` is, in the rule's terms."""
        if self.change is not None:
            return delta
        if reference == 0:
            return None
        return delta / abs(reference) * 100.0

    def feed(self, reading: Reading) -> Transition | None:
        ts = reading.ts
        value = reading.value
        oldest = ts - self.window_s
        lows, highs = self.lows, self.highs
        while lows and lows[0][0] < oldest:
            lows.popleft()
        while highs and highs[0][0] < oldest:
            highs.popleft()
        limit = self.change if self.change is not None else self.percent
        if limit is None:
            raise ValueError(f"rule {self.rule_id!r}: needs change or change_percent")
        found: str | None = None
        if lows and self.direction != "fall":
            low = lows[0][1]
            size = self._size(value - low, low)
            if size is not None and (size > limit if self.strict else size >= limit):
                found = f"rose from {_fmt(low)} to {_fmt(value)}"
        if found is None and highs and self.direction != "rise":
            high = highs[0][1]
            size = self._size(high - value, high)
            if size is not None and (size > limit if self.strict else size >= limit):
                found = f"fell from {_fmt(high)} to {_fmt(value)}"
        while lows and lows[-1][1] >= value:
            lows.pop()
        lows.append((ts, value))
        while highs and highs[-1][1] <= value:
            highs.pop()
        highs.append((ts, value))
        if found is not None and not self.active:
            self.active = True
            return self.make("raised", ts, value, limit, reading, f"{found} within the window")
        if found is None and self.active:
            self.active = False
            return self.make("cleared", ts, value, limit, reading, "no sudden change in the window")
        return None

    def dump(self) -> dict[str, Any]:
        return {**super().dump(), "lows": list(self.lows), "highs": list(self.highs)}

    def load(self, data: dict[str, Any]) -> None:
        super().load(data)
        self.lows = deque((float(t), float(v)) for t, v in data["lows"])
        self.highs = deque((float(t), float(v)) for t, v in data["highs"])


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, interpolating linearly between ranks."""
    position = q * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


#: Hours in a day: a daily baseline has one slot per local hour.
HOURS = 24


class _Baseline:
    """The readings of one baseline (or one hour of the day of a daily one): in time order,
    and sorted by value for the quantiles."""

    __slots__ = ("history", "kept", "ordered", "stats")

    def __init__(self) -> None:
        self.history: deque[tuple[float, float]] = deque()
        self.ordered: list[float] = []
        #: Time of the latest reading that joined.
        self.kept = -math.inf
        #: (median, sigma) while the readings have not changed: most readings do not join.
        self.stats: tuple[float, float] | None = None

    def forget_before(self, oldest: float, cap: int) -> None:
        history, ordered = self.history, self.ordered
        while history and (history[0][0] < oldest or len(history) > cap):
            _, gone = history.popleft()
            del ordered[bisect.bisect_left(ordered, gone)]
            self.stats = None

    def add(self, ts: float, value: float) -> None:
        self.history.append((ts, value))
        bisect.insort(self.ordered, value)
        self.kept = ts
        self.stats = None

    def centre_and_spread(self) -> tuple[float, float]:
        """The median and sigma (interquartile range / 1.349)."""
        if self.stats is None:
            ordered = self.ordered
            spread = (quantile(ordered, 0.75) - quantile(ordered, 0.25)) / IQR_TO_SIGMA
            self.stats = (quantile(ordered, 0.5), spread)
        return self.stats


class AbnormalJudge(Judge):
    """``abnormal``: distance from the baseline's median, in robust standard deviations.

    The baseline spans the whole ``baseline`` period whatever the poll rate: a reading joins
    it only ``baseline / max_samples`` after the previous one that joined, so ``max_samples``
    readings are spread over the period instead of being its last few minutes. With
    ``seasonal: daily`` there is one baseline per local hour of the day (each with a 24th of
    the samples), and a reading is judged against the baseline of its own hour.
    """

    __slots__ = (
        "baseline_s",
        "cap",
        "clear_ratio",
        "daily",
        "first_ts",
        "hour",
        "hour_end",
        "hour_start",
        "learning",
        "min_deviation",
        "min_samples",
        "sensitivity",
        "slots",
        "spacing",
        "zone",
    )
    rule_kind = "abnormal"

    def __init__(self, rule: AbnormalRule, device: str, zone: ZoneInfo | None = None) -> None:
        super().__init__(rule.id, device, rule.point, rule.severity)
        self.sensitivity = rule.sensitivity
        self.baseline_s = rule.baseline
        self.learning = rule.learning
        self.min_samples = rule.min_samples
        self.min_deviation = rule.min_deviation
        self.clear_ratio = rule.clear_ratio
        self.daily = rule.seasonal == "daily"
        self.zone = zone or _utc()
        self.spacing = rule.baseline / rule.max_samples
        count = HOURS if self.daily else 1
        # A guard on memory that the spacing keeps from ever biting (it would shorten the
        # baseline): one reading more than the share at the period's edge, and for an hour's
        # slot one more on each day of the baseline (each day's hour starts a new spacing).
        days = math.ceil(rule.baseline / 86_400.0) if self.daily else 0
        self.cap = math.ceil(rule.max_samples / count) + days + 1
        self.slots = [_Baseline() for _ in range(count)]
        self.first_ts: float | None = None
        #: The local hour the latest reading fell in, and its bounds (a cache).
        self.hour = 0
        self.hour_start = math.inf
        self.hour_end = -math.inf

    def retune(self, rule: Any) -> None:
        if rule.kind != "abnormal":
            raise self.not_its_kind(rule)
        self.sensitivity = rule.sensitivity
        self.min_deviation = rule.min_deviation

    def _slot(self, ts: float) -> _Baseline:
        if not self.daily:
            return self.slots[0]
        if not self.hour_start <= ts < self.hour_end:
            self.hour_start, self.hour_end = bucket_of(ts, "hour", self.zone)
            self.hour = datetime.fromtimestamp(ts, self.zone).hour
        return self.slots[self.hour]

    def _of_hour(self) -> str:
        return f" of {self.hour:02d}:00-{(self.hour + 1) % HOURS:02d}:00" if self.daily else ""

    def feed(self, reading: Reading) -> Transition | None:
        ts = reading.ts
        value = reading.value
        if self.first_ts is None:
            self.first_ts = ts
        if not self.daily:
            slot = self.slots[0]
        elif self.hour_start <= ts < self.hour_end:
            slot = self.slots[self.hour]
        else:
            slot = self._slot(ts)
        history = slot.history
        if history and (history[0][0] < ts - self.baseline_s or len(history) > self.cap):
            slot.forget_before(ts - self.baseline_s, self.cap)
        transition: Transition | None = None
        if ts - self.first_ts >= self.learning and len(history) >= self.min_samples:
            median, spread = slot.centre_and_spread()
            limit = max(self.sensitivity * spread, self.min_deviation)
            deviation = abs(value - median)
            if not self.active and deviation > limit:
                of = self._of_hour()
                self.active = True
                transition = self.make(
                    "raised",
                    ts,
                    value,
                    limit,
                    reading,
                    f"{_fmt(value)} is {_fmt(deviation)} from the baseline median{of} "
                    f"{_fmt(median)} (limit {_fmt(limit)})",
                )
            elif self.active and deviation <= self.clear_ratio * limit:
                self.active = False
                transition = self.make(
                    "cleared", ts, value, limit, reading, f"{_fmt(value)} is back near {median:g}"
                )
        if ts - slot.kept >= self.spacing:
            slot.add(ts, value)
        return transition

    def baseline(self, ts: float) -> tuple[float, float] | None:
        """The baseline median and the deviation limit a reading at ``ts`` is judged by (its
        hour's, with ``seasonal: daily``); None while still learning. Read only: for showing
        the baseline (``edge replay --plot``)."""
        if self.first_ts is None or ts - self.first_ts < self.learning:
            return None
        slot = self._slot(ts)
        if len(slot.history) < self.min_samples:
            return None
        median, spread = slot.centre_and_spread()
        return median, max(self.sensitivity * spread, self.min_deviation)

    def dump(self) -> dict[str, Any]:
        history = sorted(item for slot in self.slots for item in slot.history)
        return {**super().dump(), "first_ts": self.first_ts, "history": history}

    def load(self, data: dict[str, Any]) -> None:
        super().load(data)
        self.first_ts = data["first_ts"]
        self.slots = [_Baseline() for _ in self.slots]
        self.hour_start, self.hour_end = math.inf, -math.inf
        for ts, value in sorted((float(t), float(v)) for t, v in data["history"]):
            self._slot(ts).add(ts, value)


class SustainedJudge(Judge):
    """``sustained``: a condition held throughout a period.

    With ``duration``, every good reading is judged and the run starts at the first reading
    that met the condition. With ``hours``/``days``, each calendar bucket's aggregate is judged
    when the bucket ends; with ``months``, every day of a calendar month must pass, and the
    month counts when its last day ends.
    """

    __slots__ = (
        "above",
        "aggregate",
        "bucket",
        "by_month",
        "duration",
        "missing",
        "month",
        "month_days",
        "month_failed",
        "need",
        "rolling",
        "run",
        "run_start",
        "threshold",
        "unit",
        "zone",
    )
    rule_kind = "sustained"
    ticks = True

    def __init__(self, rule: SustainedRule, device: str, zone: ZoneInfo) -> None:
        super().__init__(rule.id, device, rule.point, rule.severity)
        self.above = rule.above is not None
        self.threshold = _sustained_threshold(rule)
        self.aggregate = rule.aggregate
        self.duration = rule.duration
        self.missing = rule.missing
        self.zone = zone
        self.unit: BucketUnit = "hour" if rule.hours is not None else "day"
        #: ``for: 60d``: the rolling window of the last 60 daily verdicts. A day without
        #: readings is no verdict: it breaks the window or (``missing: ignore``) is skipped,
        #: never counted as a day that passed.
        self.rolling = rule.for_ is not None
        days_for = None if rule.for_ is None else round(rule.for_ / 86_400.0)
        self.need = rule.hours or rule.days or days_for or rule.months or 0
        self.by_month = rule.months is not None
        #: Current bucket: [start, end, sum, count, min, max]; None before the first reading.
        self.bucket: list[float] | None = None
        #: Length of the current run: readings' start time (duration), or buckets / months.
        self.run = 0
        self.run_start: float | None = None
        #: The month being filled (months only): (year, month), days passed, failed.
        self.month: tuple[int, int] | None = None
        self.month_days = 0
        self.month_failed = False

    def retune(self, rule: Any) -> None:
        if rule.kind != "sustained":
            raise self.not_its_kind(rule)
        self.threshold = _sustained_threshold(rule)

    def _meets(self, value: float) -> bool:
        return value > self.threshold if self.above else value < self.threshold

    def feed(self, reading: Reading) -> Transition | None:
        ts = reading.ts
        value = reading.value
        if self.duration is not None:
            return self._feed_raw(reading, ts, value, self.duration)
        # The engine ticks this judge to ``ts`` first, closing the buckets that ended before it.
        bucket = self.bucket
        if bucket is None:
            start, end = bucket_of(ts, self.unit, self.zone)
            bucket = self.bucket = [start, end, 0.0, 0.0, math.inf, -math.inf]
        bucket[2] += value
        bucket[3] += 1
        bucket[4] = min(bucket[4], value)
        bucket[5] = max(bucket[5], value)
        return None

    def _feed_raw(
        self, reading: Reading, ts: float, value: float, duration: float
    ) -> Transition | None:
        if not self._meets(value):
            self.run_start = None
            if self.active:
                self.active = False
                return self.make(
                    "cleared", ts, value, self.threshold, reading, f"{_fmt(value)} ended the run"
                )
            return None
        if self.run_start is None:
            self.run_start = ts
        if not self.active and ts - self.run_start >= duration:
            self.active = True
            word = "over" if self.above else "under"
            return self.make(
                "raised",
                ts,
                value,
                self.threshold,
                reading,
                f"{word} {self.threshold:g} since {_fmt(ts - self.run_start)} s",
            )
        return None

    def due(self) -> float:
        if self.duration is not None or self.bucket is None:
            return math.inf
        return self.bucket[1]

    def tick(self, now: float) -> list[Transition]:
        """Close every bucket that ended at or before ``now``, in order."""
        result: list[Transition] = []
        if self.duration is not None or self.bucket is None:
            return result
        while self.bucket[1] <= now:
            start, end, total, count, low, high = self.bucket
            aggregate: float | None = None
            if count:
                aggregate = (
                    total / count
                    if self.aggregate == "mean"
                    else (low if self.aggregate == "min" else high)
                )
            verdict = self._close(start, end, aggregate)
            if verdict is not None:
                result.append(verdict)
            following_start, following_end = bucket_of(end, self.unit, self.zone)
            self.bucket = [following_start, following_end, 0.0, 0.0, math.inf, -math.inf]
        return result

    def _close(self, start: float, end: float, aggregate: float | None) -> Transition | None:
        if aggregate is None:
            passed: bool | None = None if self.missing == "ignore" else False
        else:
            passed = self._meets(aggregate)
        if not self.by_month:
            if passed is None:
                return None
            if passed:
                if self.run == 0:
                    self.run_start = start
                self.run += 1
                if not self.active and self.run >= self.need:
                    return self._raise(end, aggregate)
                return None
            self.run = 0
            self.run_start = None
            return self._clear(end, aggregate)
        month = month_of(start, self.zone)
        if self.month != month:
            self.month = month
            self.month_days = 0
            self.month_failed = False
        self.month_days += 1
        if passed is False:
            self.month_failed = True
            self.run = 0
            self.run_start = None
            cleared = self._clear(end, aggregate)
            if cleared is not None:
                return cleared
        if month_of(end, self.zone) == month:
            return None
        # The last day of the month has ended. The month counts if the judge watched every one
        # of its days (a month the gateway joined half-way does not) and none of them failed.
        complete = not self.month_failed and self.month_days == days_in_month(*month)
        self.month = None
        if not complete:
            self.run = 0
            self.run_start = None
            return None
        if self.run == 0:
            self.run_start = _month_start(month, self.zone)
        self.run += 1
        if not self.active and self.run >= self.need:
            return self._raise(end, aggregate)
        return None

    def _raise(self, end: float, aggregate: float | None) -> Transition:
        self.active = True
        span = (
            f"{self.need} {'month' if self.by_month else self.unit}{'s' if self.need > 1 else ''}"
        )
        if self.rolling:
            span = f"the last {span}"
        word = "over" if self.above else "under"
        return self.make(
            "raised",
            end,
            aggregate,
            self.threshold,
            None,
            f"{self.aggregate} {word} {self.threshold:g} throughout {span}",
        )

    def _clear(self, end: float, aggregate: float | None) -> Transition | None:
        if not self.active:
            return None
        self.active = False
        what = "no reading" if aggregate is None else f"{self.aggregate} {_fmt(aggregate)}"
        return self.make(
            "cleared", end, aggregate, self.threshold, None, f"{what} in the {self.unit} that ended"
        )

    def dump(self) -> dict[str, Any]:
        bucket = None
        if self.bucket is not None:
            start, end, total, count, low, high = self.bucket
            bucket = [
                start,
                end,
                total,
                count,
                None if count == 0 else low,
                None if count == 0 else high,
            ]
        return {
            **super().dump(),
            "bucket": bucket,
            "run": self.run,
            "run_start": self.run_start,
            "month": None if self.month is None else list(self.month),
            "month_days": self.month_days,
            "month_failed": self.month_failed,
        }

    def load(self, data: dict[str, Any]) -> None:
        super().load(data)
        bucket = data["bucket"]
        if bucket is None:
            self.bucket = None
        else:
            start, end, total, count, low, high = bucket
            self.bucket = [
                float(start),
                float(end),
                float(total),
                float(count),
                math.inf if low is None else float(low),
                -math.inf if high is None else float(high),
            ]
        self.run = int(data["run"])
        self.run_start = data["run_start"]
        self.month = (
            None if data["month"] is None else (int(data["month"][0]), int(data["month"][1]))
        )
        self.month_days = int(data["month_days"])
        self.month_failed = bool(data["month_failed"])


def _month_start(month: tuple[int, int], zone: ZoneInfo) -> float:
    return datetime(month[0], month[1], 1, tzinfo=zone).timestamp()


class AlarmBitsJudge(Judge):
    """``alarm-bits``: active while any of the rule's bits is set in the status point."""

    __slots__ = ("mask", "names")
    rule_kind = "alarm-bits"

    def __init__(self, rule: AlarmBitsRule, device: str, bit_names: dict[int, str]) -> None:
        super().__init__(rule.id, device, rule.point, rule.severity)
        self.mask = 0
        by_name = {name: bit for bit, name in bit_names.items()}
        for bit in rule.bits if rule.bits is not None else range(16):
            number = bit if isinstance(bit, int) else by_name.get(bit)
            if number is None:
                raise ValueError(f"rule {rule.id}: device {device} has no alarm bit {bit!r}")
            self.mask |= 1 << number
        self.names = bit_names

    def feed(self, reading: Reading) -> Transition | None:
        ts = reading.ts
        set_bits = int(reading.value) & self.mask
        if set_bits and not self.active:
            self.active = True
            names = [self.names.get(b, f"bit {b}") for b in range(16) if set_bits >> b & 1]
            return self.make(
                "raised", ts, reading.value, None, reading, f"device reports {', '.join(names)}"
            )
        if not set_bits and self.active:
            self.active = False
            return self.make("cleared", ts, reading.value, None, reading, "alarm bits clear")
        return None


class SensorFaultJudge(Judge):
    """``sensor-fault``: the point is stuck (no change beyond ``stuck_tolerance`` for
    ``stuck_for``) or missing (no good reading for ``missing_for``)."""

    __slots__ = (
        "last_good",
        "missing_for",
        "now",
        "stuck_for",
        "stuck_since",
        "stuck_value",
        "tolerance",
        "why",
    )
    rule_kind = "sensor-fault"
    ticks = True
    any_quality = True

    def __init__(self, rule: SensorFaultRule, device: str, since: float | None) -> None:
        super().__init__(rule.id, device, rule.point, rule.severity)
        self.stuck_for = rule.stuck_for
        self.missing_for = rule.missing_for
        self.tolerance = rule.stuck_tolerance
        #: Time of the last good reading; before the first one, when the judge started.
        self.last_good = since
        self.stuck_value: float | None = None
        self.stuck_since: float | None = None
        self.why = ""
        #: The latest time seen (ticks, readings): a reading that arrives late is judged at
        #: this time, not at its own, so it cannot end a fault that still holds now.
        self.now = -math.inf

    def feed(self, reading: Reading) -> Transition | None:
        ts = reading.ts
        self.now = max(self.now, ts)
        now = self.now
        if reading.quality != "good":
            return self._judge(now, reading)
        self.last_good = ts
        if self.stuck_value is None or abs(reading.value - self.stuck_value) > self.tolerance:
            self.stuck_value = reading.value
            self.stuck_since = ts
        return self._judge(now, reading)

    def tick(self, now: float) -> list[Transition]:
        self.now = max(self.now, now)
        if self.last_good is None:
            self.last_good = now
        # Time alone only raises: both faults, once true, stay true as time passes. A tick at
        # an earlier time (a late reading's own time) is no evidence that the fault is gone.
        if self.active:
            return []
        verdict = self._judge(now, None)
        return [] if verdict is None else [verdict]

    def due(self) -> float:
        if self.last_good is None:
            return -math.inf
        if self.active:
            return math.inf
        due = math.inf
        if self.missing_for is not None:
            due = self.last_good + self.missing_for
        if self.stuck_for is not None and self.stuck_since is not None:
            due = min(due, self.stuck_since + self.stuck_for)
        return due

    def _judge(self, now: float, reading: Reading | None) -> Transition | None:
        why = ""
        if (
            self.missing_for is not None
            and self.last_good is not None
            and now - self.last_good >= self.missing_for
        ):
            why = f"no good reading for {_fmt(now - self.last_good)} s"
        elif (
            self.stuck_for is not None
            and self.stuck_since is not None
            and self.stuck_value is not None
            and now - self.stuck_since >= self.stuck_for
        ):
            why = f"stuck at {_fmt(self.stuck_value)} for {_fmt(now - self.stuck_since)} s"
        value = None if reading is None else reading.value
        if why and not self.active:
            self.active = True
            self.why = why
            return self.make("raised", now, value, None, reading, why)
        if not why and self.active:
            self.active = False
            return self.make("cleared", now, value, None, reading, f"no longer: {self.why}")
        return None

    def dump(self) -> dict[str, Any]:
        return {
            **super().dump(),
            "last_good": self.last_good,
            "stuck_value": self.stuck_value,
            "stuck_since": self.stuck_since,
            "why": self.why,
        }

    def load(self, data: dict[str, Any]) -> None:
        super().load(data)
        self.last_good = data["last_good"]
        self.stuck_value = data["stuck_value"]
        self.stuck_since = data["stuck_since"]
        self.why = data["why"]


class DeviceOfflineJudge(Judge):
    """``device-offline``: the driver has reported the device offline for ``after``, or (with
    ``silent_for``) no reading of any point arrived for that long."""

    __slots__ = ("after", "last_reading", "now", "offline_since", "reason", "silent_for")
    rule_kind = "device-offline"
    ticks = True
    any_quality = True

    def __init__(self, rule: DeviceOfflineRule, device: str, since: float | None) -> None:
        super().__init__(rule.id, device, "", rule.severity)
        self.after = rule.after
        self.silent_for = rule.silent_for
        self.offline_since: float | None = None
        self.last_reading = since
        self.reason = ""
        #: The latest time seen: a late reading is judged now (see SensorFaultJudge.now).
        self.now = -math.inf

    def feed(self, reading: Reading) -> Transition | None:
        ts = reading.ts
        self.now = max(self.now, ts)
        if self.last_reading is None or ts > self.last_reading:
            self.last_reading = ts
        self.offline_since = None
        return self._judge(self.now)

    def status(self, online: bool, ts: float, reason: str) -> Transition | None:
        self.now = max(self.now, ts)
        if online:
            self.offline_since = None
            self.last_reading = ts
        elif self.offline_since is None:
            self.offline_since = ts
            self.reason = reason
        return self._judge(self.now)

    def tick(self, now: float) -> list[Transition]:
        self.now = max(self.now, now)
        if self.last_reading is None:
            self.last_reading = now
        # Time alone only raises (see SensorFaultJudge.tick): a reading or "online" clears.
        if self.active:
            return []
        verdict = self._judge(now)
        return [] if verdict is None else [verdict]

    def due(self) -> float:
        if self.last_reading is None:
            return -math.inf
        if self.active:
            return math.inf
        due = math.inf
        if self.offline_since is not None:
            due = self.offline_since + self.after
        if self.silent_for is not None:
            due = min(due, self.last_reading + self.silent_for)
        return due

    def _judge(self, now: float) -> Transition | None:
        why = ""
        if self.offline_since is not None and now - self.offline_since >= self.after:
            why = f"offline ({self.reason})" if self.reason else "offline"
        elif (
            self.silent_for is not None
            and self.last_reading is not None
            and now - self.last_reading >= self.silent_for
        ):
            why = f"no reading for {_fmt(now - self.last_reading)} s"
        if why and not self.active:
            self.active = True
            return self.make("raised", now, None, None, None, why)
        if not why and self.active:
            self.active = False
            return self.make("cleared", now, None, None, None, "device reporting again")
        return None

    def dump(self) -> dict[str, Any]:
        return {
            **super().dump(),
            "offline_since": self.offline_since,
            "last_reading": self.last_reading,
            "reason": self.reason,
        }

    def load(self, data: dict[str, Any]) -> None:
        super().load(data)
        self.offline_since = data["offline_since"]
        self.last_reading = data["last_reading"]
        self.reason = data["reason"]


def _sustained_threshold(rule: SustainedRule) -> float:
    """The value a sustained rule's condition is held against: ``above`` or ``below``."""
    threshold = rule.above if rule.above is not None else rule.below
    if threshold is None:
        raise ValueError(f"rule {rule.id!r}: a sustained rule needs above or below")
    return threshold


def _utc() -> ZoneInfo:
    # zoneinfo (with sysconfig, 0.5 MiB) is imported by the first judge that reads the
    # calendar: a site without such a rule never loads it (docs/benchmarks.md).
    from zoneinfo import ZoneInfo  # noqa: PLC0415 -- calendar rules only

    return ZoneInfo("UTC")
