"""Storage policies: which polled readings are stored and sent, within a stated error bound.

Every polled reading goes through the rules; this module decides, per point, which of them the
outbox keeps (and so the SD card writes and the uplink sends). It is pure: readings in, the
readings to store out, no clock, no I/O. docs/config.md describes the policies for installers,
docs/contract.md how a platform reconstructs the readings that were not sent.

The promise, for every polled reading ``v`` at time ``t`` of a point whose policy has a band:
the platform's reconstruction at ``t`` (a step from the last stored reading for ``on-change``
and ``deadband``, the straight line between the stored readings around ``t`` for
``swinging-door``) is within the band of ``v``: ``max(band, band_percent / 100 x |v|)``.
Times are taken in whole milliseconds, as the wire carries them, so the platform's line is
the very line judged here.

- ``all``: every reading (no bound needed).
- ``on-change``: a reading whose value differs from the last stored one (``deadband``, band 0).
- ``deadband``: a reading that moved more than the band from the last stored one.
- ``swinging-door``: a reading is stored only when the line from the last stored reading to the
  newest one would leave the band of a reading in between; then the *previous* reading (the
  last one that still fitted) is stored, with its own time and value. Stored values are always
  readings that were polled, never computed ones.

Each policy also has a heartbeat (``max_interval``: a reading is stored at least this often
while the device answers) and a ``min_interval`` (readings closer than this to the last one
the policy looked at are not looked at: the bound then holds for the readings it looked at).

Around every alarm (raised, escalated or cleared) the readings of the alarm's device are kept
at full rate: the ones of the last ``pre`` seconds from a bounded ring in memory, marked
``pre``, and every one of the next ``post`` seconds, marked ``post``. ``post`` readings are
points of the policy's line like any stored reading; ``pre`` readings are exact readings
added to it, and a platform draws the line without them (docs/contract.md).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, NamedTuple

from drivers.types import Reading

__all__ = [
    "ALARM_WINDOW_KINDS",
    "ALL",
    "RING_LIMIT",
    "Policy",
    "PolicyKind",
    "Storage",
    "Stored",
    "Window",
    "reconstruct",
    "wire_ms",
]

PolicyKind = Literal["all", "on-change", "deadband", "swinging-door"]
Window = Literal["pre", "post"]

#: Transitions that open (or extend) the full-rate window of their device.
ALARM_WINDOW_KINDS: Final = frozenset({"raised", "escalated", "cleared"})
#: Most readings the ring of one device holds for the ``pre`` part of an alarm window: 600 polls
#: of a 20-point monitor. At 37 bytes a held reading (:class:`_Ring`), 0.4 MB for a device at
#: the limit; check-config refuses a ``pre`` whose polls would not fit (docs/config.md).
RING_LIMIT: Final = 12_000
#: The band is shrunk by this fraction where a line is judged, so that the platform's own
#: floating-point arithmetic on the same numbers cannot carry a reading over the band.
_SLACK: Final = 1e-9


@dataclass(frozen=True, slots=True)
class Policy:
    """How one point is stored. ``band`` is in the point's unit; intervals in seconds."""

    kind: PolicyKind = "all"
    band: float = 0.0
    band_percent: float = 0.0
    max_interval: float | None = None
    min_interval: float = 0.0

    def tolerance(self, value: float) -> float:
        """The band around ``value``: the larger of the absolute and the relative band."""
        if self.band_percent:
            return max(self.band, self.band_percent / 100.0 * abs(value))
        return self.band

    @property
    def reconstruction(self) -> Literal["exact", "step", "linear"]:
        """How a platform fills the time between stored readings."""
        if self.kind == "all":
            return "exact"
        return "linear" if self.kind == "swinging-door" else "step"

    def describe(self) -> dict[str, Any]:
        """The policy as the metadata message carries it (docs/contract.md)."""
        described: dict[str, Any] = {
            "policy": self.kind,
            "reconstruction": self.reconstruction,
        }
        if self.kind in ("deadband", "swinging-door"):
            described["band"] = self.band
            described["band_percent"] = self.band_percent
        if self.kind != "all":
            described["max_interval_s"] = self.max_interval
            described["min_interval_s"] = self.min_interval
        return described


ALL: Final = Policy()


class Stored(NamedTuple):
    """A reading to store, and the alarm window that kept it (``None``: the policy did)."""

    reading: Reading
    window: Window | None = None


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def wire_ms(ts: float) -> int:
    """Milliseconds since the epoch exactly as the wire prints ``ts`` (edge.contract.iso_utc)."""
    return (datetime.fromtimestamp(ts, UTC) - _EPOCH) // _MS


