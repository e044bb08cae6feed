"""Capped exponential backoff, with jitter by default: the project's one retry schedule
(reconnects, re-probes, restarts, and retries of a refusing disk or broker).

Pure code: the caller sleeps. The jitter keeps a fleet of gateways that lost the same server at
the same moment from reconnecting in lockstep; a retry against a local resource (the SD card)
has no fleet to spread and goes without (``jitter=False``).

Standard library only, so that every package may use it (``buffer/`` included, which imports
nothing else from ``drivers/``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn in its upper half.

    The n-th delay (from 0) is uniform in ``[max(initial, d / 2), d]`` with
    ``d = min(maximum, initial * 2**n)``, so every delay lies in ``[initial, maximum]`` and the
    loop never spins; without jitter it is ``d`` exactly. :meth:`reset` after a success starts
    again from ``initial``.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 10.0,
        *,
        jitter: bool = True,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum (got {initial}, {maximum})")
        self.initial = initial
        self.maximum = maximum
        self._uniform = uniform if jitter else _highest
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        # Cap the exponent: 2**attempt for a long outage would overflow a float eventually.
        ceiling = min(self.maximum, self.initial * 2 ** min(self._attempt, 60))
        self._attempt += 1
        delay = self._uniform(max(self.initial, ceiling / 2), ceiling)
        return min(self.maximum, max(self.initial, delay))

    def reset(self) -> None:
        """Start again from the initial delay (call after a success)."""
        self._attempt = 0


def _highest(low: float, high: float) -> float:
    return high
