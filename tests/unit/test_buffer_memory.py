"""Memory in front of the outbox: events always wait, readings beyond the limit are shed, and
the platform hears of every shed reading from a readings-lost event.

The disk is a real full tmpfs where this machine mounts one, else a child process whose
RLIMIT_FSIZE stops the database from growing (as tests/unit/test_buffer_disk.py does).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from buffer import Outbox, OutboxUnavailable
from drivers import Reading
from edge import gateway as gateway_module
from edge.config import SiteConfig
from edge.contract import event_body
from edge.gateway import Gateway
from edge.schemas import validate
from tests.unit.test_buffer_disk import (
    EXAMPLE,
    T0,
    child_with_fsize_limit,
    fill,
    run_in_child_with_fsize_limit,
    tmpfs,
)

LIMIT = 300
DEVICES = ("efm-1", "efm-2")


def reading(n: int) -> dict[str, Any]:
    return {
        "device": DEVICES[n % 2],
        "point": "residual_current",
        "unit": "mA",
        "value": float(n),
        "ts": T0 + n,
    }


async def shed_scenario(
    folder: Path, refuse: Callable[[], None], allow: Callable[[], None]
) -> dict[str, Any]:
    """Fill the disk under a running outbox, submit past the memory limit, free the disk."""
    async with await Outbox.open(
        folder / "outbox.sqlite", commit_interval=0.01, memory_limit=LIMIT
    ) as outbox:
        await outbox.append("event", {"kind": "gateway-started"})
        refuse()
        n = 0
        started = time.monotonic()
        # Until readings are being shed: the disk refuses and the memory is full.
        while not outbox.lost:
            outbox.submit("telemetry", reading(n))  # never raises, never blocks
            n += 1
            if n % 100 == 0:
                await asyncio.sleep(0.01)
            assert time.monotonic() - started < 30, "the disk never refused"
        for alarm in range(3):
            outbox.submit("event", {"kind": "alarm-raised", "n": alarm})
            for _ in range(500):
                outbox.submit("telemetry", reading(n))
                n += 1
        refused = None
        try:
            await outbox.append("telemetry", reading(n))
        except OutboxUnavailable as exc:
            refused = str(exc)
        n += 1
        shed_while_refused = outbox.lost.total
        allow()
        started = time.monotonic()
        while True:
            await outbox.flush()
            events = [e.body for e in await outbox.peek("event", 1000)]
            if any(e["kind"] == "readings-lost" for e in events) and not outbox.lost:
                break
            assert time.monotonic() - started < 30, "no readings-lost event"
            await asyncio.sleep(0.05)
        telemetry = await outbox.peek("telemetry", 10_000_000)
    return {
        "submitted": n,
        "stored": [r.body["value"] for r in telemetry],
        "events": events,
        "shed_while_refused": shed_while_refused,
        "append_refused": refused,
    }


def check_shed_report(report: dict[str, Any]) -> None:
    events = report["events"]
    kinds = [e["kind"] for e in events]
    assert kinds.count("alarm-raised") == 3, "an event was shed"
    assert [e["n"] for e in events if e["kind"] == "alarm-raised"] == [0, 1, 2]
    lost = [e for e in events if e["kind"] == "readings-lost"]
    for event in lost:
        validate("event", {**envelope(), **event, "ts": "2026-01-01T00:00:00.000Z"})
    shed = sum(e["readings"] for e in lost)
    stored = report["stored"]
    assert report["shed_while_refused"] > 1500
    assert len(stored) + shed == report["submitted"], "a reading vanished without a count"
    assert len(stored) >= LIMIT, "the readings that fitted in memory were kept"
    per_device: dict[str, int] = {}
    for event in lost:
        for device, count in event["devices"].items():
            per_device[device] = per_device.get(device, 0) + count
    assert set(per_device) == set(DEVICES)
    assert sum(per_device.values()) == shed
    kept = set(stored)
    missing = [T0 + n for n in range(report["submitted"]) if float(n) not in kept]
    assert min(e["from"] for e in lost) == iso(min(missing))
    assert max(e["to"] for e in lost) == iso(max(missing))
    assert report["append_refused"] is not None, "append() of a shed reading must not hang"


def envelope() -> dict[str, Any]:
    return {
        "schema": "edge.event/1",
        "gateway_id": "gw-1",
        "epoch": "e",
        "message_id": "m",
        "sent_at": "2026-01-01T00:00:00.000Z",
        "clock_synced": True,
        "seq": 1,
        "historical": False,
    }


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def test_a_full_memory_sheds_readings_never_events_and_says_how_many(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        if disk is None:
            report = run_in_child_with_fsize_limit(__name__, tmp_path / "child")
        else:
            holder: list[Path] = []
            report = asyncio.run(
                shed_scenario(
                    disk, lambda: holder.append(fill(disk)), lambda: holder.pop().unlink()
                )
            )
    check_shed_report(report)


def test_shedding_under_rlimit_fsize_in_a_child(tmp_path: Path) -> None:
    """The fallback of the test above, run everywhere so that it is known to work."""
    check_shed_report(run_in_child_with_fsize_limit(__name__, tmp_path / "child"))


async def test_before_the_outbox_opens_readings_are_shed_and_reported_events_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "PENDING_LIMIT", 50)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    data["storage"] = {"policy": "all"}  # every reading goes to the outbox, as before policies
    gateway = Gateway(SiteConfig.model_validate(data), pin_factory=MockFactory())
    try:
        for n in range(120):
            gateway.on_sample(Reading("efm-shop-101", "residual_current", 100.0, "mA", T0 + n, 0))
            if n % 40 == 0:
                gateway.report("threshold-changed", rule="r", n=n)
        assert (await gateway.health())["readings_lost"] == 70
        await gateway._buffer_service()  # opens the outbox and hands over what waited
        outbox = gateway.outbox
        assert outbox is not None
        await outbox.flush()
        events = [e.body for e in await outbox.peek("event", 100)]
        telemetry = await outbox.peek("telemetry", 1000)
        health = await gateway.health()
    finally:
        if gateway.outbox is not None:
            await gateway.outbox.close()
        gateway.annunciator.close()
    assert [e["n"] for e in events if e["kind"] == "threshold-changed"] == [0, 40, 80]
    assert [r.body["ts"] for r in telemetry] == [T0 + n for n in range(50)]
    (lost,) = [e for e in events if e["kind"] == "readings-lost"]
    assert lost["readings"] == 70
    assert lost["devices"] == {"efm-shop-101": 70}
    assert (lost["from"], lost["to"]) == (iso(T0 + 50), iso(T0 + 119))
    assert health["readings_lost"] == 70
    assert event_body("readings-lost", T0)["kind"] == "readings-lost"


async def test_a_memory_limit_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory_limit must be at least 1"):
        await Outbox.open(tmp_path / "outbox.sqlite", memory_limit=0)
    assert not (tmp_path / "outbox.sqlite").exists(), "nothing is created for a bad argument"


if __name__ == "__main__":
    child_with_fsize_limit(shed_scenario, Path(sys.argv[1]))
