"""What the storage policies keep of a site's readings, and what that costs the card and the
link (``python -m tests.benchmarks --only storage``).

The traces (tests/fixtures/traces.py) are what electrical fire monitors show over a day: slow
drifts (humidity, load), sensor noise, steps as loads switch, polls about every second with
jitter and now and then a late poll or a short outage. Alarms are injected as a leakage fault:
the residual current jumps by 230 mA for a minute (raised, then cleared: both open a window).

- ``stored_readings_ratio_default``: readings stored / readings polled, the demo site
  (config/example-site.yaml: three efm-ref monitors at 1 s, the model defaults, alarm window
  60 s / 120 s) over a simulated day with three alarms, one per monitor.
- ``reconstruction_max_error_over_band``: over every polled reading of that day, the largest
  distance to what a platform reconstructs from the stored readings and the metadata's policy
  (edge.storage_policy.reconstruct, in the wire's milliseconds), over the point's band. The
  promise is at most 1.0.
- ``alarm_window_readings``: readings of the first alarm's device stored with a time from
  ``pre`` before to ``post`` after the alarm; ``alarm_window_polled_readings`` is how many
  were polled in that window (the promise: the two are equal).
- ``stored_readings_ratio_reference_site``: the same ratio for the reference site of the wire
  benchmark (50 monitors x 20 points at 1 s; efm-ref's 14 points with their model defaults
  and 6 metering points with the policies below) over a simulated hour.

What all this costs the 4G link, over TLS and with every other message, is the link benchmark's
(tests/benchmarks/link.py), which prices the telemetry of these simulated runs.

- ``card_mb_per_day_reference_site``: ``write_bytes`` of ``/proc/self/io`` while a real outbox
  with the gateway's defaults (``buffer.commit_interval`` 2 s, ``buffer.sync_interval`` 30 s
  on the simulated clock) takes what the policies stored in minutes 10 to 20 of the reference
  site, each commit holding what one commit window of the live gateway would hold, and then
  copies its WAL into the database (a checkpoint: a running gateway does it every 4 MiB of
  WAL), times 144. The file starts as a running gateway's does: every point of the site
  stored once (its first poll) and a backlog. ``card_mb_per_day_reference_site_all`` is the
  same for every reading, over ten simulated minutes too. ``..._synced`` and
  ``..._all_synced``: both with every commit synced (``sync_interval: 0s``), what the outbox
  did before; ``..._commit_50ms`` and ``..._all_commit_50ms``: both synced with a commit every
  50 ms, the default before that; ``..._page_4k``: the policies' readings in a file of 4 KiB
  pages (SQLite's default, and the outbox's before). Inserts and their checkpoint only: the
  deletes of acknowledged rows and rule state of a running gateway are in the link benchmark's
  ``card_mb_per_day_demo_site``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import sqlite3
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import buffer.store
from buffer import Outbox
from drivers.types import Reading
from edge import contract
from edge.config import load_site
from edge.config.model import BufferConfig
from edge.config.storage import PointStorage, storage_of
from edge.storage_policy import Policy, Storage, Stored, reconstruct, wire_ms
from tests.benchmarks.buffer import write_bytes
from tests.fixtures.traces import EFM_SHAPES, T0, Shape, device_readings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"
GATEWAY = "gw-bench-0001"
EPOCH = "0b6c1f7e-3c1a-4d55-9a59-2f4f1c8e7d10"
#: The outbox's default commit window (buffer.commit_interval, edge/config/model.py).
COMMIT_WINDOW: Final = BufferConfig.model_fields["commit_interval"].default
#: And how long a committed reading may wait to be synced (buffer.sync_interval).
SYNC_INTERVAL: Final = BufferConfig.model_fields["sync_interval"].default
#: The commit window the outbox had by default before: every reading durable within 50 ms.
COMMIT_WINDOW_BEFORE: Final = 0.05
#: A leakage fault: the residual current rises by this much for this long.
FAULT_MA, FAULT_S = 230.0, 60.0

#: The reference site's 6 metering points beyond efm-ref's 14, and the policies an engineer
#: would give them: power within 50 W or 2 %, the power factor within 0.02, the frequency within
#: 0.1 Hz (a fifth of GB/T 15945's 0.2 Hz), the neutral current like the phases.
METERING: dict[str, tuple[Shape, Policy]] = {
    **{
        f"power_{p}": (
            Shape(0.7, 0.35, 0.01, 0.001, steps_per_day=24, step=0.45, unit="kW"),
            Policy("swinging-door", 0.05, 2.0, 900.0),
        )
        for p in "abc"
    },
    "power_factor": (Shape(0.93, 0.03, 0.003, 0.01), Policy("deadband", 0.02, 0.0, 900.0)),
    "frequency": (Shape(50.0, 0.05, 0.01, 0.01, unit="Hz"), Policy("deadband", 0.1, 0.0, 900.0)),
    "current_n": (Shape(0.4, 0.2, 0.02, 0.01, unit="A"), Policy("swinging-door", 0.1, 2.0, 900.0)),
}


@dataclass
class Run:
    """What one simulated stretch of a site gave."""

    polled: int = 0
    #: Every stored reading, with the time it was stored at (the poll or alarm that stored it).
    stored: list[tuple[float, Stored]] = field(default_factory=list)
    #: Per (device, point): the polled times (ms) and values, for the reconstruction.
    times: dict[tuple[str, str], array[int]] = field(default_factory=dict)
    values: dict[tuple[str, str], array[float]] = field(default_factory=dict)
    alarms: list[tuple[str, float]] = field(default_factory=list)


def _with_fault(readings: Iterable[Reading], start: float | None) -> Iterator[Reading]:
    for r in readings:
        if start is not None and r.point == "residual_current" and start <= r.ts < start + FAULT_S:
            yield Reading(r.device_id, r.point, r.value + FAULT_MA, r.unit, r.ts, r.mono)
        else:
            yield r


def simulate(
    storage: Storage,
    devices: list[str],
    shapes: dict[str, Shape],
    seconds: float,
    faults: dict[str, float],
    *,
    keep_polled: bool = True,
) -> Run:
    """Every device polled every second for ``seconds``, through ``storage``; ``faults`` gives
    the time (seconds from the start) of each device's leakage fault."""
    run = Run()
    streams = [
        _with_fault(
            device_readings(device, seconds, 1.0, seed, shapes),
            None if device not in faults else T0 + faults[device],
        )
        for seed, device in enumerate(devices)
    ]
    raised: dict[str, bool] = {}
    for reading in heapq.merge(*streams, key=lambda r: r.ts):
        run.polled += 1
        ts = reading.ts
        for stored in storage.offer(reading):
            run.stored.append((ts, stored))
        if keep_polled:
            key = (reading.device_id, reading.point)
            if key not in run.times:
                run.times[key], run.values[key] = array("q"), array("d")
            run.times[key].append(wire_ms(ts))
            run.values[key].append(reading.value)
        fault = faults.get(reading.device_id)
        if fault is None or reading.point != "residual_current":
            continue
        # The over-limit rule of the example site: raised at the jump, cleared when it ends.
        active = T0 + fault <= ts < T0 + fault + FAULT_S
        if active != raised.get(reading.device_id, False):
            raised[reading.device_id] = active
            if active:
                run.alarms.append((reading.device_id, ts))
            for stored in storage.alarm(reading.device_id, ts):
                run.stored.append((ts, stored))
    end = T0 + seconds
    run.stored += [(end, stored) for stored in storage.flush()]
    return run


