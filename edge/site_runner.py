"""``edge run``'s loop: the gateway for the site file, restarted for a pushed config, rolled back.

This is the layer above the gateway (edge/reload.py is the file layer below it). A pushed
config goes through these steps (docs/commands.md has the platform's view):

1. The gateway's ``push-config`` handler checks the pushed site (:func:`edge.reload.check_pushed`)
   and writes it (:func:`edge.reload.write_site`), the replaced file kept as ``<name>.previous``
   and ``<name>.pending`` saying the new one has not proved itself yet.
2. The ack goes out (``ok``, with the new config hash) and the running gateway stops in the
   normal order (buses, rule state saved, outbox flushed, uplink); :class:`SiteRunner` then
   builds a new :class:`~edge.gateway.Gateway` from the file.
3. The new gateway must prove itself within the running config's
   ``uplink.push_confirm_within`` (60 s by default): run :data:`SETTLE_TIME` seconds with no
   service crashing, reach the platform (its uplink online and its own retained status echoed
   back by the broker: the broker, the login, the CA and the topic prefix all work) and have
   its ``config-applied`` event acknowledged (PUBACK). Then the push is confirmed, and the file
   is kept as the last good config (edge/lastgood.py). Otherwise the new gateway is stopped,
   its unsent ``config-applied`` withdrawn, the previous file put back, the previous config
   started again, and it reports ``config-rolled-back`` with the reason, which reaches the
   platform once the previous config is back online.

A push taken in fault mode (edge/fault.py) has no previous config to go back to: the runner
is started with it as a *trial*; if it does not prove itself, its file goes back and the run
ends with :attr:`SiteRunner.trial_failure` set, for fault mode to resume.

While a push is being proved, a second one is refused (an error ack): the files on disk are
those of one push at a time.

The active alarms survive the restart: their state is in the outbox's state store, which the
new gateway restores before it polls, and an active alarm sounds again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edge import lastgood
from edge.atomic import digest_of
from edge.config.compiled import load_site
from edge.contract import event_body
from edge.gateway import Gateway
from edge.log import fields
from edge.reload import RestartRequest, restore_previous, settled

if TYPE_CHECKING:
    from edge.config.model import SiteConfig

__all__ = ["SETTLE_TIME", "SiteRunner", "reached_platform"]

# The logger of pushed configs since before the runner had a module of its own: journal
# filters on it keep working.
log = logging.getLogger("edge.reload")

#: How long a newly pushed config must at least run with no service crashing before it can be
#: confirmed. A bus that cannot reach its devices is not a crash (it retries, and reports the
#: devices offline); a pin factory the board lacks, or a buffer it cannot open, is.
SETTLE_TIME: Final = 3.0
#: A config-invalid event lists at most this many problems (a file of garbage has thousands).
MAX_REPORTED_PROBLEMS: Final = 50
#: How often the settle watch looks at the new gateway's services.
_SETTLE_POLL: Final = 0.1


@dataclass
class _Outcome:
    restart: RestartRequest | None = None
    failure: str | None = None


def reached_platform(gateway: Gateway) -> bool:
    """Whether ``gateway``'s uplink is online and the broker echoed its own status back."""
    uplink = gateway.uplink
    return uplink is not None and uplink.state == "online" and uplink.heard_back


