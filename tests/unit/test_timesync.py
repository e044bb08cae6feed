"""Whether the kernel's clock is synchronised: asked without a process of its own each time."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
from typing import Any

import pytest

from edge import timesync


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_the_clock_is_asked_through_the_process_own_c_library_without_a_child_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawned: list[object] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        spawned.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    timesync._libc.cache_clear()
    try:
        answers = {timesync.kernel_clock_synced() for _ in range(5)}
        libc = timesync._libc()
    finally:
        timesync._libc.cache_clear()
    monkeypatch.undo()
    assert spawned == []
    assert len(answers) == 1
    # The same adjtimex as the C library found by its name answers the same state.
    named = ctypes.util.find_library("c")
    assert libc is not None
    assert named is not None
    by_name = ctypes.CDLL(named, use_errno=True)
    buffer = ctypes.create_string_buffer(512)
    state = int(by_name.adjtimex(buffer))
    assert answers == {state not in (-1, timesync._TIME_ERROR)}


def test_the_cached_probe_asks_once_per_ttl() -> None:
    asked: list[int] = []

    def probe() -> bool:
        asked.append(1)
        return True

    synced = timesync.cached(probe, ttl=3600.0)
    assert all(synced() for _ in range(10))
    assert len(asked) == 1