class _Held:
    """A polled reading as the policies see it: its wire time, value, and whether it is stored.
    ``ring`` and ``seq`` say where its device's ring holds it while it is not stored."""

    __slots__ = ("ms", "reading", "ring", "seq", "stored", "value")

    def __init__(self, reading: Reading, ms: int) -> None:
        self.reading = reading
        self.ms = ms
        self.value = reading.value
        self.stored = False
        self.ring: _Ring | None = None
        self.seq = -1

    def store(self) -> bool:
        """Mark it stored (in the ring too); False if it was already."""
        if self.stored:
            return False
        self.stored = True
        if self.ring is not None:
            self.ring.mark(self.seq)
        return True


#: Flags of a reading in a ring.
_STORED: Final = 1
_BAD: Final = 2
_NOT_FLOAT: Final = 4
#: A ring drops the slots of readings it no longer holds once they are this many (and half).
_COMPACT_AFTER: Final = 1024


class _Ring:
    """The readings of one device's last ``pre`` seconds that are not stored, packed in arrays.

    About 37 bytes a reading (time in ms, wall time, monotonic time, value, point, flags)
    where the objects of a reading cost about 180: a site of 50 monitors of 20 points polled
    every second holds 60,000 readings for a 60 s ``pre``, 2 MB instead of 10. Readings are
    numbered (``seq``) as they arrive; the one numbered ``base + i`` is at index ``i``, and the
    ones before ``start`` are gone. A value that is not a float is kept aside in ``odd``.
    """

    __slots__ = (
        "base", "device_id", "flags", "limit", "mono", "ms", "odd", "point", "points",
        "start", "ts", "value",
    )  # fmt: skip

    def __init__(self, device_id: str, limit: int) -> None:
        self.device_id = device_id
        self.limit = limit
        self.base = 0
        self.start = 0
        self.ms = array("q")
        self.ts = array("d")
        self.mono = array("d")
        self.value = array("d")
        self.point = array("I")
        self.flags = bytearray()
        self.odd: dict[int, Any] = {}
        #: (point, unit) of each point seen, and its number in ``point``.
        self.points: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self.ms) - self.start

    def append(self, held: _Held) -> None:
        reading = held.reading
        key = (reading.point, reading.unit)
        number = self.points.get(key)
        if number is None:
            number = self.points[key] = len(self.points)
        held.ring, held.seq = self, self.base + len(self.ms)
        flags = _BAD if reading.quality == "bad" else 0
        value = reading.value
        if type(value) is float:
            self.value.append(value)
        else:
            self.value.append(0.0)
            self.odd[held.seq] = value
            flags |= _NOT_FLOAT
        self.ms.append(held.ms)
        self.ts.append(reading.ts)
        self.mono.append(reading.mono)
        self.point.append(number)
        self.flags.append(flags)
        if len(self) > self.limit:
            self._drop(self.start + 1)

    def forget_before(self, horizon: int, now: int) -> None:
        """Drop the readings older than ``horizon`` (ms) from the front, up to one not after
        ``now`` (after a clock step back, newer readings may sit behind older times)."""
        ms, start, end = self.ms, self.start, len(self.ms)
        while start < end and ms[start] < horizon and ms[start] <= now:
            start += 1
        self._drop(start)

    def _drop(self, start: int) -> None:
        self.start = start
        if start >= _COMPACT_AFTER and 2 * start >= len(self.ms):
            for column in (self.ms, self.ts, self.mono, self.value, self.point):
                del column[:start]
            del self.flags[:start]
            self.base += start
            self.start = 0
            self.odd = {seq: v for seq, v in self.odd.items() if seq >= self.base}

    def mark(self, seq: int) -> None:
        index = seq - self.base
        if self.start <= index < len(self.ms):
            self.flags[index] |= _STORED

    def take(self, since: int, until: int) -> list[tuple[int, Reading]]:
        """The readings from ``since`` to ``until`` (ms) not stored yet, now marked stored."""
        names = list(self.points)
        out = []
        flags = self.flags
        for index in range(self.start, len(self.ms)):
            if flags[index] & _STORED or not since <= self.ms[index] <= until:
                continue
            flags[index] |= _STORED
            seq = self.base + index
            point, unit = names[self.point[index]]
            value = self.odd[seq] if flags[index] & _NOT_FLOAT else self.value[index]
            quality: Literal["good", "bad"] = "bad" if flags[index] & _BAD else "good"
            reading = Reading(
                self.device_id, point, value, unit, self.ts[index], self.mono[index], quality
            )
            out.append((seq, reading))
        return out


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