def worst_over_band(run: Run, storage: Storage) -> float:
    """The largest reconstruction error over the band, every polled reading of ``run``."""
    by_point: dict[tuple[str, str], list[tuple[int, float, Any]]] = {}
    for _, stored in run.stored:
        r = stored.reading
        by_point.setdefault((r.device_id, r.point), []).append(
            (wire_ms(r.ts), r.value, stored.window)
        )
    worst = 0.0
    for key, times in run.times.items():
        policy = storage.policies.get(key, storage.default)
        rebuilt = reconstruct(by_point.get(key, []), times, policy)
        for value, guess in zip(run.values[key], rebuilt, strict=True):
            if guess is None:
                return math.inf
            band = policy.tolerance(value)
            error = abs(guess - value)
            ratio = (0.0 if error == 0 else math.inf) if band == 0 else error / band
            worst = max(worst, ratio)
    return worst


def window_counts(run: Run, pre: float, post: float) -> tuple[int, int]:
    """(stored, polled) readings of the first alarm's device within its window."""
    device, at = run.alarms[0]
    low, high = wire_ms(at - pre), wire_ms(at + post)
    stored = {
        (s.reading.point, wire_ms(s.reading.ts))
        for _, s in run.stored
        if s.reading.device_id == device and low <= wire_ms(s.reading.ts) <= high
    }
    polled = sum(
        1 for (d, _), times in run.times.items() if d == device for ms in times if low <= ms <= high
    )
    return len(stored), polled


