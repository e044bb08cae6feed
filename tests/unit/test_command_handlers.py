"""The command table is one public list: the schema, the gateway's handlers and the scenario
runner agree with it; the handlers alone on a gateway that is not running.
tests/integration/test_commands*.py and test_push_config.py drive them through Mosquitto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from drivers import Reading
from edge.command_handlers import command_handlers
from edge.commands import COMMANDS, CommandError
from edge.config import SiteConfig
from edge.gateway import Gateway
from hil.scenario.runner import gateway_handles

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    made = Gateway(SiteConfig.model_validate(data), pin_factory=MockFactory(), config_digest="c1")
    yield made
    made.annunciator.close()


def test_the_schema_the_handlers_and_the_scenario_runner_know_the_same_commands(
    gateway: Gateway,
) -> None:
    schema = json.loads((ROOT / "edge" / "schemas" / "command.json").read_text())
    assert sorted(schema["properties"]["command"]["enum"]) == sorted(COMMANDS)
    assert sorted(command_handlers(gateway)) == sorted(COMMANDS)
    assert all(gateway_handles(name) for name in COMMANDS)
    assert not gateway_handles("reboot")


async def run(gateway: Gateway, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    return await command_handlers(gateway)[name](params)


async def test_status_and_silence_answer_from_the_gateway_itself(gateway: Gateway) -> None:
    status = await run(gateway, "get-status", {})
    assert status is not None
    assert (status["config_hash"], status["buzzer"], status["uplink"]) == ("c1", "off", "waiting")
    with pytest.raises(CommandError, match="no active alarm of rule 'r' on device 'd'"):
        await run(gateway, "silence", {"rule": "r", "device": "d"})
    gateway.on_sample(Reading("efm-shop-101", "residual_current", 350.0, "mA", 1e9, 0.0))
    alarm = {"rule": "residual-current-over-limit", "device": "efm-shop-101"}
    assert await run(gateway, "silence", alarm) == {"silenced": 1}
    assert await run(gateway, "silence", alarm) == {"silenced": 0, "already": True}
    status = await run(gateway, "get-status", {})
    assert status is not None
    assert status["active_alarms"] == [{**alarm, "silenced": True}]


async def test_a_gateway_not_run_from_a_site_file_refuses_a_push(gateway: Gateway) -> None:
    with pytest.raises(CommandError, match="not started from a site file"):
        await run(gateway, "push-config", {"site_yaml": "gateway: {}"})


async def test_storm_mode_without_polled_devices_is_refused_and_off_is_already_off(
    gateway: Gateway,
) -> None:
    # Not running: no bus is polled yet.
    with pytest.raises(CommandError, match="no Modbus device is being polled"):
        await run(gateway, "storm-mode", {"on": True, "duration_s": 60})
    assert await run(gateway, "storm-mode", {"on": False}) == {"active": False, "already": True}
    assert gateway.storm.active is None
