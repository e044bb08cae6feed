"""The rules' memory across restarts (edge/rule_state.py): windows, baselines, active alarms
and silences, thresholds set remotely; never a save before the restore. Alone on a memory
store, and through the gateway on the outbox's own file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from buffer import Outbox
from edge.clock import VirtualClock
from edge.gateway import Gateway
from edge.rule_state import OVERRIDES_KEY, STATE_SAVE_INTERVAL, RuleStateKeeper
from edge.rules import AlarmBook, MemoryStateStore, RuleEngine, Transition
from tests.unit.test_alarm_lifecycle import T0, reading, site


def _ignore(stream: str, body: dict[str, Any], *, at_once: bool = False) -> None:
    """Stands in for the gateway's submit where what is submitted does not matter."""


def keeper(
    tmp_path: Path, store: MemoryStateStore | None, clock: VirtualClock, digest: str = "d1"
) -> tuple[RuleStateKeeper, RuleEngine]:
    config = site(tmp_path)
    rules = RuleEngine(config.rules, devices=config.devices)
    return RuleStateKeeper(
        rules,
        AlarmBook(rearm_after=60),
        clock,
        store=lambda: store,
        ready=asyncio.Event(),
        fixed=store is not None,
        config_digest=digest,
    ), rules


async def test_overrides_come_back_only_to_the_same_site_file(tmp_path: Path) -> None:
    store, clock = MemoryStateStore(), VirtualClock(T0)
    first, rules = keeper(tmp_path, store, clock)
    assert await first.restore() == []
    rules.set_threshold("residual-current-over-limit", 250.0)
    await first.save_overrides()
    stored = {e.key: e.value for e in await store.state_items("overrides/")}[OVERRIDES_KEY]
    assert stored["config_hash"] == "d1"

    same, same_rules = keeper(tmp_path, store, clock)
    await same.restore()
    assert [o.dump()["value"] for o in same_rules.overrides] == [250.0]
    other, other_rules = keeper(tmp_path, store, clock, digest="d2")  # a pushed or edited site file
    await other.restore()
    assert other_rules.overrides == []


async def test_a_damaged_override_is_dropped_and_the_others_kept(tmp_path: Path) -> None:
    store, clock = MemoryStateStore(), VirtualClock(T0)
    good = {"rule": "residual-current-over-limit", "field": "raise_at", "value": 260.0}
    value: dict[str, Any] = {"config_hash": "d1", "overrides": [{"rule": 7}, good]}
    await store.state_put(OVERRIDES_KEY, value, schema=1)
    state, rules = keeper(tmp_path, store, clock)
    await state.restore()
    assert [o.dump()["value"] for o in rules.overrides] == [260.0]


async def test_nothing_is_saved_before_the_restore_nor_without_a_store(tmp_path: Path) -> None:
    store, clock = MemoryStateStore(), VirtualClock(T0)
    await store.state_put(OVERRIDES_KEY, {"config_hash": "d1", "overrides": []}, schema=1)
    state, _ = keeper(tmp_path, store, clock)
    state.due = True
    await state.save_if_due()
    await state.save_overrides()
    await state.put("storm/active", {"x": 1}, what="storm mode")
    assert [e.key for e in await store.state_items("")] == [OVERRIDES_KEY]
    # No outbox yet: a restore is put off, and says so only when it was meant to wait.
    waiting, _ = keeper(tmp_path, None, clock)
    assert await waiting.restore(wait=False) is None
    assert waiting.restored is False


async def test_saves_come_when_due_or_every_interval(tmp_path: Path) -> None:
    store, clock = MemoryStateStore(), VirtualClock(T0)
    state, rules = keeper(tmp_path, store, clock)
    await state.restore()
    rules.evaluate(reading(120, T0))
    await state.save_if_due()
    assert await store.state_items("rules/") == [], "not due, and the interval has not passed"
    await clock.advance(STATE_SAVE_INTERVAL)
    await state.save_if_due()
    assert [e.key for e in await store.state_items("rules/")] == [
        "rules/residual-current-over-limit"
    ]
    rules.evaluate(reading(400, T0 + 31))
    state.due = True  # what the gateway sets on a transition
    await state.save_if_due()
    assert "alarms/active" in {e.key for e in await store.state_items("alarms/")}
    assert state.due is False


# -- through the gateway -------------------------------------------------------------------


async def test_active_alarm_and_silence_survive_a_restart(tmp_path: Path) -> None:
    store = MemoryStateStore()
    pins = MockFactory()
    first = Gateway(site(tmp_path), pin_factory=pins, clock=VirtualClock(T0), state_store=store)
    first._submit = _ignore  # type: ignore[method-assign]
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
    second._submit = lambda *record, **_: events.append(record[1])  # type: ignore[method-assign]
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
