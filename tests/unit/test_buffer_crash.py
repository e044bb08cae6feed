"""Crash safety: SIGKILL the outbox's process at random moments during ingest and drain.

CI runs a few kills; ``make bench`` runs at least 100 (tests/benchmarks/buffer.py).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.benchmarks.buffer_crash import CrashReport, _verify, run_kills


@pytest.mark.slow
def test_random_kills_lose_duplicate_and_renumber_nothing(tmp_path: Path) -> None:
    report = run_kills(tmp_path, 8, seed=7)
    assert report.kills == 8
    assert report.ok, report.problems
    # The workers really did acknowledge and deliver records between the kills.
    assert report.acked > 100
    assert report.delivered > 0


def test_the_check_notices_a_lost_a_duplicated_and_a_renumbered_record(tmp_path: Path) -> None:
    """The verifier itself, on a hand-made outbox and logs: it must be able to fail."""
    db = tmp_path / "outbox.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        conn.execute("INSERT INTO meta VALUES ('epoch', 'e1')")
        conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, created REAL, body TEXT)")
        conn.execute("CREATE TABLE telemetry (seq INTEGER PRIMARY KEY, point, ts, value)")
        conn.execute("""INSERT INTO events VALUES (1, 0, '{"kind":"test","n":10}')""")
        conn.execute("INSERT INTO telemetry VALUES (2, 1, 0, 11.0)")  # 11 twice
        conn.execute("INSERT INTO telemetry VALUES (3, 1, 0, 11.0)")
        conn.execute("INSERT INTO telemetry VALUES (5, 1, 0, 13.0)")  # delivered as seq 4
    # 12 was acknowledged but is neither stored nor delivered: lost.
    # 14's line was cut by a kill and the next worker wrote on: it counts as never acked.
    (tmp_path / "acked.log").write_text("10;\n11;\n12;\n13;\n14\n")
    # A cut line, then the next worker redelivering 10: not read as one record "110".
    (tmp_path / "upstream.log").write_text("10 e1 1;\n13 e1 4;\n1\n\n10 e1 1;\n")
    report = CrashReport()
    _verify(db, tmp_path, report)
    assert (report.lost, report.duplicated, report.renumbered) == (1, 1, 1), report.problems
    assert report.acked == 4
    assert not report.ok


_EVENT_WORKER = """
import asyncio, os, sys
from buffer import Outbox

async def main() -> None:
    marker = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    # Readings wait an hour for their commit window: only the event can get them on disk.
    outbox = await Outbox.open(sys.argv[1], commit_interval=3600)
    event_on_disk = asyncio.Event()
    outbox.add_commit_listener(lambda streams: "event" in streams and event_on_disk.set())
    body = {"device": "efm-1", "point": "residual_current", "unit": "mA"}
    for n in range(50):
        outbox.submit("telemetry", {**body, "ts": 1e9 + n, "value": float(n)})
    outbox.submit("event", {"kind": "alarm-raised", "n": 50})
    await event_on_disk.wait()
    for n in range(51, 60):
        outbox.submit("telemetry", {**body, "ts": 1e9 + n, "value": float(n)})
    for _ in range(20):  # the writer runs, and leaves them in their window
        await asyncio.sleep(0)
    os.write(marker, b"event committed;")
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_an_alarm_event_and_the_readings_before_it_survive_a_kill_without_a_commit_window(
    tmp_path: Path,
) -> None:
    """With readings in a long commit window, an event submitted (not awaited) is on disk as
    soon as the outbox commits it, and so are the readings submitted before it; a SIGKILL then
    loses only the readings after it, which were still in their window."""
    db, marker = tmp_path / "outbox.sqlite", tmp_path / "marker.log"
    worker = subprocess.Popen([sys.executable, "-c", _EVENT_WORKER, str(db), str(marker)])
    try:
        deadline = time.monotonic() + 60  # a condition, not a timing claim: fail, not hang
        while not (marker.exists() and b"event committed;" in marker.read_bytes()):
            assert worker.poll() is None, "the worker died"
            assert time.monotonic() < deadline, "the event was never committed"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        events = [json.loads(body)["n"] for (body,) in conn.execute("SELECT body FROM events")]
        values = [v for (v,) in conn.execute("SELECT value FROM telemetry ORDER BY seq")]
        (event_seq,) = conn.execute("SELECT seq FROM events").fetchone()
        (last_reading,) = conn.execute("SELECT max(seq) FROM telemetry").fetchone()
    assert events == [50]
    assert values == [float(n) for n in range(50)]
    assert last_reading < event_seq
