"""Installer commands: ``edge scan`` (what answers on a bus) and ``edge read`` (one device once).

``edge scan BUS`` takes a bus id from the site file (``--config``), or a bus written out:
a serial port for Modbus RTU (``/dev/ttyUSB0``, ``socket://host:port``; the forms of
:mod:`drivers.ports`, checked as in a site file) or
``tcp://host:port`` for Modbus TCP. ``edge read DEVICE --config FILE`` runs the device's own
driver until its first report, prints every point with its unit, and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import urllib.parse
from typing import Any, TextIO

from drivers.modbus import RtuSettings, TcpSettings, known_models, load_model
from drivers.modbus.scan import Found, scan
from drivers.ports import PortError, check_port
from drivers.types import DeviceStatus, Reading
from edge.buses import build_buses
from edge.config import SiteConfig, report_config
from edge.config.duration import parse_duration
from edge.config.model import ModbusRtuBus, ModbusTcpBus

__all__ = ["add_parser", "command"]

BAR_WIDTH = 30


def _addresses(text: str) -> list[int]:
    addresses: list[int] = []
    try:
        for part in text.split(","):
            low, sep, high = part.partition("-")
            addresses.extend(range(int(low), int(high) + 1) if sep else [int(low)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected addresses like 1-32,40, got {text!r}") from None
    if not addresses or not all(0 <= a <= 247 for a in addresses):
        raise argparse.ArgumentTypeError("addresses must be in 0..247")
    return addresses


def _bauds(text: str) -> list[int]:
    try:
        bauds = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected baud rates like 9600,19200, got {text!r}"
        ) from None
    if not bauds or any(b <= 0 for b in bauds):
        raise argparse.ArgumentTypeError("baud rates must be positive")
    return bauds


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(commands: Any) -> None:
    """Add ``scan`` and ``read`` to the ``edge`` command's subparsers."""
    scan_parser = commands.add_parser("scan", help="list the Modbus devices that answer on a bus")
    scan_parser.add_argument(
        "bus",
        metavar="BUS",
        help="a bus id (with --config), a serial port (/dev/ttyUSB0, socket://host:port) or tcp://host:port",
    )
    scan_parser.add_argument("--config", metavar="FILE", help="the site YAML file")
    scan_parser.add_argument(
        "--addresses", type=_addresses, default=list(range(1, 248)), metavar="1-247"
    )
    scan_parser.add_argument(
        "--bauds", type=_bauds, default=[], metavar="9600,19200", help="serial: also try these"
    )
    scan_parser.add_argument(
        "--timeout", type=_duration, default=0.1, metavar="DURATION", help="per address"
    )
    read_parser = commands.add_parser("read", help="read one device once and print its points")
    read_parser.add_argument("device", metavar="DEVICE", help="a device id of the site file")
    read_parser.add_argument("--config", required=True, metavar="FILE", help="the site YAML file")
    read_parser.add_argument("--timeout", type=_duration, default=5.0, metavar="DURATION")


def command(args: argparse.Namespace) -> int:
    """Run ``scan`` or ``read``; the exit status (0 found / read, 1 nothing, 2 usage)."""
    if args.command == "scan":
        return asyncio.run(_scan(args, sys.stdout, sys.stderr))
    return asyncio.run(_read(args, sys.stdout, sys.stderr))


def _load(path: str, err: TextIO) -> SiteConfig | None:
    _, config = report_config(path, err, known_models=known_models(), quiet=True)
    return config


def _settings(args: argparse.Namespace, err: TextIO) -> RtuSettings | TcpSettings | None:
    if args.config:
        config = _load(args.config, err)
        if config is None:
            return None
        bus = next((b for b in config.buses if b.id == args.bus), None)
        if bus is None:
            print(f"scan: no bus '{args.bus}' in {args.config}", file=err)
            return None
        if isinstance(bus, ModbusTcpBus):
            return TcpSettings(bus.host, bus.port, args.timeout)
        if isinstance(bus, ModbusRtuBus):
            return RtuSettings(bus.port, bus.baudrate, bus.parity, bus.stopbits, args.timeout)
        print(f"scan: bus '{args.bus}' is {bus.kind}; only Modbus buses can be scanned", file=err)
        return None
    if args.bus.startswith("tcp://"):
        parsed = urllib.parse.urlsplit(args.bus)
        if not parsed.hostname:
            print(f"scan: {args.bus}: expected tcp://host:port", file=err)
            return None
        return TcpSettings(parsed.hostname, parsed.port or 502, args.timeout)
    try:
        # The same check as a site file's port: nothing but a serial line is opened.
        check_port(args.bus)
    except PortError as exc:
        print(f"scan: {exc} (or tcp://host:port for Modbus TCP)", file=err)
        return None
    return RtuSettings(args.bus, (args.bauds or [9600])[0], timeout=args.timeout)


