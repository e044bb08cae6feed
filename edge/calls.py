"""Alarm phone calls through the SMS modem: ring, or speak, down a list until someone answers.

An alarm at least as severe as ``sms.calls.severity`` (raised or escalated) starts a round of
calls: the first number rings for ``ring_time``; answered, the round ends (the alarm is read
aloud first when ``speak`` is on and the modem has text-to-speech); busy, no carrier, not
answered or refused by the modem, the next number is called, for ``rounds`` times through the
list. Every attempt is an event: ``call-placed`` once the modem dialled, then
``call-answered`` or ``call-failed`` (alone when the modem refused to dial).
The modem is the SMS's (:class:`edge.sms.ModemLine`): a waiting SMS goes first, and a ringing
call hangs up for it and is placed again after it (docs/rules.md, Phone calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.contract import EventKind
from edge.log import fields
from edge.notify import SEVERITY_WORDS, HourlyLimit, calls_for, notice_fields
from edge.rules import Transition
from edge.sms import Modem, ModemError

if TYPE_CHECKING:
    from edge.config.model import Calls

__all__ = ["CallNotifier", "spoken_text"]

log = logging.getLogger("edge.calls")

#: Calls that gave way to an SMS are placed again, but a modem flooded with messages must not
#: keep one number redialled for ever: after this many, the attempt counts as failed.
GIVE_WAY_LIMIT = 20


def spoken_text(transition: Transition, site: str, place: str) -> str:
    """What the modem reads aloud: what and where, in Chinese, short enough to catch at once."""
    occupancy = ""
    if transition.occupancy is not None:
        occupancy = {"occupied": "。室内有人", "vacant": "。室内无人", "unknown": ""}[
            str(transition.occupancy["state"])
        ]
    return f"{SEVERITY_WORDS[transition.severity]}。{site}。{place}{occupancy}。请立即处理。"


@dataclass(frozen=True)
class _Round:
    """One alarm's calls, waiting to be placed."""

    transition: Transition
    speech: str


class CallNotifier:
    """Turns alarms into rounds of calls, within the rate limits; one call at a time.

    Per rule and device, one round within ``min_interval``; per number, at most
    ``max_per_hour`` calls. What the limits hold back is reported (``call-failed``, reason
    ``rate limit``), never silently dropped.
    """

    def __init__(
        self,
        config: Calls,
        *,
        site: str,
        places: dict[str, str],
        report: Callable[[EventKind, dict[str, Any]], None],
        modem: Modem,
        clock: Callable[[], float] = time.monotonic,
        uplink_online: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.site = site
        self.places = places
        self.report = report
        self.modem = modem
        self.clock = clock
        self.uplink_online = uplink_online
        self._queue: deque[_Round] = deque()
        self._wake = asyncio.Event()
        self._last: dict[tuple[str, str], float] = {}
        self._placed = HourlyLimit(config.numbers, config.max_per_hour, clock)

    def notify(self, transition: Transition) -> None:
        """Queue the round of calls ``transition`` calls for (a no-op for most transitions)."""
        if not calls_for(transition, self.config, self.uplink_online):
            return
        now = self.clock()
        key = (transition.rule_id, transition.device_id)
        if now - self._last.get(key, -1e18) < self.config.min_interval:
            self.report(
                "call-failed",
                self._fields(self.config.numbers[0], transition, 0, reason="rate limit"),
            )
            return
        self._last[key] = now
        place = self.places.get(transition.device_id, transition.device_id)
        self._queue.append(_Round(transition, spoken_text(transition, self.site, place)))
        self._wake.set()

    def _fields(
        self, number: str, transition: Transition, attempt: int, **more: Any
    ) -> dict[str, Any]:
        return notice_fields(number, transition, attempt=attempt, **more)

    async def run(self) -> None:
        """Place the queued rounds, oldest first; runs until cancelled."""
        while True:
            while self._queue:
                await self._place(self._queue.popleft())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await self._wake.wait()

    async def _place(self, round_: _Round) -> None:
        """Down the list until one answers: True when someone did."""
        transition = round_.transition
        speech = round_.speech if self.config.speak else None
        attempt = 0
        for _ in range(self.config.rounds):
            for number in self.config.numbers:
                attempt += 1
                if not self._placed.take(number):
                    self.report(
                        "call-failed",
                        self._fields(number, transition, attempt, reason="rate limit"),
                    )
                    continue
                if await self._call(number, transition, attempt, speech):
                    return
        log.error("nobody answered", extra=fields(rule=transition.rule_id, attempts=attempt))

    async def _call(
        self, number: str, transition: Transition, attempt: int, speech: str | None
    ) -> bool:
        """One number, placed again while it gives way to an SMS: True when answered."""
        for _ in range(GIVE_WAY_LIMIT):
            try:
                result = await self.modem.call(
                    number,
                    ring_time=self.config.ring_time,
                    speech=speech,
                    dialled=lambda: self.report(
                        "call-placed", self._fields(number, transition, attempt)
                    ),
                )
            except (ModemError, OSError, ValueError) as exc:
                log.error("call failed", extra=fields(number=number, error=str(exc)))
                self.report(
                    "call-failed", self._fields(number, transition, attempt, reason=str(exc))
                )
                return False
            if result.outcome == "answered":
                log.warning("call answered", extra=fields(number=number, rang=result.rang))
                self.report(
                    "call-answered",
                    self._fields(
                        number,
                        transition,
                        attempt,
                        rang_s=round(result.rang, 1),
                        spoken=result.spoken,
                    ),
                )
                return True
            self.report(
                "call-failed",
                self._fields(
                    number,
                    transition,
                    attempt,
                    reason=result.detail,
                    outcome=result.outcome,
                    rang_s=round(result.rang, 1),
                ),
            )
            if result.outcome != "gave-way":
                return False
        return False
