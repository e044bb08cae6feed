"""deploy/install.sh into a throwaway system root: install, upgrade, roll back, remove.

Every refusal is checked to leave the root exactly as it was (a snapshot of every path, mode
and content before and after).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import INSTALL, make_root, need, snapshot
from tests.fixtures.certs import write_certificate, write_key
from tests.fixtures.service import interpreter_flags
from tests.integration.site import EXAMPLE

APP = "city-safety-edge"


def install(
    root: Path, *args: str | Path, wheels: Path | None = None, source: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(INSTALL), "--root", str(root)]
    if source is not None:
        command += ["--source", str(source)]
    if wheels is not None:
        command += ["--wheels", str(wheels)]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


def account(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def members(root: Path, user: str) -> set[str]:
    groups = set()
    for line in (root / "etc" / "group").read_text().splitlines():
        name, _, _, users = line.split(":")
        if user in users.split(","):
            groups.add(name)
    return groups


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


#: Run by the installed release's python: is pymodbus there, and does every module of edge/,
#: drivers/ and buffer/ import without the extras?
IMPORT_EVERY_MODULE = """
import importlib, importlib.util, pkgutil
print("pymodbus:" + ("present" if importlib.util.find_spec("pymodbus") else "absent"))
for name in ("edge", "drivers", "buffer"):
    package = importlib.import_module(name)
    for module in pkgutil.walk_packages(package.__path__, name + "."):
        if module.name != "edge.commission.server":
            importlib.import_module(module.name)
print("modules:ok")
"""

#: The same under the service's ``python -OO``, and which of the release's modules it loaded
#: have no ``-OO`` bytecode (the service could not write it: it would compile them each start).
IMPORT_UNDER_OO = (
    IMPORT_EVERY_MODULE
    + """
