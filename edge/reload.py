"""A site config pushed by the platform, as files: checked, written, kept, or put back.

This is the layer below the gateway: it knows site files, not running gateways. The gateway's
``push-config`` handler (edge/command_handlers.py) checks and writes through it;
:class:`~edge.site_runner.SiteRunner`, above the gateway, starts the new config and confirms
it or rolls it back (its module has the whole sequence).

1. :func:`check_pushed` validates the pushed site exactly as ``edge check-config`` does (the
   same loader, the same cross-checks, the same known device models) and refuses the two
   changes a remote push may not make: ``gateway.id`` (the platform identity) and
   ``buffer.path`` (the outbox holds the unsent records and the alarms' state). Refused: an
   error ack listing every problem by field path, a ``config-rejected`` event, nothing changed.
2. :func:`write_site` replaces the site file atomically (a temporary file in the same folder,
   fsync, rename, fsync of the folder) and keeps the file it replaced as ``<name>.previous``;
   ``<name>.pending`` says the new file has not proved itself yet (:func:`recover_unsettled`
   undoes such a push at the next start, after a power cut or a crash).
3. :func:`settled` marks a pushed file as the one to keep; :func:`restore_previous` puts the
   replaced one back. A power cut at any moment leaves the previous file or the pushed one in
   force, never neither.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from edge.atomic import atomic_write, digest_of
from edge.commands import CommandError
from edge.config.compiled import parse_site, parse_site_object
from edge.config.issues import ConfigError

if TYPE_CHECKING:
    from edge.config.model import BufferConfig, SiteConfig
    from edge.config.model import Gateway as GatewaySection

__all__ = [
    "PENDING_SUFFIX",
    "PREVIOUS_SUFFIX",
    "PushRejected",
    "Pushed",
    "RestartRequest",
    "Running",
    "check_pushed",
    "recover_unsettled",
    "restore_previous",
    "settled",
    "write_site",
]

#: The file a push replaced, next to the site file.
PREVIOUS_SUFFIX: Final = ".previous"
#: Next to the site file while a pushed config has not proved it starts.
PENDING_SUFFIX: Final = ".pending"


class PushRejected(CommandError):
    """The pushed config is refused; ``errors`` lists every problem, by field path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        shown = "; ".join(errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        super().__init__(f"pushed config refused: {shown}{more}")


@dataclass(frozen=True)
class Pushed:
    """A pushed config that passed :func:`check_pushed`: the file's text and its model."""

    text: str
    config: SiteConfig


@dataclass(frozen=True)
class RestartRequest:
    """What a gateway that stopped for a pushed config asks of :class:`SiteRunner`."""

    command_id: str | None
    config_hash: str
    previous_hash: str


class Running(Protocol):
    """What a push is checked against: the identity and outbox of the gateway running now
    (a :class:`SiteConfig`, or in fault mode the sections of the site file still usable)."""

    @property
    def gateway(self) -> GatewaySection: ...

    @property
    def buffer(self) -> BufferConfig: ...


def check_pushed(
    params: Mapping[str, Any],
    running: Running,
    *,
    filename: str,
    known_models: Collection[str] | None,
) -> Pushed:
    """Validate push-config ``params`` (``site``: the site as an object, or ``site_yaml``: the
    file's text, comments and all) against the site running now. Raises
    :class:`PushRejected`."""
    site, text = params.get("site"), params.get("site_yaml")
    if (site is None) == (text is None):
        raise PushRejected(["give exactly one of site (an object) or site_yaml (the file's text)"])
    try:
        if isinstance(site, dict):
            # Written out as YAML by the validating process: this one loads no YAML library.
            config, text = parse_site_object(site, filename, known_models=known_models)
        elif site is not None:
            raise PushRejected([f"site must be an object, not {type(site).__name__}"])
        elif isinstance(text, str):
            config = parse_site(text, filename, known_models=known_models)
        else:
            raise PushRejected([f"site_yaml must be the file's text, not {type(text).__name__}"])
    except ConfigError as exc:
        raise PushRejected(
            [_described(issue, lines=site is None) for issue in exc.issues]
        ) from None
    refused = []
    if config.gateway.id != running.gateway.id:
        refused.append(
            f"gateway.id: {config.gateway.id!r} differs from this gateway's "
            f"{running.gateway.id!r}; the platform identity is not changed remotely"
        )
    if config.buffer.path != running.buffer.path:
        refused.append(
            f"buffer.path: {config.buffer.path!r} differs from {running.buffer.path!r}; moving "
            "the outbox remotely would strand its unsent records and the alarms' state"
        )
    if refused:
        raise PushRejected(refused)
    return Pushed(text, config)


def _described(issue: Any, *, lines: bool) -> str:
    # Line numbers help only when the platform sent the text; for an object they would point
    # into a file the platform never saw.
    where = f"line {issue.line}: " if lines else ""
    return f"{where}{issue.field}: {issue.message}" if issue.field else f"{where}{issue.message}"


def write_site(path: Path, text: str, *, pending: Mapping[str, Any] | None = None) -> Path:
    """Replace the site file at ``path`` with ``text``, atomically; the replaced file is kept
    as ``<name>.previous`` (returned). A crash at any point leaves either file whole.

    ``pending`` (the push's ``config_hash`` and ``command_id``) is written as
    ``<name>.pending`` before the new file: until :func:`settled` removes it, the new file has
    not proved it starts, and :func:`recover_unsettled` puts the previous one back."""
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    if path.exists():
        atomic_write(previous, path.read_bytes())
    if pending is not None:
        atomic_write(_pending(path), json.dumps(dict(pending)).encode())
    atomic_write(path, text.encode())
    return previous


def restore_previous(path: Path) -> None:
    """Put ``<name>.previous`` back as the site file (atomically; the copy stays)."""
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    atomic_write(path, previous.read_bytes())
    settled(path)


def settled(path: Path) -> None:
    """The site file at ``path`` is the one to keep: no push is pending any more."""
    with contextlib.suppress(FileNotFoundError):
        _pending(path).unlink()


def recover_unsettled(path: Path) -> dict[str, Any] | None:
    """At start: a push whose gateway stopped (a power cut, a crash) before it settled leaves
    ``<name>.pending``; if the site file is still that push's, the previous file goes back.
    Returns what was pending when it did (for a ``config-rolled-back`` event), else None."""
    marker = _pending(path)
    try:
        pending = json.loads(marker.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        pending = {}  # a marker cut short: the site file decides below
    if not isinstance(pending, dict):
        pending = {}
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    if previous.exists() and digest_of(path.read_bytes()) == pending.get("config_hash"):
        restore_previous(path)
        return pending
    settled(path)  # the site file is not the pushed one (it was never written, or edited since)
    return None


def _pending(path: Path) -> Path:
    return path.with_name(path.name + PENDING_SUFFIX)
