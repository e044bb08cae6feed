"""Alarm calls through the simulated 4G modem (``--only calls``), in-process, at the gateway's
own settings (``AT+CLCC`` polled every second, the SMS and the calls sharing one modem):

- ``call_setup_s_simulated``: from an alarm handed to the SMS and call notifiers (as the
  gateway does right after driving the buzzer) to the ``call-answered`` event, the number
  answering at the first poll and the alarm read aloud; the SMS goes first on the line
  (median of ``trials``);
- ``sms_behind_ringing_call_s_simulated``: from an alarm SMS queued while a call rings (a number
  that never answers, 60 s ring time) to its ``sms-sent`` event: the call hangs up for it
  (median of ``trials``).

The simulator answers at once; a real network adds its own seconds to dial and to ring.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from edge.calls import CallNotifier
from edge.config.model import Calls, Sms
from edge.contract import EventKind
from edge.rules import Transition
from edge.sms import Modem, SmsNotifier
from hil.modem import ModemSimulator

KEYS = ("call_setup_s_simulated", "sms_behind_ringing_call_s_simulated")
TINY = {"trials": 1}

DUTY, FIRST, SECOND = "+8613800000010", "+8613800000011", "+8613800000012"


def _fire(rule: str) -> Transition:
    return Transition(
        rule, "raised", "fire", "smoke-101", "obscuration", time.time(), 1.2, 0.5, None,
        "over-limit", "obscuration over 0.5", "smoke-101", occupancy={"state": "occupied"},
    )  # fmt: skip


class _Clocked:
    """Result events with the moment each was reported."""

    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any], float]] = []
        self.changed = asyncio.Event()

    def __call__(self, kind: EventKind, body: dict[str, Any]) -> None:
        self.events.append((kind, body, time.perf_counter()))
        self.changed.set()

    async def first(self, kind: EventKind, after: float) -> float:
        async with asyncio.timeout(120):
            while True:
                for k, _, at in self.events:
                    if k == kind and at >= after:
                        return at - after
                self.changed.clear()
                await self.changed.wait()


async def _trial(sim: ModemSimulator, rule: str, *, ring: bool) -> float:
    events = _Clocked()
    modem = Modem(sim.url, timeout=60)  # the gateway's poll: 1 s
    sms = SmsNotifier(
        Sms(port=sim.url, numbers=[DUTY]),
        site="Bench block", places={}, timezone="Asia/Shanghai", report=events, modem=modem,
    )  # fmt: skip
    calls = CallNotifier(
        Calls(numbers=[SECOND if ring else FIRST], ring_time="60s", speak=True),
        site="Bench block", places={}, report=events, modem=modem,
    )  # fmt: skip
    tasks = [asyncio.create_task(sms.run()), asyncio.create_task(calls.run())]
    try:
        if not ring:
            began = time.perf_counter()
            sms.notify(_fire(rule))
            calls.notify(_fire(rule))
            return await events.first("call-answered", began)
        calls.notify(_fire(rule))
        await events.first("call-placed", 0.0)
        await asyncio.sleep(1.5)  # well into the ringing
        began = time.perf_counter()
        sms.notify(_fire(rule))
        return await events.first("sms-sent", began)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(trials: int = 5) -> dict[str, float]:
    setup, behind = [], []
    async with ModemSimulator() as sim:
        sim.script_call(FIRST, "answer")
        sim.script_call(SECOND, "no-answer")
        for n in range(trials):
            setup.append(await _trial(sim, f"smoke-{n}", ring=False))
            behind.append(await _trial(sim, f"smoke-ringing-{n}", ring=True))
    return {
        "call_setup_s_simulated": round(statistics.median(setup), 3),
        "sms_behind_ringing_call_s_simulated": round(statistics.median(behind), 3),
    }
