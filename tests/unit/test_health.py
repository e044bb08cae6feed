"""The health of the gateway, built in one place (edge/health.py): a real outbox's depth and the
age of what waits in it, and the whole health a gateway gives, which the contract accepts."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from gpiozero.pins.mock import MockFactory

from buffer import Outbox
from drivers import Reading
from edge import contract
from edge.config import SiteConfig
from edge.gateway import Gateway
from edge.health import buffer_health, gateway_health

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"


async def test_the_age_is_that_of_the_oldest_record_waiting_in_any_stream(tmp_path: Path) -> None:
    assert await buffer_health(None) == {
        "buffer_rows": 0,
        "buffer_streams": {"event": 0, "telemetry": 0},
        "oldest_unsent_age_s": None,
    }
    outbox = await Outbox.open(tmp_path / "outbox.sqlite")
    try:
        assert (await buffer_health(outbox))["oldest_unsent_age_s"] is None
        ts = 1_700_000_000.0
        # A reading's age is its own time; an event's, when it was stored.
        await outbox.append("telemetry", {"device": "d", "point": "p", "value": 1.0, "ts": ts})
        await outbox.append("telemetry", {"device": "d", "point": "p", "value": 2.0, "ts": ts + 5})
        await outbox.append("event", contract.event_body("gateway-started", ts + 9))
        health = await buffer_health(outbox, now=ts + 30.5)
        assert health == {
            "buffer_rows": 3,
            "buffer_streams": {"event": 1, "telemetry": 2},
            "oldest_unsent_age_s": 30.5,
        }
        await outbox.ack([1])
        assert (await buffer_health(outbox, now=ts + 30.5))["oldest_unsent_age_s"] == 25.5
        # A record from the future (a clock set back) is no negative age.
        assert (await buffer_health(outbox, now=ts))["oldest_unsent_age_s"] == 0.0
    finally:
        await outbox.close()


async def test_a_gateways_health_passes_the_contract_before_and_after_its_outbox_opens(
    tmp_path: Path,
) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    data["storage"] = {"policy": "all"}
    gateway = Gateway(SiteConfig.model_validate(data), pin_factory=MockFactory())
    try:
        now = time.time()
        gateway.on_sample(Reading("efm-shop-101", "residual_current", 350.0, "mA", now, 0.0))
        before = await gateway_health(gateway)
        assert before["pending_in_memory"] == 2  # the reading and its alarm, waiting
        assert (before["buffer_rows"], before["oldest_unsent_age_s"]) == (0, None)
        assert before["active_alarms"] == 1
        assert before["buzzer"] == "on"
        assert before["storm"] is None
        assert before["storage"]["polled"] == 1
        contract.health_message("gw-1", "e-1", before, clock_synced=True)

        await gateway._buffer_service()  # opens the outbox and hands over what waited
        assert gateway.outbox is not None
        await gateway.outbox.flush()
        after = await gateway.health()
        assert after["pending_in_memory"] == 0
        assert after["buffer_streams"] == {"event": 1, "telemetry": 1}
        assert after["oldest_unsent_age_s"] is not None
        contract.health_message("gw-1", gateway.outbox.epoch, after, clock_synced=True)
    finally:
        if gateway.outbox is not None:
            await gateway.outbox.close()
        gateway.annunciator.close()