#: -inf made once: the expression makes a new float each time, one per point filter.
_LOWEST: Final = -math.inf


class _PointFilter:
    """The policy state of one point: the last stored reading and, for the swinging door,
    the pending reading and the slopes that keep every reading since the last stored one
    within its band."""

    __slots__ = ("anchor", "hi", "last", "lo", "looked_ms", "pending", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.anchor: _Held | None = None
        self.pending: _Held | None = None
        self.lo = _LOWEST
        self.hi = math.inf
        #: The last reading polled, and the time of the last one the policy looked at.
        self.last: _Held | None = None
        self.looked_ms: int | None = None

    def offer(self, held: _Held, *, force: bool = False) -> list[_Held]:
        """The readings to store now (oldest first) after ``held`` was polled; with ``force``,
        ``held`` is the last of them (an alarm window) and the bound still holds."""
        policy = self.policy
        if policy.kind == "all" and not policy.min_interval:
            # Every reading is stored and none is ever pending: nothing else to decide (a
            # clock step back changes nothing either, the one before it was stored), and
            # nothing to keep, so one such filter serves every point (Storage._filter).
            return [held]
        ms = held.ms
        last, self.last = self.last, held
        if last is not None and ms <= last.ms:
            # The clock stepped back (or two polls share a millisecond): no line can be drawn
            # back in time. The segment ends with the last reading polled before the step
            # and a new one starts here, so each side keeps its bound.
            out = [*self.flush(), last]
            self._restart(held)
            out.append(held)
            return out
        if (
            not force
            and policy.min_interval
            and self.looked_ms is not None
            and ms - self.looked_ms < policy.min_interval * 1000.0
        ):
            return []
        self.looked_ms = ms
        if policy.kind == "all" or not _number(held.value):
            # A NaN or a missing value is news in itself and cannot be a point of a line.
            out = self.flush()
            self._restart(held, anchor=_number(held.value))
            out.append(held)
            return out
        anchor = self.anchor
        if anchor is None:
            self._restart(held)
            return [held]
        due = policy.max_interval is not None and ms - anchor.ms >= policy.max_interval * 1000.0
        if policy.kind != "swinging-door":
            if force or due or abs(held.value - anchor.value) > policy.tolerance(held.value):
                self._restart(held)
                return [held]
            return []
        return self._door(held, anchor, force=force or due)

    def _door(self, held: _Held, anchor: _Held, *, force: bool) -> list[_Held]:
        slope = (held.value - anchor.value) / (held.ms - anchor.ms)
        if self.pending is None or self.lo <= slope <= self.hi:
            # The line from the anchor to this reading stays within the band of every reading
            # since the anchor: this one replaces the pending reading.
            if force:
                self._restart(held)
                return [held]
            self._narrow(held, anchor)
            self.pending = held
            return []
        # The door closed: the previous reading is the last one the line could reach.
        closed = self.pending
        self._restart(closed)
        self.looked_ms = held.ms
        max_interval = self.policy.max_interval
        if force or (max_interval is not None and held.ms - closed.ms >= max_interval * 1000.0):
            self._restart(held)
            return [closed, held]
        self._narrow(held, closed)
        self.pending = held
        return [closed]

    def _narrow(self, held: _Held, anchor: _Held) -> None:
        dt = held.ms - anchor.ms
        band = self.policy.tolerance(held.value) * (1.0 - _SLACK)
        self.lo = max(self.lo, (held.value - band - anchor.value) / dt)
        self.hi = min(self.hi, (held.value + band - anchor.value) / dt)

    def _restart(self, held: _Held, *, anchor: bool = True) -> None:
        self.anchor = held if anchor else None
        self.pending = None
        self.lo, self.hi = _LOWEST, math.inf
        self.looked_ms = held.ms

    def flush(self) -> list[_Held]:
        """The pending reading, stored now (it becomes the last stored one)."""
        pending = self.pending
        if pending is None:
            return []
        looked = self.looked_ms
        self._restart(pending)
        self.looked_ms = looked
        return [pending]

    def overdue(self, now_ms: int) -> bool:
        """A reading waits and the heartbeat is due (the device went quiet since)."""
        max_interval = self.policy.max_interval
        return (
            self.pending is not None
            and self.anchor is not None
            and max_interval is not None
            and now_ms - self.anchor.ms >= max_interval * 1000.0
        )


class _Device:
    """One device's filters, its ring of recent readings and its open window."""

    __slots__ = ("filters", "open_from", "ring", "trimmed_at", "until")

    def __init__(self, device_id: str, ring_limit: int) -> None:
        self.filters: dict[str, _PointFilter] = {}
        self.ring = _Ring(device_id, ring_limit) if ring_limit else None
        self.until: int | None = None
        self.open_from: int = 0
        #: The time (ms) the ring was last cut back to ``pre``: once per poll is enough.
        self.trimmed_at: int | None = None


class Storage:
    """The storage policies of a site and its alarm windows.

    ``policies`` maps (device, point) to its :class:`Policy`; a point not in it takes
    ``default``. ``pre`` and ``post`` are the alarm window in seconds; ``ring_limit`` the most
    readings a device's ring holds for ``pre``.
    """

    def __init__(
        self,
        policies: Mapping[tuple[str, str], Policy],
        *,
        default: Policy = ALL,
        pre: float = 60.0,
        post: float = 120.0,
        ring_limit: int = RING_LIMIT,
    ) -> None:
        # Only the points whose policy is not the default: at a site storing every reading
        # that is none, instead of an entry per point.
        self.policies = {key: policy for key, policy in policies.items() if policy != default}
        self.default = default
        #: The filter of every point stored in full: it keeps nothing (_PointFilter.offer).
        self._every = _PointFilter(ALL)
        self.pre_ms = round(pre * 1000)
        self.post_ms = round(post * 1000)
        self.ring_limit = ring_limit if pre > 0 else 0
        self._devices: dict[str, _Device] = {}
        self._last_ts: float | None = None
        self._last_ms = 0
        #: Readings offered and readings stored, for health and the benchmarks.
        self.polled = 0
        self.stored = 0

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = _Device(device_id, self.ring_limit)
        return device

    def _filter(self, device: _Device, reading: Reading) -> _PointFilter:
        found = device.filters.get(reading.point)
        if found is None:
            policy = self.policies.get((reading.device_id, reading.point), self.default)
            if policy.kind == "all" and not policy.min_interval:
                found = self._every
            else:
                found = _PointFilter(policy)
            device.filters[reading.point] = found
        return found

    def _held(self, reading: Reading) -> _Held:
        ts = reading.ts
        if ts != self._last_ts:  # one poll's readings share their time: convert it once
            try:
                self._last_ms = wire_ms(ts)
            except (OverflowError, OSError, ValueError, TypeError):
                self._last_ms = 0
            self._last_ts = ts
        return _Held(reading, self._last_ms)

    def _out(self, held: Iterable[_Held], window: Window | None = None) -> list[Stored]:
        out = []
        for h in held:
            if h.store():
                out.append(Stored(h.reading, window))
        self.stored += len(out)
        return out

    def offer(self, reading: Reading) -> list[Stored]:
        """A polled reading: what to store now, oldest first (often nothing)."""
        self.polled += 1
        device = self._device(reading.device_id)
        held = self._held(reading)
        out = self._decide(device, held)
        ring = device.ring
        if ring is not None:
            # A stored reading needs no place in the ring: an alarm window takes only the
            # readings of its ``pre`` seconds that were not stored.
            if not held.stored:
                ring.append(held)
            if held.ms != device.trimmed_at:  # a poll's readings share their time
                device.trimmed_at = held.ms
                ring.forget_before(held.ms - self.pre_ms, held.ms)
        return out

    def _decide(self, device: _Device, held: _Held) -> list[Stored]:
        point = self._filter(device, held.reading)
        if device.until is not None:
            if device.open_from - self.pre_ms <= held.ms <= device.until:
                stored = point.offer(held, force=True)
                # The pending reading a forced store closes was polled before the window.
                return [
                    *self._out(stored[:-1]),
                    *self._out(stored[-1:], "post"),
                ]
            device.until = None  # the window is over (or the clock left it)
        return self._out(point.offer(held))

    def alarm(self, device_id: str, ts: float) -> list[Stored]:
        """An alarm of ``device_id`` was raised, escalated or cleared at ``ts``: its pending
        readings are stored, then the unstored readings of the last ``pre`` seconds (marked
        ``pre``); its readings of the next ``post`` seconds will be stored (marked ``post``)."""
        device = self._devices.get(device_id)
        if device is None:
            device = self._device(device_id)
        try:
            ms = wire_ms(ts)
        except (OverflowError, OSError, ValueError, TypeError):
            return []
        out: list[Stored] = []
        for point in device.filters.values():
            out += self._out(point.flush())
        if device.ring is not None:
            taken = device.ring.take(ms - self.pre_ms, ms)
            for seq, reading in taken:
                # The last polled reading of a point may still be stored by its filter (a
                # clock step back): it is stored once, here.
                last = device.filters[reading.point].last
                if last is not None and last.ring is device.ring and last.seq == seq:
                    last.stored = True
                out.append(Stored(reading, "pre"))
            self.stored += len(taken)
        if device.until is None:
            device.open_from = ms
        device.until = max(device.until or 0, ms + self.post_ms)
        return out

    def alarms(self, transitions: Iterable[Any]) -> list[Stored]:
        """:meth:`alarm` for each transition (``edge.rules.Transition``) that opens a window."""
        out: list[Stored] = []
        for transition in transitions:
            if transition.kind in ALARM_WINDOW_KINDS and transition.device_id in self._devices:
                out += self.alarm(transition.device_id, transition.ts)
        return out

    def offline(self, device_id: str) -> list[Stored]:
        """The device stopped answering: its pending readings are stored now."""
        device = self._devices.get(device_id)
        if device is None:
            return []
        out: list[Stored] = []
        for point in device.filters.values():
            out += self._out(point.flush())
        return out

    def tick(self, now: float) -> list[Stored]:
        """Store the pending readings whose heartbeat is due (their device went quiet)."""
        try:
            now_ms = wire_ms(now)
        except (OverflowError, OSError, ValueError, TypeError):
            return []
        out: list[Stored] = []
        for device in self._devices.values():
            for point in device.filters.values():
                if point.overdue(now_ms):
                    out += self._out(point.flush())
        return out

    def flush(self) -> list[Stored]:
        """Every pending reading, stored now (shutdown)."""
        out: list[Stored] = []
        for device in self._devices.values():
            for point in device.filters.values():
                out += self._out(point.flush())
        return out

    def ring_size(self) -> int:
        """Readings held in memory for ``pre`` windows, all devices together."""
        return sum(len(d.ring) for d in self._devices.values() if d.ring is not None)


def reconstruct(
    stored: Iterable[tuple[int, float | None, Window | None]],
    times: Iterable[int],
    policy: Policy,
) -> list[float | None]:
    """What a platform reads at each of ``times`` (ms) from the ``stored`` readings of one
    point: ``(ms, value, window)`` in the order they were stored.

    A stored reading at that very time is taken as it is. Otherwise, the policy's line through
    the stored readings that are not ``pre`` ones: a step from the last one before (``all``,
    ``on-change``, ``deadband``), or the straight line between the ones before and after
    (``swinging-door``; a step after the last one). A stored reading whose time is not after
    the one stored before it (the gateway's clock stepped back) starts a new segment. ``None``
    where nothing was stored before.
    """
    exact: dict[int, float | None] = {}
    segments: list[list[tuple[int, float | None]]] = [[]]
    for ms, value, window in stored:
        exact.setdefault(ms, value)
        if window == "pre":
            continue
        segment = segments[-1]
        if segment and ms <= segment[-1][0]:
            segments.append([])
            segment = segments[-1]
        segment.append((ms, value))
    linear = policy.reconstruction == "linear"
    starts = [segment[0][0] if segment else math.inf for segment in segments]
    columns = [[t for t, _ in segment] for segment in segments]
    result: list[float | None] = []
    for ms in times:
        if ms in exact:
            result.append(exact[ms])
            continue
        result.append(_on_line(segments, starts, columns, ms, linear=linear))
    return result


def _on_line(
    segments: list[list[tuple[int, float | None]]],
    starts: list[float],
    columns: list[list[int]],
    ms: int,
    *,
    linear: bool,
) -> float | None:
    # The latest segment that starts at or before ms holds it (a clock step back starts a new
    # segment that may overlap earlier times; the newer one is what the gateway stored last).
    for index in range(len(segments) - 1, -1, -1):
        if starts[index] > ms:
            continue
        segment = segments[index]
        at = bisect.bisect_right(columns[index], ms) - 1
        t0, v0 = segment[at]
        if not linear or at + 1 >= len(segment) or v0 is None:
            return v0
        t1, v1 = segment[at + 1]
        if v1 is None:
            return v0
        return v0 + (v1 - v0) * (ms - t0) / (t1 - t0)
    return None
