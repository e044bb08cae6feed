"""Alarm phone calls: the AT dialogue against the modem simulator (over a real TCP socket), every
way a call ends, escalation down the list, the rate limits, and an SMS never waiting behind a
ringing call on the one modem they share."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edge.calls import CallNotifier, spoken_text
from edge.config import ConfigError, parse_site
from edge.config.model import Calls, Sms
from edge.contract import EVENT_KINDS, EventKind
from edge.sms import Modem, ModemError, SmsNotifier
from hil.modem import CallScript, ModemSimulator
from tests.unit.test_config import MINIMAL
from tests.unit.test_sms import fire

A, B, C = "+8613800000001", "+8613800000002", "13800000003"
#: Polls fast so a test rings for a fraction of a second; nothing here depends on how fast.
POLL = 0.02


def modem(sim: ModemSimulator, timeout: float = 10.0) -> Modem:
    return Modem(sim.url, timeout=timeout, poll=POLL)


class Events:
    """Result events, in order, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def __call__(self, kind: EventKind, body: dict[str, Any]) -> None:
        self.events.append((kind, body))
        self._changed.set()

    def of(self, *kinds: str) -> list[tuple[str, Any]]:
        return [(k, b.get("number")) for k, b in self.events if k in kinds]

    async def until(self, kind: EventKind, count: int = 1) -> None:
        async with asyncio.timeout(30):
            while sum(1 for k, _ in self.events if k == kind) < count:
                await self._changed.wait()
                self._changed.clear()


async def test_an_answered_call_is_read_aloud_and_hung_up() -> None:
    async with ModemSimulator() as sim:
        sim.script_call(A, "answer", polls=3)
        result = await modem(sim).call(A, ring_time=30, speech="火警。一号楼。请立即处理。")
    assert (result.outcome, result.spoken) == ("answered", True)
    (call,) = sim.calls
    assert (call.number, call.polls, call.ended) == (A, 3, "hung up")
    assert call.spoken == ["火警。一号楼。请立即处理。"]
    assert sim.commands[:2] == ["ATE0", f"ATD{A};"]
    assert sim.commands[-1] == "ATH"


async def test_sim7600_voice_call_begin_is_an_answer_and_no_tts_still_an_answered_call() -> None:
    async with ModemSimulator() as sim:
        sim.tts = False
        sim.call_scripts[A] = CallScript("answer", 2, voice_begin=True)
        result = await modem(sim).call(A, ring_time=30, speech="火警")
    assert (result.outcome, result.spoken) == ("answered", False)
    assert sim.calls[0].ended == "hung up"


@pytest.mark.parametrize(
    ("behaviour", "outcome", "detail"),
    [
        ("busy", "busy", "BUSY"),
        ("no-carrier", "no-carrier", "NO CARRIER"),
        ("error", "error", "ERROR"),
        ("no-answer", "no-answer", "not answered within 0.3 s"),
    ],
)
async def test_every_way_a_call_fails_is_named(behaviour: str, outcome: str, detail: str) -> None:
    async with ModemSimulator() as sim:
        sim.script_call(A, behaviour)  # type: ignore[arg-type]
        result = await modem(sim).call(A, ring_time=0.3)
    assert (result.outcome, result.detail) == (outcome, detail)
    if behaviour == "no-answer":
        assert sim.calls[0].ended == "hung up", "a call not answered is hung up (ATH)"


@pytest.mark.parametrize(("behaviour", "said"), [("busy", "BUSY"), ("no-carrier", "NO CARRIER")])
async def test_busy_or_no_carrier_as_atds_own_answer_ends_the_attempt(
    behaviour: str, said: str
) -> None:
    async with ModemSimulator() as sim:
        sim.call_scripts[A] = CallScript(behaviour, at_dial=True)  # type: ignore[arg-type]
        placed: list[str] = []
        result = await modem(sim).call(A, ring_time=30, dialled=lambda: placed.append(A))
    assert (result.outcome, result.detail) == (behaviour, said)
    assert placed == [], "the network never rang it"
    assert "AT+CLCC" not in sim.commands


