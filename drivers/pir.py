"""A PIR motion sensor on a GPIO, through gpiozero's ``MotionSensor``.

gpiozero calls ``when_motion`` / ``when_no_motion`` on its own threads; the edges are handed to
the event loop with ``call_soon_threadsafe``, so the sink (and the alarm path behind it) only
ever runs on the loop. Setting the pin up (the pin library opens the GPIO chip, claims the line
and starts its watcher) and closing it (which joins gpiozero's queue thread) run in a worker
thread, within :data:`SETUP_TIMEOUT`: a GPIO driver that hangs costs this sensor, never the
event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from typing import Any, Final

from gpiozero import MotionSensor

from drivers.types import Reading, Sink

__all__ = ["SETUP_TIMEOUT", "PirSensor"]

#: Seconds the pin set-up may take before the sensor gives up (and reports the failure).
SETUP_TIMEOUT: Final = 5.0


def _close_late(future: concurrent.futures.Future[MotionSensor]) -> None:
    """A set-up that finished after the sensor stopped waiting: release the pin."""
    if not future.cancelled() and future.exception() is None:
        with contextlib.suppress(Exception):
            future.result().close()


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
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"pir {self.device_id}")
        try:
            setup = pool.submit(
                MotionSensor,
                self.pin,
                # queue_len=1: report every edge as it comes; the PIR module already debounces.
                queue_len=1,
                # An active-low module pulls the line down on motion: pull it up at rest.
                pull_up=not self.active_high,
                pin_factory=self._pin_factory,
            )
            try:
                async with asyncio.timeout(SETUP_TIMEOUT):
                    sensor = await asyncio.wrap_future(setup)
            except (TimeoutError, asyncio.CancelledError) as exc:
                setup.add_done_callback(_close_late)
                if isinstance(exc, TimeoutError):
                    raise OSError(
                        f"device {self.device_id}: GPIO {self.pin} not set up within "
                        f"{SETUP_TIMEOUT:g} s"
                    ) from None
                raise
            await self._watch(sensor, loop, pool)
        finally:
            pool.shutdown(wait=False)

    async def _watch(
        self,
        sensor: MotionSensor,
        loop: asyncio.AbstractEventLoop,
        pool: concurrent.futures.ThreadPoolExecutor,
    ) -> None:
        try:
            sensor.when_motion = lambda: loop.call_soon_threadsafe(self._emit, 1.0)
            sensor.when_no_motion = lambda: loop.call_soon_threadsafe(self._emit, 0.0)
            self._emit(1.0 if sensor.motion_detected else 0.0, edge=False)
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                sensor.when_motion = None
                sensor.when_no_motion = None
            # Closing joins gpiozero's queue thread: not on the loop. Shielded, so a second
            # cancellation does not leave the pin claimed.
            await asyncio.shield(asyncio.wrap_future(pool.submit(sensor.close)))

    def _emit(self, value: float, *, edge: bool = True) -> None:
        if edge:
            self.edges += 1
        self._sink(Reading(self.device_id, "presence", value, "", time.time(), time.monotonic()))
