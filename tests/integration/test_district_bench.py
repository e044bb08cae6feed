"""``make bench-platform`` runs: its suite at toy sizes reports every key as a number. (It is
not one of ``make bench``'s suites: at its real sizes it takes minutes.)"""

from __future__ import annotations

import pytest

from district.postgres import postgres_bin
from tests.benchmarks import district_ingest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        postgres_bin() is None,
        reason="PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it",
    ),
]


def test_the_platform_benchmark_reports_each_of_its_keys_as_a_number() -> None:
    figures = district_ingest.run(**district_ingest.TINY)
    assert set(figures) == set(district_ingest.KEYS)
    for key, value in figures.items():
        assert type(value) in (int, float), (key, value)
    assert figures["platform_ingest_readings_per_s_1"] > 0
    assert figures["platform_ingest_readings_per_s_2"] > 0
    assert figures["platform_db_bytes_per_reading"] > 0
    assert figures["fleet_gateways_simulated"] == district_ingest.TINY["lag_gateways"]
