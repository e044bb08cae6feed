"""Figures of the outbox (buffer/), measured on real files on this machine's disk.

- ``buffer_ingest_readings_per_s``: readings submitted as the gateway submits them (one body
  dict each, ``Outbox.submit``), until ``flush()`` says all are committed with the durable
  group commit (WAL, ``synchronous = FULL``), after a warm-up that gives the file a backlog.
- ``buffer_disk_bytes_per_reading``: ``write_bytes`` of ``/proc/self/io`` over that ingest
  (the WAL, the checkpoints into the database, everything) divided by the readings.
  ``buffer_disk_bytes_per_reading_1k_per_s`` is the same at a gateway's pace: 1000 readings a
  second, so each 50 ms commit carries 50 readings and rewrites its partly filled pages.
- ``buffer_drain_read_readings_per_s``: ``peek`` through the backlog in batches of 1000, as the
  uplink reads; ``buffer_drain_ack_readings_per_s`` also deletes each batch (``ack``).
- ``buffer_startup_s_10m``: a fresh process opens an outbox holding the backlog (10 million
  readings in benchmark mode) until the first peek of each stream and the depth have answered.
  ``buffer_startup_process_s_10m`` counts from the start of that process (interpreter and
  imports included); ``buffer_background_check_s_10m`` is how long after opening the background
  ``quick_check`` of that file finished (while the gateway already works).
- ``buffer_rss_growth_mb_10m``: the RSS of that process after opening, draining 100 000
  readings and ingesting 100 000, minus the RSS of the same work on an empty outbox.
- ``buffer_kill9_runs`` / ``buffer_kill9_lost``: the SIGKILL harness (buffer_crash.py);
  ``buffer_kill9_problems`` counts every kind of violation (lost, duplicated, renumbered,
  integrity), ``buffer_kill9_lost`` the acknowledged records that are gone.

``python -m tests.benchmarks --only buffer`` runs these alone; ``--buffer-backlog`` and
``--buffer-kills`` shrink them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from buffer import Outbox
from tests.benchmarks.buffer_crash import run_kills

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600.0
#: 20 monitors of 14 points each: the example site's kind of device, a large site's count.
SERIES = [(f"efm-{d:02d}", f"point_{p:02d}") for d in range(20) for p in range(14)]


def write_bytes() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


#: Readings a burst may leave waiting in memory: well under the outbox's bound (200,000).
BURST_LIMIT = 100_000


async def ingest(outbox: Outbox, count: int, start: int = 0, *, pace: float | None = None) -> None:
    """Submit ``count`` readings as the gateway does: one new body dict per reading."""
    began = time.monotonic()
    for n in range(start, start + count):
        device, point = SERIES[n % len(SERIES)]
        outbox.submit(
            "telemetry",
            {
                "device": device,
                "point": point,
                "value": round(n % 997 * 0.37, 2),
                "unit": "mA",
                "ts": T0 + n / len(SERIES),
            },
        )
        if pace is not None and n % 50 == 49:
            # A poll loop: readings arrive spread over time, not in one burst.
            await asyncio.sleep(max(0.0, began + (n - start + 1) / pace - time.monotonic()))
        elif n % 1000 == 999:
            await asyncio.sleep(0)  # let the writer take what is waiting
            if outbox.pending > BURST_LIMIT:
                # A burst faster than the disk: wait for it rather than have the outbox shed
                # readings beyond its memory bound (what this measures is the writer's pace).
                await outbox.flush()
    await outbox.flush()


async def measure_ingest_and_drain(folder: Path, readings: int) -> dict[str, float]:
    path = folder / "ingest.sqlite"
    figures: dict[str, float] = {}
    async with await Outbox.open(path) as outbox:
        await ingest(outbox, readings // 4)  # warm-up: the file and its WAL exist, a backlog
        written = write_bytes()
        began = time.perf_counter()
        await ingest(outbox, readings, readings // 4)
        elapsed = time.perf_counter() - began
        figures["buffer_ingest_readings_per_s"] = round(readings / elapsed)
        figures["buffer_disk_bytes_per_reading"] = round((write_bytes() - written) / readings, 1)
        figures["buffer_file_bytes_per_reading"] = round(
            path.stat().st_size / (readings + readings // 4), 1
        )

        total = readings + readings // 4
        began = time.perf_counter()
        after = seen = 0
        while batch := await outbox.peek("telemetry", 1000, after=after):
            seen += len(batch)
            after = batch[-1].seq
        assert seen == total, (seen, total)
        figures["buffer_drain_read_readings_per_s"] = round(seen / (time.perf_counter() - began))

        acked = 0
        began = time.perf_counter()
        while acked < min(total, 500_000) and (batch := await outbox.peek("telemetry", 1000)):
            await outbox.ack([r.seq for r in batch])
            acked += len(batch)
        figures["buffer_drain_ack_readings_per_s"] = round(acked / (time.perf_counter() - began))

    # At a gateway's pace each commit carries few readings: the partly filled pages it
    # rewrites dominate, and a longer commit window is the lever (buffer.commit_interval).
    for window, key in ((0.05, ""), (0.2, "_200ms")):
        async with await Outbox.open(folder / f"paced{key}.sqlite", commit_interval=window) as box:
            count = min(20_000, max(1000, readings // 100))
            await ingest(box, count // 4, pace=1000.0)
            written = write_bytes()
            await ingest(box, count, count // 4, pace=1000.0)
            figures[f"buffer_disk_bytes_per_reading_1k_per_s{key}"] = round(
                (write_bytes() - written) / count, 1
            )
    return figures


async def build_backlog(path: Path, readings: int) -> float:
    """Fill an outbox with ``readings`` readings (and an event per 100 000); readings/s."""
    began = time.perf_counter()
    async with await Outbox.open(path) as outbox:
        step = 100_000
        for start in range(0, readings, step):
            outbox.submit("event", {"kind": "device-offline", "device": "efm-03", "ts": T0})
            await ingest(outbox, min(step, readings - start), start)
    return readings / (time.perf_counter() - began)


async def _child(path: Path) -> dict[str, float]:
    """In a fresh process: open, first answers, then a gateway's work; time and RSS."""
    baseline = rss_mb()
    began = time.perf_counter()
    outbox = await Outbox.open(path)
    await outbox.peek("event", 50)
    await outbox.peek("telemetry", 100)
    depth = await outbox.depth()
    opened = time.perf_counter() - began
    # From the kernel's start of this process: the interpreter and the imports as well.
    since_exec = time.time() - psutil.Process().create_time()
    try:
        drained = 0
        while drained < 100_000 and (batch := await outbox.peek("telemetry", 1000)):
            await outbox.ack([r.seq for r in batch])
            drained += len(batch)
        await ingest(outbox, 100_000, 50_000_000)
        rss = rss_mb()
        # A large file is checked in the background after opening; how long until it is known
        # to be sound (0 when it was checked before opening).
        checker = outbox._checker
        if checker is not None:
            await asyncio.get_running_loop().run_in_executor(None, checker.join)
        checked = time.perf_counter() - began if checker is not None else 0.0
    finally:
        await outbox.close()
    return {
        "check_s": checked,
        "open_s": opened,
        "process_s": since_exec,
        "rss_mb": rss,
        "baseline_mb": baseline,
        "telemetry": depth["telemetry"],
    }


