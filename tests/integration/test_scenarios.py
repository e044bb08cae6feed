"""The whole scenario library against the simulated rig, one test per scenario.

Each scenario starts its own Mosquitto, simulators, reference receiver and ``edge run``
process, plays its timeline and judges its expectations (hil/scenarios/, docs/hil.md). The
runner's own judgement is checked too: a scenario that asks for the impossible fails, and the
command line writes the reports and says so in its exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.scenario import load_scenario, parse_scenario, run_scenario
from hil.scenario.runner import ScenarioResult
from tests.integration.test_demo import run_demo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "hil" / "scenarios"
SCENARIOS = sorted(LIBRARY.glob("*.yaml"))


def explain(result: ScenarioResult) -> str:
    lines = [f"{result.scenario.name}: {result.status} {result.reason}"]
    lines += [f"  {'ok' if o.passed else 'FAIL'} {o.expectation.describe()}: {o.detail}"
              for o in result.outcomes]  # fmt: skip
    lines += [f"  note: {n}" for n in result.notes]
    if result.workdir is not None and (result.workdir / "gateway.log").exists():
        tail = (result.workdir / "gateway.log").read_text(errors="replace").splitlines()[-30:]
        lines += ["  gateway log (last lines):", *("    " + t for t in tail)]
    return "\n".join(lines)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
async def test_library_scenario(path: Path, tmp_path: Path) -> None:
    scenario = load_scenario(path)
    result = await run_scenario(scenario, tmp_path / "run", say=lambda _: None)
    if result.status == "skipped":
        pytest.skip(f"{scenario.name}: {result.reason}")
    assert result.status == "passed", explain(result)
    assert result.outcomes
    assert all(o.passed for o in result.outcomes)


async def test_a_scenario_asking_the_impossible_fails_with_the_measured_figure(
    tmp_path: Path,
) -> None:
    text = (LIBRARY / "overcurrent.yaml").read_text()
    # The buzzer cannot follow a change within 1 ms through a 250 ms poll, and the event the
    # scenario forbids on the other monitor is one the overload raises on this one.
    text = text.replace(
        "{buzzer: on, after: overload, within: 1s}", "{buzzer: on, after: overload, within: 1ms}"
    )
    text = text.replace("device: efm-shop-101}}", "device: efm-restaurant-102}}")
    scenario = parse_scenario(text, LIBRARY / "impossible.yaml")
    result = await run_scenario(scenario, tmp_path / "run", say=lambda _: None)
    assert result.status == "failed", explain(result)
    failed = {o.expectation.kind: o for o in result.failed}
    assert set(failed) == {"buzzer", "no_event"}, explain(result)
    assert failed["buzzer"].measured is not None
    assert failed["buzzer"].measured > 0.001
    assert "1 arrived" in failed["no_event"].detail


def test_the_command_line_runs_scenarios_and_writes_text_junit_and_figures(
    tmp_path: Path,
) -> None:
    failing = tmp_path / "never.yaml"
    failing.write_text(
        (LIBRARY / "under-voltage.yaml")
        .read_text()
        .replace("rule: phase-a-under-voltage", "rule: phase-a-over-voltage")
        .replace("duration: 4s", "duration: 3s")
        .replace("sites/block.yaml", str(LIBRARY / "sites" / "block.yaml"))
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hil.scenario",
            "run",
            str(LIBRARY / "tilt-noise.yaml"),
            str(failing),
            "--report",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "EDGE_RIG"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "[1/2] tilt-noise" in output
    assert "[2/2] under-voltage" in output
    report = (tmp_path / "out" / "report.txt").read_text()
    assert "PASSED  tilt-noise" in report
    assert "FAILED  under-voltage" in report
    assert f"[{failing.name}:15]" in report  # the failing expectation's line
    suite = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    failures = suite.findall("testcase/failure")
    assert len(failures) == 1
    assert "phase-a-over-voltage" in (failures[0].get("message") or "")
    figures = (tmp_path / "out" / "figures.json").read_text()
    assert '"buzzer"' in figures
    assert '"bound_ms": 1000.0' in figures


def test_a_wrong_scenario_file_stops_the_run_before_anything_starts(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: x\nproves: y\nsite: nowhere.yaml\nexpect: [{no_gaps: true}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "hil.scenario", "run", str(wrong), "--report", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{wrong}:3: site: cannot read the site file 'nowhere.yaml'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_the_demo_plays_a_scenario_live_and_narrates_it(tmp_path: Path) -> None:
    # The scenario's folder lands in var/demo/scenario/ in tmp_path.
    output = run_demo(tmp_path, SCENARIO=str(LIBRARY / "over-voltage.yaml"))
    assert "scenario  over-voltage:" in output
    assert "gateway   BUZZER ON" in output
    assert "platform  EVENT alarm-raised device=efm-shop-101" in output
    assert "PASSED  over-voltage" in output
    assert (tmp_path / "var" / "demo" / "scenario" / "over-voltage" / "gateway.log").is_file()
