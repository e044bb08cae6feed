"""Reports of a scenario run: readable text, JUnit XML for CI, and JSON figures.

Per scenario the text report names the requirement it proves, each expectation with what was
measured next to the bound asserted (time to buzzer, time to platform), and where its logs are.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hil.scenario.runner import ScenarioResult

__all__ = ["figures", "text_report", "write_reports"]


def text_report(results: list[ScenarioResult], wall: float) -> str:
    lines = []
    for result in results:
        scenario = result.scenario
        lines.append(f"{result.status.upper():7} {scenario.name} ({result.seconds:.1f} s)")
        lines.append(f"        proves: {scenario.proves}")
        lines.append(f"        file:   {scenario.path}")
        if result.reason:
            lines.append(f"        reason: {result.reason}")
        for outcome in result.outcomes:
            mark = "ok  " if outcome.passed else "FAIL"
            where = f"{scenario.path.name}:{outcome.expectation.line}"
            lines.append(
                f"        {mark} {outcome.expectation.describe()}: {outcome.detail} [{where}]"
            )
        lines += [f"        note: {note}" for note in result.notes]
        if result.status != "passed" and result.workdir is not None:
            lines.append(f"        logs:   {result.workdir}")
    counts = {
        status: sum(1 for r in results if r.status == status)
        for status in ("passed", "failed", "error", "skipped")
    }
    lines.append(
        f"{len(results)} scenario(s) in {wall:.1f} s: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
    )
    return "\n".join(lines) + "\n"


def junit(results: list[ScenarioResult], wall: float) -> str:
    suite = ET.Element(
        "testsuite",
        name="hil-scenarios",
        tests=str(len(results)),
        failures=str(sum(1 for r in results if r.status == "failed")),
        errors=str(sum(1 for r in results if r.status == "error")),
        skipped=str(sum(1 for r in results if r.status == "skipped")),
        time=f"{wall:.3f}",
    )
    for result in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname="hil.scenarios",
            name=result.scenario.name,
            file=str(result.scenario.path),
            time=f"{result.seconds:.3f}",
        )
        ET.SubElement(case, "system-out").text = "\n".join(
            [f"proves: {result.scenario.proves}"]
            + [
                f"{'ok' if o.passed else 'FAIL'} {o.expectation.describe()}: {o.detail}"
                for o in result.outcomes
            ]
            + result.notes
        )
        if result.status == "failed":
            failures = result.failed
            ET.SubElement(
                case,
                "failure",
                message="; ".join(f"{o.expectation.describe()}: {o.detail}" for o in failures),
            ).text = "\n".join(
                f"{result.scenario.path}:{o.expectation.line}: {o.detail}" for o in failures
            )
        elif result.status == "error":
            ET.SubElement(case, "error", message=result.reason).text = result.reason
        elif result.status == "skipped":
            ET.SubElement(case, "skipped", message=result.reason)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def figures(results: list[ScenarioResult], wall: float) -> dict[str, Any]:
    """Measured latencies per scenario next to their bounds, and the wall time."""
    per: dict[str, Any] = {}
    for result in results:
        measured = [
            {
                "expectation": o.expectation.describe(),
                "kind": o.expectation.kind,
                "measured_ms": round(o.measured * 1000, 1),
                "bound_ms": round(o.expectation.within * 1000, 1),
                "passed": o.passed,
            }
            for o in result.outcomes
            if o.measured is not None
            and o.expectation.kind in ("buzzer", "led", "event", "reading")
        ]
        per[result.scenario.name] = {
            "status": result.status,
            "seconds": round(result.seconds, 2),
            "measured": measured,
        }
    return {"wall_seconds": round(wall, 1), "scenarios": per}


def write_reports(results: list[ScenarioResult], wall: float, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("report.txt", text_report(results, wall)),
        ("junit.xml", junit(results, wall)),
        ("figures.json", json.dumps(figures(results, wall), indent=2) + "\n"),
    ):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