import os, sys
print("optimize:%d" % sys.flags.optimize)
missing = sorted(
    name for name, module in list(sys.modules.items())
    if (getattr(module, "__file__", None) or "").endswith(".py")
    and "site-packages" in module.__file__
    and not os.path.exists(importlib.util.cache_from_source(module.__file__))
)
print("uncompiled:" + ",".join(missing))
"""
)


def installed_edge(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the installed release's ``edge`` (its python: the shebang names the real /opt)."""
    python = root / "opt" / APP / "current" / "venv" / "bin" / "python"
    return subprocess.run(
        [str(python), "-m", "edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.integration  # builds and installs releases: a minute
def test_install_upgrade_rollback_uninstall(
    scratch_root: Path, wheelhouse: Path, project_wheel: Path, tmp_path: Path
) -> None:
    root = scratch_root
    certs = tmp_path / "certs"
    certs.mkdir()
    write_certificate(certs / "client.pem", write_key(certs / "client.key"))

    first = install(
        root, "--config", EXAMPLE, "--certs", certs, wheels=wheelhouse, source=project_wheel
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "installed edge" in first.stdout

    opt, etc, data = root / "opt" / APP, root / "etc" / APP, root / "var" / "lib" / APP
    user = account(root, "edge")
    assert user is not None
    uid, gid = int(user[2]), int(user[3])
    assert user[6] == "/usr/sbin/nologin"
    assert members(root, "edge") == {"dialout", "gpio", "edge-admin"}, "only the groups it needs"
    # Secrets: readable by the gateway's user alone.
    assert mode(etc / "site.yaml") == 0o600
    assert (etc / "site.yaml").stat().st_uid == uid
    assert (etc / "site.yaml").read_bytes() == EXAMPLE.read_bytes()
    assert mode(etc / "certs") == 0o700
    assert mode(etc / "certs" / "client.key") == 0o600
    assert mode(data) == 0o750
    # The gateway's group may write the site folder (push-config), not the world.
    assert mode(etc) == 0o770
    assert etc.stat().st_gid == gid
    assert (data.stat().st_uid, data.stat().st_gid) == (uid, gid)
    # The release in service, and the command on the PATH pointing into it.
    current = opt / "current"
    assert current.is_symlink()
    assert (root / "usr" / "local" / "bin" / "edge").readlink() == Path(
        f"/opt/{APP}/current/venv/bin/edge"
    )
    # pip writes a plain shebang, or a /bin/sh trampoline when the build path was long.
    head = "\n".join((current / "venv" / "bin" / "edge").read_text().splitlines()[:2])
    assert f"/opt/{APP}/releases/" in head, head
    staged = subprocess.run(
        ["grep", "-rlI", str(root), str(opt)], capture_output=True, text=True, check=False
    )
    assert staged.stdout == "", f"files name the staging root: {staged.stdout[:500]}"
    # Units enabled, the way systemctl enable leaves them.
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    assert {p.name for p in wants.iterdir()} == {f"{APP}.service", f"{APP}-firstboot.service"}
    # The installed gateway runs and accepts the installed config.
    checked = installed_edge(root, "check-config", etc / "site.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Without any extra: no simulator library, and every module the gateway may load imports
    # (the commissioning server is the commission extra's, tests/unit/test_dependencies.py).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = subprocess.run(
        [str(current / "venv" / "bin" / "python"), "-c", IMPORT_EVERY_MODULE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=elsewhere,  # ``-c`` imports from the working directory first: not the source tree
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["pymodbus:absent", "modules:ok"], loaded.stdout
    # As the service runs them (its unit's flags), from bytecode compiled at install.
    optimized = subprocess.run(
        [str(current / "venv" / "bin" / "python"), *interpreter_flags(), "-c", IMPORT_UNDER_OO],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=elsewhere,
    )
    assert optimized.returncode == 0, optimized.stderr
    assert optimized.stdout.split() == [
        "pymodbus:absent",
        "modules:ok",
        "optimize:2",
        "uncompiled:",
    ], optimized.stdout
    # systemd's own verdict on the installed units, resolved inside the root. The gateway's
    # starts the release's python, a link to the system's interpreter (/usr/bin/python3 on a
    # gateway, the one that built the release here): the root gets it where the link points.
    link = current / "venv" / "bin" / "python"
    while not link.readlink().is_absolute():
        link = link.parent / link.readlink()
    inside = root / link.readlink().relative_to("/")
    inside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(link.resolve(), inside)
    analyze = need("systemd-analyze", "systemd")
    for unit in (f"{APP}.service", f"{APP}-firstboot.service"):
        verify = subprocess.run(
            [analyze, "verify", f"--root={root}", unit], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0, verify.stderr
        assert verify.stdout + verify.stderr == "", "verify must be clean, warnings included"

    # Upgrade in place: the buffer and the config stay, the new release takes over.
    (data / "outbox.sqlite").write_bytes(b"pretend outbox")
    config_before = (etc / "site.yaml").read_bytes()
    first_release = current.readlink()
    second = install(root, wheels=wheelhouse, source=project_wheel)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "upgraded to edge" in second.stdout
    assert current.readlink() != first_release
    assert (data / "outbox.sqlite").read_bytes() == b"pretend outbox"
    assert (etc / "site.yaml").read_bytes() == config_before
    assert len(list((opt / "releases").iterdir())) == 2, "one previous release kept"

    # A failed upgrade (here: no packages to be had) leaves the gateway in service untouched.
    before = snapshot(root)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    broken = install(root, wheels=empty, source=project_wheel)
    assert broken.returncode == 1
    assert "installing the gateway's Python packages failed" in broken.stderr
    assert "nothing was changed" in broken.stderr
    assert snapshot(root) == before

    back = install(root, "--rollback")
    assert back.returncode == 0, back.stderr
    assert current.readlink() == first_release

    gone = install(root, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not opt.exists()
    assert not (root / "etc" / "systemd" / "system" / f"{APP}.service").exists()
    assert not wants.exists() or not any(wants.iterdir())
    assert not (root / "usr" / "local" / "bin" / "edge").is_symlink()
    assert (etc / "site.yaml").read_bytes() == config_before, "config kept"
    assert (data / "outbox.sqlite").exists(), "buffered data kept"

    purged = install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not etc.exists()
    assert not data.exists()
    assert account(root, "edge") is None


@pytest.mark.parametrize(
    ("os_release", "message"),
    [
        (
            'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nVERSION_CODENAME=noble\n',
            "unsupported system",
        ),
        (
            'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nID=debian\nVERSION_CODENAME=bullseye\n',
            "unsupported release",
        ),
        (None, "cannot tell which system"),
    ],
    ids=["ubuntu", "bullseye", "no-os-release"],
)
def test_unsupported_system_is_refused_untouched(
    tmp_path: Path, os_release: str | None, message: str
) -> None:
    root = make_root(tmp_path / "root", os_release or "")
    if os_release is None:
        (root / "etc" / "os-release").unlink()
    before = snapshot(root)
    result = install(root)
    assert result.returncode == 2
    assert message in result.stderr
    assert snapshot(root) == before


def test_raspios_trixie_passes_the_system_check(tmp_path: Path) -> None:
    trixie = 'PRETTY_NAME="Raspbian GNU/Linux 13 (trixie)"\nID=raspbian\nVERSION_CODENAME=trixie\n'
    root = make_root(tmp_path / "root", trixie)
    # Stop right after the system check: a Python that is too old.
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3.9\n")
    old.chmod(0o755)
    result = install(root, "--python", old)
    assert "unsupported" not in result.stderr
    assert "Python 3.9 is too old" in result.stderr


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("#!/bin/sh\necho 3.9\n", "Python 3.9 is too old: the gateway needs Python 3.11"),
        (
            '#!/bin/sh\ncase "$2" in *ensurepip*) exit 1 ;; esac\necho 3.11\n',
            "apt-get install python3-venv",
        ),
    ],
    ids=["too-old", "no-venv"],
)
def test_unfit_python_is_refused_untouched(
    scratch_root: Path, tmp_path: Path, script: str, message: str
) -> None:
    python = tmp_path / "python3"
    python.write_text(script)
    python.chmod(0o755)
    before = snapshot(scratch_root)
    result = install(scratch_root, "--python", python)
    assert result.returncode == 2
    assert message in result.stderr
    assert snapshot(scratch_root) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown option: --frobnicate"),
        (["--config", "/nonexistent/site.yaml"], "no such readable file"),
        (["--source", "/nonexistent"], "no such file or folder"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--keep", "two"], "--keep needs a whole number"),
    ],
)
def test_bad_arguments_are_refused_untouched(
    scratch_root: Path, args: list[str], message: str
) -> None:
    before = snapshot(scratch_root)
    result = install(scratch_root, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert snapshot(scratch_root) == before


@pytest.mark.integration  # builds and installs releases: a minute
def test_invalid_config_and_expired_certificate_refused_after_build_nothing_changed(
    scratch_root: Path, wheelhouse: Path, project_wheel: Path, tmp_path: Path
) -> None:
    site = yaml.safe_load(EXAMPLE.read_text())
    site["outputs"]["buzzer"]["pin"] = 40
    bad = tmp_path / "site.yaml"
    bad.write_text(yaml.safe_dump(site))
    certs = tmp_path / "certs"
    certs.mkdir()
    write_certificate(certs / "client.pem", write_key(certs / "client.key"), days_valid=(-60, -1))
    before = snapshot(scratch_root)
    result = install(
        scratch_root, "--config", bad, "--certs", certs, wheels=wheelhouse, source=project_wheel
    )
    assert result.returncode == 1
    assert "outputs.buzzer.pin" in result.stderr
    assert "client.pem" in result.stderr
    assert "expired" in result.stderr
    assert "nothing was changed" in result.stderr
    after = snapshot(scratch_root)
    # The releases folder may remain (empty): the half-built release itself is gone.
    added = set(after) - set(before)
    assert added <= {"opt", f"opt/{APP}", f"opt/{APP}/releases"}, added
    assert account(scratch_root, "edge") is None, "no user created for a refused install"


def test_needs_root(scratch_root: Path) -> None:
    # Run by another user, from a copy that user can read: the checkout may sit in a folder
    # other users cannot enter (a clone under /root or in a `mktemp -d`).
    with tempfile.TemporaryDirectory(prefix="edge-install-") as folder:
        readable = Path(folder)
        readable.chmod(0o755)
        script = readable / INSTALL.name
        shutil.copyfile(INSTALL, script)
        script.chmod(0o644)
        command = ["bash", str(script), "--root", str(scratch_root)]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        before = snapshot(scratch_root)
        result = subprocess.run(
            command, cwd=readable, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 1, result.stderr
    assert "run as root" in result.stderr
    assert snapshot(scratch_root) == before
