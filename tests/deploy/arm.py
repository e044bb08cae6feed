"""Raspberry Pi targets from an x86 machine: ARM wheelhouses, and the install proof under qemu.

``python -m tests.deploy.arm --arch arm64`` (``make deploy-arm64``; as root, some minutes):

1. builds a Debian bookworm root of the target's architecture with debootstrap (minbase, plus
   python3, python3-venv, openssl and systemd, what a Raspberry Pi OS Lite image has);
2. fills a wheelhouse for the target on this machine (``pip download --platform ...
   --only-binary=:all:``), as an installer would for a gateway without internet;
3. runs ``deploy/install.sh --wheels`` inside the root (chroot, qemu-user through binfmt), then
   the installed ``edge --version``, ``edge check-config``, ``edge selftest`` on the example
   site (mock pins) and an import of gpiozero's lgpio pin factory;
4. prints every step's output and merges ``deploy_<arch>_root_s`` (step 1) and
   ``deploy_<arch>_install_s`` (install.sh under qemu) into bench-results.json.

Mounts (``/proc``, ``/dev``) are made in a mount namespace of their own (``unshare``), so
none outlives the run, whatever happens to it. The root is removed at the end unless
``--keep``; ``--reuse DIR`` takes a root built by an earlier ``--keep`` run.

Nothing here runs in the test suite except :func:`fill_wheelhouse` and the marker checks
(tests/deploy/test_arm.py): a qemu install takes minutes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.deploy.conftest import REPO, source_copy

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: What install.sh needs beyond minbase (passwd, coreutils, grep, sed are in minbase).
ROOT_PACKAGES = ("python3", "python3-venv", "openssl", "systemd")
EXAMPLE = REPO / "config" / "example-site.yaml"


@dataclass(frozen=True)
class Target:
    """One kind of gateway: Debian's architecture name and what Python sees there."""

    arch: str  # dpkg --print-architecture
    machine: str  # uname -m, PEP 508's platform_machine
    qemu: str  # the binfmt entry of qemu-user-static
    python: str = "3.11"  # bookworm's
    glibc: str = "2_36"  # bookworm's
    #: Distributions with no wheel on PyPI for it: their sdists go into the wheelhouse and
    #: install.sh builds them in the root, as pip does on a Pi that cannot reach piwheels.
    built_here: tuple[str, ...] = ()
    #: What those builds need: Debian packages in the root, wheels in the wheelhouse.
    build_packages: tuple[str, ...] = ()
    build_wheels: tuple[str, ...] = ()

    @property
    def platforms(self) -> list[str]:
        """pip's --platform tags: every manylinux the target's glibc runs, newest first (pip
        does not widen a tag it is given to the older ones, as it does for its own machine)."""
        newest = int(self.glibc.split("_")[1])
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(newest, 16, -1)]
        return [*tags, f"manylinux2014_{self.machine}"]


TARGETS = {
    # Pi Zero 2 W, 3, 4, 5 on 64-bit Raspberry Pi OS (all four run it).
    "arm64": Target("arm64", "aarch64", "qemu-aarch64"),
    # The same boards on 32-bit Raspberry Pi OS.
    "armhf": Target(
        "armhf",
        "armv7l",
        "qemu-arm",
        built_here=("lgpio", "PyYAML", "cffi"),
        build_packages=("gcc", "python3-dev", "swig", "libffi-dev"),
        # PyYAML's build needs Cython; lgpio's (a setup.py project) wheel, with the venv's pip.
        build_wheels=("Cython==3.3.1", "wheel==0.48.0"),
    ),
}