class SiteRunner:
    """``edge run``'s loop: one gateway at a time for the site file at ``path``, restarted
    in-process for a pushed config and rolled back when the new one does not prove itself.

    ``site_problems``: ``config`` is the last good copy (edge/lastgood.py), run because the
    site file is unusable for these reasons (reported at start as ``config-invalid``); a push
    that is confirmed makes the site file good again."""

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
        site_problems: Sequence[str] | None = None,
        trial: RestartRequest | None = None,
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
        self.site_problems = site_problems
        #: A push taken in fault mode (edge/fault.py): ``config`` is that push, on trial, with
        #: no known-good config behind it. If it fails, the file goes back and the run ends
        #: with :attr:`trial_failure` set (fault mode again).
        self.trial = trial
        self.trial_failure: str | None = None
        self.from_last_good = site_problems is not None
        #: The gateway running now (None between two).
        self.gateway: Gateway | None = None
        #: Pushed configs applied and rolled back so far.
        self.applied = 0
        self.rolled_back = 0

    def _make(self, config: SiteConfig, digest: str) -> Gateway:
        gateway = Gateway(
            config,
            config_digest=digest,
            config_path=str(self.path),
            pin_factory=self.pin_factory,
            status_interval=self.status_interval,
        )
        gateway.site_unusable = self.from_last_good and digest == self.digest
        return gateway

    async def run(
        self,
        stop: asyncio.Event,
        *,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        """Run until ``stop`` is set. The known-good config failing to start raises."""
        try:
            first = self._make(self.config, self.digest)
        except Exception as exc:
            if self.trial is None:
                raise
            self.rolled_back += 1
            await asyncio.to_thread(restore_previous, self.path)
            self.trial_failure = f"did not start: {type(exc).__name__}: {exc}"
            return
        if self.site_problems is not None:
            first.report(
                "config-invalid",
                running="last-good",
                config_hash=self.digest,
                problems=list(self.site_problems[:MAX_REPORTED_PROBLEMS]),
                problem_count=len(self.site_problems),
            )
        if self.recovered is not None:
            first.report(
                "config-rolled-back",
                command_id=self.recovered.get("command_id"),
                reason="the gateway stopped before the pushed config was confirmed",
                rejected_hash=self.recovered.get("config_hash"),
                config_hash=self.digest,
            )
        if self.trial is not None:
            first.pushed_by = self.trial.command_id
            first.confirming = True
        gateway: Gateway | None = first
        pushed: RestartRequest | None = self.trial
        while gateway is not None:
            outcome = await self._serve(
                gateway, stop, on_started=on_started, confirm=pushed is not None
            )
            on_started = None
            if outcome.failure is not None:
                if pushed is None:
                    raise RuntimeError(f"gateway failed with no pushed config: {outcome.failure}")
                if stop.is_set():
                    # Stopped before the new config proved itself: the file goes back, and
                    # the next start runs the config that is known to work.
                    await asyncio.to_thread(restore_previous, self.path)
                    return
                if pushed is self.trial:
                    # Nothing known to work to go back to: the file goes back, fault mode
                    # takes over again (edge/cli.py) and reports it.
                    self.rolled_back += 1
                    log.error(
                        "pushed config rolled back",
                        extra=fields(reason=outcome.failure, config_hash=pushed.config_hash),
                    )
                    await asyncio.to_thread(restore_previous, self.path)
                    self.trial_failure = outcome.failure
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
        gateway.confirming = True
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
        confirm: bool,
        on_started: Callable[[], None] | None = None,
    ) -> _Outcome:
        """Run ``gateway`` until ``stop`` or until it asks for a restart. With ``confirm``, a
        gateway that does not prove itself (:meth:`_confirm`) is stopped and reported as
        failed; one that does is kept and its file becomes the last good config."""
        self.gateway = gateway
        own = asyncio.Event()
        relay = asyncio.create_task(_relay(stop, own), name="stop relay")
        task = asyncio.create_task(gateway.run(own, on_started=on_started), name="gateway")
        keeper: asyncio.Task[None] | None = None
        try:
            if confirm:
                failure = await self._confirm(gateway, task)
                if failure is not None:
                    own.set()
                    with contextlib.suppress(Exception):
                        await task
                    return _Outcome(failure=failure)
                # The new file is the one to keep from now on, before anyone hears so.
                await asyncio.to_thread(settled, self.path)
                gateway.confirming = False
                log.warning(
                    "pushed config confirmed", extra=fields(config_hash=gateway.config_digest)
                )
                self.applied += 1
                self.config, self.digest = gateway.config, gateway.config_digest
                self.from_last_good = gateway.site_unusable = False
                self.trial = None
                await asyncio.to_thread(self._keep_as_last_good, gateway.config_digest)
            elif not self.from_last_good:
                keeper = asyncio.create_task(self._keep_once_reached(gateway), name="last good")
            await task
        finally:
            relay.cancel()
            if keeper is not None:
                keeper.cancel()
            self.gateway = None
        return _Outcome(restart=gateway.restart)

    async def _confirm(self, gateway: Gateway, task: asyncio.Task[None]) -> str | None:
        """Why the pushed ``gateway`` did not prove itself, or None once it did: it ran
        :attr:`settle` seconds with no service crashing, reached the platform and had its
        ``config-applied`` acknowledged, all within the running config's
        ``uplink.push_confirm_within``."""
        within = self.config.uplink.push_confirm_within
        loop = asyncio.get_running_loop()
        started = loop.time()
        applied: asyncio.Task[int] | None = None
        try:
            while True:
                left = started + within - loop.time()
                if left <= 0:
                    return _unproven(gateway, applied, within)
                await asyncio.wait({task}, timeout=min(_SETTLE_POLL, left))
                if task.done():
                    error = task.exception()
                    if error is not None:
                        return f"did not start: {type(error).__name__}: {error}"
                    return "stopped while starting"
                # A config this board's pins cannot serve runs on (alarms matter more than a
                # buzzer), but a push must not trade a working buzzer for a silent one.
                unusable = gateway.pins_unusable()
                if unusable:
                    return "did not start: " + "; ".join(unusable)
                crashed = sorted(name for name, n in gateway.supervisor.restarts.items() if n > 0)
                if crashed:
                    return f"service {', '.join(crashed)} crashed before the config was confirmed"
                outbox = gateway.outbox
                if outbox is None:
                    continue
                # config-applied goes last, once nothing crashed and the platform is reached:
                # its PUBACK is the proof, and a platform that hears it may rely on it.
                if applied is None and (
                    loop.time() - started >= self.settle and reached_platform(gateway)
                ):
                    body = event_body(
                        "config-applied",
                        gateway.clock.time(),
                        command_id=gateway.pushed_by,
                        config_hash=gateway.config_digest,
                        # In fault mode nothing ran before.
                        previous_hash=self.digest if self.trial is None else "",
                    )
                    applied = asyncio.create_task(outbox.append("event", body))
                if (
                    applied is not None
                    and applied.done()
                    and applied.exception() is None
                    and reached_platform(gateway)
                    and await _delivered(gateway, applied.result())
                ):
                    return None
        finally:
            if applied is not None and not applied.done():
                applied.cancel()
            if applied is not None and applied.done() and not applied.cancelled():
                await _withdraw(gateway, applied, task)

    def _keep_as_last_good(self, digest: str) -> None:
        try:
            data = self.path.read_bytes()
            if digest_of(data) != digest:
                # Edited since it was loaded: that file has not proved anything.
                return
            if lastgood.saved(self.path) != digest:
                lastgood.save(self.path, data)
                log.info("last good config kept", extra=fields(config_hash=digest))
        except OSError as exc:
            log.error("last good config not kept", extra=fields(error=str(exc)))

    async def _keep_once_reached(self, gateway: Gateway) -> None:
        """Keep the site file as the last good config once its gateway reaches the platform."""
        # Polled: the uplink has no event for the echo, and a look every half second is cheap.
        while True:
            if reached_platform(gateway):
                break
            await asyncio.sleep(_KEEP_POLL)
        await asyncio.to_thread(self._keep_as_last_good, gateway.config_digest)


