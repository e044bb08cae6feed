"""The C heap of a long-running gateway (edge/heap.py): few arenas, free pages handed back.

Each check runs in a fresh interpreter: an arena, once made, stays for the life of a process,
and the test runner's own threads would have made theirs already."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from edge import heap

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and malloc_trim only"
)

#: Starts argv[2] threads that each hold 4 MiB of 64 KiB blocks (malloc's, not Python's small
#: object allocator), after ``heap.limit_arenas(argv[1])`` unless argv[1] is 0; prints the
#: number of malloc arenas.
_THREADS = """
import ctypes, re, sys, threading
from edge import heap
limit, count = int(sys.argv[1]), int(sys.argv[2])
if limit:
    assert heap.limit_arenas(limit)
held, started, go = [], threading.Barrier(count + 1), threading.Event()
def work():
    held.append([bytes(65536) for _ in range(64)])
    started.wait()
    go.wait()
threads = [threading.Thread(target=work) for _ in range(count)]
for thread in threads:
    thread.start()
started.wait()  # all of them allocate at once, each while the others hold their blocks
libc = ctypes.CDLL(None)
text, size = ctypes.c_char_p(), ctypes.c_size_t()
libc.open_memstream.restype = ctypes.c_void_p
stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(text), ctypes.byref(size)))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(len(re.findall(r'<heap nr="', text.value.decode())))
go.set()
"""

#: Allocates 48 MiB in 64 KiB blocks, frees all but the last (it keeps the top of the heap, so
#: free() cannot shrink it), and prints as JSON the VmRSS (KiB) before and after ``heap.trim()``.
_FREED = """
import json
from edge import heap
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
blocks = [bytearray(65536) for _ in range(768)]
last = blocks.pop()
del blocks
before = rss()
trimmed = heap.trim()
print(json.dumps({"before": before, "after": rss(), "trimmed": trimmed}))
"""


#: The same, with ``heap.trim_every`` running: prints the VmRSS (KiB) before and once it fell
#: by 32 MiB (or after 60 s).
_FREED_WHILE_RUNNING = """
import asyncio, json, time
from edge import heap
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
async def main():
    blocks = [bytearray(65536) for _ in range(768)]
    last = blocks.pop()
    del blocks
    before = rss()
    trimmer = asyncio.create_task(heap.trim_every(0.05))
    deadline = time.monotonic() + 60
    while rss() > before - 32 * 1024 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    trimmer.cancel()
    print(json.dumps({"before": before, "after": rss()}))
asyncio.run(main())
"""


def _run(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_threads_share_the_arenas_the_limit_allows() -> None:
    # Without a limit, six threads allocating at once get arenas of their own: the check can fail.
    assert int(_run(_THREADS, "0", "6")) > heap.ARENAS
    assert int(_run(_THREADS, str(heap.ARENAS), "6")) <= heap.ARENAS
    assert int(_run(_THREADS, "1", "6")) == 1


def test_trim_hands_freed_heap_pages_back() -> None:
    figures = json.loads(_run(_FREED))
    assert figures["trimmed"] is True
    assert figures["before"] - figures["after"] > 32 * 1024  # KiB: most of the 48 MiB freed


def test_a_running_trimmer_hands_freed_pages_back_without_being_asked() -> None:
    figures = json.loads(_run(_FREED_WHILE_RUNNING))
    assert figures["before"] - figures["after"] > 32 * 1024


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan")])
async def test_a_trim_interval_that_is_not_positive_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        await heap.trim_every(seconds)


@pytest.mark.parametrize("arenas", [0, -1])
def test_a_limit_below_one_arena_is_refused(arenas: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        heap.limit_arenas(arenas)
