"""Time, injectable: the system's clock in the field, a virtual one in tests.

Buzzer patterns, re-arm timeouts and rule ticks ask a :class:`Clock` for the time and for
waits, so a test can run ten minutes of buzzer pattern in milliseconds and assert on every
pin change, whatever else the machine is busy with.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock POSIX seconds (timestamps of events)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never jump (durations)."""
        ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; whether it was set."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        # asyncio.timeout rather than wait_for: on Python 3.11, wait_for swallows a
        # cancellation that arrives as the event is set, and the task would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
        return event.is_set()


class VirtualClock:
    """A clock that moves only when :meth:`advance` is awaited."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._origin = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._origin

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), wake))
        waiter: asyncio.Future[None] = asyncio.ensure_future(self._until(event))
        try:
            await asyncio.wait({wake, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            wake.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        return event.is_set()

    @staticmethod
    async def _until(event: asyncio.Event) -> None:
        await event.wait()

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every waiter whose deadline passes, in order, and letting
        the woken tasks run before time moves on."""
        target = self._now + seconds
        while True:
            await _settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, wake = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            wake.set_result(None)
        self._now = target
        await _settle()


async def _settle() -> None:
    # Turns of the loop for a woken task to reach its next wait: waking from ``wait`` and
    # cancelling the loser of its race takes several.
    for _ in range(20):
        await asyncio.sleep(0)
