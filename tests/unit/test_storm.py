"""Storm mode alone (edge/storm.py): the plan a command gives or the reason it is refused, and
the storm applied to real Modbus bus schedulers and a real rule engine on a virtual clock.
tests/integration/test_commands_apply.py drives it through Mosquitto into a running gateway."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.bus import ModbusBus
from edge.buses import FieldDriver, build_buses
from edge.clock import VirtualClock
from edge.commands import CommandError
from edge.config import SiteConfig
from edge.rule_state import RuleStateKeeper
from edge.rules import AlarmBook, MemoryStateStore, RuleEngine
from edge.storm import STORM_KEY, STORM_MIN_INTERVAL, StormMode, plan_storm

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
T0 = 1_700_000_000.0
SHOP, RESTAURANT, WORKSHOP = "efm-shop-101", "efm-restaurant-102", "efm-workshop-201"
RULE = "residual-current-over-limit"


def site(tmp_path: Path) -> SiteConfig:
    """The example site; the restaurant's monitor has a fast interval, the workshop's is polled
    every 10 s."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    for device in data["devices"]:
        if device["id"] == RESTAURANT:
            device["fast_interval"] = "300ms"
        if device["id"] == WORKSHOP:
            device["poll_interval"] = "10s"
    return SiteConfig.model_validate(data)


POLLED = {SHOP, RESTAURANT, WORKSHOP}


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"on": True}, "needs duration_s"),
        ({"on": True, "duration_s": 0}, "duration_s must be above 0"),
        ({"on": True, "duration_s": -5}, "duration_s must be above 0"),
        ({"on": True, "duration_s": 7 * 86_400 + 1}, "duration_s must be at most 604800"),
        ({"on": True, "duration_s": math.nan}, "duration_s must be a finite number"),
        ({"on": True, "duration_s": math.inf}, "duration_s must be a finite number"),
        ({"on": True, "duration_s": True}, "duration_s must be a finite number"),
        ({"on": True, "duration_s": "60"}, "duration_s must be a finite number"),
        (
            {"on": True, "duration_s": 5, "threshold_factor": 1.5},
            "threshold_factor must be at most 1",
        ),
        ({"on": True, "duration_s": 5, "threshold_factor": 0}, "threshold_factor must be above 0"),
        ({"on": True, "duration_s": 5, "interval_s": 0.01}, "interval_s must be at least 0.2"),
        ({"on": True, "duration_s": 5, "interval_s": math.nan}, "interval_s must be a finite"),
        ({"on": True, "duration_s": 5, "devices": []}, "devices is empty"),
        ({"on": True, "duration_s": 5, "devices": ["efm-nowhere"]}, "unknown device 'efm-nowhere'"),
    ],
)
def test_a_bad_request_is_refused_with_its_reason(
    tmp_path: Path, params: dict[str, Any], words: str
) -> None:
    with pytest.raises(CommandError, match=words):
        plan_storm(params, site(tmp_path).devices, POLLED)


def test_only_polled_modbus_devices_can_be_sped_up(tmp_path: Path) -> None:
    devices = site(tmp_path).devices
    with pytest.raises(CommandError, match="no Modbus device is being polled"):
        plan_storm({"on": True, "duration_s": 5}, devices, set())
    with pytest.raises(CommandError, match=f"device '{SHOP}' is not polled over Modbus"):
        plan_storm({"on": True, "duration_s": 5, "devices": [SHOP]}, devices, {WORKSHOP})


def test_each_device_gets_its_fast_interval_or_half_its_poll_never_slower_never_below_the_floor(
    tmp_path: Path,
) -> None:
    devices = site(tmp_path).devices
    plan = plan_storm({"on": True, "duration_s": 60}, devices, POLLED)
    assert plan.intervals == {SHOP: 0.5, RESTAURANT: 0.3, WORKSHOP: 5.0}
    assert (plan.factor, plan.duration) == (1.0, 60.0)
    asked = {"on": True, "duration_s": 60, "interval_s": 2, "threshold_factor": 0.8}
    plan = plan_storm({**asked, "devices": [SHOP, WORKSHOP, SHOP]}, devices, POLLED)
    # 2 s is slower than the shop's 1 s poll: the site file's interval stays.
    assert plan.intervals == {SHOP: 1.0, WORKSHOP: 2.0}
    assert plan.factor == 0.8
    floor = plan_storm({**asked, "interval_s": STORM_MIN_INTERVAL}, devices, POLLED)
    assert set(floor.intervals.values()) == {STORM_MIN_INTERVAL}


class Rig:
    """Storm mode over the example site's real bus schedulers (never started: nothing is
    polled) and a real rule engine, on a virtual clock, with a memory state store."""

    def __init__(self, config: SiteConfig, store: MemoryStateStore, clock: VirtualClock) -> None:
        self.buses: dict[str, FieldDriver] = {
            name: driver
            for name, driver in build_buses(config, lambda sample: None).items()
            if isinstance(driver, ModbusBus)
        }
        self.rules = RuleEngine(config.rules, devices=config.devices)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.state = RuleStateKeeper(
            self.rules,
            AlarmBook(rearm_after=60),
            clock,
            store=lambda: store,
            ready=asyncio.Event(),
            fixed=True,
            config_digest="d1",
        )
        self.storm = StormMode(
            buses=lambda: self.buses,
            rules=self.rules,
            clock=clock,
            report=lambda kind, **body: self.events.append((kind, body)),
            state=self.state,
        )

    def interval(self, device_id: str) -> float:
        for driver in self.buses.values():
            assert isinstance(driver, ModbusBus)
            if device_id in driver.devices_online:
                return driver.intervals(device_id)[0]
        raise AssertionError(device_id)

    def raise_at(self, device_id: str) -> float:
        thresholds = self.rules.thresholds(RULE, device_id)
        assert thresholds is not None
        return float(thresholds.raise_at)  # type: ignore[union-attr]