#: How often a gateway started from its site file is checked for having reached the platform.
_KEEP_POLL: Final = 0.5


async def _delivered(gateway: Gateway, seq: int) -> bool:
    """Whether the row ``seq`` left the outbox: rows leave only on the broker's PUBACK."""
    outbox = gateway.outbox
    if outbox is None:
        return False
    try:
        return not await outbox.peek("event", 1, after=seq - 1, through=seq)
    except Exception:  # a busy disk: ask again at the next look
        return False


async def _withdraw(gateway: Gateway, applied: asyncio.Task[int], task: asyncio.Task[None]) -> None:
    """A push that was not confirmed: its ``config-applied``, if still unsent, must not go
    out later with the previous config. Only if the gateway still holds its outbox."""
    if applied.exception() is not None or gateway.outbox is None or task.done():
        return
    if reached_platform(gateway) and await _delivered(gateway, applied.result()):
        return  # confirmed, or sent: config-rolled-back follows it and has the last word
    with contextlib.suppress(Exception):
        await gateway.outbox.ack([applied.result()])


def _unproven(gateway: Gateway, applied: asyncio.Task[int] | None, within: float) -> str:
    """What a pushed gateway lacked when its time ran out, in words for the platform."""
    uplink = gateway.uplink
    if gateway.outbox is None:
        return f"the outbox did not open within {within:g} s"
    prefix = gateway.config.uplink.topic_prefix
    if uplink is not None and uplink.state == "refused":
        last = uplink.refusals.last
        return (
            f"connected to {uplink.broker} but it refuses messages on "
            f"{', '.join(uplink.refusals.topics)}"
            + ("" if last is None else f": {last.describe()}")
            + f" (topic prefix {prefix!r}, or the broker's access rules)"
        )
    if uplink is None or uplink.state != "online":
        why = "no attempt yet" if uplink is None else (uplink.last_error or uplink.state)
        where = "" if uplink is None or uplink.broker is None else f" via {uplink.broker}"
        return f"did not reach the platform within {within:g} s{where}: {why}"
    if not uplink.heard_back:
        return (
            f"connected to {uplink.broker} but its own status never came back within "
            f"{within:g} s: the broker does not let it use topic prefix {prefix!r}"
        )
    if applied is None or not applied.done():
        return f"config-applied was not written to the outbox within {within:g} s"
    return f"config-applied was not acknowledged by the broker within {within:g} s"


async def _relay(stop: asyncio.Event, own: asyncio.Event) -> None:
    await stop.wait()
    own.set()
