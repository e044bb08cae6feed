"""Reconnect backoff and the simulators' pymodbus log throttle: pure code, fixed inputs."""

from __future__ import annotations

import logging
import random

import pytest

from drivers.backoff import Backoff
from hil.pymodbus_log import PYMODBUS_LOGGER, RepeatThrottle, throttle_pymodbus_log


def test_backoff_doubles_up_to_the_cap_at_the_top_of_each_range() -> None:
    backoff = Backoff(0.5, 10.0, uniform=lambda low, high: high)
    assert [backoff.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 10, 10, 10]


def test_backoff_lower_bounds_are_half_the_ceiling_but_never_below_initial() -> None:
    backoff = Backoff(0.5, 10.0, uniform=lambda low, high: low)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 0.5, 1, 2, 4, 5, 5]


def test_backoff_with_real_jitter_stays_within_bounds_and_reset_starts_over() -> None:
    rng = random.Random(7)
    backoff = Backoff(0.5, 10.0, uniform=rng.uniform)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.5 <= d <= 10.0 for d in delays)
    assert len(set(delays[10:])) > 100  # jittered, not a constant
    assert backoff.attempt == 200
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize(("initial", "maximum"), [(0, 10), (-1, 10), (5, 1)])
def test_backoff_rejects_nonsense_bounds(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(initial, maximum)


def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(PYMODBUS_LOGGER, level, "x.py", 1, message, None, None)


def test_throttle_passes_a_message_once_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = RepeatThrottle(60.0, clock=lambda: now[0])
    timeout = "No response received after 0 retries\n>>>>> send: 0x1 0x3"
    assert throttle.filter(record(timeout))
    for second in range(1, 59):
        now[0] = 100.0 + second
        # Same first line, different frame dump: still the same message.
        assert not throttle.filter(record(timeout.replace("0x3", f"0x{second:x}")))
    assert throttle.filter(record("Failed to connect [Errno 111]", logging.WARNING))
    now[0] = 160.0
    again = record(timeout)
    assert throttle.filter(again)
    assert again.getMessage().endswith("[58 more like this in the last 60 s]")
    now[0] = 161.0
    assert not throttle.filter(record(timeout))


def test_throttle_leaves_debug_alone() -> None:
    throttle = RepeatThrottle(60.0, clock=lambda: 0.0)
    assert all(throttle.filter(record("send: 0x1", logging.DEBUG)) for _ in range(5))


def test_throttle_is_installed_once_on_the_logger_pymodbus_writes_to() -> None:
    first = throttle_pymodbus_log()
    second = throttle_pymodbus_log()
    assert first is second
    logger = logging.getLogger(PYMODBUS_LOGGER)
    assert [f for f in logger.filters if isinstance(f, RepeatThrottle)] == [first]
    from pymodbus.logging import Log  # noqa: PLC0415 (the fact under test is its logger name)

    assert Log._logger is logger
