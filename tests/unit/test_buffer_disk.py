"""A real full disk and a real read-only file system under the outbox.

The file systems are small tmpfs mounts made by the test (the tests run as root, here and in
CI). Where mounting is not allowed, the disk-full test runs instead in a child process whose
RLIMIT_FSIZE stops the database files from growing (EFBIG where a full disk gives ENOSPC); it
is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from buffer import CapacityPolicy, Outbox, OutboxUnwritable
from drivers import Reading
from edge.config import SiteConfig
from edge.gateway import Gateway

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"
T0 = 1_767_225_600.0


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of ``size`` mounted at ``where``; None where this machine will not mount."""
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system says ENOSPC; return it."""
    filler = folder / "filler"
    # Unbuffered: each write reaches the file system now, and closing has nothing to flush.
    with open(filler, "wb", buffering=0) as file:
        for block in (65536, 4096):  # then the last few blocks a 64 KiB write did not fit
            try:
                while True:
                    file.write(b"\0" * block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


def reading(n: int) -> dict[str, Any]:
    return {
        "device": "efm-1",
        "point": "residual_current",
        "unit": "mA",
        "value": float(n),
        "ts": T0 + n,
    }


async def disk_full_scenario(
    folder: Path, refuse: Callable[[], None], allow: Callable[[], None]
) -> dict[str, Any]:
    """Fill the disk under a running outbox, keep submitting, free the disk; report."""
    async with await Outbox.open(folder / "outbox.sqlite", commit_interval=0.01) as outbox:
        first = await outbox.append("event", {"kind": "gateway-started"})
        refuse()
        n = 0
        started = time.monotonic()
        # Submit until a commit has failed for real (the WAL had to grow and could not).
        while outbox.pending == 0 or time.monotonic() - started < 0.5:
            for _ in range(2000):
                outbox.submit("telemetry", reading(n))  # never raises, never blocks
                n += 1
            await asyncio.sleep(0.02)
            assert time.monotonic() - started < 30, "the disk never filled up"
        alarm = asyncio.create_task(outbox.append("event", {"kind": "alarm-raised"}))
        await asyncio.sleep(0.3)
        stuck = outbox.pending
        alarm_waiting = not alarm.done()
        allow()
        alarm_seq = await asyncio.wait_for(alarm, 30)
        await asyncio.wait_for(outbox.flush(), 30)
        telemetry = await outbox.peek("telemetry", 10_000_000)
        events = await outbox.peek("event", 100)
    return {
        "stuck": stuck,
        "alarm_waiting": alarm_waiting,
        "submitted": n,
        "values_in_order": [r.body["value"] for r in telemetry] == [float(i) for i in range(n)],
        "events": [[e.seq, e.body["kind"]] for e in events],  # lists: it may come through JSON
        "first": first,
        "alarm_seq": alarm_seq,
    }


def check_disk_full_report(report: dict[str, Any]) -> None:
    assert report["stuck"] > 0, "nothing ever waited: the disk did not refuse"
    assert report["alarm_waiting"], "an append returned while the disk refused it"
    assert report["values_in_order"], "a reading was lost or reordered"
    assert report["events"] == [
        [report["first"], "gateway-started"],
        [report["alarm_seq"], "alarm-raised"],
    ]


def test_disk_full_appends_wait_and_retry_then_recover_by_themselves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        if disk is None:
            report = run_in_child_with_fsize_limit(__name__, tmp_path / "child")
        else:
            holder: list[Path] = []

            def refuse() -> None:
                holder.append(fill(disk))

            def allow() -> None:
                holder.pop().unlink()

            with caplog.at_level(logging.WARNING, logger="buffer.outbox"):
                report = asyncio.run(disk_full_scenario(disk, refuse, allow))
            assert any("database or disk is full" in r.getMessage() for r in caplog.records)
    check_disk_full_report(report)


def test_disk_full_under_rlimit_fsize_in_a_child(tmp_path: Path) -> None:
    """The fallback of the test above, run everywhere so that it is known to work."""
    check_disk_full_report(run_in_child_with_fsize_limit(__name__, tmp_path / "child"))


#: A scenario of this file and of test_buffer_memory.py: fill the disk (``refuse``) under a
#: running outbox, free it (``allow``), and report what happened.
Scenario = Callable[
    [Path, Callable[[], None], Callable[[], None]], Coroutine[Any, Any, dict[str, Any]]
]


def run_in_child_with_fsize_limit(module: str, folder: Path) -> dict[str, Any]:
    """Run ``module``'s scenario in a child process whose disk is full by RLIMIT_FSIZE (where
    no tmpfs can be mounted); its report."""
    result = subprocess.run(
        [sys.executable, "-m", module, str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def child_with_fsize_limit(scenario: Scenario, folder: Path) -> None:
    """The child's side: ``scenario`` with no file allowed to grow past its size while the
    disk refuses; the report printed as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def refuse() -> None:
        wal = folder / "outbox.sqlite-wal"
        resource.setrlimit(resource.RLIMIT_FSIZE, (max(wal.stat().st_size, 65536), hard))

    def allow() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    print(json.dumps(asyncio.run(scenario(folder, refuse, allow))))


