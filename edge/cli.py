"""The ``edge`` command: what an installer and systemd run."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import functools
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from drivers.modbus import known_models
from edge import __version__, heap, lastgood
from edge.atomic import digest_of
from edge.config.compiled import load_site, load_site_checked
from edge.config.duration import parse_duration
from edge.config.issues import ConfigError
from edge.fault import FaultMode, Salvage, salvage
from edge.log import fields, start_log_queue
from edge.reload import RestartRequest, recover_unsettled, restore_previous
from edge.site_runner import SiteRunner
from edge.systemd import Notifier

if TYPE_CHECKING:
    from edge.config.model import SiteConfig

log = logging.getLogger("edge.cli")

#: The module that adds each of the other commands (its ``add_parser``) and runs it (its
#: ``command``). A module is imported only when its command is asked for (or for ``--help``),
#: so ``edge run`` does not carry the installer's, doctor's and commissioning tools in memory
#: (docs/benchmarks.md, import budget).
TOOLS: Final = {
    "doctor": "edge.doctor",
    "provision": "edge.provision",
    "scan": "edge.installer_cli",
    "read": "edge.installer_cli",
    "buffer": "edge.buffer_cli",
    "replay": "edge.replay",
    "selftest": "edge.selftest",
    "watch": "edge.watch",
    "commission": "edge.commission",
}


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``edge`` parser; given the ``command`` about to run, only what it needs."""
    parser = argparse.ArgumentParser(
        prog="edge", description="Edge gateway for city safety sensors."
    )
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the gateway for a site file")
    run.add_argument("--config", required=True, metavar="FILE", help="the site YAML file")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--status-every",
        type=_duration,
        default=10.0,
        metavar="DURATION",
        help="how often a status line is logged (default 10s)",
    )

    check = commands.add_parser("check-config", help="validate a site file and print every error")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--strict", action="store_true", help="treat warnings as errors (exit 1 when any)"
    )
    if command in ("run", "check-config"):
        tools: Collection[str] = ()
    elif command in TOOLS:
        tools = (TOOLS[command],)
    else:  # help, a typo: every command, so argparse can list them
        tools = dict.fromkeys(TOOLS.values())
    for name in tools:
        importlib.import_module(name).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    first = words[0] if words and not words[0].startswith("-") else None
    args = build_parser(first).parse_args(words)
    if args.command == "check-config":
        from edge.config.loader import report_config  # noqa: PLC0415 (pydantic: not for run)

        status, _ = report_config(
            args.file, sys.stdout, known_models=known_models(), strict=args.strict
        )
        return status
    if args.command == "run":
        return run(args.config, log_level=args.log_level, status_every=args.status_every)
    if args.command in TOOLS:
        tool: Callable[[argparse.Namespace], int] = importlib.import_module(
            TOOLS[args.command]
        ).command
        return tool(args)
    raise AssertionError(args.command)  # argparse refuses unknown commands


def run(path: str, *, log_level: str = "info", status_every: float = 10.0) -> int:
    """Run the gateway for the site file at ``path`` until SIGTERM or SIGINT.

    A site file that is unusable does not stop it: the last good config runs instead
    (edge/lastgood.py), and without one the gateway sounds a fault and reports it
    (edge/fault.py). Either way systemd hears READY, so nothing restarts in a silent loop."""
    # Before the first thread: each would get an arena of its own (edge/heap.py).
    heap.limit_arenas()
    # Nothing in the gateway writes to stderr itself: a stalled journal would stall the
    # alarms. Log lines, prints and descriptor 2 go through a bounded queue to a writer thread.
    logs = start_log_queue(log_level)
    try:
        return _run(path, status_every)
    finally:
        # The process ends now: what is still said at exit goes to the queue, never to a
        # stderr that may block.
        logs.stop(release=False)


