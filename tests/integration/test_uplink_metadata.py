"""What the uplink publishes besides the outbox, against a real Mosquitto: the retained
metadata (before any telemetry), the periodic health message, and compact, deflated
telemetry that decodes with the announced aliases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from buffer import Outbox
from edge import contract
from edge.config.model import SiteConfig
from edge.config.model import Uplink as UplinkConfig
from edge.health import buffer_health
from edge.schemas import validate_message
from edge.uplink import Uplink
from tests.fixtures.broker import Collector, Mosquitto, collect
from tests.integration.site import load, site_dict

pytestmark = pytest.mark.integration

GATEWAY = "gw-test"
PREFIX = "district/v1"
ALL = contract.fleet_filter(PREFIX)


@pytest.fixture
def site(tmp_path: Path, mosquitto: Mosquitto) -> SiteConfig:
    return load(
        site_dict(tmp_path, broker_url=mosquitto.url, tcp_port=1, rtu_link=tmp_path / "rtu")
    )


@asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[None]:
    task = asyncio.create_task(uplink.run())
    try:
        yield
    finally:
        await uplink.stop()
        await asyncio.wait_for(task, 5)


def telemetry(collector: Collector) -> list[bytes]:
    return [bytes(m.payload) for m in collector.messages if m.topic.value.endswith("/telemetry")]


def config(url: str, **settings: Any) -> UplinkConfig:
    return UplinkConfig.model_validate(
        {"brokers": [url], "batch_interval": "50ms", "reconnect_max": "1s", **settings}
    )


async def test_metadata_is_retained_before_telemetry_and_republished_on_request(
    mosquitto: Mosquitto, outbox: Outbox, site: SiteConfig
) -> None:
    aliases = contract.Aliases.of_site(site)
    built: list[str] = []

    def metadata(epoch: str) -> bytes:
        built.append(epoch)
        return contract.metadata_message(GATEWAY, epoch, site, aliases, clock_synced=True)

    device, point, unit = next(iter(aliases))
    seq = await outbox.append(
        "telemetry", {"device": device, "point": point, "unit": unit, "value": 1.0, "ts": 1e9}
    )
    uplink = Uplink(
        config(mosquitto.url),
        GATEWAY,
        outbox,
        version="t",
        boot_time=time.time(),
        metadata=metadata,
        aliases=aliases,
    )
    assert not await uplink.republish_metadata()  # offline: the next connect publishes it
    async with collect(mosquitto, ALL) as got, running(uplink):
        await got.wait_for(lambda c: len(c.on("/telemetry")) == 1)
        topics = [m.topic.value.rsplit("/", 1)[1] for m in got.messages]
        assert topics.index("metadata") < topics.index("telemetry")
        (meta,) = got.on("/metadata")
        validate_message(meta)
        assert meta["aliases_id"] == aliases.table_id
        # The telemetry refers to that table and decodes with it.
        (batch,) = got.on("/telemetry")
        assert batch["schema"] == contract.SCHEMA_TELEMETRY_COMPACT
        (reading,) = contract.decode_telemetry(batch, contract.Aliases.from_metadata(meta))
        assert (reading["seq"], reading["device"], reading["point"]) == (seq, device, point)

        assert await uplink.republish_metadata()
        await got.wait_for(lambda c: len(c.on("/metadata")) == 2)
        assert built == [outbox.epoch, outbox.epoch]

    # A platform subscribing later still gets it: retained.
    async with collect(mosquitto, contract.fleet_filter(PREFIX, "metadata")) as late:
        await late.wait_for(lambda c: len(c.on("/metadata")) == 1)
        assert late.messages[0].retain


async def test_health_goes_out_at_connect_and_every_interval_with_the_uplinks_counters(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    calls = 0
    boot = time.time() - 100

    async def health() -> Mapping[str, Any]:
        # What the gateway gives (edge/health.py builds it): the uplink adds only its own.
        nonlocal calls
        calls += 1
        return {
            "uptime_s": time.time() - boot,
            **await buffer_health(outbox),
            "bus_errors": {"rs485-1": 3},
            "active_alarms": 1,
        }

    old = time.time() - 30
    # A reading's age is its own time (an event's would be when it was stored).
    reading = {"device": "efm-1", "point": "residual_current", "value": 1.0, "ts": old}
    await outbox.append("telemetry", reading)
    uplink = Uplink(
        config(mosquitto.url, health_interval="1s"),
        GATEWAY,
        outbox,
        version="t",
        boot_time=boot,
        health=health,
    )
    async with collect(mosquitto, ALL) as got, running(uplink):
        # Generous: three health messages a second apart, on a machine that may be busy.
        await got.wait_for(lambda c: len(c.on("/health")) >= 3, within=20)
    reports = got.on("/health")
    for report in reports:
        validate_message(report)
        assert report["bus_errors"] == {"rs485-1": 3}
        assert report["active_alarms"] == 1
        assert report["uptime_s"] >= 100
        assert {"published", "acked", "attempts", "inflight"} <= report["uplink"].keys()
    # The first one went out at connect, with the reading still waiting (30 s old) or sent.
    first = reports[0]
    assert first["uplink"]["attempts"] == 1
    if first["buffer_rows"]:
        assert first["oldest_unsent_age_s"] >= 29
    assert reports[-1]["buffer_rows"] == 0
    assert reports[-1]["oldest_unsent_age_s"] is None
    assert reports[-1]["uplink"]["acked"] == 1
    assert calls >= 3
    # Not stored: the outbox never held them.
    assert outbox.last_seq == 1


async def test_deflated_compact_telemetry_decodes_to_what_was_stored(
    mosquitto: Mosquitto, outbox: Outbox, site: SiteConfig
) -> None:
    aliases = contract.Aliases.of_site(site)
    now = time.time()
    stored = []
    for i in range(300):
        device, point, unit = list(aliases)[i % len(aliases)]
        row = {"device": device, "point": point, "unit": unit, "value": 20.0 + i % 7, "ts": now}
        stored.append((await outbox.append("telemetry", row), device, point, 20.0 + i % 7))
    event = await outbox.append("event", contract.event_body("alarm-raised", now, device="x"))
    uplink = Uplink(
        config(mosquitto.url, compression="deflate", batch_size=100),
        GATEWAY,
        outbox,
        version="t",
        boot_time=now,
        aliases=aliases,
    )
    async with collect(mosquitto, ALL) as got, running(uplink):
        await got.wait_for(
            lambda c: sum(m.topic.value.endswith("/telemetry") for m in c.messages) == 3
        )
    raw = [bytes(m.payload) for m in got.messages if m.topic.value.endswith("/telemetry")]
    assert all(p[0] == 0x78 for p in raw)  # zlib
    readings = []
    for payload in raw:
        message = contract.decode_payload(payload)
        assert message["schema"] == contract.SCHEMA_TELEMETRY_COMPACT
        readings += contract.decode_telemetry(message, aliases)
    assert [(r["seq"], r["device"], r["point"], r["value"]) for r in readings] == stored
    # Events stay plain JSON.
    (sent,) = got.on("/events")
    assert sent["seq"] == event
    # The wire carried far fewer bytes than the readable form would.
    assert sum(map(len, raw)) < 300 * 20
