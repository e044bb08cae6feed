"""What SMS and phone calls share: which alarms they are for, the hourly limit, their events.

The SMS notifier (:mod:`edge.sms`) and the call notifier (:mod:`edge.calls`) ask the same
questions before they queue anything: does this transition call for a notice (raised or
escalated, at least the configured severity and, with ``only_when_offline``, only while the
platform cannot be told), has this number had its share this hour, and what does the event
about an attempt say. Answered once here, so the two cannot drift apart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from edge.config.terms import SEVERITY_ORDER
from edge.rules import Transition

__all__ = ["SEVERITY_WORDS", "HourlyLimit", "NoticeConfig", "calls_for", "notice_fields"]

#: How a severity is said to the venue's people, in the message and aloud.
SEVERITY_WORDS = {"fire": "火警", "critical": "严重告警", "major": "告警", "minor": "故障"}


class NoticeConfig(Protocol):
    """The part of ``sms`` and ``sms.calls`` that decides which alarms they are for."""

    @property
    def severity(self) -> str: ...

    @property
    def only_when_offline(self) -> bool: ...


def calls_for(
    transition: Transition, config: NoticeConfig, uplink_online: Callable[[], bool]
) -> bool:
    """Whether ``transition`` is one to send or call about under ``config`` (the uplink is
    asked last, and only when ``only_when_offline`` makes it matter)."""
    if transition.kind not in ("raised", "escalated"):
        return False
    if SEVERITY_ORDER[transition.severity] > SEVERITY_ORDER[config.severity]:
        return False
    return not (config.only_when_offline and uplink_online())


class HourlyLimit:
    """At most ``per_hour`` notices to each number in any hour (a sliding window)."""

    def __init__(self, numbers: Iterable[str], per_hour: int, clock: Callable[[], float]) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self._sent: dict[str, deque[float]] = {n: deque() for n in numbers}

    def take(self, number: str) -> bool:
        """Count one notice to ``number`` now; False (and nothing counted) when it had its share."""
        now = self.clock()
        sent = self._sent[number]
        while sent and now - sent[0] >= 3600:
            sent.popleft()
        if len(sent) >= self.per_hour:
            return False
        sent.append(now)
        return True


def notice_fields(number: str, transition: Transition, **more: Any) -> dict[str, Any]:
    """The fields of an ``sms-*`` or ``call-*`` event: who, for which alarm, and ``more``."""
    return {
        "number": number,
        "rule": transition.rule_id,
        "device": transition.device_id,
        "severity": transition.severity,
        **more,
    }
