"""Every benchmark runs: ``python -m tests.benchmarks --tiny --only SUITE`` goes through each
suite at toy sizes (a second or a few each) and must report every key of the suite as a number.

The figures of a tiny run mean nothing and are not looked at; ``make bench`` measures. One
suite a test, so that the workers share the suites (about two minutes one after the other).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.__main__ import ROOT, SUITES, Suite

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("suite", SUITES, ids=[suite.name for suite in SUITES])
def test_every_suite_runs_and_reports_each_of_its_keys_as_a_number(
    tmp_path: Path, suite: Suite
) -> None:
    out = tmp_path / "bench-results.json"
    command = [sys.executable, "-m", "tests.benchmarks", "--tiny", "--only", suite.name]
    result = subprocess.run(
        [*command, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # the peer suite installs the peer the first time: 15 s more
        check=False,
    )
    output = (result.stdout + result.stderr)[-6000:]
    assert out.exists(), output
    results = json.loads(out.read_text())
    assert results.get("skipped", {}) == {}, output
    assert results.get("failed", {}) == {}, output
    assert result.returncode == 0, output
    assert suite.keys, f"suite {suite.name} declares no KEYS"
    for key in suite.keys:
        value = results.get(key)
        assert type(value) in (int, float), f"suite {suite.name}: {key} = {value!r}\n{output}"
    undeclared = set(results) - set(suite.keys) - {"machine"}
    assert not undeclared, (
        f"keys suite {suite.name} does not declare in its KEYS: {sorted(undeclared)}"
    )
