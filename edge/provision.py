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

It runs as root, on files that anybody holding the card (and, in ``/etc/city-safety-edge``,
the gateway's own user) could have prepared. So it follows no link it did not create: a
symbolic link, a file with more than one hard link or a file of another user, on the card or
in the configuration folder, is refused and reported like any other problem; the files are
read once (``O_NOFOLLOW``) and what was checked is what is installed; new files are created
exclusively under unguessable names and renamed into place; ``REJECTED.txt`` is written as a
new file, never through what is already there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import logging
import os
import pwd
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpiozero import Buzzer

from drivers.modbus import known_models
from edge.annunciator import make_pin_factory
from edge.certs import check_certificates
from edge.config import ConfigError, load_site, parse_site
from edge.config.terms import DEFAULT_FAULT_PIN
from edge.log import fields, setup_logging
from edge.signing import load_key_ring

__all__ = [
    "CardFiles",
    "ProvisionResult",
    "UnsafeFile",
    "check_card",
    "install_card",
    "planted_links",
    "provision",
    "read_card",
    "sound_refusal",
    "validate_source",
]

log = logging.getLogger("edge.provision")

SITE_FILE = "site.yaml"
CERTS_DIR = "certs"
REJECTED_SUFFIX = ".rejected"
REJECTED_NOTE = "REJECTED.txt"
#: About ten seconds of the refusal pattern: long enough to be noticed by someone on site.
DEFAULT_FAULT_REPEATS = 5
DEFAULT_SOURCE = Path("/boot/firmware/city-safety-edge")
DEFAULT_ETC = Path("/etc/city-safety-edge")
#: Larger than any site file or certificate: such a file is refused, not read into memory.
MAX_FILE_SIZE = 1 << 20
_CLOEXEC = os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ProvisionResult:
    """What happened: ``installed``, ``rejected`` or ``nothing`` (no folder on the card)."""

    outcome: str
    problems: list[str] = field(default_factory=list)


class UnsafeFile(Exception):
    """A file provisioning will not read or write: a link, a hard link, a stranger's file."""


@dataclass(frozen=True)
class CardFiles:
    """What the installer left on the card, read once into memory: what is checked is what
    is installed, whatever happens to the card's files in between."""

    site: bytes
    #: Certificate folder's files by name; ``None`` when the card has no ``certs/``.
    certs: dict[str, bytes] | None


def _trusted_owners(*extra: int) -> set[int]:
    """Root (owner of the FAT boot partition's files), this process, and ``extra``."""
    return {0, os.geteuid(), *(uid for uid in extra if uid >= 0)}


def _open_folder(name: str | Path, shown: Path, dir_fd: int | None = None) -> int:
    """Open a folder without following a link in its last part."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFile(
                f"{shown}: a link or a file, not a folder; nothing is read or written through it"
            ) from None
        raise


def _read_file(name: str, folder_fd: int, shown: Path, owners: set[int]) -> bytes:
    """A regular file's bytes, refusing links, hard links and files of other users."""
    try:
        # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(
                f"{shown}: a symbolic link; copy the file itself onto the card"
            ) from None
        raise
    try:
        info = os.fstat(fd)
        _check_entry(info, shown, owners)
        if info.st_size > MAX_FILE_SIZE:
            raise UnsafeFile(f"{shown}: {info.st_size} bytes, more than a site file or certificate")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_entry(info: os.stat_result, shown: Path, owners: set[int]) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFile(f"{shown}: a symbolic link; nothing is read or written through it")
    if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
        raise UnsafeFile(f"{shown}: not a regular file")
    if stat.S_ISREG(info.st_mode) and info.st_nlink != 1:
        raise UnsafeFile(
            f"{shown}: has {info.st_nlink} hard links, so it is also a file elsewhere; "
            "nothing is read or written through it"
        )
    if info.st_uid not in owners:
        raise UnsafeFile(f"{shown}: owned by user {info.st_uid}, not by root or the gateway")