def project_requirements() -> list[str]:
    """The gateway's runtime requirements, as pyproject.toml states them (markers included)."""
    with (REPO / "pyproject.toml").open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def marker_environment(machine: str, python: str = "3.11", system: str = "linux") -> dict[str, str]:
    """PEP 508's environment of a CPython ``python`` on ``system``/``machine``."""
    env = {key: str(value) for key, value in default_environment().items()}
    env.update(
        platform_machine=machine,
        sys_platform=system,
        platform_system=system.capitalize() if system != "darwin" else "Darwin",
        python_version=python,
        python_full_version=f"{python}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def requirements_for(machine: str, python: str = "3.11", system: str = "linux") -> list[str]:
    """The runtime requirements that apply on that machine, markers dropped."""
    env = marker_environment(machine, python, system)
    chosen = []
    for text in project_requirements():
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(env):
            chosen.append(f"{requirement.name}{requirement.specifier}")
    return chosen


def target_only_requirements(target: Target) -> list[str]:
    """What the target needs and this machine does not (lgpio on ARM).

    ``pip download --platform`` picks wheels for the target but evaluates markers for the
    machine it runs on, so these must be named to it explicitly.
    """
    here = set(requirements_for(_this_machine(), target.python))
    return [r for r in requirements_for(target.machine, target.python) if r not in here]


def _this_machine() -> str:
    return str(default_environment()["platform_machine"])


def platform_options(target: Target) -> list[str]:
    """pip's options that pick wheels for ``target`` rather than for this machine."""
    return [
        "--only-binary=:all:",
        *(option for tag in target.platforms for option in ("--platform", tag)),
        *["--python-version", target.python, "--implementation", "cp"],
    ]


def pip_download_command(target: Target, dest: Path, *requirements: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        *platform_options(target),
        "--dest",
        str(dest),
        *map(str, requirements),
    ]


def fill_wheelhouse(target: Target, dest: Path, timeout: float = 600) -> Path:
    """The project's wheel and every runtime dependency as wheels for ``target``: what
    ``install.sh --wheels`` installs from on a gateway without internet. Returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-source-") as scratch:
        source = source_copy(Path(scratch))
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(source)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if built.returncode != 0:
        raise RuntimeError(f"building the project's wheel failed:\n{built.stderr[-3000:]}")
    (wheel,) = dest.glob("city_safety_edge-*.whl")
    extra = target_only_requirements(target)
    if not target.built_here:
        _pip(pip_download_command(target, dest, wheel, *extra), target, timeout)
        return dest
    # pip cannot resolve for a platform some dependencies have no wheel for: resolve on the
    # 64-bit twin (same pins, same Python), then fetch each one as a wheel or as its sdist.
    twin = Target("arm64", "aarch64", "qemu-aarch64", target.python, target.glibc)
    pins = resolved_pins(twin, wheel, *extra)
    from_source = {name.lower() for name in target.built_here}
    wheels = [pin for pin in pins if pin.split("==")[0].lower() not in from_source]
    sdists = [pin for pin in pins if pin.split("==")[0].lower() in from_source]
    _pip([*pip_download_command(target, dest, *wheels), "--no-deps"], target, timeout)
    # What builds the sources, with what that needs (wheel needs packaging).
    _pip(pip_download_command(target, dest, *target.build_wheels), target, timeout)
    sdist = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    _pip([*sdist, "--no-binary=:all:", "--dest", str(dest), *sdists], target, timeout)
    return dest


def resolved_pins(target: Target, *requirements: str | Path) -> list[str]:
    """``name==version`` of everything pip would install for ``requirements`` on ``target``
    (the project itself left out), from ``pip install --dry-run --report``."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [
            *[sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"],
            *["--target", scratch, "--report", str(report), *platform_options(target)],
            *map(str, requirements),
        ]
        _pip(command, target, 600)
        items = json.loads(report.read_text())["install"]
    return [
        f"{item['metadata']['name']}=={item['metadata']['version']}"
        for item in items
        if item["metadata"]["name"] != "city-safety-edge"
    ]


def _pip(command: list[str], target: Target, timeout: float) -> None:
    fetched = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if fetched.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} failed (every dependency must have a wheel for "
            f"{target.machine}, CPython {target.python}):\n{fetched.stderr[-3000:]}"
        )


# -- the root and qemu ----------------------------------------------------------------------


