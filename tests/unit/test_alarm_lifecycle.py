"""The alarm lifecycle through the gateway: raised -> silenced -> (re-sounded) -> cleared,
each transition an event with its rule and reading; occupancy on fire alarms; rule state
across a restart through a state store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from buffer import Outbox
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

    def submit(self, stream: str, body: dict[str, Any]) -> None:
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


async def test_active_alarm_and_silence_survive_a_restart(tmp_path: Path) -> None:
    store = MemoryStateStore()
    pins = MockFactory()
    first = Gateway(site(tmp_path), pin_factory=pins, clock=VirtualClock(T0), state_store=store)
    first._submit = lambda stream, body: None  # type: ignore[method-assign]
    await first.restore_rule_state()  # nothing stored yet; saving is allowed from now on
    first.on_sample(reading(350, T0))
    first.on_sample(reading(80, T0, point="temperature_1"))
    first.silence("local")
    await first.rule_state.save()
    first.annunciator.close()
    pins.reset()

    second = Gateway(
        site(tmp_path), pin_factory=pins, clock=VirtualClock(T0 + 60), state_store=store
    )
    events: list[dict[str, Any]] = []
    second._submit = lambda stream, body: events.append(body)  # type: ignore[method-assign]
    await second.restore_rule_state()
    assert sorted(second.alarms.alarms) == [
        ("cable-over-temperature", "efm-shop-101"),
        ("residual-current-over-limit", "efm-shop-101"),
    ]
    assert all(alarm.silenced for alarm in second.alarms.alarms.values())
    second.on_sample(reading(350, T0 + 61))
    assert events == [
        {
            "device": "efm-shop-101",
            "point": "residual_current",
            "value": 350,
            "unit": "mA",
            "ts": T0 + 61,
        }
    ], "still raised: no second alarm-raised"
    second.on_sample(reading(100, T0 + 62))
    assert events[-1]["kind"] == "alarm-cleared"
    second.annunciator.close()
    pins.reset()


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


async def test_rule_state_in_the_outbox_file_survives_a_restart(tmp_path: Path) -> None:
    """The real store: the outbox's key-value table in its SQLite file, closed and reopened."""
    rules = [
        {
            "id": "residual-current-over-limit",
            "kind": "over-limit",
            "point": "residual_current",
            "raise_at": 300,
            "clear_below": 270,
        },
        {
            "id": "warm-three-days",
            "kind": "sustained",
            "point": "temperature_1",
            "above": 40,
            "days": 3,
            "severity": "major",
        },
        {"id": "leak-odd", "kind": "abnormal", "point": "residual_current", "learning": "0s"},
    ]
    config = site(tmp_path, rules=rules)
    day = 86_400.0
    start = 1_735_689_600.0  # 2025-01-01T00:00:00Z

    async def boot(pins: MockFactory, now: float) -> tuple[Gateway, Outbox]:
        outbox = await Outbox.open(tmp_path / "outbox.sqlite")
        gateway = Gateway(config, pin_factory=pins, clock=VirtualClock(now))
        gateway.outbox = outbox
        gateway.outbox_ready.set()
        await gateway.restore_rule_state()
        return gateway, outbox

    pins = MockFactory()
    first, outbox = await boot(pins, start)
    first.on_sample(reading(350, start))
    for hour in range(0, 36):  # a day and a half of a warm cable
        first.on_sample(reading(45, start + hour * 3600, point="temperature_1"))
    first.rules.tick(start + 36 * 3600)
    await first.rule_state.save()
    first.annunciator.close()
    await outbox.close()

    second, outbox = await boot(pins, start + 36 * 3600)
    assert second.annunciator.sounding, "the restored alarm sounds at once"
    assert list(second.alarms.alarms) == [("residual-current-over-limit", "efm-shop-101")]
    transitions: list[Transition] = []
    second.transition_hooks.append(transitions.append)
    for hour in range(36, 80):
        second.on_sample(reading(45, start + hour * 3600, point="temperature_1"))
    second.rules.tick(start + 80 * 3600)
    second.tick()
    assert [(t.rule_id, t.kind, t.ts) for t in transitions] == [
        ("warm-three-days", "raised", start + 3 * day)
    ], "the window went on from where it was, and counted no day twice"
    stored = {entry.key for entry in await outbox.state_items("")}
    assert {"alarms/active", "rules/warm-three-days", "rules/leak-odd"} <= stored
    second.annunciator.close()
    await outbox.close()
    pins.reset()


def test_saves_write_one_value_per_changed_rule_and_baselines_seldom(tmp_path: Path) -> None:
    rules = [
        {
            "id": "limit",
            "kind": "over-limit",
            "point": "residual_current",
            "raise_at": 300,
            "clear_below": 270,
        },
        {"id": "odd", "kind": "abnormal", "point": "residual_current"},
    ]
    gateway = Gateway(site(tmp_path, rules=rules), pin_factory=MockFactory())
    engine = gateway.rules
    for second in range(100):
        engine.evaluate(reading(120, T0 + second))
    assert set(engine.dump_state(0.0)) == {"rules/limit", "rules/odd"}
    for second in range(100, 200):
        engine.evaluate(reading(120, T0 + second))
    assert set(engine.dump_state(30.0)) == {"rules/limit"}, "the baseline waits 10 minutes"
    assert set(engine.dump_state(30.0)) == set(), "nothing changed since"
    engine.evaluate(reading(121, T0 + 300))
    assert set(engine.dump_state(600.0)) == {"rules/limit", "rules/odd"}
    engine.evaluate(reading(400, T0 + 301))
    assert set(engine.dump_state(601.0)) == {"rules/limit", "alarms/active"}, (
        "a transition saves its rule at once; the baseline still waits"
    )
    gateway.annunciator.close()


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

        def submit(stream: str, body: dict[str, Any]) -> None:
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


async def test_a_buffer_that_opens_late_still_restores_the_window(tmp_path: Path) -> None:
    rules = [{"id": "warm", "kind": "sustained", "point": "temperature_1", "above": 40, "days": 2}]
    config = site(tmp_path, rules=rules)
    start = 1_735_689_600.0
    pins = MockFactory()

    first = Gateway(config, pin_factory=pins, clock=VirtualClock(start))
    first.outbox = await Outbox.open(tmp_path / "outbox.sqlite")
    await first.restore_rule_state(wait=False)
    for hour in range(30):
        first.on_sample(reading(45, start + hour * 3600, point="temperature_1"))
    await first.rule_state.save()
    first.annunciator.close()
    await first.outbox.close()

    second = Gateway(config, pin_factory=pins, clock=VirtualClock(start + 30 * 3600))
    await second.restore_rule_state(wait=False)  # the buffer is not open yet
    await second.rule_state.save()  # must not overwrite the stored window
    second.on_sample(reading(45, start + 30 * 3600 + 1, point="temperature_1"))
    second.outbox = await Outbox.open(tmp_path / "outbox.sqlite")
    await second.restore_rule_state(wait=False)  # what the rules task does once it opens
    transitions: list[Transition] = []
    second.transition_hooks.append(transitions.append)
    for hour in range(31, 49):
        second.on_sample(reading(45, start + hour * 3600, point="temperature_1"))
    assert [(t.rule_id, t.kind, t.ts) for t in transitions] == [
        ("warm", "raised", start + 2 * 86400)
    ]
    second.annunciator.close()
    await second.outbox.close()
    pins.reset()


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

        def submit(stream: str, body: dict[str, Any]) -> None:
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
