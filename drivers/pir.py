"""A PIR motion sensor on a GPIO, through gpiozero's ``MotionSensor``.

gpiozero calls ``when_motion`` / ``when_no_motion`` on its own threads; the edges are handed to
the event loop with ``call_soon_threadsafe``, so the sink (and the alarm path behind it) only
ever runs on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from gpiozero import MotionSensor

from drivers.types import Reading, Sink

__all__ = ["PirSensor"]


class PirSensor:
    """Reports ``presence`` 1.0 on motion and 0.0 when it stops, plus the state at start."""

    def __init__(
        self,
        device_id: str,
        pin: int,
        sink: Sink,
        *,
        pin_factory: Any = None,
        active_high: bool = True,
    ) -> None:
        if isinstance(pin, bool) or not isinstance(pin, int) or not 2 <= pin <= 27:
            raise ValueError(f"device {device_id}: pin {pin!r} is not a BCM GPIO 2-27")
        self.device_id = device_id
        self.pin = pin
        self.active_high = active_high
        self._sink = sink
        self._pin_factory = pin_factory
        self.edges = 0

    async def run(self) -> None:
        """Watch the pin until cancelled."""
        loop = asyncio.get_running_loop()
        # queue_len=1: report every edge as it comes; the PIR module already debounces.
        sensor = MotionSensor(
            self.pin,
            queue_len=1,
            # An active-low module pulls the line down on motion: pull it up at rest.
            pull_up=not self.active_high,
            pin_factory=self._pin_factory,
        )
        try:
            sensor.when_motion = lambda: loop.call_soon_threadsafe(self._emit, 1.0)
            sensor.when_no_motion = lambda: loop.call_soon_threadsafe(self._emit, 0.0)
            self._emit(1.0 if sensor.motion_detected else 0.0, edge=False)
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                sensor.when_motion = None
                sensor.when_no_motion = None
            sensor.close()

    def _emit(self, value: float, *, edge: bool = True) -> None:
        if edge:
            self.edges += 1
        self._sink(Reading(self.device_id, "presence", value, "", time.time(), time.monotonic()))
