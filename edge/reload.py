"""A site config pushed by the platform: checked, written, started, or rolled back.

``push-config`` goes through these steps (docs/commands.md has the platform's view):

1. :func:`check_pushed` validates the pushed site exactly as ``edge check-config`` does (the
   same loader, the same cross-checks, the same known device models) and refuses the two
   changes a remote push may not make: ``gateway.id`` (the platform identity) and
   ``buffer.path`` (the outbox holds the unsent records and the alarms' state). Refused: an
   error ack listing every problem by field path, a ``config-rejected`` event, nothing changed.
2. :func:`write_site` replaces the site file atomically (a temporary file in the same folder,
   fsync, rename, fsync of the folder) and keeps the file it replaced as ``<name>.previous``;
   ``<name>.pending`` says the new file has not proved itself yet (:func:`recover_unsettled`
   undoes such a push at the next start, after a power cut or a crash).
3. The ack goes out (``ok``, with the new config hash) and the running gateway stops in the
   normal order (buses, rule state saved, outbox flushed, uplink); :class:`SiteRunner` then
   builds a new :class:`~edge.gateway.Gateway` from the file.
4. The new gateway must start and run :data:`SETTLE_TIME` seconds without any of its services
   crashing. Then it reports ``config-applied``. Otherwise the previous file is put back, the
   previous config is started again, and it reports ``config-rolled-back`` with the reason.

The active alarms survive the restart: their state is in the outbox's state store, which the
new gateway restores before it polls, and an active alarm sounds again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from edge.commands import CommandError
from edge.config.loader import ConfigError, load_site, parse_site
from edge.config.model import SiteConfig
from edge.log import fields

if TYPE_CHECKING:
    from edge.gateway import Gateway

__all__ = [
    "PENDING_SUFFIX",
    "PREVIOUS_SUFFIX",
    "SETTLE_TIME",
    "PushRejected",
    "Pushed",
    "RestartRequest",
    "SiteRunner",
    "check_pushed",
    "recover_unsettled",
    "restore_previous",
    "settled",
    "write_site",
]

log = logging.getLogger("edge.reload")

#: How long a newly pushed config must run with no service crashing before it counts as
#: applied. A bus that cannot reach its devices is not a crash (it retries, and reports the
#: devices offline); a pin factory the board lacks, or a buffer it cannot open, is.
SETTLE_TIME: Final = 3.0
#: The file a push replaced, next to the site file.
PREVIOUS_SUFFIX: Final = ".previous"
#: Next to the site file while a pushed config has not proved it starts.
PENDING_SUFFIX: Final = ".pending"
#: How often the settle watch looks at the new gateway's services.
_SETTLE_POLL: Final = 0.1


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


def check_pushed(
    params: Mapping[str, Any],
    running: SiteConfig,
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
    if site is not None:
        if not isinstance(site, dict):
            raise PushRejected([f"site must be an object, not {type(site).__name__}"])
        # The object's keys in the order given: the file reads like the installer's own.
        text = yaml.safe_dump(site, sort_keys=False, allow_unicode=True)
    assert isinstance(text, str)
    try:
        config = parse_site(text, filename, known_models=known_models)
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
        _atomic_write(previous, path.read_bytes())
    if pending is not None:
        _atomic_write(_pending(path), json.dumps(dict(pending)).encode())
    _atomic_write(path, text.encode())
    return previous


def restore_previous(path: Path) -> None:
    """Put ``<name>.previous`` back as the site file (atomically; the copy stays)."""
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    _atomic_write(path, previous.read_bytes())
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
    if previous.exists() and _hash(path.read_bytes()) == pending.get("config_hash"):
        restore_previous(path)
        return pending
    settled(path)  # the site file is not the pushed one (it was never written, or edited since)
    return None


def _pending(path: Path) -> Path:
    return path.with_name(path.name + PENDING_SUFFIX)


def _hash(data: bytes) -> str:
    # The gateway's config_hash (edge.gateway imports this module, so not from there).
    return hashlib.sha256(data).hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    folder = path.parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            # The installer's permissions (a site file may hold broker credentials).
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must survive a power cut
    finally:
        os.close(directory)


@dataclass
class _Outcome:
    restart: RestartRequest | None = None
    failure: str | None = None


class SiteRunner:
    """``edge run``'s loop: one gateway at a time for the site file at ``path``, restarted
    in-process for a pushed config and rolled back when the new one does not start."""

    def __init__(
        self,
        path: Path,
        config: SiteConfig,
        digest: str,
        *,
        status_interval: float = 10.0,
        pin_factory: Any = None,
        settle: float = SETTLE_TIME,
        known_models: Collection[str] | None = None,
        recovered: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = path
        #: What :func:`recover_unsettled` undid before this start, reported once it runs.
        self.recovered = recovered
        #: The config known to start, and its hash: where a failed push comes back to.
        self.config = config
        self.digest = digest
        self.status_interval = status_interval
        self.pin_factory = pin_factory
        self.settle = settle
        self.known_models = known_models
        #: The gateway running now (None between two).
        self.gateway: Gateway | None = None
        #: Pushed configs applied and rolled back so far.
        self.applied = 0
        self.rolled_back = 0

    def _make(self, config: SiteConfig, digest: str) -> Gateway:
        from edge.gateway import Gateway  # noqa: PLC0415 -- the gateway imports this module

        return Gateway(
            config,
            config_digest=digest,
            config_path=str(self.path),
            pin_factory=self.pin_factory,
            status_interval=self.status_interval,
        )

    async def run(
        self, stop: asyncio.Event, *, on_started: Callable[[], None] | None = None
    ) -> None:
        """Run until ``stop`` is set. The known-good config failing to start raises."""
        first = self._make(self.config, self.digest)
        if self.recovered is not None:
            first.report(
                "config-rolled-back",
                command_id=self.recovered.get("command_id"),
                reason="the gateway stopped before the pushed config had settled",
                rejected_hash=self.recovered.get("config_hash"),
                config_hash=self.digest,
            )
        gateway: Gateway | None = first
        pushed: RestartRequest | None = None
        while gateway is not None:
            outcome = await self._serve(
                gateway, stop, on_started=on_started, settle=pushed is not None
            )
            on_started = None
            if outcome.failure is not None:
                assert pushed is not None
                if stop.is_set():
                    # Stopped before the new config proved itself: the file goes back, and
                    # the next start runs the config that is known to work.
                    await asyncio.to_thread(restore_previous, self.path)
                    return
                gateway = await self._roll_back(pushed, outcome.failure)
                pushed = None
                continue
            pushed = outcome.restart
            if pushed is not None and stop.is_set():
                # Stopped between the write and the start: the new file never ran, so the
                # file that is known to work goes back for the next start.
                log.warning(
                    "pushed config not started: stopping",
                    extra=fields(config_hash=pushed.config_hash),
                )
                await asyncio.to_thread(restore_previous, self.path)
                return
            if pushed is None:
                return
            try:
                gateway = await self._start_pushed(pushed)
            except Exception as exc:  # any failure to build is a failure to start
                reason = f"did not start: {type(exc).__name__}: {exc}"
                gateway = await self._roll_back(pushed, reason)
                pushed = None

    async def _start_pushed(self, request: RestartRequest) -> Gateway:
        config = await asyncio.to_thread(load_site, self.path, known_models=self.known_models)
        gateway = self._make(config, request.config_hash)
        gateway.pushed_by = request.command_id
        return gateway

    async def _roll_back(self, request: RestartRequest, reason: str) -> Gateway:
        self.rolled_back += 1
        log.error(
            "pushed config rolled back",
            extra=fields(reason=reason, config_hash=request.config_hash),
        )
        await asyncio.to_thread(restore_previous, self.path)
        gateway = self._make(self.config, self.digest)
        gateway.report(
            "config-rolled-back",
            command_id=request.command_id,
            reason=reason,
            rejected_hash=request.config_hash,
            config_hash=self.digest,
        )
        return gateway

    async def _serve(
        self,
        gateway: Gateway,
        stop: asyncio.Event,
        *,
        settle: bool,
        on_started: Callable[[], None] | None = None,
    ) -> _Outcome:
        """Run ``gateway`` until ``stop`` or until it asks for a restart. With ``settle``, a
        gateway whose run ends or whose services crash within :attr:`settle` seconds is
        stopped and reported as failed; one that settles reports ``config-applied``."""
        self.gateway = gateway
        own = asyncio.Event()
        relay = asyncio.create_task(_relay(stop, own), name="stop relay")
        task = asyncio.create_task(gateway.run(own, on_started=on_started), name="gateway")
        try:
            if settle:
                failure = await _settle(gateway, task, self.settle)
                if failure is not None:
                    own.set()
                    with contextlib.suppress(Exception):
                        await task
                    return _Outcome(failure=failure)
                # The new file is the one to keep from now on, before anyone hears so.
                await asyncio.to_thread(settled, self.path)
                gateway.report(
                    "config-applied",
                    command_id=gateway.pushed_by,
                    config_hash=gateway.config_digest,
                    previous_hash=self.digest,
                )
                log.warning(
                    "pushed config applied", extra=fields(config_hash=gateway.config_digest)
                )
                self.applied += 1
                self.config, self.digest = gateway.config, gateway.config_digest
            await task
        finally:
            relay.cancel()
            self.gateway = None
        return _Outcome(restart=gateway.restart)


async def _relay(stop: asyncio.Event, own: asyncio.Event) -> None:
    await stop.wait()
    own.set()


async def _settle(gateway: Gateway, task: asyncio.Task[None], seconds: float) -> str | None:
    """Why ``gateway`` failed within ``seconds`` of starting, or None once it settled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await asyncio.wait({task}, timeout=_SETTLE_POLL)
        if task.done():
            error = task.exception()
            if error is not None:
                return f"did not start: {type(error).__name__}: {error}"
            return "stopped while starting"
        crashed = sorted(name for name, n in gateway.supervisor.restarts.items() if n > 0)
        if crashed:
            return f"service {', '.join(crashed)} crashed within {seconds:g} s of starting"
    return None
