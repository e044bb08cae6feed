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
from collections import deque
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
#: of a 20-point monitor. At about 150 bytes a held reading, 1.8 MB for a device at the limit;
#: check-config refuses a ``pre`` whose polls would not fit (docs/config.md).
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
    """A polled reading as the policies see it: its wire time, value, and whether it is stored."""

    __slots__ = ("ms", "reading", "stored", "value")

    def __init__(self, reading: Reading, ms: int) -> None:
        self.reading = reading
        self.ms = ms
        self.value = reading.value
        self.stored = False


def _number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


class _PointFilter:
    """The policy state of one point: the last stored reading and, for the swinging door,
    the pending reading and the slopes that keep every reading since the last stored one
    within its band."""

    __slots__ = ("anchor", "hi", "last", "lo", "looked_ms", "pending", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.anchor: _Held | None = None
        self.pending: _Held | None = None
        self.lo = -math.inf
        self.hi = math.inf
        #: The last reading polled, and the time of the last one the policy looked at.
        self.last: _Held | None = None
        self.looked_ms: int | None = None

    def offer(self, held: _Held, *, force: bool = False) -> list[_Held]:
        """The readings to store now (oldest first) after ``held`` was polled; with ``force``,
        ``held`` is the last of them (an alarm window) and the bound still holds."""
        policy = self.policy
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
        self.lo, self.hi = -math.inf, math.inf
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

    __slots__ = ("filters", "open_from", "ring", "until")

    def __init__(self, ring_limit: int) -> None:
        self.filters: dict[str, _PointFilter] = {}
        self.ring: deque[_Held] = deque(maxlen=ring_limit) if ring_limit else deque(maxlen=0)
        self.until: int | None = None
        self.open_from: int = 0


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
        self.policies = dict(policies)
        self.default = default
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
            device = self._devices[device_id] = _Device(self.ring_limit)
        return device

    def _filter(self, device: _Device, reading: Reading) -> _PointFilter:
        found = device.filters.get(reading.point)
        if found is None:
            policy = self.policies.get((reading.device_id, reading.point), self.default)
            found = device.filters[reading.point] = _PointFilter(policy)
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
            if not h.stored:
                h.stored = True
                out.append(Stored(h.reading, window))
        self.stored += len(out)
        return out

    def offer(self, reading: Reading) -> list[Stored]:
        """A polled reading: what to store now, oldest first (often nothing)."""
        self.polled += 1
        device = self._device(reading.device_id)
        held = self._held(reading)
        if device.ring.maxlen:
            ring = device.ring
            ring.append(held)
            horizon = held.ms - self.pre_ms
            while ring and ring[0].ms < horizon and ring[0].ms <= held.ms:
                ring.popleft()
        point = self._filter(device, reading)
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
        horizon = ms - self.pre_ms
        out += self._out((h for h in device.ring if horizon <= h.ms <= ms), "pre")
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
        return sum(len(d.ring) for d in self._devices.values())


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
