"""Named long-running tasks, restarted with backoff when they crash.

A bug in one driver must not silence the others: each service runs in its own guarded task.
A crash is logged with its traceback once, then the service is started again after a
jittered exponential backoff; a service that ran long enough before crashing starts again
from the smallest delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge.log import fields

log = logging.getLogger("edge.supervisor")

ServiceFactory = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``initial * 2**n`` capped at ``cap``, each jittered by +/- ``jitter``."""

    initial: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2
    #: A service that ran this long before crashing is considered to have recovered.
    healthy_after: float = 60.0

    def delay(self, failures: int) -> float:
        base = min(self.cap, self.initial * 2 ** max(0, failures - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


class Supervisor:
    """Owns the gateway's tasks; :meth:`stop` cancels them all."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, factory: ServiceFactory, *, restart: bool = True) -> None:
        """Run ``factory()`` as the task ``name``; start it again after a crash if ``restart``."""
        if name in self._tasks:
            raise ValueError(f"a service named {name!r} is already running")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._guard(name, factory, restart), name=name)

    @property
    def names(self) -> list[str]:
        return sorted(self._tasks)

    async def _guard(self, name: str, factory: ServiceFactory, restart: bool) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                if time.monotonic() - started >= self.backoff.healthy_after:
                    failures = 0
                failures += 1
                if not restart:
                    log.exception("service crashed", extra=fields(service=name))
                    return
                delay = self.backoff.delay(failures)
                self.restarts[name] += 1
                log.exception(
                    "service crashed; restarting",
                    extra=fields(service=name, restart_in_s=round(delay, 2), failures=failures),
                )
                await asyncio.sleep(delay)
            else:
                log.info("service finished", extra=fields(service=name))
                return

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the named services (all when ``None``) and wait until they have ended."""
        chosen = [self._tasks.pop(n) for n in (names if names is not None else list(self._tasks))]
        for task in chosen:
            task.cancel()
        for task in chosen:
            with contextlib.suppress(asyncio.CancelledError):
                await task
