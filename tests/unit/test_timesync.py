"""Whether the kernel's clock is synchronised: asked without a process of its own each time."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from edge import timesync


def test_the_c_library_is_found_once_however_often_the_clock_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked: list[str] = []
    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        looked.append(name)
        return real(name)

    monkeypatch.setattr(ctypes.util, "find_library", find_library)
    timesync._libc.cache_clear()
    try:
        answers = {timesync.kernel_clock_synced() for _ in range(5)}
    finally:
        timesync._libc.cache_clear()
    assert len(answers) == 1
    assert answers <= {True, False}
    assert looked == (["c"] if sys.platform.startswith("linux") else [])


def test_the_cached_probe_asks_once_per_ttl() -> None:
    asked: list[int] = []

    def probe() -> bool:
        asked.append(1)
        return True

    synced = timesync.cached(probe, ttl=3600.0)
    assert all(synced() for _ in range(10))
    assert len(asked) == 1
