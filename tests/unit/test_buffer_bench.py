"""The buffer benchmark at toy sizes: it runs, reports every key, and loses nothing.

The figures themselves come from ``make bench`` (docs/buffer.md); here only their presence
and the crash harness's verdict are checked, never a speed.
"""

from __future__ import annotations

import pytest

from tests.benchmarks import buffer

KEYS = {
    "buffer_ingest_readings_per_s",
    "buffer_disk_bytes_per_reading",
    "buffer_drain_read_readings_per_s",
    "buffer_rss_growth_mb_10m",
    "buffer_startup_s_10m",
    "buffer_kill9_runs",
    "buffer_kill9_lost",
}


@pytest.mark.slow
def test_every_figure_is_reported_and_nothing_is_lost() -> None:
    figures = buffer.run(readings=20_000, backlog=30_000, kills=2)
    assert not KEYS - figures.keys(), "figures missing"
    assert all(isinstance(v, int | float) for v in figures.values())
    assert figures["buffer_kill9_runs"] == 2
    assert figures["buffer_kill9_lost"] == 0
    assert figures["buffer_kill9_problems"] == 0
    assert figures["buffer_ingest_readings_per_s"] > 0
    assert figures["buffer_disk_bytes_per_reading"] > 0