def residual(value: float) -> Reading:
    return Reading("efm-shop-101", "residual_current", value, "mA", time.time(), time.monotonic())


async def test_the_buzzer_sounds_at_once_while_the_disk_is_full(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        folder = disk or tmp_path
        data = yaml.safe_load(EXAMPLE.read_text())
        data["buffer"]["path"] = str(folder / "outbox.sqlite")
        pins = MockFactory()
        gateway = Gateway(SiteConfig.model_validate(data), pin_factory=pins)
        outbox = await Outbox.open(folder / "outbox.sqlite", commit_interval=0.01)
        gateway.outbox = outbox
        try:
            filler = fill(folder) if disk is not None else None
            if filler is None:  # no mount: refuse at the SQLite layer instead
                await outbox._run(outbox._store.conn.execute, "PRAGMA query_only = ON")
            for n in range(30_000):  # enough to need more WAL than the disk has
                outbox.submit("telemetry", reading(n))
            await asyncio.sleep(0.2)
            assert outbox.pending > 0, "the disk did not refuse"
            started = time.monotonic()
            gateway.on_sample(residual(450))  # over the example site's limit
            took = time.monotonic() - started
            assert pins.pin(17).state is True
            assert took < 0.5, f"the alarm path took {took:.3f} s"
            if filler is not None:
                filler.unlink()
            else:
                await outbox._run(outbox._store.conn.execute, "PRAGMA query_only = OFF")
            await asyncio.wait_for(outbox.flush(), 30)
            kinds = [e.body["kind"] for e in await outbox.peek("event", 10)]
            assert kinds == ["alarm-raised"]
        finally:
            await outbox.close(grace=5)
            gateway.annunciator.close()


async def test_under_min_free_disk_old_telemetry_is_thinned_and_space_given_back(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        if disk is None:
            pytest.fail("this test needs a tmpfs mount (run as root)")
        policy = CapacityPolicy(min_free_disk=5 * 2**20, thin_window=60.0)
        async with await Outbox.open(
            disk / "outbox.sqlite", policy=policy, capacity_interval=0.02
        ) as outbox:
            alarm = await outbox.append("event", {"kind": "alarm-raised"})
            for n in range(150_000):
                outbox.submit("telemetry", reading(n))
                if n % 5000 == 0:
                    await asyncio.sleep(0)
            await outbox.flush()
            deadline = time.monotonic() + 20
            while (usage := await outbox._run(outbox._store.usage, policy)).reason:
                assert time.monotonic() < deadline, usage
                await asyncio.sleep(0.05)
            events = await outbox.peek("event", 1000)
            counters = outbox.counters
        stat = os.statvfs(disk)
        free = stat.f_bavail * stat.f_frsize
    assert free >= 5 * 2**20
    assert events[0].seq == alarm
    reasons = {e.body.get("reason") for e in events[1:]}
    assert reasons == {"min_free_disk"}
    assert counters["thinned_rows"] > 0


async def test_a_read_only_file_system_is_a_clear_error_naming_path_and_fix(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "ro", "1m") as disk:
        if disk is None:
            pytest.fail("this test needs a tmpfs mount (run as root)")
        async with await Outbox.open(disk / "outbox.sqlite") as outbox:
            await outbox.append("event", {"kind": "gateway-started"})
        remount = await asyncio.create_subprocess_exec("mount", "-o", "remount,ro", str(disk))
        assert await remount.wait() == 0
        for path in (disk / "outbox.sqlite", disk / "new" / "outbox.sqlite"):
            with pytest.raises(OutboxUnwritable) as caught:
                await Outbox.open(path)
            text = str(caught.value)
            assert str(path) in text
            assert "Read-only file system" in text
            assert "remount" in text
            assert "buffer.path" in text


if __name__ == "__main__":
    child_with_fsize_limit(disk_full_scenario, Path(sys.argv[1]))


async def test_rule_state_refused_by_a_full_disk_names_the_disk_not_the_rollback(
    tmp_path: Path,
) -> None:
    # A COMMIT refused for lack of space has already ended the transaction; the error the
    # caller sees must be the disk's, not "cannot rollback - no transaction is active".
    with tmpfs(tmp_path / "disk", "1m") as disk:
        if disk is None:
            pytest.fail("this test needs a tmpfs mount (run as root)")
        async with await Outbox.open(disk / "outbox.sqlite", commit_interval=0.01) as outbox:
            await outbox.state_put("rules/small", {"n": 1})
            filler = fill(disk)
            with pytest.raises(Exception) as caught:  # noqa: PT011 -- the message is the test
                await outbox.state_put("rules/big", {"blob": "x" * 400_000})
            text = str(caught.value).lower()
            assert "rollback" not in text, text
            assert "full" in text or "space" in text, text
            filler.unlink()
            assert await outbox.state_put("rules/big", {"blob": "y"}) == 1