def telemetry_payloads(
    stored: list[tuple[float, Stored]],
    aliases: contract.Aliases,
    *,
    deflate: bool,
    batch_interval: float,
    batch_size: int,
) -> Iterator[bytes]:
    """The payloads of the telemetry messages the live uplink would send for ``stored``: what
    was stored within each ``batch_interval``, at most ``batch_size`` readings a message."""
    seq = 1
    windows = itertools.groupby(stored, key=lambda item: math.floor(item[0] / batch_interval))
    for _, group in windows:
        rows = []
        for _, s in group:
            rows.append(_Row(seq, contract.reading_body(s.reading, s.window)))
            seq += 1
        for i in range(0, len(rows), batch_size):
            payload = contract.telemetry_message(
                GATEWAY, EPOCH, rows[i : i + batch_size], clock_synced=True,
                historical=False, aliases=aliases, sent_at=T0,
            )  # fmt: skip
            yield contract.compress(payload) if deflate else payload


@dataclass(frozen=True)
class _Row:
    seq: int
    body: dict[str, Any]


async def card_bytes(
    stored: list[tuple[float, Stored]],
    folder: Path,
    commit_window: float = COMMIT_WINDOW,
    sync_interval: float = SYNC_INTERVAL,
) -> int:
    """``write_bytes`` of a real outbox taking ``stored``, one commit per ``commit_window`` and
    a sync at least every ``sync_interval`` of the readings' own time, then a checkpoint."""
    if not stored:
        return 0
    path = folder / f"card-{len(stored)}-{commit_window}-{sync_interval}.sqlite"
    clock = [stored[0][0]]  # the readings' own time: the replay is faster than they were
    async with await Outbox.open(
        path, commit_interval=0.0, sync_interval=sync_interval, clock=lambda: clock[0]
    ) as outbox:
        # The file as on a running gateway: every point of the site stored once (the first
        # poll stores each), a backlog, and the WAL checkpointed.
        first: dict[tuple[str, str], Stored] = {}
        for _, s in stored:
            first.setdefault((s.reading.device_id, s.reading.point), s)
        for s in [*first.values(), *(s for _, s in stored[:2000])]:
            outbox.submit("telemetry", contract.reading_body(s.reading, s.window))
        await outbox.flush()
        _checkpoint(path)
        written = write_bytes()
        groups = itertools.groupby(stored, key=lambda item: math.floor(item[0] / commit_window))
        for _, group in groups:
            for clock[0], s in group:
                outbox.submit("telemetry", contract.reading_body(s.reading, s.window))
            await outbox.flush()
        # What the measured commits put in the WAL is copied into the database sooner or
        # later (every 4 MiB of WAL): counted once, here.
        _checkpoint(path)
        return write_bytes() - written


