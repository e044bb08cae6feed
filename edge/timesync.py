"""Whether the system clock is synchronised, for the ``clock_synced`` flag of every message.

A gateway that booted without network (no RTC on a Raspberry Pi) starts from the last saved
time; its timestamps can be hours off until NTP reaches a server. The platform must know that
before it trusts ``ts``. The kernel knows: ``adjtimex()`` returns ``TIME_ERROR`` while the clock
is unsynchronised (what ``timedatectl``'s NTPSynchronized reads too), with no process to spawn.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import time
from collections.abc import Callable
from typing import Final

__all__ = ["SyncProbe", "cached", "kernel_clock_synced"]

#: Whether the clock is synchronised now. Injectable: tests and other platforms pass their own.
SyncProbe = Callable[[], bool]

_TIME_ERROR: Final = 5
# struct timex is 208 bytes on 64-bit Linux; a larger zeroed buffer is safe with modes = 0
# (read only), whatever the architecture's padding.
_TIMEX_BYTES: Final = 512


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library the process runs on, through its own symbols (as edge/heap.py reaches
    it): no ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a child process."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.adjtimex  # noqa: B018 (a C library without it: the clock cannot be asked)
    except (OSError, AttributeError):
        return None
    return libc


def kernel_clock_synced() -> bool:
    """``adjtimex()`` says the clock is synchronised. False where it cannot be asked (not Linux),
    because claiming a synchronised clock that is not would mislead the platform."""
    libc = _libc()
    if libc is None:
        return False
    buffer = ctypes.create_string_buffer(_TIMEX_BYTES)  # modes = 0: read, change nothing
    state = int(libc.adjtimex(buffer))
    return state not in (-1, _TIME_ERROR)


def cached(probe: SyncProbe, ttl: float = 30.0) -> SyncProbe:
    """``probe`` asked at most once per ``ttl`` seconds: every message carries the flag."""
    last: list[float | bool] = [-float("inf"), False]

    def ask() -> bool:
        now = time.monotonic()
        if now - float(last[0]) >= ttl:
            last[0], last[1] = now, bool(probe())
        return bool(last[1])

    return ask