async def _scan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _settings(args, err)
    if settings is None:
        return 2
    live = err.isatty()
    last_tenth = -1

    def progress(done: int, total: int, what: str) -> None:
        nonlocal last_tenth
        filled = BAR_WIDTH * done // max(total, 1)
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {what}"
        if live:
            print(f"\r{bar:<78}", end="" if done < total else "\n", file=err, flush=True)
        elif done * 10 // max(total, 1) != last_tenth:
            # Not a terminal (a log, a pipe): one line per tenth, not a carriage-return storm.
            last_tenth = done * 10 // max(total, 1)
            print(bar, file=err, flush=True)

    models = [load_model(name) for name in known_models()]
    started = time.monotonic()
    garbled: dict[int | None, int] = {}
    try:
        found = await scan(
            settings,
            args.addresses,
            baudrates=args.bauds,
            models=models,
            progress=progress,
            bad_frames=garbled,
        )
    except OSError as exc:
        print(f"scan: {exc}{port_hint(str(exc))}", file=err)
        return 1
    print(_report(settings, found, time.monotonic() - started, args.bauds), file=out)
    for speed, count in garbled.items():
        at = f" at {speed} baud" if speed else ""
        print(f"scan: {count} frame{'s' if count != 1 else ''}{at}{CRC_HINT}", file=err)
    # A unit that answers only with CRC errors is not a unit found.
    return 0 if any(not item.garbled for item in found) else 1


#: What a frame that fails its CRC most often means, for the installer.
CRC_HINT = (
    " failed their CRC check: something answers, but garbled: check the baud rate and "
    "parity against the device's, the A/B wires (swapped?), the line's termination, and that "
    "no two devices share an address"
)


def port_hint(reason: str) -> str:
    """What to do about a port that cannot be opened, from the reason the system gave."""
    text = reason.lower()
    if "no such file" in text or "errno 2]" in text:
        return (
            "; the port does not exist: plug in the adapter, or name the port that exists "
            "(`ls -l /dev/serial/by-id/` lists them)"
        )
    if "lock" in text or "busy" in text or "temporarily unavailable" in text:
        return (
            "; the port is busy: another program holds it (a running gateway? stop it with "
            "`sudo systemctl stop city-safety-edge` while you scan)"
        )
    if "permission" in text or "errno 13]" in text:
        return (
            "; not permitted: run as a member of the port's group (`sudo usermod -aG dialout "
            "$USER`, then log in again), or with sudo"
        )
    if "refused" in text or "timed out" in text:
        return "; is the device or serial server on, and the address and port right?"
    return ""


def _report(
    settings: RtuSettings | TcpSettings, found: list[Found], seconds: float, bauds: list[int]
) -> str:
    where = settings.describe()
    if isinstance(settings, RtuSettings) and len(bauds) > 1:
        where = f"modbus-rtu {settings.port} at {', '.join(map(str, bauds))} baud"
    clean = [item for item in found if not item.garbled]
    garbled = len(found) - len(clean)
    also = f", {garbled} only with CRC errors" if garbled else ""
    lines = [f"{where}: {len(clean)} answered{also} ({seconds:.1f} s)"]
    for item in found:
        speed = f" @ {item.baudrate} baud" if item.baudrate else ""
        looks = f"; looks like {', '.join(item.models)}" if item.models else ""
        if item.garbled:
            looks = (
                " (a unit answers but the line garbles it: check the baud rate and parity, "
                "the A/B wires and the 120 ohm termination)"
            )
        lines.append(f"  address {item.address:>3}{speed}: {item.answer}{looks}")
    return "\n".join(lines)


async def _read(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _load(args.config, err)
    if config is None:
        return 2
    device = next((d for d in config.devices if d.id == args.device), None)
    if device is None:
        ids = ", ".join(d.id for d in config.devices)
        print(f"read: no device '{args.device}' in {args.config} (devices: {ids})", file=err)
        return 2
    alone = config.model_copy(update={"devices": [device]})
    readings: list[Reading] = []
    failure: list[str] = []
    first = asyncio.Event()

    def sink(event: Reading | DeviceStatus) -> None:
        if isinstance(event, Reading):
            readings.append(event)
            first.set()
        elif not event.online:
            failure.append(event.reason)
            first.set()

    (driver,) = build_buses(alone, sink).values()
    task = asyncio.create_task(driver.run())
    try:
        async with asyncio.timeout(args.timeout):
            await first.wait()
        # A poll or report delivers its points together: give the rest of the burst a moment.
        await asyncio.sleep(0.2)
    except TimeoutError:
        failure.append(f"nothing within {args.timeout:g} s")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if not readings:
        reason = failure[0] if failure else "no readings"
        print(f"read: {device.id}: {reason}{port_hint(reason)}", file=err)
        stats = getattr(driver, "stats", None)
        count = getattr(stats, "bad_frames", 0)
        if count:
            print(f"read: {count} frame{'s' if count != 1 else ''}{CRC_HINT}", file=err)
        return 1
    print(_table(device.id, device.model, device.bus, readings), file=out)
    return 0


def _table(device_id: str, model: str, bus: str, readings: list[Reading]) -> str:
    latest = {r.point: r for r in readings}
    bits: dict[str, tuple[tuple[int, str], ...]] = {}
    if model in known_models():
        bits = {p.name: p.bits for p in load_model(model).points if p.bits}
    width = max(len(name) for name in latest)
    lines = [f"{device_id} ({model} on {bus})"]
    for name, reading in latest.items():
        value = f"{reading.value:g}"
        line = f"  {name:<{width}}  {value:>10} {reading.unit}".rstrip()
        if name in bits:
            raised = [label for bit, label in bits[name] if int(reading.value) >> bit & 1]
            line += f"  ({', '.join(raised) if raised else 'none set'})"
        lines.append(line)
    return "\n".join(lines)