def _checkpoint(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


@contextlib.contextmanager
def _page_size(size: int) -> Iterator[None]:
    """New outbox files made with pages of ``size`` bytes."""
    before = buffer.store.PAGE_SIZE
    buffer.store.PAGE_SIZE = size  # type: ignore[misc]
    try:
        yield
    finally:
        buffer.store.PAGE_SIZE = before  # type: ignore[misc]


def reference_site(seconds: float, *, every_reading: bool) -> tuple[Storage, Run]:
    devices = [f"efm-{d:03d}" for d in range(50)]
    shapes = {**EFM_SHAPES, **{name: shape for name, (shape, _) in METERING.items()}}
    example = storage_of(load_site(EXAMPLE))
    policies: dict[tuple[str, str], Policy] = {}
    for device in devices:
        for point in EFM_SHAPES:
            # Storage keeps only the points whose policy is not its default.
            policies[(device, point)] = example.policies.get(
                ("efm-shop-101", point), example.default
            )
        for name, (_, policy) in METERING.items():
            policies[(device, name)] = policy
    storage = Storage({} if every_reading else policies, pre=60, post=120)
    return storage, simulate(storage, devices, shapes, seconds, {}, keep_polled=False)


def aliases_of(run: Run) -> contract.Aliases:
    points: dict[str, dict[str, str]] = {}
    for _, s in run.stored:
        points.setdefault(s.reading.device_id, {}).setdefault(s.reading.point, s.reading.unit)
    return contract.Aliases(
        (device, point, unit) for device in sorted(points) for point, unit in points[device].items()
    )


#: The keys :func:`run` returns (tests/benchmarks/__main__.py).
KEYS: Final = (
    "stored_readings_ratio_default",
    "reconstruction_max_error_over_band",
    "alarm_window_readings",
    "alarm_window_polled_readings",
    "stored_readings_ratio_reference_site",
    "card_mb_per_day_reference_site",
    "card_mb_per_day_reference_site_all",
    "card_all_over_policies_reference_site",
    "card_mb_per_day_reference_site_synced",
    "card_mb_per_day_reference_site_all_synced",
    "card_mb_per_day_reference_site_commit_50ms",
    "card_mb_per_day_reference_site_all_commit_50ms",
    "card_mb_per_day_reference_site_page_4k",
)
#: A run of seconds that goes through every step (``--tiny``).
TINY: Final = {"hours": 0.02, "reference_seconds": 40.0, "card_seconds": 10.0}


def demo_day(hours: float) -> tuple[Run, int]:
    """The demo site through its storage policies over ``hours``, with a leakage fault on each
    of its three monitors (at 1/8, 3/8 and 5/8 of the run); returns the run and how many alarms
    it had."""
    config = load_site(EXAMPLE)
    demo = [d.id for d in config.devices]
    seconds = hours * 3600
    faults = {demo[i % len(demo)]: seconds * (2 * i + 1) / 8 for i in range(3)}
    day = simulate(storage_of(config), demo, EFM_SHAPES, seconds, faults)
    return day, len(day.alarms)


def run(
    hours: float = 24.0, reference_seconds: float = 3600.0, card_seconds: float = 600.0
) -> dict[str, float]:
    """The figures of the module's docstring: the demo site over ``hours``, the reference site
    over ``reference_seconds``, the card measured over ``card_seconds`` of it (after its first
    ten minutes, or what is left of the run before them: the first poll stores every point)."""
    if not 0 < card_seconds <= reference_seconds:
        raise ValueError("card_seconds must be above 0 and at most reference_seconds")
    config = load_site(EXAMPLE)
    window = config.storage.alarm_window
    day, _ = demo_day(hours)
    stored, polled = window_counts(day, window.pre, window.post)
    figures: dict[str, float] = {
        "stored_readings_ratio_default": round(len(day.stored) / day.polled, 4),
        "reconstruction_max_error_over_band": round(worst_over_band(day, storage_of(config)), 6),
        "alarm_window_readings": stored,
        "alarm_window_polled_readings": polled,
    }
    _, reference = reference_site(reference_seconds, every_reading=False)
    figures["stored_readings_ratio_reference_site"] = round(
        len(reference.stored) / reference.polled, 4
    )
    start = T0 + min(600.0, reference_seconds - card_seconds)
    measured = [item for item in reference.stored if start <= item[0] < start + card_seconds]
    # Every reading over as long a stretch, with the same settings: a fair comparison.
    _, every = reference_site(card_seconds, every_reading=True)
    per_day = 86_400 / card_seconds / 2**20
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        # On the disk, not a tmpfs: write_bytes counts only what goes to a block device.
        here = Path(folder)
        for key, readings, commit_window, sync in (
            ("", measured, COMMIT_WINDOW, SYNC_INTERVAL),
            ("_all", every.stored, COMMIT_WINDOW, SYNC_INTERVAL),
            # Every commit synced, as the outbox did before durability by class.
            ("_synced", measured, COMMIT_WINDOW, 0.0),
            ("_all_synced", every.stored, COMMIT_WINDOW, 0.0),
            # And a commit every 50 ms, the default before that.
            ("_commit_50ms", measured, COMMIT_WINDOW_BEFORE, 0.0),
            ("_all_commit_50ms", every.stored, COMMIT_WINDOW_BEFORE, 0.0),
        ):
            written = asyncio.run(card_bytes(readings, here, commit_window, sync))
            figures[f"card_mb_per_day_reference_site{key}"] = round(written * per_day, 1)
        with _page_size(4096):
            written = asyncio.run(card_bytes(measured, here / "page-4k"))
        figures["card_mb_per_day_reference_site_page_4k"] = round(written * per_day, 1)
    policies = figures["card_mb_per_day_reference_site"]
    figures["card_all_over_policies_reference_site"] = (
        round(figures["card_mb_per_day_reference_site_all"] / policies, 1) if policies else math.inf
    )
    return figures


def check_policy_defaults() -> None:
    """The reference site's metering policies are valid site-file policies."""
    for _, policy in METERING.values():
        PointStorage.model_validate(
            {"policy": policy.kind, "band": policy.band, "band_percent": policy.band_percent}
        )


if __name__ == "__main__":
    check_policy_defaults()
    for key, value in run().items():
        print(f"{key:<40} {value}")
