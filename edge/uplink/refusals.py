"""What the broker refuses: the topics whose last PUBACK carried a failure reason code, and
when to say so in the log (the first refusal at once, then at most once a period).

Pure code on an injected clock; the service logs what it is told to. A refusal is not a lost
connection: the session goes on, the refused message keeps its rows and goes again later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["REPORT_EVERY", "Refusal", "Refusals"]

#: While the broker keeps refusing, the log says so at most this often (seconds).
REPORT_EVERY: Final = 60.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """One PUBACK that refused a message: on which topic, with which reason."""

    topic: str
    reason_code: int
    reason: str

    def describe(self) -> str:
        """``Not authorized (0x87)``."""
        return f"{self.reason} (0x{self.reason_code:02X})"


class Refusals:
    """The topics the broker refuses now, counted, with a rate limit for reporting them."""

    def __init__(
        self, *, every: float = REPORT_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._clock = clock
        #: Topic -> the last refusal on it, while no later message on it was accepted.
        self._refused: dict[str, Refusal] = {}
        #: Refusals since the start, for the health message.
        self.count = 0
        #: Refusals not yet reported in the log.
        self._unreported = 0
        self._reported_at: float | None = None
        #: The last refusal, for display.
        self.last: Refusal | None = None

    @property
    def active(self) -> bool:
        """Whether some topic's last answer was a refusal."""
        return bool(self._refused)

    @property
    def topics(self) -> list[str]:
        """The topics refused now, sorted."""
        return sorted(self._refused)

    def refused(self, refusal: Refusal) -> int | None:
        """Note a refusal. Returns how many refusals the log line now due should cover, or
        None when nothing is to be logged yet (the last line is less than a period old)."""
        self._refused[refusal.topic] = refusal
        self.count += 1
        self._unreported += 1
        self.last = refusal
        now = self._clock()
        if self._reported_at is not None and now - self._reported_at < self._every:
            return None
        self._reported_at = now
        covered, self._unreported = self._unreported, 0
        return covered

    def accepted(self, topic: str) -> bool:
        """Note a message accepted on ``topic``. True when that ended the last refusal (the
        broker takes everything again): the next refusal is logged at once."""
        if self._refused.pop(topic, None) is None or self._refused:
            return False
        self._reported_at = None
        self._unreported = 0
        return True
