"""The ``edge`` command: what an installer and systemd run."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from drivers.modbus import known_models
from edge import (
    __version__,
    buffer_cli,
    commission,
    doctor,
    installer_cli,
    provision,
    replay,
    selftest,
    watch,
)
from edge.config import report_config
from edge.config.duration import parse_duration
from edge.gateway import config_hash
from edge.log import fields, start_log_queue
from edge.reload import SiteRunner, recover_unsettled
from edge.systemd import Notifier

log = logging.getLogger("edge.cli")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
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
    doctor.add_parser(commands)
    provision.add_parser(commands)
    installer_cli.add_parser(commands)
    buffer_cli.add_parser(commands)
    replay.add_parser(commands)
    selftest.add_parser(commands)
    watch.add_parser(commands)
    commission.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        status, _ = report_config(
            args.file, sys.stdout, known_models=known_models(), strict=args.strict
        )
        return status
    if args.command == "run":
        return run(args.config, log_level=args.log_level, status_every=args.status_every)
    if args.command == "doctor":
        return doctor.command(args)
    if args.command == "provision":
        return provision.command(args)
    if args.command in ("scan", "read"):
        return installer_cli.command(args)
    if args.command == "buffer":
        return buffer_cli.command(args)
    if args.command == "replay":
        return replay.command(args)
    if args.command == "selftest":
        return selftest.command(args)
    if args.command == "watch":
        return watch.command(args)
    if args.command == "commission":
        return commission.command(args)
    raise AssertionError(args.command)  # argparse refuses unknown commands


def run(path: str, *, log_level: str = "info", status_every: float = 10.0) -> int:
    """Validate the site file, then run the gateway until SIGTERM or SIGINT."""
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
    try:
        # A pushed config that had not proved it starts when the gateway last stopped (a power
        # cut, a crash) is undone: the file known to work runs.
        recovered = recover_unsettled(Path(path))
    except OSError as exc:
        log.error("pushed config not checked", extra=fields(config=path, error=str(exc)))
        recovered = None
    if recovered is not None:
        log.error("pushed config rolled back at start", extra=fields(config=path))
    status, config = report_config(
        path,
        sys.stderr,
        known_models=known_models(),
        quiet=True,
        warn=lambda w: log.warning("site file warning", extra=fields(warning=str(w))),
    )
    if config is None:
        return status
    with open(path, "rb") as file:
        digest = config_hash(file.read())

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        notifier = Notifier()
        watchdog: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            notifier.stopping()
            stop.set()

        def on_started() -> None:
            notifier.ready(f"gateway {config.gateway.id} running")
            watchdog.extend(filter(None, [notifier.start_watchdog()]))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        # A pushed config (push-config) restarts the gateway inside this loop, and rolls it
        # back when it does not start (edge/reload.py).
        runner = SiteRunner(
            Path(path),
            config,
            digest,
            status_interval=status_every,
            known_models=known_models(),
            recovered=recovered,
        )
        try:
            await runner.run(stop, on_started=on_started)
        finally:
            for task in watchdog:
                task.cancel()

    try:
        asyncio.run(serve())
    except Exception:
        log.exception("gateway failed", extra=fields(config=path))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