def child_figures(path: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.buffer", "child", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
    return figures


KEYS = (
    "buffer_ingest_readings_per_s",
    "buffer_disk_bytes_per_reading",
    "buffer_file_bytes_per_reading",
    "buffer_drain_read_readings_per_s",
    "buffer_drain_ack_readings_per_s",
    "buffer_disk_bytes_per_reading_1k_per_s",
    "buffer_disk_bytes_per_reading_1k_per_s_200ms",
    "buffer_backlog_build_readings_per_s",
    "buffer_backlog_file_mb",
    "buffer_startup_s_10m",
    "buffer_startup_s_empty",
    "buffer_startup_process_s_10m",
    "buffer_background_check_s_10m",
    "buffer_rss_growth_mb_10m",
    "buffer_rss_mb_10m",
    "buffer_kill9_runs",
    "buffer_kill9_lost",
    "buffer_kill9_problems",
    "buffer_kill9_acked_records",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"readings": 5_000, "backlog": 10_000, "kills": 1}


def run(
    *, readings: int = 2_000_000, backlog: int = 10_000_000, kills: int = 100
) -> dict[str, float]:
    """Every buffer figure; the defaults are the benchmark mode's sizes."""
    figures: dict[str, float] = {}
    # On the disk, not a tmpfs: write_bytes counts only what goes to a block device.
    (ROOT / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-buffer-", dir=ROOT / "var") as tmp:
        folder = Path(tmp)
        print(f"buffer: ingest and drain of {readings:,} readings", flush=True)
        figures.update(asyncio.run(measure_ingest_and_drain(folder, readings)))

        print(f"buffer: building a backlog of {backlog:,} readings", flush=True)
        big = folder / "backlog.sqlite"
        figures["buffer_backlog_build_readings_per_s"] = round(
            asyncio.run(build_backlog(big, backlog))
        )
        figures["buffer_backlog_file_mb"] = round(big.stat().st_size / 2**20, 1)
        empty = child_figures(folder / "empty.sqlite")
        full = child_figures(big)
        assert full["telemetry"] == backlog, full
        figures["buffer_startup_s_10m"] = round(full["open_s"], 3)
        figures["buffer_startup_s_empty"] = round(empty["open_s"], 3)
        figures["buffer_startup_process_s_10m"] = round(full["process_s"], 2)
        figures["buffer_background_check_s_10m"] = round(full["check_s"], 2)
        figures["buffer_rss_growth_mb_10m"] = round(full["rss_mb"] - empty["rss_mb"], 1)
        figures["buffer_rss_mb_10m"] = round(full["rss_mb"], 1)

        print(f"buffer: {kills} SIGKILLs during ingest and drain", flush=True)
        report = run_kills(folder / "kill9", kills, seed=2024)
        figures["buffer_kill9_runs"] = report.kills
        figures["buffer_kill9_lost"] = report.lost
        figures["buffer_kill9_problems"] = (
            report.lost
            + report.duplicated
            + report.renumbered
            + report.integrity_failures
            + report.miscounted
        )
        figures["buffer_kill9_acked_records"] = report.acked
        for problem in report.problems[:10]:
            print(f"buffer: kill9: {problem}", flush=True)
    return figures


def _main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        print(json.dumps(asyncio.run(_child(Path(argv[1])))))
        return 0
    print(json.dumps(run(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
