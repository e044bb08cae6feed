"""Fixtures for the deploy tests: the project as wheels, and throwaway system roots."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
UNITS = REPO / "deploy" / "systemd"
#: The host's own unit files, so that `systemd-analyze verify --root` finds the standard
#: targets (sysinit.target, ...) in a scratch root as it would on a real system.
HOST_UNITS = Path("/usr/lib/systemd/system")

BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'


def need(tool: str, package: str) -> str:
    """The path of ``tool``; fail (never skip) with how to install it."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is needed: apt-get install {package} (.ci/run does)", pytrace=False)
    return path


def source_copy(into: Path) -> Path:
    """The project's own files, copied into ``into``/source: setuptools builds a wheel in the
    tree's ``build/`` folder, which two builds at once (pytest-xdist workers, or a developer's
    own) must not share."""
    target = into / "source"
    shutil.copytree(
        REPO,
        target,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "var",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "bench-results.json",
        ),
    )
    return target


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project and its dependencies as wheels: installs from it run offline and fast."""
    folder = tmp_path_factory.mktemp("wheels")
    source = source_copy(tmp_path_factory.mktemp("wheel-source"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(folder), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return folder


@pytest.fixture(scope="session")
def project_wheel(wheelhouse: Path) -> Path:
    (wheel,) = wheelhouse.glob("city_safety_edge-*.whl")
    return wheel


def make_root(path: Path, os_release: str = BOOKWORM) -> Path:
    """An empty system: os-release, the account files with only root, the standard units."""
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "os-release").write_text(os_release)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc" / "group").write_text("root:x:0:\n")
    (path / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (path / "etc" / "gshadow").write_text("root:*::\n")
    for name in ("shadow", "gshadow"):
        (path / "etc" / name).chmod(0o640)
    if HOST_UNITS.is_dir():
        shutil.copytree(HOST_UNITS, path / "usr" / "lib" / "systemd" / "system", symlinks=True)
    return path


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its type, mode and content hash: any change shows."""
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            what = "link:" + str(path.readlink())
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        state[str(path.relative_to(root))] = f"{oct(info.st_mode)} {info.st_uid} {what}"
    return state
