"""``edge selftest``: every output is exercised once and left quiet (MockFactory pins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"


def test_selftest_reports_every_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["selftest", "--config", str(EXAMPLE), "--seconds", "20ms"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok: buzzer continuous",
        "ok: buzzer pulsed",
        "ok: buzzer chirp",
        "ok: led",
    ]


def test_selftest_refuses_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text(EXAMPLE.read_text().replace("buzzer: {pin: 17}", "buzzer: {pin: 99}"))
    assert main(["selftest", "--config", str(bad)]) == 1
    assert "outputs.buzzer.pin" in capsys.readouterr().err
