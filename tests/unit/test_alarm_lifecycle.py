"""The alarm lifecycle through the gateway: raised -> silenced -> (re-sounded) -> cleared,
each transition an event with its rule and reading; occupancy on fire alarms; SMS and calls.
Rule state across a restart: tests/unit/test_rule_state.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from drivers import Reading
from edge.clock import VirtualClock
from edge.config import SiteConfig
from edge.gateway import Gateway
from edge.rules import AlarmBook, MemoryStateStore, Severity, Transition, TransitionKind
from hil.modem import ModemSimulator

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
T0 = 1_700_000_000.0


def site(tmp_path: Path, **changes: Any) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    data.update(changes)
    return SiteConfig.model_validate(data)


class Recorder:
    """Stands in for the outbox: keeps what the gateway submits, with the buzzer pin then."""

    def __init__(self, pins: MockFactory) -> None:
        self.pins = pins
        self.events: list[dict[str, Any]] = []

    def submit(self, stream: str, body: dict[str, Any], *, at_once: bool = False) -> None:
        if stream == "event":
            self.events.append({**body, "buzzer": bool(self.pins.pin(17).state)})


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Recorder, VirtualClock]]:
    pins = MockFactory()
    clock = VirtualClock(T0)
    zones = [
        {
            "id": "shop-101",
            "name": "Shop 101",
            "devices": ["efm-shop-101"],
            "evidence": [{"device": "radar-101", "point": "target_state", "kind": "radar"}],
        }
    ]
    rules = yaml.safe_load(EXAMPLE.read_text())["rules"]
    rules[0]["escalate"] = {"at": 500, "severity": "fire"}
    rules[0]["severity"] = "major"
    gateway = Gateway(
        site(tmp_path, zones=zones, rules=rules),
        pin_factory=pins,
        clock=clock,
        state_store=MemoryStateStore(),
    )
    recorder = Recorder(pins)
    gateway._submit = recorder.submit  # type: ignore[method-assign]
    yield gateway, recorder, clock
    gateway.annunciator.close()
    pins.reset()


def reading(
    value: float, ts: float, device: str = "efm-shop-101", point: str = "residual_current"
) -> Reading:
    return Reading(device, point, value, "mA", ts, 0.0)


def pattern(gateway: Gateway) -> str | None:
    return gateway.annunciator.pattern


async def test_raise_silence_escalate_rearm_clear(
    rig: tuple[Gateway, Recorder, VirtualClock],
) -> None:
    gateway, recorder, clock = rig
    gateway.on_sample(reading(350, T0))
    assert pattern(gateway) == "pulsed"
    assert gateway.silence("local") == 1
    assert not gateway.annunciator.sounding
    assert gateway.silence("remote") == 0, "nothing left sounding"
    gateway.on_sample(reading(520, T0 + 1))
    assert pattern(gateway) == "continuous", "a worse alarm sounds again"
    gateway.silence("remote")
    await clock.advance(600)
    gateway.tick()
    assert pattern(gateway) == "continuous", "re-armed after 10 minutes"
    gateway.on_sample(reading(100, T0 + 700))
    assert not gateway.annunciator.sounding
    kinds = [(e["kind"], e.get("source"), e["severity"]) for e in recorder.events]
    assert kinds == [
        ("alarm-raised", None, "major"),
        ("alarm-silenced", "local", "major"),
        ("alarm-escalated", None, "fire"),
        ("alarm-silenced", "remote", "fire"),
        ("alarm-resounded", None, "fire"),
        ("alarm-cleared", None, "fire"),
    ]
    raised = recorder.events[0]
    assert (raised["rule"], raised["value"], raised["threshold"], raised["unit"]) == (
        "residual-current-over-limit",
        350,
        300,
        "mA",
    )
    assert raised["buzzer"] is True, "the buzzer sounded before the event was submitted"


async def test_fire_alarm_carries_occupancy_and_an_update_when_it_changes(
    rig: tuple[Gateway, Recorder, VirtualClock],
) -> None:
    gateway, recorder, clock = rig
    gateway.on_sample(reading(0, T0, "radar-101", "target_state"))
    gateway.on_sample(reading(600, T0 + 1))
    raised = recorder.events[-1]
    assert raised["kind"] == "alarm-raised"
    assert raised["occupancy"]["state"] == "vacant"
    assert raised["priority"] == 3
    await clock.advance(5)
    gateway.on_sample(reading(3, T0 + 5, "radar-101", "target_state"))
    gateway.tick()
    update = recorder.events[-1]
    assert update["kind"] == "alarm-updated"
    assert update["occupancy"]["state"] == "occupied"
    assert update["priority"] == 1, "occupied + fire is the most urgent"
    evidence = update["occupancy"]["evidence"][0]
    assert (evidence["device"], evidence["state"], evidence["last_present"]) == (
        "radar-101",
        "present",
        T0 + 5,
    )
    gateway.tick()
    assert recorder.events[-1] is update, "no second update without a change"


def test_alarm_book_sounds_the_worst_unsilenced() -> None:
    book = AlarmBook(rearm_after=60)

    def t(rule: str, kind: TransitionKind, severity: Severity, ts: float) -> Transition:
        return Transition(rule, kind, severity, "d", "p", ts, 1.0, 0.0, None, "over-limit", "", "d")

    book.apply([t("a", "raised", "minor", 0)])
    book.apply([t("b", "raised", "critical", 1)])
    assert (book.sounding(), book.worst()) == ("critical", "critical")
    assert [x.rule_id for x in book.silence(2, "local", ("b", "d"))] == ["b"]
    assert (book.sounding(), book.worst()) == ("minor", "critical")
    assert book.tick(61) == []
    assert [x.kind for x in book.tick(62)] == ["resounded"]
    book.apply([t("b", "cleared", "critical", 63)])
    assert book.worst() == "minor"


async def test_fire_alarm_goes_out_by_sms_with_its_occupancy(tmp_path: Path) -> None:
    async with ModemSimulator() as modem:
        rules = [{**yaml.safe_load(EXAMPLE.read_text())["rules"][0], "severity": "fire"}]
        config = site(
            tmp_path,
            rules=rules,
            sms={"port": modem.url, "numbers": ["+8613800138000"], "timeout": "5s"},
        )
        pins = MockFactory()
        gateway = Gateway(config, pin_factory=pins, clock=VirtualClock(T0))
        events: list[dict[str, Any]] = []
        sent = asyncio.Event()

        def submit(stream: str, body: dict[str, Any], *, at_once: bool = False) -> None:
            events.append(body)
            if body.get("kind") in ("sms-sent", "sms-failed"):
                sent.set()

        gateway._submit = submit  # type: ignore[method-assign]
        assert gateway.sms is not None
        task = asyncio.create_task(gateway.sms.run())
        gateway.on_sample(reading(350, T0))
        assert pins.pin(17).state, "the buzzer does not wait for the modem"
        await asyncio.wait_for(sent.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gateway.annunciator.close()
        pins.reset()
    assert [e.get("kind") for e in events if "kind" in e] == ["alarm-raised", "sms-sent"]
    assert {m.message.number for m in modem.messages} == {"+8613800138000"}
    text = "".join(m.message.text for m in modem.messages)  # a long text goes in parts
    assert text.startswith("【火警】Guiyuan demo block Block 3 1 Shop 101")
    assert "350" in text


async def test_fire_alarm_sends_the_sms_then_calls_until_answered(tmp_path: Path) -> None:
    """The gateway wires both to one modem: the buzzer first, the SMS, then the calls, the
    first number busy, the second answering."""
    async with ModemSimulator() as modem:
        modem.script_call("+8613900000001", "busy")
        rules = [{**yaml.safe_load(EXAMPLE.read_text())["rules"][0], "severity": "fire"}]
        calls = {"numbers": ["+8613900000001", "+8613900000002"], "speak": True}
        config = site(
            tmp_path,
            rules=rules,
            sms={"port": modem.url, "numbers": ["+8613800138000"], "calls": calls},
        )
        pins = MockFactory()
        gateway = Gateway(config, pin_factory=pins, clock=VirtualClock(T0))
        events: list[dict[str, Any]] = []
        answered = asyncio.Event()

        def submit(stream: str, body: dict[str, Any], *, at_once: bool = False) -> None:
            events.append(body)
            if body.get("kind") == "call-answered":
                answered.set()

        gateway._submit = submit  # type: ignore[method-assign]
        assert gateway.sms is not None
        assert gateway.calls is not None
        assert gateway.calls.modem is gateway.sms.modem, "one modem, one line"
        tasks = [asyncio.create_task(gateway.sms.run()), asyncio.create_task(gateway.calls.run())]
        gateway.on_sample(reading(350, T0))
        assert pins.pin(17).state, "the buzzer does not wait for the modem"
        await asyncio.wait_for(answered.wait(), 30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        gateway.annunciator.close()
        pins.reset()
    kinds = [(e.get("kind"), e.get("number")) for e in events if "kind" in e]
    assert kinds == [
        ("alarm-raised", None),
        ("sms-sent", "+8613800138000"),
        ("call-placed", "+8613900000001"),
        ("call-failed", "+8613900000001"),
        ("call-placed", "+8613900000002"),
        ("call-answered", "+8613900000002"),
    ]
    assert modem.calls[-1].spoken[0].startswith("火警。Guiyuan demo block。Block 3 1 Shop 101")
