"""First boot: take the site file and certificates from the SD card's boot partition.

An installer copies a folder onto the boot partition (the FAT partition any laptop or phone
adapter can write; ``/boot/firmware`` on Raspberry Pi OS Bookworm and Trixie)::

    city-safety-edge/
        site.yaml
        certs/ca.pem, certs/client.pem, certs/client.key      (optional)
        certs/operations-NAME.pub, certs/engineering-NAME.pub (the platform's command keys)

At boot ``edge provision`` (run by ``city-safety-edge-firstboot.service`` before the gateway)
checks all of it. When everything is valid the files are moved into ``/etc/city-safety-edge``
(mode 0600, owned by the gateway's user) and removed from the boot partition, where anybody
holding the card could read the password. When anything is wrong nothing is moved: each
problem is logged, written to ``REJECTED.txt`` beside the files, the folder is renamed to
``city-safety-edge.rejected`` (so it is not retried at every boot) and the buzzer plays the
refusal pattern. The previous configuration, if there is one, stays in force.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import pwd
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpiozero import Buzzer

from drivers.modbus import known_models
from edge.annunciator import make_pin_factory
from edge.certs import check_certificates
from edge.config import ConfigError, load_site
from edge.log import fields, setup_logging
from edge.signing import load_key_ring

__all__ = ["ProvisionResult", "provision", "sound_refusal"]

log = logging.getLogger("edge.provision")

SITE_FILE = "site.yaml"
CERTS_DIR = "certs"
REJECTED_SUFFIX = ".rejected"
REJECTED_NOTE = "REJECTED.txt"
#: BCM pin of the buzzer when no valid configuration says otherwise (the example wiring).
DEFAULT_FAULT_PIN = 17
#: About ten seconds of the refusal pattern: long enough to be noticed by someone on site.
DEFAULT_FAULT_REPEATS = 5
DEFAULT_SOURCE = Path("/boot/firmware/city-safety-edge")
DEFAULT_ETC = Path("/etc/city-safety-edge")


@dataclass
class ProvisionResult:
    """What happened: ``installed``, ``rejected`` or ``nothing`` (no folder on the card)."""

    outcome: str
    problems: list[str] = field(default_factory=list)


def validate_source(source: Path, now: dt.datetime | None = None) -> list[str]:
    """Every problem with the folder an installer prepared; empty when it may be installed."""
    site = source / SITE_FILE
    if not site.is_file():
        return [f"{site}: missing; copy the site file as {SITE_FILE} into {source}"]
    problems: list[str] = []
    try:
        load_site(site, known_models=known_models())
    except ConfigError as exc:
        problems = [str(issue) for issue in exc.issues]
    except OSError as exc:
        problems = [f"{site}: cannot read: {exc.strerror or exc}"]
    for finding in check_certificates(source / CERTS_DIR, now):
        if finding.level == "fail":
            problems.append(f"{source / CERTS_DIR / finding.file}: {finding.detail}; {finding.fix}")
    if (source / CERTS_DIR).is_dir():
        # The platform's command keys travel with the certificates; one the gateway could not
        # use is refused here rather than found missing when a command arrives.
        for problem in load_key_ring(source / CERTS_DIR).problems:
            problems.append(f"{source / CERTS_DIR}/{problem}")
    return problems


def _install_file(src: Path, dst: Path, uid: int, gid: int) -> None:
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)
    if uid >= 0:
        os.chown(dst, uid, gid)
    with dst.open("rb") as handle:
        os.fsync(handle.fileno())


def install_source(source: Path, etc: Path, *, owner: str | None = None) -> None:
    """Move a validated folder into ``etc``; the previous files become ``*.previous``.

    Files are first copied next to their destination (same filesystem), then renamed over the
    old ones, so a power cut leaves either the old or the new file, never half of one.
    """
    uid = gid = -1
    if owner is not None:
        record = pwd.getpwnam(owner)
        uid, gid = record.pw_uid, record.pw_gid
    etc.mkdir(parents=True, exist_ok=True)
    staged_site = etc / f".{SITE_FILE}.new"
    _install_file(source / SITE_FILE, staged_site, uid, gid)
    certs_src = source / CERTS_DIR
    staged_certs = etc / f".{CERTS_DIR}.new"
    if certs_src.is_dir():
        shutil.rmtree(staged_certs, ignore_errors=True)
        staged_certs.mkdir(mode=0o700)
        if uid >= 0:
            os.chown(staged_certs, uid, gid)
        for path in sorted(certs_src.iterdir()):
            if path.is_file():
                _install_file(path, staged_certs / path.name, uid, gid)
    # The swap: keep one previous generation for a manual rollback.
    current_site = etc / SITE_FILE
    if current_site.exists():
        os.replace(current_site, etc / f"{SITE_FILE}.previous")
    os.replace(staged_site, current_site)
    if certs_src.is_dir():
        current_certs = etc / CERTS_DIR
        previous_certs = etc / f"{CERTS_DIR}.previous"
        if current_certs.exists():
            shutil.rmtree(previous_certs, ignore_errors=True)
            os.replace(current_certs, previous_certs)
        os.replace(staged_certs, current_certs)
    fd = os.open(etc, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reject_source(source: Path, problems: list[str]) -> Path:
    """Leave the refused files on the card, renamed, with the reasons beside them."""
    (source / REJECTED_NOTE).write_text(
        "These files were refused by the gateway; nothing was installed.\n"
        "Fix every line below, rename this folder back to "
        f"{source.name} and boot again.\n\n" + "\n".join(problems) + "\n"
    )
    rejected = source.with_name(source.name + REJECTED_SUFFIX)
    shutil.rmtree(rejected, ignore_errors=True)
    source.rename(rejected)
    return rejected


def _fault_pin(etc: Path, default_pin: int) -> tuple[int, bool, str | None]:
    """The buzzer of the configuration in force, else ``default_pin`` (active high)."""
    with contextlib.suppress(Exception):
        config = load_site(str(etc / SITE_FILE), known_models=known_models())
        buzzer = config.outputs.buzzer
        return buzzer.pin, buzzer.active_high, config.outputs.pin_factory
    return default_pin, True, None


def sound_refusal(
    pin: int,
    *,
    active_high: bool = True,
    pin_factory: Any = None,
    repeats: int = DEFAULT_FAULT_REPEATS,
    unit: float = 0.15,
) -> None:
    """The refusal pattern: three short beeps and one long, ``repeats`` times.

    Distinct from an alarm (a continuous tone), so an installer standing by the gateway knows
    at once that the card was refused, not that a fire was detected.
    """
    buzzer = Buzzer(pin, active_high=active_high, pin_factory=pin_factory)
    try:
        for _ in range(repeats):
            buzzer.beep(on_time=unit, off_time=unit, n=3, background=False)
            buzzer.beep(on_time=4 * unit, off_time=4 * unit, n=1, background=False)
    finally:
        buzzer.close()


def provision(
    source: Path,
    etc: Path,
    *,
    owner: str | None = None,
    default_pin: int = DEFAULT_FAULT_PIN,
    pin_factory: Any = None,
    now: dt.datetime | None = None,
    refusal: Callable[..., None] = sound_refusal,
) -> ProvisionResult:
    """Validate ``source`` and install it into ``etc``, or refuse it loudly."""
    if not source.is_dir():
        log.info("nothing to provision", extra=fields(source=source))
        return ProvisionResult("nothing")
    problems = validate_source(source, now)
    if not problems:
        install_source(source, etc, owner=owner)
        shutil.rmtree(source)
        log.info("provisioned", extra=fields(source=source, etc=etc))
        return ProvisionResult("installed")
    for problem in problems:
        log.error("provisioning refused", extra=fields(problem=problem))
    rejected = reject_source(source, problems)
    kept = (etc / SITE_FILE).exists()
    log.error(
        "new site files refused; nothing was installed",
        extra=fields(
            problems=len(problems),
            moved_to=rejected,
            previous_config="kept" if kept else "none",
        ),
    )
    pin, active_high, factory_name = _fault_pin(etc, default_pin)
    try:
        factory = pin_factory if pin_factory is not None else make_pin_factory(factory_name)
        refusal(pin, active_high=active_high, pin_factory=factory)
    except Exception as exc:
        # No buzzer (no GPIO, pin busy): the log and REJECTED.txt still say it all.
        log.error("cannot sound the refusal pattern", extra=fields(pin=pin, error=str(exc)))
    return ProvisionResult("rejected", problems)


def add_parser(commands: Any) -> None:
    """The ``edge provision`` subcommand (``commands`` is argparse's subparsers object)."""
    cmd = commands.add_parser(
        "provision",
        help="install the site file and certificates an installer left on the boot partition",
    )
    cmd.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        metavar="DIR",
        help=f"the folder with site.yaml and certs/ (default {DEFAULT_SOURCE})",
    )
    cmd.add_argument(
        "--etc",
        type=Path,
        default=DEFAULT_ETC,
        metavar="DIR",
        help=f"where the configuration lives (default {DEFAULT_ETC})",
    )
    cmd.add_argument("--owner", metavar="USER", help="give the installed files to this user")
    cmd.add_argument(
        "--fault-pin",
        type=int,
        default=DEFAULT_FAULT_PIN,
        metavar="BCM",
        help="buzzer pin for the refusal pattern when no valid config is in force "
        f"(default {DEFAULT_FAULT_PIN})",
    )
    cmd.add_argument(
        "--fault-repeats",
        type=int,
        default=DEFAULT_FAULT_REPEATS,
        metavar="N",
        help=f"how often the refusal pattern plays (default {DEFAULT_FAULT_REPEATS}; 0: silent)",
    )
    cmd.add_argument(
        "--check-only",
        action="store_true",
        help="only check the folder: print every problem, install nothing, sound nothing",
    )


def command(args: argparse.Namespace) -> int:
    """Run ``edge provision``: 0 installed or nothing to do, 1 refused."""
    setup_logging("info")
    if args.check_only:
        problems = validate_source(args.source)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"ok: {args.source} may be installed")
        return 1 if problems else 0
    if args.owner is not None:
        try:
            pwd.getpwnam(args.owner)
        except KeyError:
            print(
                f"error: no user {args.owner!r} on this system: install the gateway first "
                "(deploy/install.sh creates it)",
                file=sys.stderr,
            )
            return 2
    repeats = max(0, args.fault_repeats)

    def refusal(pin: int, **kwargs: Any) -> None:
        if repeats:
            sound_refusal(pin, repeats=repeats, **kwargs)

    result = provision(
        args.source, args.etc, owner=args.owner, default_pin=args.fault_pin, refusal=refusal
    )
    return 1 if result.outcome == "rejected" else 0
