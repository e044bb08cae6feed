"""Every benchmark runs: ``python -m tests.benchmarks --tiny`` goes through each suite at toy
sizes (a second or a few each) and must report every key of every suite as a number.

The figures of a tiny run mean nothing and are not looked at; ``make bench`` measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.__main__ import ROOT, SUITES

pytestmark = pytest.mark.integration


def test_every_suite_runs_and_reports_each_of_its_keys_as_a_number(tmp_path: Path) -> None:
    out = tmp_path / "bench-results.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # about 70 s on a 2-core machine (the peer installed: 15 s more before)
        check=False,
    )
    output = (result.stdout + result.stderr)[-6000:]
    assert out.exists(), output
    results = json.loads(out.read_text())
    assert results.get("skipped", {}) == {}, output
    assert results.get("failed", {}) == {}, output
    assert result.returncode == 0, output
    for suite in SUITES:
        assert suite.keys, f"suite {suite.name} declares no KEYS"
        for key in suite.keys:
            value = results.get(key)
            assert type(value) in (int, float), f"suite {suite.name}: {key} = {value!r}\n{output}"
    declared = {key for suite in SUITES for key in suite.keys}
    undeclared = set(results) - declared - {"machine"}
    assert not undeclared, f"keys no suite declares in its KEYS: {sorted(undeclared)}"
