"""The capacity policy: thin the oldest telemetry, then drop it; never touch an event."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from buffer import CapacityPolicy, Outbox, Record
from buffer.tail import TelemetryTail

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a whole minute


def reading(point: str, second: int, value: float) -> dict[str, Any]:
    return {"device": "efm-1", "point": point, "unit": "mA", "value": value, "ts": T0 + second}


def wave(point: str, second: int) -> float:
    """A different value every second, with a different shape per point."""
    return round(100 + 50 * math.sin(second / 7 + len(point)) + (second % 13), 3)


async def all_records(outbox: Outbox) -> tuple[list[Record], list[Record]]:
    return await outbox.peek("event", 1_000_000), await outbox.peek("telemetry", 1_000_000)


async def settle(outbox: Outbox, policy: CapacityPolicy, seconds: float = 20) -> None:
    """Wait until the policy has nothing left to do (the live size is under the limit)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        usage = await outbox._run(outbox._store.usage, policy)
        if usage.reason is None:
            return
        assert asyncio.get_running_loop().time() < deadline, f"still over: {usage}"
        await asyncio.sleep(0.05)


async def test_over_max_size_the_oldest_telemetry_is_thinned_keeping_min_max_last(
    tmp_path: Path,
) -> None:
    policy = CapacityPolicy(max_size=512 * 1024, thin_window=60.0)
    points = ("residual_current", "temperature_1")
    sent: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    async with await Outbox.open(
        tmp_path / "o.db", policy=policy, capacity_interval=0.02
    ) as outbox:
        alarms = []
        for second in range(12_000):
            for point in points:
                value = wave(point, second)
                outbox.submit("telemetry", reading(point, second, value))
                sent[(point, second // 60)].append((T0 + second, value))
            if second % 1000 == 500:
                alarms.append(await outbox.append("event", {"kind": "alarm-raised", "n": second}))
        await outbox.flush()
        await settle(outbox, policy)
        events, telemetry = await all_records(outbox)
        counters = outbox.counters

    # Events are never thinned: every alarm is still there.
    assert [e.seq for e in events if e.body["kind"] == "alarm-raised"] == alarms
    reports = [e.body for e in events if e.body["kind"] == "buffer-thinned"]
    assert reports, "thinning was not reported"
    assert not [e for e in events if e.body["kind"] == "buffer-dropped"], "dropped too early"
    # The reports add up to what is missing, and to the counter `edge buffer stats` shows.
    removed = sum(r["rows_removed"] for r in reports)
    assert removed == counters["thinned_rows"] == 24_000 - len(telemetry) > 0
    assert {r["reason"] for r in reports} == {"max_size"}
    assert reports[0]["from"] == "2026-01-01T00:00:00.000Z"
    # Order survives: seqs and, per point, times only increase.
    assert [r.seq for r in telemetry] == sorted(r.seq for r in telemetry)
    kept: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for record in telemetry:
        second = int(record.body["ts"] - T0)
        kept[(record.body["point"], second // 60)].append((record.body["ts"], record.body["value"]))
    thinned_windows = straddling = 0
    for window, originals in sent.items():
        remaining = kept[window]
        if len(remaining) < len(originals):
            thinned_windows += 1
            # The trend survives: min, max and last of every window are still there.
            values = [v for _, v in remaining]
            assert min(values) == min(v for _, v in originals), window
            assert max(values) == max(v for _, v in originals), window
            assert max(remaining) == max(originals), window  # the last (by time)
            # A window cut by the end of a thinning step keeps min/max/last of each part.
            straddling += len(remaining) > 3
    assert thinned_windows > 100
    assert straddling <= len(points) * len(reports)


async def test_when_thinning_is_not_enough_the_oldest_telemetry_is_dropped(tmp_path: Path) -> None:
    # One reading per window: thinning can remove nothing, so the policy must drop.
    policy = CapacityPolicy(max_size=256 * 1024, thin_window=0.5)
    async with await Outbox.open(
        tmp_path / "o.db", policy=policy, capacity_interval=0.02
    ) as outbox:
        first_alarm = await outbox.append("event", {"kind": "alarm-raised", "n": 0})
        for second in range(30_000):
            outbox.submit("telemetry", reading("residual_current", second, float(second)))
        last_alarm = await outbox.append("event", {"kind": "alarm-raised", "n": 1})
        await settle(outbox, policy)
        events, telemetry = await all_records(outbox)
        counters = outbox.counters

    kinds = [e.body["kind"] for e in events]
    assert [e.seq for e in events if e.body["kind"] == "alarm-raised"] == [first_alarm, last_alarm]
    # Thinned (nothing to thin, but it had its turn) before anything was dropped.
    assert kinds.index("buffer-thinned") < kinds.index("buffer-dropped")
    dropped = [e.body for e in events if e.body["kind"] == "buffer-dropped"]
    assert sum(d["rows_removed"] for d in dropped) == counters["dropped_rows"]
    assert counters["dropped_rows"] + len(telemetry) == 30_000
    # The oldest went, the newest stayed, in order, with no hole in the middle.
    values = [r.body["value"] for r in telemetry]
    assert values == [float(v) for v in range(30_000 - len(values), 30_000)]
    assert dropped[0]["seq_first"] == first_alarm + 1
    assert counters["rows_telemetry"] == len(telemetry)


async def test_events_alone_are_never_dropped_even_over_the_limit(tmp_path: Path) -> None:
    policy = CapacityPolicy(max_size=64 * 1024)
    async with await Outbox.open(
        tmp_path / "o.db", policy=policy, capacity_interval=0.02
    ) as outbox:
        for n in range(3000):
            outbox.submit("event", {"kind": "alarm-raised", "n": n, "pad": "z" * 40})
        await outbox.flush()
        await asyncio.sleep(0.3)  # several policy rounds
        events = await outbox.peek("event", 10_000)
    assert [e.body["n"] for e in events] == list(range(3000))


async def test_looks_at_recent_telemetry_never_find_rows_the_policy_removed(
    tmp_path: Path,
) -> None:
    policy = CapacityPolicy(max_size=256 * 1024, thin_window=60.0)
    async with await Outbox.open(
        tmp_path / "o.db", policy=policy, capacity_interval=0.02
    ) as outbox:
        # A tail that would hold every row: the rows thinned away are among those it held.
        outbox._tail = TelemetryTail(outbox.last_seq, limit=1_000_000)
        for second in range(12_000):
            outbox.submit("telemetry", reading("residual_current", second, wave("r", second)))
        await outbox.flush()
        await settle(outbox, policy)
        assert outbox.counters["thinned_rows"] > 0
        for after in range(0, outbox.last_seq, 997):
            on_file = await outbox._run(outbox._store.peek, "telemetry", 50, after, None)
            assert await outbox.peek("telemetry", 50, after=after) == on_file, after
