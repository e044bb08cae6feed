"""``python -m hil.scenario``: check or run scenario files.

    python -m hil.scenario check hil/scenarios/*.yaml
    python -m hil.scenario run hil/scenarios/*.yaml --report out/

``run`` checks every file first (nothing starts if one is wrong), then runs them one after the
other, printing progress, and writes ``report.txt``, ``junit.xml`` and ``figures.json`` into the
report folder. Exit status: 0 all passed (or skipped), 1 an expectation failed or a rig part
broke, 2 a scenario file is wrong. With ``EDGE_RIG=rig.yaml`` (or ``--rig``) the scenarios run
against real hardware (docs/hil.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hil.scenario.loader import ScenarioError, load_scenario
from hil.scenario.model import Scenario
from hil.scenario.realrig import RigConfigError, load_rig
from hil.scenario.report import text_report, write_reports
from hil.scenario.runner import ScenarioResult, run_scenario


def _load_all(paths: Sequence[str]) -> list[Scenario] | None:
    scenarios, bad = [], False
    for path in paths:
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as exc:
            bad = True
            for issue in exc.issues:
                print(issue, file=sys.stderr)
    return None if bad else scenarios


async def run_all(
    scenarios: list[Scenario], report: Path | None, rig_path: str | None
) -> tuple[list[ScenarioResult], float]:
    rig = load_rig(rig_path) if rig_path else None
    results = []
    began = time.monotonic()
    for index, scenario in enumerate(scenarios, 1):
        print(f"[{index}/{len(scenarios)}] {scenario.name}: {scenario.proves}", flush=True)
        workdir = report / scenario.name if report is not None else None
        result = await run_scenario(
            scenario, workdir, say=lambda text: print(text, flush=True), rig=rig
        )
        print(f"[{index}/{len(scenarios)}] {result.status} in {result.seconds:.1f} s", flush=True)
        for outcome in result.failed:
            print(f"    FAIL {outcome.expectation.describe()}: {outcome.detail}", flush=True)
        if result.reason:
            print(f"    {result.reason}", flush=True)
        results.append(result)
    return results, time.monotonic() - began


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hil.scenario",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check scenario files; every error with file:line")
    check.add_argument("files", nargs="+")
    run = commands.add_parser("run", help="run scenarios and report")
    run.add_argument("files", nargs="+")
    run.add_argument("--report", type=Path, help="folder for report.txt, junit.xml, figures.json")
    run.add_argument("--rig", default=os.environ.get("EDGE_RIG"), help="real rig file (EDGE_RIG)")
    args = parser.parse_args(argv)
    scenarios = _load_all(args.files)
    if scenarios is None:
        return 2
    if args.command == "check":
        for scenario in scenarios:
            print(f"{scenario.path}: ok ({scenario.name})")
        return 0
    try:
        results, wall = asyncio.run(run_all(scenarios, args.report, args.rig))
    except RigConfigError as exc:
        print(f"rig: {exc}", file=sys.stderr)
        return 2
    print(text_report(results, wall), end="")
    if args.report is not None:
        for path in write_reports(results, wall, args.report):
            print(f"wrote {path}")
    return 1 if any(r.status in ("failed", "error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
