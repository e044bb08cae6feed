"""What the C library's allocator keeps of a long-running gateway's memory.

glibc's malloc gives every thread that allocates its own arena, up to eight per core, and
keeps the free memory of each for later. A gateway has five threads (the event loop, the log
writer and its descriptor relay, the outbox writer, asyncio's executor); each arena held
0.1 to 0.8 MiB on the 1,000 readings/s site, most of it free. Validating the site file and
building the gateway leave free holes in the main heap that the running gateway never fills
again, and a running one frees and takes pages all the time. :func:`limit_arenas` caps the
arenas before the first thread starts; :func:`trim` hands the free pages back once a gateway
has started, and :func:`trim_every` every minute after (docs/benchmarks.md, "Beyond the
imports").

Both are glibc's (``mallopt``, ``malloc_trim``); with another C library (musl) they do
nothing and say so by returning False. ``ctypes`` is on the run path already
(edge/timesync.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from typing import Final

__all__ = ["ARENAS", "TRIM_INTERVAL", "limit_arenas", "trim", "trim_every"]

#: glibc's ``M_ARENA_MAX`` parameter of ``mallopt``.
M_ARENA_MAX: Final = -8
#: Arenas a gateway may use. One would make the outbox writer (SQLite, without the GIL) and
#: the event loop wait on each other's allocations; two keep them apart.
ARENAS: Final = 2
#: Seconds between two trims of a running gateway. A trim takes well under a millisecond; on
#: the 1,000 readings/s site, one 40 s after the start still gave back 0.4 to 0.8 MiB.
TRIM_INTERVAL: Final = 60.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    libc = ctypes.CDLL(None)  # the process's own symbols: the C library it runs on
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let malloc use at most ``arenas`` arenas from now on; True if it took the setting.

    Call it before the process starts threads: an arena made already stays."""
    if arenas < 1:
        raise ValueError(f"arenas must be at least 1, not {arenas}")
    libc = _libc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1


def trim() -> bool:
    """Hand the free pages of every arena back to the system; True if any went back."""
    libc = _libc()
    return libc is not None and libc.malloc_trim(0) == 1


async def trim_every(seconds: float = TRIM_INTERVAL) -> None:
    """:func:`trim` every ``seconds`` until cancelled."""
    if not seconds > 0:
        raise ValueError(f"the trim interval must be positive, not {seconds!r}")
    while True:
        await asyncio.sleep(seconds)
        trim()