async def test_a_storm_speeds_up_and_tightens_then_ends_by_itself_exactly_on_time(
    tmp_path: Path,
) -> None:
    config, store, clock = site(tmp_path), MemoryStateStore(), VirtualClock(T0)
    rig = Rig(config, store, clock)
    await rig.state.restore()
    plan = plan_storm(
        {"on": True, "duration_s": 600, "devices": [SHOP], "threshold_factor": 0.8},
        config.devices,
        POLLED,
    )
    answer = await rig.storm.start(plan, "c-1")
    assert answer["active"] is True
    assert answer["renewed"] is False
    assert (rig.interval(SHOP), rig.interval(RESTAURANT)) == (0.5, 1.0)
    assert (rig.raise_at(SHOP), rig.raise_at(RESTAURANT)) == (240.0, 300.0)
    kind, started = rig.events[-1]
    assert kind == "storm-mode-started"
    assert (started["devices"], started["command_id"], started["duration_s"]) == (
        [SHOP],
        "c-1",
        600,
    )
    recorded = {e.key: e.value for e in await store.state_items("storm/")}[STORM_KEY]
    assert recorded["devices"] == [SHOP]
    assert recorded["command_id"] == "c-1"

    await clock.advance(599.9)
    assert rig.storm.active is not None
    await clock.advance(0.1)
    assert rig.storm.active is None
    kind, ended = rig.events[-1]
    assert (kind, ended["reason"], ended["command_id"]) == ("storm-mode-ended", "expired", "c-1")
    assert (rig.interval(SHOP), rig.raise_at(SHOP)) == (1.0, 300.0)
    assert {e.key: e.value for e in await store.state_items("storm/")}[STORM_KEY] == {}


async def test_a_renewal_puts_back_the_devices_it_leaves_out_and_restarts_the_clock(
    tmp_path: Path,
) -> None:
    config, clock = site(tmp_path), VirtualClock(T0)
    rig = Rig(config, MemoryStateStore(), clock)
    await rig.state.restore()
    await rig.storm.start(plan_storm({"on": True, "duration_s": 100}, config.devices, POLLED), "a")
    await clock.advance(90)
    only_shop = {"on": True, "duration_s": 100, "devices": [SHOP]}
    answer = await rig.storm.start(plan_storm(only_shop, config.devices, POLLED), "b")
    assert answer["renewed"] is True
    assert (rig.interval(SHOP), rig.interval(RESTAURANT), rig.interval(WORKSHOP)) == (0.5, 1.0, 10)
    await clock.advance(20)  # past the first storm's end: the renewal's clock runs
    assert rig.storm.active is not None
    await rig.storm.end("command", "off-1")
    assert rig.events[-1] == (
        "storm-mode-ended",
        {"reason": "command", "devices": [SHOP], "command_id": "off-1"},
    )
    assert rig.interval(SHOP) == 1.0
    await clock.advance(200)
    assert [k for k, _ in rig.events].count("storm-mode-ended") == 1, "the ended clock is gone"


async def test_a_storm_does_not_survive_a_restart_and_the_next_start_says_so(
    tmp_path: Path,
) -> None:
    config, store = site(tmp_path), MemoryStateStore()
    first = Rig(config, store, VirtualClock(T0))
    await first.state.restore()
    await first.storm.start(
        plan_storm({"on": True, "duration_s": 600}, config.devices, POLLED), "s"
    )
    first.storm.stop()  # the gateway stopping

    second = Rig(config, store, VirtualClock(T0 + 60))
    await second.state.restore()
    await second.storm.end_recorded()
    assert second.events == [
        (
            "storm-mode-ended",
            {"reason": "restart", "devices": sorted(POLLED), "command_id": "s"},
        )
    ]
    assert second.storm.active is None
    assert second.interval(SHOP) == 1.0
    # Reported once: the record is cleared.
    third = Rig(config, store, VirtualClock(T0 + 120))
    await third.state.restore()
    await third.storm.end_recorded()
    assert third.events == []


async def test_nothing_is_recorded_before_the_rule_state_was_restored(tmp_path: Path) -> None:
    config, store = site(tmp_path), MemoryStateStore()
    await store.state_put(STORM_KEY, {"devices": [SHOP], "command_id": "old"}, schema=1)
    rig = Rig(config, store, VirtualClock(T0))
    await rig.storm.start(plan_storm({"on": True, "duration_s": 60}, config.devices, POLLED), "n")
    stored = {e.key: e.value for e in await store.state_items("storm/")}[STORM_KEY]
    assert stored["command_id"] == "old", "the last run's record is kept for its restart report"
    rig.storm.stop()
