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
import time
from collections.abc import Awaitable, Callable

from drivers.backoff import Backoff
from edge.log import fields

log = logging.getLogger("edge.supervisor")

ServiceFactory = Callable[[], Awaitable[None]]


class Supervisor:
    """Owns the gateway's tasks; :meth:`stop` cancels them all."""

    def __init__(
        self,
        *,
        restart_initial: float = 0.5,
        restart_max: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        #: A service that ran this long before crashing is considered to have recovered.
        self.healthy_after = healthy_after
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
        backoff = Backoff(self.restart_initial, self.restart_max)
        while True:
            started = time.monotonic()
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                if not restart:
                    log.exception("service crashed", extra=fields(service=name))
                    return
                if time.monotonic() - started >= self.healthy_after:
                    backoff.reset()
                delay = backoff.next_delay()
                self.restarts[name] += 1
                log.exception(
                    "service crashed; restarting",
                    extra=fields(
                        service=name, restart_in_s=round(delay, 2), failures=backoff.attempt
                    ),
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
