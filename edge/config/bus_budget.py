"""Warnings about RS-485 lines that cannot carry what the site file asks of them.

From the scheduler's own read plan (drivers/modbus/line_budget.py), the line's baud rate and
each device's intervals, check-config computes how long each RTU line needs to poll its
devices once, and warns when the configured intervals ask for more than the line has (each
device is then read less often than its poll_interval says, by the factor shown), when the
fast lanes do not fit beside the full polls, and when a line's answer timeout is as long as a
poll interval (one silent device then holds the line for a whole interval). The figures leave
out the devices' turnaround, so they are lower bounds: a warning here is never a false alarm.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers.modbus.line_budget import LinePoll, line_load, poll_seconds
from drivers.modbus.model import ModelError, load_model
from edge.config.duration import format_duration
from edge.config.model import ModbusRtuBus, SiteConfig

__all__ = ["bus_budget_warnings"]

Place = tuple[str | int, ...]


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g}s"
    return f"{seconds * 1000:.3g}ms"


def bus_budget_warnings(config: SiteConfig) -> Iterable[tuple[Place, str]]:
    """The warnings of every RTU line, then of every answer timeout against an interval."""
    for index, bus in enumerate(config.buses):
        if isinstance(bus, ModbusRtuBus):
            yield from _line(config, index, bus)
    yield from _timeouts(config)


def _line(config: SiteConfig, index: int, bus: ModbusRtuBus) -> Iterable[tuple[Place, str]]:
    polls: list[tuple[int, LinePoll]] = []
    for position, device in enumerate(config.devices):
        if device.bus != bus.id:
            continue
        try:
            model = load_model(device.model)
        except (ModelError, OSError):
            continue  # an unknown model is an error of its own
        polls.append(
            (
                position,
                LinePoll(
                    device.id,
                    poll_seconds(model, bus.baudrate),
                    device.poll_interval,
                    poll_seconds(model, bus.baudrate, critical_only=True),
                    device.fast_interval,
                ),
            )
        )
    if not polls:
        return
    lane = [poll for _, poll in polls]
    full = line_load(lane, fast=False)
    total = line_load(lane)
    cycle = sum(p.seconds for p in lane)
    if full > 1:
        slowest = max(lane, key=lambda p: p.interval * full)
        yield (
            ("buses", index),
            f"the line needs at least {_time(cycle)} to poll its {len(lane)} devices once at "
            f"{bus.baudrate} baud (e.g. {_time(slowest.seconds)} for {slowest.device}), but "
            f"their poll intervals ask for {full:.0%} of the line: each device is read about "
            f"{full:.1f} times less often than configured ({slowest.device} every "
            f"{_time(slowest.interval * full)} instead of {format_duration(slowest.interval)}); "
            "lengthen poll_interval, raise the baud rate, or split the devices over more lines",
        )
    elif total > 1:
        fast = [(position, p) for position, p in polls if p.fast_interval]
        position, first = fast[0]
        yield (
            ("devices", position, "fast_interval"),
            f"the fast lanes of bus '{bus.id}' do not fit beside the full polls: together they "
            f"ask for {total:.0%} of the line (full polls {full:.0%}, one fast read of "
            f"{first.device} takes {_time(first.fast_seconds)}); lengthen fast_interval or "
            "poll_interval, or raise the baud rate",
        )


def _timeouts(config: SiteConfig) -> Iterable[tuple[Place, str]]:
    """One warning per bus whose answer timeout reaches a device's interval."""
    for index, bus in enumerate(config.buses):
        # An RS-485 line carries one request at a time: a silent device's timeout is the
        # line's. (Modbus TCP, one connection per device host, is not checked.)
        if not isinstance(bus, ModbusRtuBus):
            continue
        short = [
            (device.id, key.replace("_", " "), interval)
            for device in config.devices
            if device.bus == bus.id
            for key, interval in (
                ("poll_interval", device.poll_interval),
                ("fast_interval", device.fast_interval),
            )
            if interval is not None and bus.timeout >= interval
        ]
        if not short:
            continue
        named = ", ".join(f"{d} {k} {format_duration(i)}" for d, k, i in short[:3])
        more = f" and {len(short) - 3} more" if len(short) > 3 else ""
        yield (
            ("buses", index, "timeout"),
            f"the bus waits up to {format_duration(bus.timeout)} for an answer, at least as "
            f"long as the interval it serves ({named}{more}): one silent device holds the line "
            "for a whole interval; shorten the timeout or lengthen the interval",
        )
