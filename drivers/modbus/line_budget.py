"""How much of an RTU line a set of polls needs: the time budget the scheduler works within.

The scheduler (:mod:`drivers.modbus.bus`) reads each device with the plan of
:func:`~drivers.modbus.model.read_plan` (the fewest coalesced reads), one request at a time,
with a t3.5 silence before each. So one poll of a device takes, on the wire, the characters of
:func:`~drivers.modbus.codec.read_chars` for each read of its plan, at 11 bits per character,
plus the device's turnaround (not known before the device answers, so not counted: every
figure here is a lower bound, and a line that fails it fails in the field too).

``load`` is the fraction of the line's time the configured intervals ask for: above 1 the
intervals cannot be met, and the scheduler (which skips the slots that passed rather than
queueing them) reads each device about ``load`` times less often than configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.codec import read_chars
from drivers.modbus.model import DeviceModel, read_plan

__all__ = ["BITS_PER_CHAR", "LinePoll", "line_load", "poll_seconds", "silence_seconds"]

#: Start, 8 data bits, parity or a second stop bit, stop: 11 bits whatever the framing.
BITS_PER_CHAR = 11
#: Above 19200 baud t3.5 is fixed (Modbus over Serial Line v1.02, 2.5.1.1).
_FIXED_SILENCE_ABOVE = 19_200
_FIXED_SILENCE = 0.00175
#: The silences of one read (read_chars counts 2 x 3.5 characters of them).
_SILENT_CHARS = 7


def silence_seconds(baudrate: int) -> float:
    """The t3.5 silence between frames."""
    if baudrate > _FIXED_SILENCE_ABOVE:
        return _FIXED_SILENCE
    return 3.5 * BITS_PER_CHAR / baudrate


def poll_seconds(model: DeviceModel, baudrate: int, *, critical_only: bool = False) -> float:
    """Seconds one poll of a device of ``model`` takes on the wire (its whole plan), without
    the device's turnaround. ``critical_only``: its fast-lane poll."""
    points = [p for p in model.points if p.critical] if critical_only else None
    if critical_only and not points:
        return 0.0
    total = 0.0
    for _, count in read_plan(model, points):
        characters = read_chars(count) - _SILENT_CHARS
        total += characters * BITS_PER_CHAR / baudrate + 2 * silence_seconds(baudrate)
    return total


@dataclass(frozen=True, slots=True)
class LinePoll:
    """One device's demand on a line: the seconds of one poll and how often it is asked."""

    device: str
    seconds: float
    interval: float
    fast_seconds: float = 0.0
    fast_interval: float | None = None


def line_load(polls: Sequence[LinePoll], *, fast: bool = True) -> float:
    """The fraction of the line's time the polls ask for (1.0: the line never rests)."""
    total = sum(p.seconds / p.interval for p in polls)
    if fast:
        total += sum(p.fast_seconds / p.fast_interval for p in polls if p.fast_interval)
    return total
