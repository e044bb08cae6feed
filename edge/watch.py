"""``edge watch``: the running gateway, live, in a terminal (over SSH too).

Reads the control socket (edge/control.py) once a second and redraws the screen with plain
ANSI escapes: every device with its values, units, age and status; the active alarms; the
buses' counters. ``--once`` prints one frame without escapes (scripts, logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from edge.control import DEFAULT_SOCKET, ControlClient, ControlError

__all__ = ["add_parser", "command", "render"]

#: Home the cursor, draw, then clear what an older, longer frame left below.
HOME, CLEAR_BELOW, CLEAR_LINE = "\x1b[H", "\x1b[J", "\x1b[K"
#: A reading older than this many poll periods is shown as stale.
STALE_AFTER_S = 10.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("watch", help="live view of the running gateway (devices, alarms)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="SITE", help="the site file (its control.socket)")
    where.add_argument("--socket", metavar="PATH", help=f"the control socket ({DEFAULT_SOCKET})")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument(
        "--every", type=float, default=1.0, metavar="SECONDS", help="redraw interval (1)"
    )


def _socket_path(args: argparse.Namespace) -> Path | None:
    if args.socket:
        return Path(args.socket)
    if args.config:
        from drivers.modbus import known_models  # noqa: PLC0415
        from edge.config import report_config  # noqa: PLC0415

        _, config = report_config(args.config, sys.stderr, known_models=known_models(), quiet=True)
        if config is None:
            return None
        return Path(config.control.socket or DEFAULT_SOCKET)
    return Path(DEFAULT_SOCKET)


def _value(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def render(status: dict[str, Any], *, width: int = 100) -> str:
    """One frame of the live view, plain text."""
    lines = [
        f"{status['gateway']}  {status['site'].get('name', '')}  edge {status['version']}  "
        f"up {status['uptime_s']:.0f}s  uplink {status['uplink']}  "
        f"buzzer {status['buzzer'].upper()}",
        "",
        f"{'DEVICE':<22} {'STATUS':<8} {'POINT':<22} {'VALUE':>10} {'UNIT':<5} {'AGE':>7}",
    ]
    for device in status["devices"]:
        points = list(device["points"].items()) or [("-", None)]
        for index, (point, reading) in enumerate(points):
            name = device["id"] if index == 0 else ""
            state = device["status"] if index == 0 else ""
            if reading is None:
                lines.append(f"{name:<22} {state:<8} {device['reason'] or '(no reading yet)'}")
                continue
            age = reading["age_s"]
            mark = " stale" if age > STALE_AFTER_S else ""
            if reading["quality"] == "bad":
                mark += " bad"
            lines.append(
                f"{name:<22} {state:<8} {point:<22} {_value(reading['value']):>10} "
                f"{reading['unit']:<5} {age:>6.1f}s{mark}"
            )
        if device["status"] == "offline" and device["points"]:
            lines.append(f"{'':<22} {'':<8} last answers above; now: {device['reason']}")
    lines += ["", f"ALARMS ({len(status['alarms'])})"]
    for alarm in status["alarms"]:
        lines.append(
            f"  {alarm['severity']:<8} {alarm['device']:<22} {alarm['rule']} "
            f"{alarm['point']}={alarm['value']} (limit {alarm['threshold']})"
            + ("  silenced" if alarm["silenced"] else "")
        )
    if not status["alarms"]:
        lines.append("  none")
    lines += ["", "BUSES"]
    for bus, counters in sorted(status["buses"].items()):
        shown = " ".join(f"{k}={v}" for k, v in counters.items() if k != "kind")
        lines.append(f"  {bus:<12} {counters.get('kind', ''):<7} {shown}")
    return "\n".join(line[:width] for line in lines)


async def watch(path: Path, out: TextIO, *, once: bool, every: float) -> int:
    client = ControlClient(path)
    try:
        while True:
            try:
                frame = render(await client.request("status"))
            except ControlError as exc:
                if once:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                frame = f"{time.strftime('%H:%M:%S')} waiting for the gateway: {exc}"
            if once:
                print(frame, file=out)
                return 0
            # Redraw in place: home, each line cleared to its end, then what is left below.
            out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in frame.split("\n")))
            out.write(CLEAR_BELOW)
            out.flush()
            await asyncio.sleep(every)
    finally:
        await client.close()


def command(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    if path is None:
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(watch(path, sys.stdout, once=args.once, every=max(0.1, args.every)))
    return 0
