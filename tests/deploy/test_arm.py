"""The Raspberry Pi side of installs, checked from an x86 machine.

The install itself under qemu (minutes) is ``make deploy-arm64`` (tests/deploy/arm.py); here:
lgpio is a dependency on ARM Linux only, a wheelhouse for a 64-bit Pi resolves from wheels
alone, and install.sh refuses an ARM release that has no GPIO backend.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.deploy.arm import (
    TARGETS,
    fill_wheelhouse,
    requirements_for,
    target_only_requirements,
)
from tests.deploy.conftest import INSTALL, snapshot

LGPIO = "lgpio==0.2.2.0"


@pytest.mark.parametrize("machine", ["aarch64", "armv7l", "armv8l", "armv6l"])
def test_lgpio_is_a_dependency_on_arm_linux(machine: str) -> None:
    for python in ("3.11", "3.13"):
        assert LGPIO in requirements_for(machine, python), (machine, python)


@pytest.mark.parametrize(
    ("machine", "system"),
    [("x86_64", "linux"), ("i686", "linux"), ("arm64", "darwin"), ("AMD64", "win32")],
)
def test_lgpio_is_no_dependency_elsewhere(machine: str, system: str) -> None:
    chosen = requirements_for(machine, system=system)
    assert not [r for r in chosen if r.startswith("lgpio")]
    # The rest of the gateway is the same everywhere: only the GPIO backend differs.
    assert set(requirements_for("aarch64")) - set(chosen) == {LGPIO}


def test_a_wheelhouse_built_on_x86_names_lgpio_itself() -> None:
    # pip download --platform evaluates markers for the machine it runs on: without naming
    # lgpio, a wheelhouse made on a laptop for a Pi would lack the GPIO backend.
    assert target_only_requirements(TARGETS["arm64"]) == [LGPIO]
    assert target_only_requirements(TARGETS["armhf"]) == [LGPIO]


@pytest.mark.integration  # downloads from the package index (cached after the first run)
def test_the_arm64_wheelhouse_resolves_from_wheels_alone(tmp_path: Path) -> None:
    wheels = fill_wheelhouse(TARGETS["arm64"], tmp_path / "wheels")
    names = sorted(p.name for p in wheels.iterdir())
    assert all(name.endswith(".whl") for name in names), names
    assert not [n for n in names if "x86_64" in n or "win" in n or "macosx" in n], names
    (lgpio,) = [n for n in names if n.startswith("lgpio-")]
    assert lgpio.startswith("lgpio-0.2.2.0-cp311-cp311-manylinux_")
    assert lgpio.endswith("_aarch64.whl")
    # Every compiled dependency is there for aarch64 and CPython 3.11 (bookworm's).
    compiled = [n for n in names if not n.endswith("-none-any.whl")]
    assert {n.split("-")[0].lower() for n in compiled} >= {
        "lgpio",
        "pydantic_core",
        "pyyaml",
        "cryptography",
        "rpds_py",
        "cffi",
    }
    assert all("aarch64" in n and ("cp311" in n) for n in compiled), compiled
    # Every pin of the gateway has its wheel, at the pinned version.
    for requirement in requirements_for("aarch64"):
        name, version = requirement.split("==")
        stem = f"{name.replace('-', '_').lower()}-{version}-"
        assert [n for n in names if n.lower().startswith(stem)], (requirement, names)
    # The gateway's own wheel asks for lgpio on ARM (what pip reads on the Pi).
    (project,) = wheels.glob("city_safety_edge-*.whl")
    with zipfile.ZipFile(project) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    assert f'Requires-Dist: {LGPIO}; sys_platform == "linux" and' in text


@pytest.mark.integration  # builds a release: seconds
def test_an_arm_release_without_gpio_backend_is_refused_untouched(
    scratch_root: Path, wheelhouse: Path, project_wheel: Path, tmp_path: Path
) -> None:
    # This machine calls itself arm64, but its pip installs what x86 gets: no lgpio. The
    # release builds, and must then be refused before anything in service changes.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dpkg").write_text('#!/bin/sh\n[ "$1" = --print-architecture ] && echo arm64\n')
    (fake / "dpkg").chmod(0o755)
    before = snapshot(scratch_root)
    result = subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--root",
            str(scratch_root),
            "--source",
            str(project_wheel),
            "--wheels",
            str(wheelhouse),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the new release has no GPIO backend for the buzzer and lamps" in result.stderr
    assert "No module named 'lgpio'" in result.stderr
    assert "nothing was changed" in result.stderr
    # As for any refusal after the build: the releases folder may remain, empty.
    added = set(snapshot(scratch_root)) - set(before)
    assert added <= {"opt", "opt/city-safety-edge", "opt/city-safety-edge/releases"}, added
    assert not any((scratch_root / "opt" / "city-safety-edge" / "releases").iterdir())
    assert not (scratch_root / "opt" / "city-safety-edge" / "current").exists()
    assert "edge:" not in (scratch_root / "etc" / "passwd").read_text()


@pytest.mark.integration  # downloads from the package index (cached after the first run)
def test_the_armhf_wheelhouse_carries_sources_for_what_has_no_wheel(tmp_path: Path) -> None:
    # 32-bit Raspberry Pi OS, offline: lgpio, PyYAML and cffi have no armv7l wheel on PyPI, so
    # their sources and what builds them travel in the wheelhouse; the rest are armv7l wheels.
    target = TARGETS["armhf"]
    wheels = fill_wheelhouse(target, tmp_path / "wheels")
    names = sorted(p.name for p in wheels.iterdir())
    sources = sorted(n for n in names if n.endswith(".tar.gz"))
    assert sources == ["cffi-2.1.1.tar.gz", "lgpio-0.2.2.0.tar.gz", "pyyaml-6.0.4.tar.gz"]
    compiled = [n for n in names if n.endswith(".whl") and not n.endswith("-none-any.whl")]
    assert compiled, names
    assert all("armv7l" in n for n in compiled), compiled
    for requirement in (*requirements_for("armv7l"), *target.build_wheels):
        name, version = requirement.split("==")
        stem = f"{name.replace('-', '_').lower()}-{version}"
        assert [n for n in names if n.lower().startswith(stem)], (requirement, names)
