"""``edge selftest --config SITE``: sound every buzzer pattern, light the LED, pulse the relay.

An installer runs it on site with the gateway stopped (the pins belong to one process at a
time); the running gateway offers the same through :meth:`Annunciator.self_test`, which the
downlink can call. Each output is driven for ``--seconds`` so a person can hear and see it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from edge.annunciator import Annunciator
from edge.config import report_config
from edge.config.duration import parse_duration

__all__ = ["add_parser", "command"]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "selftest", help="sound every buzzer pattern and drive the LED and relay once"
    )
    parser.add_argument("--config", required=True, metavar="SITE", help="the site YAML file")
    parser.add_argument(
        "--seconds",
        type=_duration,
        default=2.0,
        metavar="DURATION",
        help="how long each output is driven (default 2s)",
    )


def command(args: argparse.Namespace) -> int:
    from drivers.modbus import known_models  # noqa: PLC0415 -- keeps `edge --help` light

    status, config = report_config(args.config, sys.stderr, known_models=known_models(), quiet=True)
    if config is None:
        return status
    annunciator = Annunciator(config.outputs)
    if annunciator.failure is not None:
        # One line an installer reads on a ladder, not a traceback.
        print(f"selftest: the buzzer cannot sound: {annunciator.failure}", file=sys.stderr)
        return 1

    async def exercise() -> list[str]:
        runner = asyncio.create_task(annunciator.run())
        try:
            return await annunciator.self_test(seconds=args.seconds)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    try:
        done = asyncio.run(exercise())
    finally:
        annunciator.close()
    for item in done:
        print(f"ok: {item}")
    return 0
