"""Kill the outbox's process with SIGKILL at random moments, again and again, and check that
nothing it acknowledged was lost, duplicated or renumbered.

A worker process (``python -m tests.benchmarks.buffer_crash worker ...``) opens the outbox and
runs two tasks at once, as the gateway does:

- ingest: submits readings and events, each carrying a unique number ``n``, and once
  ``append()`` or ``flush()`` has returned (the outbox says: on disk) writes those numbers to
  ``acked.log``;
- drain: peeks the oldest rows, "publishes" them by writing ``n epoch seq`` to
  ``upstream.log`` (that write stands for the broker's PUBACK), then acks them.

Both logs are written with ``os.write`` before the next step, so a SIGKILL loses nothing in
them (the kernel has the bytes; only a power cut would need an fsync). A SIGKILL may still cut
a write short, and the next worker appends to the same logs, so every line ends with ``;`` and
every worker starts both logs on a new line: a cut line is then a line of its own without its
``;``, and counts as not written (the record was not acknowledged, or not delivered, yet).

The parent kills the worker at a random moment, checks ``PRAGMA integrity_check``, starts the
next worker on the same file, and at the end checks:

- every acknowledged number is in the file exactly once, unless it was delivered upstream
  (then it may be gone: the uplink acked it);
- no number is in the file twice, and no ``(epoch, seq)`` ever named two numbers;
- a number delivered upstream is always under the same ``(epoch, seq)`` (re-delivery after a
  crash is allowed, under another id it is not), and a delivered row still in the file has
  that seq.

The capacity policy is off here: thinning deletes undelivered rows on purpose (and reports it),
which is tested on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from buffer import Outbox
from buffer.store import live_counters

ROOT = Path(__file__).resolve().parents[2]
#: Each worker numbers its records from its own block, so numbers never repeat across runs.
BLOCK = 10_000_000


@dataclass
class CrashReport:
    kills: int = 0
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    renumbered: int = 0
    integrity_failures: int = 0
    miscounted: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.renumbered
            or self.integrity_failures
            or self.miscounted
        )


# --- the worker ---------------------------------------------------------------------------------


async def _worker(db: Path, logs: Path, base: int, seed: int) -> None:
    rng = random.Random(seed)
    acked = os.open(logs / "acked.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    upstream = os.open(logs / "upstream.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    # A line the last worker's kill cut short stays a line of its own.
    os.write(acked, b"\n")
    os.write(upstream, b"\n")
    # Half the workers leave routine readings unsynced for the gateway's 30 s (a kill must
    # still lose nothing committed: the page cache outlives the process), half sync them all.
    outbox = await Outbox.open(
        db,
        commit_interval=rng.choice([0.0, 0.005, 0.02]),
        max_batch=500,
        sync_interval=rng.choice([0.0, 30.0]),
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    counter = base

    async def ingest() -> None:
        nonlocal counter
        while True:
            numbers: list[int] = []
            if rng.random() < 0.2:
                counter += 1
                stream = "event" if rng.random() < 0.5 else "telemetry"
                await outbox.append(stream, _body(stream, counter))  # type: ignore[arg-type]
                numbers.append(counter)
            else:
                for _ in range(rng.randint(1, 400)):
                    counter += 1
                    stream = "event" if rng.random() < 0.1 else "telemetry"
                    outbox.submit(stream, _body(stream, counter))  # type: ignore[arg-type]
                    numbers.append(counter)
                await outbox.flush()
            os.write(acked, "".join(f"{n};\n" for n in numbers).encode())
            await asyncio.sleep(rng.random() * 0.01)

    async def drain() -> None:
        while True:
            records = await outbox.peek("event", 50) or await outbox.peek("telemetry", 300)
            if not records:
                await asyncio.sleep(0.01)
                continue
            lines = [f"{_number(r.body)} {outbox.epoch} {r.seq};\n" for r in records]
            os.write(upstream, "".join(lines).encode())
            await outbox.ack([r.seq for r in records])
            await asyncio.sleep(rng.random() * 0.02)

    await asyncio.gather(ingest(), drain())


def _body(stream: str, n: int) -> dict[str, object]:
    if stream == "event":
        return {"kind": "test", "ts": time.time(), "n": n}
    # The number rides in the value: floats hold integers exactly up to 2**53.
    return {
        "device": "efm-1",
        "point": f"p{n % 7}",
        "unit": "mA",
        "value": float(n),
        "ts": time.time(),
    }


def _number(body: dict[str, object]) -> int:
    value = body["n"] if "n" in body else body["value"]
    assert isinstance(value, int | float)
    return int(value)


# --- the harness --------------------------------------------------------------------------------


def run_kills(workdir: Path, kills: int, *, seed: int = 1) -> CrashReport:
    """Run ``kills`` workers on one outbox file, SIGKILL each at a random moment, then check."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "outbox.sqlite"
    report = CrashReport()
    for run in range(kills):
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.benchmarks.buffer_crash",
                "worker",
                str(db),
                str(workdir),
                str((run + 1) * BLOCK),
                str(rng.randrange(2**31)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert worker.stdout is not None
        # Mostly kill while it ingests and drains; now and then while it is still opening the
        # file (recovering the WAL of the last kill, migrating, checking).
        if rng.random() < 0.85:
            worker.stdout.readline()
            time.sleep(rng.uniform(0.02, 0.6))
        else:
            time.sleep(rng.uniform(0.0, 0.3))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
        report.kills += 1
        if db.exists():
            with sqlite3.connect(db) as conn:
                result = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                report.integrity_failures += 1
                report.problems.append(f"after kill {run + 1}: integrity_check: {result[:3]}")
    _verify(db, workdir, report)
    return report


def _verify(db: Path, logs: Path, report: CrashReport) -> None:
    acked = _read_numbers(logs / "acked.log")
    delivered: dict[int, set[tuple[str, int]]] = {}
    names: dict[tuple[str, int], set[int]] = {}
    for line in _lines(logs / "upstream.log"):
        n_text, epoch, seq_text = line.split()
        n, seq = int(n_text), int(seq_text)
        delivered.setdefault(n, set()).add((epoch, seq))
        names.setdefault((epoch, seq), set()).add(n)
    stored: dict[int, list[int]] = {}
    with sqlite3.connect(db) as conn:
        epoch = str(conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])
        for seq, body in conn.execute("SELECT seq, body FROM events"):
            number = json.loads(body).get("n")
            if number is None:  # not one of ours (a buffer-reset would be a failure anyway)
                report.problems.append(f"unexpected event {body}")
                continue
            stored.setdefault(int(number), []).append(int(seq))
        for seq, value in conn.execute("SELECT seq, value FROM telemetry"):
            stored.setdefault(int(value), []).append(int(seq))
        # The depth the outbox will report on its next open, against a plain count.
        counters = live_counters(conn)
        for table, key in (("events", "rows_event"), ("telemetry", "rows_telemetry")):
            actual = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            if counters[key] != actual:
                report.miscounted += 1
                report.problems.append(f"{key} would be {counters[key]}, the table has {actual}")
    report.acked = len(acked)
    report.delivered = len(delivered)
    for n in sorted(acked):
        if n not in stored and n not in delivered:
            report.lost += 1
            if len(report.problems) < 20:
                report.problems.append(f"acknowledged record {n} is gone and was never delivered")
    for n, seqs in stored.items():
        if len(seqs) > 1:
            report.duplicated += 1
            report.problems.append(f"record {n} is stored {len(seqs)} times: seqs {seqs}")
    for n, ids in delivered.items():
        here = {(epoch, s) for s in stored.get(n, [])}
        if len(ids) > 1 or (here and here != ids):
            report.renumbered += 1
            report.problems.append(f"record {n} went upstream as {sorted(ids)}, stored {here}")
    for (ep, seq), ns in names.items():
        if len(ns) > 1:
            report.renumbered += 1
            report.problems.append(f"{ep}:{seq} named several records: {sorted(ns)}")


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    # A kill can cut a line short: only whole lines (ending with ';') count; the record was
    # then not acknowledged yet, or not delivered yet, which is what the check assumes.
    return [line[:-1] for line in path.read_text().splitlines() if line.endswith(";")]


def _read_numbers(path: Path) -> set[int]:
    return {int(line) for line in _lines(path)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        db, logs, base, seed = argv[1:5]
        asyncio.run(_worker(Path(db), Path(logs), int(base), int(seed)))
        return 0
    raise SystemExit("usage: python -m tests.benchmarks.buffer_crash worker DB LOGDIR BASE SEED")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