async def test_a_modem_that_never_answers_atd_is_a_modem_error() -> None:
    async with ModemSimulator() as sim:
        sim.script_call(A, "silent")
        with pytest.raises(ModemError, match="no answer from the modem"):
            await modem(sim, timeout=0.3).call(A, ring_time=30)


async def test_a_malformed_number_never_takes_the_line() -> None:
    async with ModemSimulator() as sim:
        with pytest.raises(ValueError, match="not a phone number"):
            await modem(sim).call("+86 138", ring_time=1)
        assert sim.commands == []


def notifier(
    sim: ModemSimulator, events: Events, the_modem: Modem | None = None, **config: Any
) -> CallNotifier:
    return CallNotifier(
        Calls(**{"numbers": [A, B, C], "ring_time": "1s", **config}),
        site="Guiyuan demo block",
        places={"smoke-101": "3号楼 1层 101"},
        report=events,
        modem=the_modem or modem(sim),
    )


async def test_unanswered_numbers_escalate_down_the_list_until_one_answers() -> None:
    events = Events()
    async with ModemSimulator() as sim:
        sim.script_call(A, "no-answer")
        sim.script_call(B, "busy")
        sim.script_call(C, "answer", polls=2)
        calls = notifier(sim, events, speak=True)
        task = asyncio.create_task(calls.run())
        calls.notify(fire())
        await events.until("call-answered")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert events.of("call-placed", "call-answered", "call-failed") == [
        ("call-placed", A),
        ("call-failed", A),
        ("call-placed", B),
        ("call-failed", B),
        ("call-placed", C),
        ("call-answered", C),
    ]
    bodies = [b for _, b in events.events]
    assert [b["attempt"] for b in bodies] == [1, 1, 2, 2, 3, 3]
    assert [b.get("outcome") for b in bodies if "outcome" in b] == ["no-answer", "busy"]
    assert bodies[-1]["spoken"] is True
    assert sim.calls[-1].spoken == [spoken_text(fire(), "Guiyuan demo block", "3号楼 1层 101")]
    assert sim.calls[-1].spoken[0].startswith("火警。Guiyuan demo block。3号楼 1层 101。室内有人")


async def test_nobody_answering_goes_round_the_list_rounds_times() -> None:
    events = Events()
    async with ModemSimulator() as sim:
        for number in (A, B):
            sim.script_call(number, "no-carrier")
        calls = notifier(sim, events, numbers=[A, B], rounds=2)
        task = asyncio.create_task(calls.run())
        calls.notify(fire())
        await events.until("call-failed", 4)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [c.number for c in sim.calls] == [A, B, A, B]
    assert events.of("call-answered") == []