def read_card(source: Path) -> CardFiles:
    """The installer's files, read without following any link; :class:`UnsafeFile` or
    ``OSError`` (``FileNotFoundError`` when ``site.yaml`` is missing)."""
    owners = _trusted_owners()
    folder = _open_folder(source, source)
    try:
        _check_entry(os.fstat(folder), source, owners)
        site = _read_file(SITE_FILE, folder, source / SITE_FILE, owners)
        try:
            certs_fd = _open_folder(CERTS_DIR, source / CERTS_DIR, folder)
        except FileNotFoundError:
            return CardFiles(site, None)
        try:
            _check_entry(os.fstat(certs_fd), source / CERTS_DIR, owners)
            certs = {}
            for entry in sorted(os.listdir(certs_fd)):
                shown = source / CERTS_DIR / entry
                info = os.stat(entry, dir_fd=certs_fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    continue  # not a certificate; left on the card, never read
                _check_entry(info, shown, owners)
                certs[entry] = _read_file(entry, certs_fd, shown, owners)
            return CardFiles(site, certs)
        finally:
            os.close(certs_fd)
    finally:
        os.close(folder)


def check_card(files: CardFiles, source: Path, now: dt.datetime | None = None) -> list[str]:
    """Every problem with the files read from the card, named by their place on the card."""
    problems: list[str] = []
    shown_site = str(source / SITE_FILE)
    with tempfile.TemporaryDirectory(prefix="provision-") as scratch:
        # The same loader and certificate checks as everywhere, on a private copy.
        copy = Path(scratch)
        (copy / SITE_FILE).write_bytes(files.site)
        try:
            load_site(copy / SITE_FILE, known_models=known_models())
        except ConfigError as exc:
            problems = [str(replace(issue, file=shown_site)) for issue in exc.issues]
        if files.certs is not None:
            (copy / CERTS_DIR).mkdir()
            for name, data in files.certs.items():
                (copy / CERTS_DIR / name).write_bytes(data)
            for finding in check_certificates(copy / CERTS_DIR, now):
                if finding.level == "fail":
                    problems.append(
                        f"{source / CERTS_DIR / finding.file}: {finding.detail}; {finding.fix}"
                    )
            # The platform's command keys travel with the certificates; one the gateway could
            # not use is refused here rather than found missing when a command arrives.
            for problem in load_key_ring(copy / CERTS_DIR).problems:
                problems.append(f"{source / CERTS_DIR}/{problem}")
    return problems


def _read(source: Path) -> tuple[CardFiles | None, list[str]]:
    try:
        return read_card(source), []
    except FileNotFoundError:
        site = source / SITE_FILE
        return None, [f"{site}: missing; copy the site file as {SITE_FILE} into {source}"]
    except UnsafeFile as exc:
        return None, [str(exc)]
    except OSError as exc:
        return None, [f"{source}: cannot read: {exc.strerror or exc}"]


def validate_source(source: Path, now: dt.datetime | None = None) -> list[str]:
    """Every problem with the folder an installer prepared; empty when it may be installed."""
    files, problems = _read(source)
    return problems if files is None else check_card(files, source, now)


def planted_links(etc: Path, *owners: int) -> list[str]:
    """Links, hard links and strangers' files in the configuration folder (and one level
    down): nothing the gateway or an installer puts there, so a sign of tampering."""
    problems: list[str] = []
    trusted = _trusted_owners(*owners)
    try:
        folder = _open_folder(etc, etc)
    except FileNotFoundError:
        return []
    except (UnsafeFile, OSError) as exc:
        return [str(exc)]
    try:
        try:
            _check_entry(os.fstat(folder), etc, trusted)
        except UnsafeFile as exc:
            return [str(exc)]
        for name in sorted(os.listdir(folder)):
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            try:
                _check_entry(info, etc / name, trusted)
            except UnsafeFile as exc:
                problems.append(str(exc))
                continue
            if stat.S_ISDIR(info.st_mode):
                inner = _open_folder(name, etc / name, folder)
                try:
                    for child in sorted(os.listdir(inner)):
                        child_info = os.stat(child, dir_fd=inner, follow_symlinks=False)
                        try:
                            _check_entry(child_info, etc / name / child, trusted)
                        except UnsafeFile as exc:
                            problems.append(str(exc))
                finally:
                    os.close(inner)
    finally:
        os.close(folder)
    return [f"{problem} (in the configuration folder: remove it)" for problem in problems]


def _create(name: str, folder_fd: int, data: bytes, uid: int, gid: int) -> None:
    """A new file of ours: never an existing name, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=folder_fd)
    try:
        os.fchmod(fd, 0o600)
        if uid >= 0:
            os.fchown(fd, uid, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(name: str, folder_fd: int) -> None:
    """Remove a file, link or folder tree by name, following no link."""
    try:
        info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=folder_fd)
    else:
        os.unlink(name, dir_fd=folder_fd)


def _exists(name: str, folder_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def install_card(files: CardFiles, etc: Path, *, owner: str | None = None) -> None:
    """Install checked files into ``etc``; the previous files become ``*.previous``.

    Files are written under new, unguessable names next to their destination (same
    filesystem, created exclusively, never through a link), then renamed over the old ones,
    so a power cut leaves either the old or the new file, never half of one; a rename replaces
    a name, it never writes through a link that a name is.
    """
    uid = gid = -1
    if owner is not None:
        record = pwd.getpwnam(owner)
        uid, gid = record.pw_uid, record.pw_gid
    etc.mkdir(parents=True, exist_ok=True)
    folder = _open_folder(etc, etc)
    try:
        token = secrets.token_hex(8)
        staged_site = f".{SITE_FILE}.{token}.new"
        _create(staged_site, folder, files.site, uid, gid)
        staged_certs = f".{CERTS_DIR}.{token}.new"
        if files.certs is not None:
            os.mkdir(staged_certs, 0o700, dir_fd=folder)
            certs_fd = _open_folder(staged_certs, etc / staged_certs, folder)
            try:
                for name, data in files.certs.items():
                    _create(name, certs_fd, data, uid, gid)
                # Given away only when complete: the gateway's user cannot add to it meanwhile.
                if uid >= 0:
                    os.fchown(certs_fd, uid, gid)
                os.fsync(certs_fd)
            finally:
                os.close(certs_fd)
        # The swap: keep one previous generation for a manual rollback.
        if _exists(SITE_FILE, folder):
            os.replace(SITE_FILE, f"{SITE_FILE}.previous", src_dir_fd=folder, dst_dir_fd=folder)
        os.replace(staged_site, SITE_FILE, src_dir_fd=folder, dst_dir_fd=folder)
        if files.certs is not None:
            previous_certs = f"{CERTS_DIR}.previous"
            if _exists(CERTS_DIR, folder):
                _remove(previous_certs, folder)
                os.replace(CERTS_DIR, previous_certs, src_dir_fd=folder, dst_dir_fd=folder)
            os.replace(staged_certs, CERTS_DIR, src_dir_fd=folder, dst_dir_fd=folder)
        os.fsync(folder)
    finally:
        os.close(folder)


def reject_source(source: Path, problems: list[str]) -> Path:
    """Leave the refused files on the card, renamed, with the reasons beside them.

    Nothing is written through a link: a folder that is a link is renamed, not written into,
    and a ``REJECTED.txt`` already there (a link, a hard link) is replaced, not overwritten.
    """
    rejected = source.with_name(source.name + REJECTED_SUFFIX)
    note = (
        "These files were refused by the gateway; nothing was installed.\n"
        "Fix every line below, rename this folder back to "
        f"{source.name} and boot again.\n\n" + "\n".join(problems) + "\n"
    )
    try:
        folder = _open_folder(source, source)
    except (UnsafeFile, OSError):
        folder = -1
    if folder >= 0:
        try:
            _remove(REJECTED_NOTE, folder)
            _create(REJECTED_NOTE, folder, note.encode(), -1, -1)
        finally:
            os.close(folder)
    parent = _open_folder(source.parent, source.parent)
    try:
        _remove(rejected.name, parent)
        os.rename(source.name, rejected.name, src_dir_fd=parent, dst_dir_fd=parent)
    finally:
        os.close(parent)
    return rejected


def _fault_pin(etc: Path, default_pin: int, uid: int) -> tuple[int, bool, str | None]:
    """The buzzer of the configuration in force, else ``default_pin`` (active high)."""
    with contextlib.suppress(Exception):
        folder = _open_folder(etc, etc)
        try:
            text = _read_file(SITE_FILE, folder, etc / SITE_FILE, _trusted_owners(uid))
        finally:
            os.close(folder)
        config = parse_site(
            text.decode("utf-8-sig"), str(etc / SITE_FILE), known_models=known_models()
        )
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


def _take(
    source: Path, etc: Path, owner: str | None, now: dt.datetime | None
) -> tuple[CardFiles | None, list[str]]:
    """The card's files and every reason not to install them."""
    files, problems = _read(source)
    if files is None:
        return None, problems
    problems = check_card(files, source, now)
    uid = pwd.getpwnam(owner).pw_uid if owner is not None else -1
    return files, problems + planted_links(etc, uid)


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
    """Validate ``source`` and install it into ``etc``, or refuse it loudly.

    Runs as root on files anybody with the card (and, in ``etc``, the gateway's user) could
    have prepared, so no link is followed: a symbolic link, a hard link or another user's
    file on the card or in ``etc`` is a refusal, reported like any other problem.
    """
    if not source.is_dir():
        log.info("nothing to provision", extra=fields(source=source))
        return ProvisionResult("nothing")
    files, problems = _take(source, etc, owner, now)
    if files is not None and not problems:
        try:
            install_card(files, etc, owner=owner)
        except (UnsafeFile, OSError) as exc:
            problems = [f"{etc}: cannot install: {exc}"]
        else:
            try:
                shutil.rmtree(source)
            except OSError as exc:
                log.error(
                    "cannot remove the installed files from the card", extra=fields(error=exc)
                )
            log.info("provisioned", extra=fields(source=source, etc=etc))
            return ProvisionResult("installed")
    for problem in problems:
        log.error("provisioning refused", extra=fields(problem=problem))
    rejected = reject_source(source, problems)
    kept = _exists_in(etc, SITE_FILE)
    log.error(
        "new site files refused; nothing was installed",
        extra=fields(
            problems=len(problems),
            moved_to=rejected,
            previous_config="kept" if kept else "none",
        ),
    )
    uid = pwd.getpwnam(owner).pw_uid if owner is not None else -1
    pin, active_high, factory_name = _fault_pin(etc, default_pin, uid)
    try:
        factory = pin_factory if pin_factory is not None else make_pin_factory(factory_name)
        refusal(pin, active_high=active_high, pin_factory=factory)
    except Exception as exc:
        # No buzzer (no GPIO, pin busy): the log and REJECTED.txt still say it all.
        log.error("cannot sound the refusal pattern", extra=fields(pin=pin, error=str(exc)))
    return ProvisionResult("rejected", problems)


def _exists_in(folder: Path, name: str) -> bool:
    return os.path.lexists(folder / name)


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
