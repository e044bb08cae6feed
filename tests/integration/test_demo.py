"""README command 1, checked unattended: the demo proves its injected alarm reached the platform."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import load_site
from hil.demo import story_seconds
from tests.integration.site import EXAMPLE

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def example_site_ports() -> Iterator[None]:
    """The demo runs the example site as written, on its fixed ports (18830, 15020, 15021): one
    demo at a time on this machine, whichever pytest-xdist worker (or other run) starts it."""
    with (Path(tempfile.gettempdir()) / "city-safety-edge-demo-ports.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_demo(cwd: Path, *args: str, timeout: float = 60, **env: str) -> str:
    """``python -m hil.demo ARGS`` in ``cwd`` with ``env`` added; what it printed, once it
    ended well (the relative paths of the site or scenario, var/demo/..., land in ``cwd``)."""
    result = subprocess.run(
        [sys.executable, "-m", "hil.demo", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_demo_runs_unattended_and_its_alarm_reaches_the_subscriber(tmp_path: Path) -> None:
    output = run_demo(tmp_path, "--config", str(EXAMPLE), DEMO_SECONDS="8")
    assert "BUZZER ON" in output
    assert "EVENT alarm-raised device=efm-shop-101" in output
    assert "injected alarm reached the platform: yes" in output
    assert "everything stopped" in output
    # The platform is the reference receiver: every message valid, no seq missing.
    assert ", rejected 0," in output, output
    assert "no gaps" in output, output
    assert "telemetry x" in output, "no reading was narrated: telemetry not decoded"
    assert (tmp_path / "var" / "demo" / "gateway.log").stat().st_size > 0
    # The demo platform signs its commands; an unsigned one, as an intruder would send it,
    # is refused.
    assert "ACK demo-attack error: the command is not signed" in output, output
    assert "ACK demo-status ok: buzzer=on" in output, output
    assert (tmp_path / "var" / "demo" / "command-keys" / "operations-demo.pub").is_file()
    assert "1 event(s) due, all arrived; 5 later step(s) not played" in output, output
    assert "ends before the whole story" in output


def readme_demo_seconds() -> float:
    """The ``DEMO_SECONDS=N make demo`` the README shows."""
    found = re.search(r"DEMO_SECONDS=(\d+) make demo", (ROOT / "README.md").read_text())
    assert found is not None, "the README shows an unattended demo run"
    return float(found.group(1))


def test_the_readme_demo_seconds_cover_the_whole_story() -> None:
    assert readme_demo_seconds() >= story_seconds(load_site(EXAMPLE))


def test_the_readme_demo_run_tells_the_whole_story(tmp_path: Path) -> None:
    """The README's unattended run, as written: both alarms, the buzzer off only with the
    last, the silent monitor's values marked stale, and back online; every event arrives."""
    seconds = readme_demo_seconds()
    output = run_demo(
        tmp_path, "--config", str(EXAMPLE), timeout=seconds + 60, DEMO_SECONDS=f"{seconds:g}"
    )
    assert "the story at the platform: 6 event(s) due, all arrived" in output, output
    lines = output.splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    second_alarm_cleared = first("ALARM-CLEARED rule=cable-over-temperature")
    assert "buzzer stays on: 1 alarm(s) still active" in lines[first("ALARM-CLEARED") + 1]
    assert first("BUZZER OFF") > second_alarm_cleared, "off only after the last alarm cleared"
    assert "the last active alarm has cleared" in lines[first("BUZZER OFF")]
    assert first("status every 2 s: active_alarms = ") < first("buzzer=off active_alarms=0")
    stale = lines[first("OFFLINE since")]
    assert "efm-restaurant-102: OFFLINE since" in stale
    assert "stale" in stale
    back = [i for i, line in enumerate(lines) if "device-online device=efm-restaurant-102" in line]
    assert back[-1] > first("OFFLINE since"), "online again after its values were marked stale"
    assert "received = messages off the broker" in output
