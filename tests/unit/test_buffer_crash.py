"""Crash safety: SIGKILL the outbox's process at random moments during ingest and drain.

CI runs a few kills; ``make bench`` runs at least 100 (tests/benchmarks/buffer.py).
"""

from __future__ import annotations

import sqlite3
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
