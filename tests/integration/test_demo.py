"""README command 1, checked unattended: the demo proves its injected alarm reached the platform."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.site import EXAMPLE

pytestmark = pytest.mark.integration


def test_demo_runs_unattended_and_its_alarm_reaches_the_subscriber(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--config", str(EXAMPLE)],
        cwd=tmp_path,  # the example site's relative paths (var/demo/...) land here
        env={**os.environ, "DEMO_SECONDS": "8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
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
