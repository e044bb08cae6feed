"""The systemd units and the installer, judged by their own tools (offline: no systemd)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import INSTALL, UNITS, need
from tests.fixtures.service import exec_start, interpreter_flags

#: The issue's limit for the gateway's unit; systemd calls <= 3.9 "OK".
MAX_EXPOSURE = 3.0


def exposure(unit: Path) -> float:
    analyze = need("systemd-analyze", "systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.parametrize("name", ["city-safety-edge.service", "city-safety-edge-firstboot.service"])
def test_exposure_is_at_most_3(name: str) -> None:
    score = exposure(UNITS / name)
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score}"


def test_a_weakened_unit_scores_worse(tmp_path: Path) -> None:
    """The measurement itself can fail: strip the hardening and the score must rise."""
    text = (UNITS / "city-safety-edge.service").read_text()
    weak = "\n".join(
        line
        for line in text.splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability"))
    )
    path = tmp_path / "weak.service"
    path.write_text(weak + "\n")
    assert exposure(path) > MAX_EXPOSURE


def service_section(name: str) -> dict[str, list[str]]:
    # Not configparser: systemd allows a key several times (DeviceAllow=), in order.
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_gateway_unit_is_notify_watched_restarted_and_writes_only_its_data() -> None:
    unit = service_section("city-safety-edge.service")
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["always"]
    assert unit["WatchdogSec"], "a hung event loop must be restarted"
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == ["city-safety-edge"], "the outbox"
    # And the site file's folder, for push-config; nothing else.
    assert unit["ReadWritePaths"] == ["/etc/city-safety-edge"]
    assert unit["DevicePolicy"] == ["closed"]
    devices = {value.split()[0] for value in unit["DeviceAllow"]}
    assert devices == {
        "char-ttyUSB",
        "char-ttyACM",
        "char-ttyAMA",
        "char-ttyS",
        "char-gpiochip",
        "/dev/gpiomem",
    }
    assert unit["User"] == ["edge"]


def test_gateway_runs_under_python_oo_from_its_release(tmp_path: Path) -> None:
    """Docstrings and asserts stripped (docs/deploy.md); the script by its path, since
    ``-m`` would put the working directory, which the service may write, on the import path."""
    unit = UNITS / "city-safety-edge.service"
    words = exec_start(unit)
    venv = "/opt/city-safety-edge/current/venv/bin"
    assert words[0] == f"{venv}/python"
    assert interpreter_flags(unit) == ["-OO"]
    assert words[2:] == [f"{venv}/edge", "run", "--config", "/etc/city-safety-edge/site.yaml"]
    # The reading can fail: a unit that starts the console script has no interpreter flags.
    plain = tmp_path / "plain.service"
    plain.write_text(unit.read_text().replace(f"ExecStart={venv}/python -OO ", "ExecStart="))
    with pytest.raises(ValueError, match="does not start python"):
        interpreter_flags(plain)


def test_installer_compiles_the_bytecode_the_service_reads() -> None:
    text = INSTALL.read_text()
    # Both levels where it compiles everything itself, -OO's where pip did the plain one, and
    # the interpreter's own modules for -OO too.
    assert '-o 0 -o 2 -s "$R" -p / "$RELEASE/venv/lib"' in text
    assert '-o 2 "$RELEASE/venv/lib"' in text
    assert re.search(r"^compile_stdlib\(\) \{$", text, re.M)
    assert re.search(r"^    compile_stdlib$", text, re.M), "defined and called"


def test_installer_passes_shellcheck() -> None:
    shellcheck = need("shellcheck", "shellcheck")
    result = subprocess.run(
        [shellcheck, "--severity=info", str(INSTALL)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