async def test_rate_limits_and_severity_hold_calls_back_and_say_so() -> None:
    events = Events()
    now = [0.0]
    async with ModemSimulator() as sim:
        calls = notifier(sim, events, numbers=[A], max_per_hour=2)
        calls.clock = lambda: now[0]
        task = asyncio.create_task(calls.run())
        calls.notify(fire(severity="critical"))  # below the default severity (fire): nothing
        calls.notify(fire())
        calls.notify(fire())  # the same alarm within min_interval: held back
        await events.until("call-answered", 1)
        now[0] = 400.0
        calls.notify(fire(rule="smoke-2"))
        await events.until("call-answered", 2)
        now[0] = 800.0
        calls.notify(fire(rule="smoke-3"))  # a third call to A within the hour
        await events.until("call-failed", 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failed = [
        (b["rule"], b["attempt"], b["reason"]) for k, b in events.events if k == "call-failed"
    ]
    assert failed == [("smoke", 0, "rate limit"), ("smoke-3", 1, "rate limit")]
    assert len(sim.calls) == 2


async def test_only_when_offline_calls_only_while_the_uplink_is_down() -> None:
    events = Events()
    online = [True]
    async with ModemSimulator() as sim:
        calls = notifier(sim, events, numbers=[A], only_when_offline=True)
        calls.uplink_online = lambda: online[0]
        task = asyncio.create_task(calls.run())
        calls.notify(fire())
        online[0] = False
        calls.notify(fire(rule="smoke-2"))
        await events.until("call-answered")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [b["rule"] for k, b in events.events if k == "call-placed"] == ["smoke-2"]


async def test_an_sms_never_waits_behind_a_ringing_call() -> None:
    """The call rings (ring time 60 s); an alarm SMS comes: the call hangs up, the SMS goes,
    the call is placed again and answered."""
    events = Events()
    async with ModemSimulator() as sim:
        shared = modem(sim)
        sim.script_call(A, "answer", polls=3)
        calls = notifier(sim, events, shared, numbers=[A], ring_time="60s")
        sms = SmsNotifier(
            Sms(port=sim.url, numbers=[B]),
            site="Guiyuan demo block",
            places={},
            timezone="Asia/Shanghai",
            report=events,
            modem=shared,
        )
        tasks = [asyncio.create_task(calls.run()), asyncio.create_task(sms.run())]
        calls.notify(fire())
        async with asyncio.timeout(30):
            while not (sim.calls and sim.calls[0].polls >= 1):  # noqa: ASYNC110 (the sim's own state)
                await asyncio.sleep(POLL)
        sms.notify(fire())
        await events.until("call-answered")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    kinds = [k for k, _ in events.events]
    assert kinds == [
        "call-placed",
        "call-failed",
        "sms-sent",
        "call-placed",
        "call-answered",
    ], "the SMS went while the first call would still have rung for a minute"
    assert events.events[1][1]["outcome"] == "gave-way"
    assert [(c.number, c.ended, c.answered) for c in sim.calls] == [
        (A, "hung up", False),
        (A, "hung up", True),
    ]
    assert {r.message.number for r in sim.messages} == {B}


async def test_a_call_waits_for_an_sms_being_sent_and_a_waiting_sms_goes_first() -> None:
    async with ModemSimulator() as sim:
        shared = modem(sim)
        first = asyncio.create_task(shared.send(B, "告警"))
        async with asyncio.timeout(30):
            while not shared.line._busy:  # noqa: ASYNC110 (the line has no event for it)
                await asyncio.sleep(0)
        # The first SMS holds the line: a call and then another SMS queue up behind it.
        call = asyncio.create_task(shared.call(A, ring_time=30))
        await asyncio.sleep(0)
        second = asyncio.create_task(shared.send(C, "告警"))
        await asyncio.gather(first, call, second)
    dialogue = [c for c in sim.commands if c.startswith(("AT+CMGS", "ATD"))]
    assert dialogue == ["AT+CMGS=19", "AT+CMGS=18", f"ATD{A};"], (
        "one dialogue at a time, the waiting SMS (to a national number) before the call"
    )
    assert [r.message.number for r in sim.messages] == [B, C]


@pytest.mark.parametrize(
    ("calls", "field", "said"),
    [
        ("{numbers: ['+86 138 0013 8000']}", "sms.calls.numbers[0]", "not a phone number"),
        ("{numbers: ['١٣٨٠٠١٣٨٠٠٠']}", "sms.calls.numbers[0]", "not a phone number"),
        ("{numbers: []}", "sms.calls.numbers", ""),
        ("{numbers: ['+8613800138000'], ring_time: 0s}", "sms.calls.ring_time", ""),
        ("{numbers: ['+8613800138000'], speek: true}", "sms.calls.speek", ""),
    ],
)
def test_a_bad_calls_section_is_a_config_error_naming_the_field(
    calls: str, field: str, said: str
) -> None:
    text = (
        MINIMAL + f"sms:\n  port: socket://127.0.0.1:7000\n  numbers: ['10086']\n  calls: {calls}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_site(text, "site.yaml")
    (issue,) = caught.value.issues
    assert issue.field == field
    assert said in issue.message
    assert issue.line == MINIMAL.count("\n") + 4


def test_calls_section_parses_and_its_events_are_in_the_contract() -> None:
    text = MINIMAL + (
        "sms:\n  port: socket://127.0.0.1:7000\n  numbers: ['10086']\n"
        "  calls: {numbers: ['+8613800138000', '10086'], ring_time: 30s, speak: true}\n"
    )
    site = parse_site(text, "site.yaml")
    assert site.sms is not None
    assert site.sms.calls is not None
    assert (site.sms.calls.ring_time, site.sms.calls.speak) == (30.0, True)
    assert {"call-placed", "call-answered", "call-failed"} <= EVENT_KINDS