def _run(path: str, status_every: float) -> int:
    # `kill -USR1 <pid>` prints every thread's stack to stderr (the journal): the one way to
    # see where a gateway in the field is stuck without stopping it. Descriptor 2 is the log
    # queue's non-blocking pipe by now, so a dump during a stall is lost, not a hang.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    site = Path(path)
    try:
        # A pushed config that had not proved itself when the gateway last stopped (a power
        # cut, a crash) is undone: the file known to work runs.
        recovered = recover_unsettled(site)
    except OSError as exc:
        log.error("pushed config not checked", extra=fields(config=path, error=str(exc)))
        recovered = None
    if recovered is not None:
        log.error("pushed config rolled back at start", extra=fields(config=path))
    models = known_models()
    config, digest, problems = _load(site, models)
    fault: FaultMode | None = None
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        try:
            good = lastgood.load(site, known_models=models)
        except lastgood.LastGoodUnusable as exc:
            problems.append(str(exc))
            fault = FaultMode(problems, salvage(_text(site)), site=site, known_models=models)
        else:
            config, digest = good.config, good.digest
            log.error(
                "site file unusable: running the last good config",
                extra=fields(
                    config=path, problems=len(problems), config_hash=digest, saved=good.saved
                ),
            )

    async def _runner(trial: RestartRequest | None) -> SiteRunner | None:
        """The runner of the config to run: the push on trial, else the site file's or the
        last good one (``config``)."""
        if trial is None:
            if config is None:
                raise RuntimeError("no config to run: fault mode runs when none loaded")
            return SiteRunner(
                site,
                config,
                digest,
                status_interval=status_every,
                known_models=models,
                recovered=recovered,
                site_problems=problems or None,
            )
        try:
            pushed = await asyncio.to_thread(load_site, site, known_models=models)
        except (ConfigError, OSError):
            # Checked before it was written; changed since by someone else: theirs wins.
            log.exception("pushed config unreadable", extra=fields(config=path))
            return None
        return SiteRunner(
            site,
            pushed,
            trial.config_hash,
            status_interval=status_every,
            known_models=models,
            trial=trial,
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        notifier = Notifier()
        watchdog: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            notifier.stopping()
            stop.set()

        def ready(status: str) -> None:
            # Again after a change of mode: systemd takes the new STATUS; one watchdog only.
            notifier.ready(status)
            if not watchdog:
                watchdog.extend(filter(None, [notifier.start_watchdog()]))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        trimmer = asyncio.create_task(heap.trim_every(), name="heap trim")
        try:
            now_fault, trial = fault, None
            while True:
                if now_fault is not None:
                    await now_fault.run(stop, on_started=ready)
                    trial = now_fault.pushed
                    if trial is None:
                        return
                    if stop.is_set():
                        await asyncio.to_thread(restore_previous, site)
                        return
                runner = await _runner(trial)
                if runner is None:
                    return
                status = f"gateway {runner.config.gateway.id} running"
                if runner.from_last_good:
                    status += " on the LAST GOOD config: the site file is unusable"
                try:
                    await runner.run(stop, on_started=functools.partial(ready, status))
                except Exception as exc:
                    # The config known to work did not start (a pin library missing, ...): say
                    # so on whatever still works rather than exit into a silent restart loop.
                    log.exception("gateway failed", extra=fields(config=path))
                    used = runner.config
                    found = Salvage(
                        used.gateway, used.outputs, used.uplink, used.buffer, used.commands
                    )
                    now_fault = FaultMode(
                        [f"the gateway did not start: {exc!r}"],
                        found,
                        site=site,
                        known_models=models,
                    )
                    continue
                if runner.trial_failure is None or trial is None:
                    return
                # The push taken in fault mode did not prove itself: its file went back, and
                # fault mode resumes and says so.
                now_fault = FaultMode(
                    [
                        *problems,
                        f"pushed config {trial.config_hash} rolled back: {runner.trial_failure}",
                    ],
                    salvage(_text(site)),
                    site=site,
                    known_models=models,
                    rolled_back={
                        "command_id": trial.command_id,
                        "reason": runner.trial_failure,
                        "rejected_hash": trial.config_hash,
                        "config_hash": "",
                    },
                )
        finally:
            trimmer.cancel()
            for task in watchdog:
                task.cancel()

    try:
        asyncio.run(serve())
    except Exception:
        log.exception("gateway failed", extra=fields(config=path))
        return 1
    return 0


def _load(site: Path, models: Collection[str]) -> tuple[SiteConfig | None, str, list[str]]:
    """The site file's config and hash, or every reason it is unusable."""
    try:
        data = site.read_bytes()
        config, warnings = load_site_checked(site, known_models=models)
    except ConfigError as exc:
        return None, "", [str(issue) for issue in exc.issues]
    except OSError as exc:
        return None, "", [f"cannot read {site}: {exc.strerror or exc}"]
    for warning in warnings:
        log.warning("site file warning", extra=fields(warning=str(warning)))
    return config, digest_of(data), []


def _text(site: Path) -> str | None:
    try:
        return site.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
