"""Bus scheduler figures on the line-timed RTU simulator (hil/rtu_line.py).

- ``rtu_bus_efficiency_9600`` / ``_19200``: 16 reference monitors (efm-ref, 14 registers each)
  on one bus, polled as fast as the bus allows. Registers per second achieved, divided by the
  line ceiling for the same registers read with the fewest requests Modbus allows (one read of
  14 per device: 8 + 5 + 28 + 7 = 48 characters of 11 bits). The simulator's slave turnaround
  is 0, so the ceiling is the wire's and every millisecond the master wastes shows.
- ``poll_jitter_ms_p99``: 60 monitors on 4 buses at 9600 baud (15 per bus, 1 s interval,
  about 83 % of each line's time busy), all four buses in one event loop. Jitter is how late a
  poll starts after it was due; p99 over every poll of the run.

``python -m tests.benchmarks --only drivers`` runs these alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from drivers.modbus import ModbusBus, PolledDevice, RtuSettings, load_model
from drivers.modbus.codec import read_chars
from drivers.types import DeviceStatus, Reading
from hil.rtu_line import RtuLine

EFM = load_model("efm-ref")
REGISTERS = 14  # efm-ref's one block


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _discard(_: Reading | DeviceStatus) -> None:
    pass


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def efficiency(baudrate: int, seconds: float, devices: int = 16) -> dict[str, float]:
    """Saturate one bus of ``devices`` monitors; return achieved/ceiling and the raw figures."""
    async with RtuLine(dict.fromkeys(range(1, devices + 1), EFM), baudrate=baudrate) as line:
        bus = ModbusBus(
            f"rtu-{baudrate}",
            RtuSettings(line.path, baudrate, timeout=0.5),
            # An interval far below a cycle keeps every device always due: the bus never idles.
            [PolledDevice(f"m{a}", EFM, a, 0.01) for a in range(1, devices + 1)],
            _discard,
        )
        task = asyncio.create_task(bus.run())
        try:
            await asyncio.sleep(1.0)  # connect, first cycle
            answers, started = bus.stats.answers, time.monotonic()
            await asyncio.sleep(seconds)
            answers, elapsed = bus.stats.answers - answers, time.monotonic() - started
        finally:
            await _stop(task)
        collisions = line.stats.collisions
    achieved = answers * REGISTERS / elapsed
    ceiling = REGISTERS / (read_chars(REGISTERS) * 11 / baudrate)
    print(
        f"  rtu {baudrate}: {achieved:.1f} registers/s of a {ceiling:.1f} ceiling "
        f"({achieved / ceiling:.1%}), {collisions} t3.5 violations"
    )
    return {"efficiency": achieved / ceiling, "registers_per_s": achieved}


async def jitter(seconds: float, buses: int = 4, per_bus: int = 15) -> dict[str, float]:
    """Poll lateness over ``buses`` x ``per_bus`` monitors at 1 s."""
    late: list[float] = []

    def observe(_device: str, _lane: str, due: float, started: float, _end: float) -> None:
        late.append(started - due)

    lines = [RtuLine(dict.fromkeys(range(1, per_bus + 1), EFM)) for _ in range(buses)]
    async with contextlib.AsyncExitStack() as stack:
        for line in lines:
            await stack.enter_async_context(line)
        tasks = []
        for number, line in enumerate(lines):
            bus = ModbusBus(
                f"rtu{number}",
                RtuSettings(line.path, 9600, timeout=0.3),
                [PolledDevice(f"b{number}-m{a}", EFM, a, 1.0) for a in range(1, per_bus + 1)],
                _discard,
                observer=observe,
            )
            tasks.append(asyncio.create_task(bus.run()))
        try:
            await asyncio.sleep(2.0)  # connect; the first staggered cycle settles
            late.clear()
            await asyncio.sleep(seconds)
        finally:
            for task in tasks:
                await _stop(task)
    p50, p99 = percentile(late, 50) * 1000, percentile(late, 99) * 1000
    print(
        f"  jitter: {len(late)} polls of {buses * per_bus} devices on {buses} buses, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(late) * 1000:.2f} ms"
    )
    return {"p50": p50, "p99": p99, "polls": float(len(late))}


async def run(seconds: float = 10.0) -> dict[str, float]:
    """Every drivers figure; ``seconds`` is the measuring window of each."""
    print("drivers: bus scheduler on the line-timed RTU simulator")
    slow = await efficiency(9600, seconds)
    fast = await efficiency(19200, seconds)
    spread = await jitter(seconds)
    return {
        "rtu_bus_efficiency_9600": round(slow["efficiency"], 4),
        "rtu_bus_efficiency_19200": round(fast["efficiency"], 4),
        "poll_jitter_ms_p99": round(spread["p99"], 2),
        "poll_jitter_ms_p50": round(spread["p50"], 2),
    }


if __name__ == "__main__":
    print(asyncio.run(run()))
