"""Keep pymodbus's own logging from flooding a simulator's log.

The gateway polls with its own master and never loads pymodbus; the simulators serve with it
(hil/simulator.py). pymodbus logs an ERROR, with a hex dump of the last frames, for every
request that goes wrong, and a WARNING for every failed connect: a test or demo that makes a
unit silent would get thousands of them an hour, repeating what the fault injection says.
This filter lets each distinct message through once per interval and counts the rest; it
changes no level, handler or format, which stay the application's to configure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

__all__ = ["PYMODBUS_LOGGER", "RepeatThrottle", "throttle_pymodbus_log"]

#: pymodbus logs through this logger (``pymodbus.logging``'s module logger), a child of
#: "pymodbus". Filters must sit on the logger that creates the record: a filter on a parent
#: logger does not see records propagated from its children.
PYMODBUS_LOGGER: Final = "pymodbus.logging"


class RepeatThrottle(logging.Filter):
    """Pass a given message (by its first line) at most once per ``interval`` seconds.

    Records below ``min_level`` always pass: someone who turned on pymodbus DEBUG wants it all.
    When a throttled message passes again, it says how many copies were dropped meanwhile.
    """

    def __init__(
        self,
        interval: float = 60.0,
        *,
        min_level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 256,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.min_level = min_level
        self._clock = clock
        self._max_keys = max_keys
        #: message key -> (time it last passed, copies dropped since)
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        message = record.getMessage()
        key = f"{record.levelno}:{message.partition(chr(10))[0]}"
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) >= self._max_keys:
            # Messages with ever-changing text (addresses, counters) must not grow this forever.
            self._seen.clear()
        self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{message} [{last[1]} more like this in the last {now - last[0]:.0f} s]"
            record.args = None
        return True


def throttle_pymodbus_log(interval: float = 60.0) -> RepeatThrottle:
    """Install (once per process) a :class:`RepeatThrottle` on pymodbus's logger; return it."""
    logger = logging.getLogger(PYMODBUS_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, RepeatThrottle):
            return existing
    throttle = RepeatThrottle(interval)
    logger.addFilter(throttle)
    return throttle
