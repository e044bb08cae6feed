"""``edge commission --config SITE``: the installer's page on a phone, next to the running gateway.

A separate, short-lived process (the daemon's memory stays as it is): a small aiohttp server
that reads the gateway's control socket and serves one mobile page from package data. Its
first line of standard output is the URL, with a one-time token. docs/commissioning.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from edge.config.duration import parse_duration

__all__ = ["add_parser", "command"]

DEFAULT_LISTEN = "127.0.0.1:8470"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65_535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), not {text!r}"
        )
    return host, int(port)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "commission",
        help="serve the commissioning page (live devices, self-test, record) to a phone",
    )
    parser.add_argument("--config", required=True, metavar="SITE", help="the site YAML file")
    parser.add_argument(
        "--listen",
        type=_listen,
        default=_listen(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"where to listen (default {DEFAULT_LISTEN}: this machine only; port 0: any free)",
    )
    parser.add_argument(
        "--idle",
        type=_duration,
        default=900.0,
        metavar="DURATION",
        help="stop after this long without a request (default 15min)",
    )
    parser.add_argument(
        "--socket", metavar="PATH", help="the gateway's control socket (default: the site file's)"
    )


def command(args: argparse.Namespace) -> int:
    try:
        from edge.commission.server import run  # noqa: PLC0415 -- an optional extra
    except ImportError as exc:
        print(
            f"error: edge commission needs the 'commission' extra ({exc.name} is missing): "
            "pip install 'city-safety-edge[commission]'",
            flush=True,
        )
        return 2
    return run(args)