def ensure_host_tools(target: Target) -> None:
    """debootstrap, qemu-user-static and its binfmt entry: installed and enabled if missing."""
    missing = [
        package
        for tool, package in (
            ("debootstrap", "debootstrap"),
            (f"{target.qemu}-static", "qemu-user-static"),
            ("update-binfmts", "binfmt-support"),
            ("unshare", "util-linux"),
        )
        if shutil.which(tool) is None
    ]
    if missing:
        print(f"installing {' '.join(missing)} (apt-get)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], check=True)
    entry = binfmt / target.qemu
    if not entry.exists() or "enabled" not in entry.read_text():
        subprocess.run(["update-binfmts", "--enable", target.qemu], check=True)
    if "enabled" not in entry.read_text():
        raise RuntimeError(f"binfmt entry {target.qemu} cannot be enabled: {entry.read_text()}")


def build_root(target: Target, root: Path) -> None:
    # debootstrap mounts /proc (and more) in the root while it configures packages: in a
    # mount namespace of its own, a failed run cannot leave them mounted.
    command = [
        *["unshare", "--mount", "--propagation", "private"],
        "debootstrap",
        f"--arch={target.arch}",
        "--variant=minbase",
        f"--include={','.join((*ROOT_PACKAGES, *target.build_packages))}",
        SUITE,
        str(root),
        MIRROR,
    ]
    print(f"$ {shlex.join(command)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log = root / "debootstrap" / "debootstrap.log"
        detail = log.read_text()[-3000:] if log.exists() else result.stderr[-3000:]
        raise RuntimeError(f"debootstrap failed:\n{result.stdout[-2000:]}\n{detail}")


def in_root(root: Path, script: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash inside ``root`` (chroot; qemu through binfmt), with /proc and
    /dev mounted in a private mount namespace that ends with the command."""
    inner = (
        'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && '
        'exec chroot "$1" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin '
        'HOME=/root LANG=C.UTF-8 /bin/bash -euo pipefail -c "$2"'
    )
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            inner,
            "sh",
            str(root),
            script,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def mounts_under(root: Path) -> list[str]:
    """Mount points inside ``root`` seen from here: must be none after every run."""
    prefix = str(root.resolve()) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [point for point in points if point.startswith(prefix)]


def show(step: str, result: subprocess.CompletedProcess[str]) -> None:
    print(f"\n== {step} (exit {result.returncode})", flush=True)
    for stream in (result.stdout, result.stderr):
        if stream.strip():
            print(stream.rstrip(), flush=True)


# -- the proof ------------------------------------------------------------------------------

#: In the root, after the install: what a gateway's first minutes on site would run.
CHECKS = {
    "edge --version": "edge --version",
    "edge check-config": "edge check-config /root/proof/site.yaml",
    "edge check-config (pin_factory: lgpio)": "edge check-config /root/proof/site-lgpio.yaml",
    "edge selftest (mock pins)": "edge selftest --config /root/proof/site.yaml --seconds 100ms",
    "GPIO backend": (
        "/opt/city-safety-edge/current/venv/bin/python -c '"
        "import importlib.metadata as m, platform, lgpio, gpiozero.pins.lgpio as pins; "
        'print(platform.machine(), "lgpio", m.version("lgpio"), pins.LGPIOFactory.__name__)\''
    ),
}


def prove(target: Target, work: Path, *, reuse: Path | None = None) -> dict[str, float]:
    """Steps 1-3 of the module's docstring; raises when one fails. Returns the figures."""
    figures: dict[str, float] = {}
    ensure_host_tools(target)
    root = reuse or work / "root"
    if reuse is None:
        started = time.monotonic()
        build_root(target, root)
        figures[f"deploy_{target.arch}_root_s"] = round(time.monotonic() - started, 1)
        print(f"root built in {figures[f'deploy_{target.arch}_root_s']} s", flush=True)
    proof = root / "root" / "proof"
    shutil.rmtree(proof, ignore_errors=True)
    proof.mkdir(parents=True)
    started = time.monotonic()
    fill_wheelhouse(target, proof / "wheels")
    print(f"wheelhouse filled in {time.monotonic() - started:.1f} s:", flush=True)
    for name in sorted(p.name for p in (proof / "wheels").iterdir()):
        print(f"  {name}")
    shutil.copytree(REPO / "deploy", proof / "deploy")
    shutil.copy(EXAMPLE, proof / "site.yaml")
    # The same site as a Pi runs it: the real backend instead of gpiozero's MockFactory.
    site = yaml.safe_load(EXAMPLE.read_text())
    site["outputs"]["pin_factory"] = "lgpio"
    (proof / "site-lgpio.yaml").write_text(yaml.safe_dump(site, sort_keys=False))

    try:
        # A rerun on a kept root upgrades; the first run installs.
        (wheel,) = (proof / "wheels").glob("city_safety_edge-*.whl")
        install = (
            f"bash /root/proof/deploy/install.sh --source /root/proof/wheels/{wheel.name} "
            "--wheels /root/proof/wheels --config /root/proof/site.yaml"
        )
        started = time.monotonic()
        result = in_root(root, install)
        figures[f"deploy_{target.arch}_install_s"] = round(time.monotonic() - started, 1)
        show(f"install.sh under qemu ({figures[f'deploy_{target.arch}_install_s']} s)", result)
        if result.returncode != 0:
            raise RuntimeError("install.sh failed inside the root (output above)")
        for step, script in CHECKS.items():
            result = in_root(root, f"cd /root/proof && {script}", timeout=600)
            show(step, result)
            if result.returncode != 0:
                raise RuntimeError(f"{step} failed inside the root (output above)")
        # Informative: without a GPIO chip the factory cannot open one (no Pi here).
        show(
            "LGPIOFactory() without a GPIO chip (expected to fail here)",
            in_root(
                root,
                "/opt/city-safety-edge/current/venv/bin/python -c "
                "'from gpiozero.pins.lgpio import LGPIOFactory; LGPIOFactory()' 2>&1 "
                "| tail -n 1 || true",
            ),
        )
    finally:
        left = mounts_under(root)
        if left:
            raise RuntimeError(f"mounts left inside the root: {left}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="Install the gateway into an ARM root under qemu.")
    parser.add_argument("--arch", choices=sorted(TARGETS), default="arm64")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results.json")
    parser.add_argument("--keep", action="store_true", help="keep the root (path printed)")
    parser.add_argument("--reuse", type=Path, help="a root kept by an earlier run (no debootstrap)")
    args = parser.parse_args()
    target = TARGETS[args.arch]
    if args.reuse is not None and not (args.reuse / "usr" / "bin" / "python3").exists():
        parser.error(f"--reuse {args.reuse}: not a root made by --keep (no usr/bin/python3 in it)")
    work = Path(tempfile.mkdtemp(prefix=f"deploy-{target.arch}-"))
    try:
        figures = prove(target, work, reuse=args.reuse)
    finally:
        if args.keep and not args.reuse:
            print(f"\nroot kept: {work / 'root'} (--reuse it)")
        elif mounts_under(work):
            # Never delete through a mount: a /dev bound there is this machine's /dev.
            print(f"\nnot removed, something is mounted inside: {work} {mounts_under(work)}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    merged = json.loads(args.out.read_text()) if args.out.exists() else {}
    merged.update(figures)
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    print()
    for key, value in figures.items():
        print(f"  {key:<28} {value}")


if __name__ == "__main__":
    main()
