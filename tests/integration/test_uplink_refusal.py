"""The broker's verdict counts: a PUBACK that refuses a message keeps its rows, against a real
Mosquitto with an ACL; and a broker that drops the connection on every publish keeps them too,
with backoff."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from typing import Any

import pytest

from buffer import Outbox
from edge import contract
from edge.health import buffer_health
from edge.schemas import validate_message
from tests.fixtures.broker import Mosquitto, MosquittoFactory, collect
from tests.fixtures.mqtt_proxy import dropping_proxy
from tests.integration.uplink_parts import ALL, GATEWAY, PREFIX, make_uplink, running

pytestmark = pytest.mark.integration

USER = "gw-user"
PASSWORD = "gw-password"
LOGIN = {"username": USER, "password": PASSWORD}


def reading(value: float) -> dict[str, Any]:
    return {
        "device": "efm-1",
        "point": "residual_current",
        "value": value,
        "unit": "mA",
        "ts": time.time(),
    }


async def fill(outbox: Outbox, events: int, readings: int) -> None:
    for i in range(events):
        outbox.submit("event", contract.event_body("alarm-raised", time.time(), device=f"efm-{i}"))
    for i in range(readings):
        outbox.submit("telemetry", reading(float(i)))
    await outbox.flush()


async def wait_until(condition: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def gateway_messages(got: Any) -> list[str]:
    return [m.topic.value for m in got.messages if m.topic.value.startswith(f"{PREFIX}/{GATEWAY}")]


def refused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "REFUSED" in r.getMessage()]


async def outbox_health(outbox: Outbox) -> dict[str, Any]:
    """A health without a gateway: the outbox's depth, no buses."""
    return {"uptime_s": 1.0, **await buffer_health(outbox), "bus_errors": {}}


def allow(*kinds: str) -> list[str]:
    """ACL lines letting the gateway's user write only these kinds of its own topics."""
    return [f"user {USER}", *(f"topic write {PREFIX}/{GATEWAY}/{kind}" for kind in kinds)]


def reload_acl(broker: Mosquitto, lines: list[str]) -> None:
    """Give the running broker a new ACL (SIGHUP re-reads it), the collector's line kept."""
    acl = broker.workdir / "acl"
    collector = acl.read_text().splitlines()[-2:]
    acl.write_text("".join(f"{line}\n" for line in [*lines, *collector]))
    assert broker._proc is not None
    os.kill(broker._proc.pid, signal.SIGHUP)


async def test_a_broker_refusing_every_topic_keeps_every_row_and_says_refused(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory(users={USER: PASSWORD}, acl=[f"user {USER}"])
    await fill(outbox, events=3, readings=40)
    uplink = make_uplink(outbox, broker.url, batch_size=10, **LOGIN)
    with caplog.at_level(logging.INFO, logger="edge.uplink"):
        async with collect(broker, ALL) as got, running(uplink):
            # All 7 messages (3 events, 4 batches of 10) refused at least twice: retried, kept.
            await wait_until(lambda: uplink.refusals.count >= 2 * 7 and uplink.inflight == 7)
            assert uplink.state == "refused"
            assert await outbox.depth() == {"event": 3, "telemetry": 40}
            assert uplink.tally.acked == 0
            assert gateway_messages(got) == []
            # Said at once, then rate-limited: one line for all these refusals.
            lines = refused_lines(caplog)
            assert len(lines) == 1, lines
            assert "Not authorized (0x87)" in lines[0]
            assert "keep their rows" in lines[0]
            # The ACL is fixed: everything the broker refused goes, nothing twice.
            reload_acl(broker, allow("#"))
            await wait_until(lambda: uplink.tally.acked == 43)
            # The status refused at connect went again with backoff, and is now retained.
            await got.wait_for(
                lambda c: any(m.get("state") == "online" for m in c.on("/status")), within=15
            )
            assert str(uplink.state) == "online"  # the state moved on meanwhile
    assert await outbox.depth() == {"event": 0, "telemetry": 0}
    seqs = [e["seq"] for e in got.on("/events")]
    seqs += [r["seq"] for b in got.on("/telemetry") for r in b["readings"]]
    assert sorted(seqs) == list(range(1, 44))
    assert any("accepts messages" in r.getMessage() for r in caplog.records)


async def test_a_broker_refusing_only_events_keeps_them_and_telemetry_still_goes(
    mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    acl = allow("telemetry", "status", "metadata", "health")
    broker = mosquitto_factory(users={USER: PASSWORD}, acl=acl)
    await fill(outbox, events=2, readings=30)
    uplink = make_uplink(outbox, broker.url, batch_size=10, health_interval="1s", **LOGIN)
    # The outbox's part of the health message (edge/health.py); the uplink adds its own.
    uplink._health = lambda: outbox_health(outbox)
    async with collect(broker, ALL) as got, running(uplink):
        await wait_until(lambda: uplink.tally.acked == 30)
        await got.wait_for(
            lambda c: any(h.get("uplink_state") == "refused" for h in c.on("/health")), within=10
        )
        assert await outbox.depth() == {"event": 2, "telemetry": 0}
        assert uplink.state == "refused"
    health = [h for h in got.on("/health") if h.get("uplink_state") == "refused"][-1]
    assert validate_message(health) == "health"
    assert health["uplink_refused_topics"] == [f"{PREFIX}/{GATEWAY}/events"]
    assert health["uplink"]["refused"] >= 2
    assert got.on("/events") == []


async def test_mqtt311_cannot_hear_a_refusal_so_denied_rows_are_deleted(
    mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    # The risk docs/contract.md states: Mosquitto acks an ACL-denied QoS 1 publish from a 3.1.1
    # client like any other, and 3.1.1 has no reason code to say otherwise. `edge doctor`'s
    # delivery check is what catches it.
    broker = mosquitto_factory(users={USER: PASSWORD}, acl=[f"user {USER}"])
    await fill(outbox, events=1, readings=5)
    uplink = make_uplink(outbox, broker.url, protocol="3.1.1", **LOGIN)
    async with collect(broker, ALL) as got, running(uplink):
        await wait_until(lambda: uplink.tally.acked == 6)
        assert uplink.state == "online"
    assert gateway_messages(got) == []
    assert await outbox.depth() == {"event": 0, "telemetry": 0}


async def test_a_broker_dropping_the_connection_on_every_publish_keeps_rows_with_backoff(
    mosquitto: Mosquitto, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(outbox, events=2, readings=20)
    async with dropping_proxy(mosquitto.host, mosquitto.port) as proxy:
        uplink = make_uplink(outbox, proxy.url, reconnect_max="2s")
        with caplog.at_level(logging.WARNING, logger="edge.uplink"):
            async with running(uplink):
                await wait_until(lambda: uplink.tally.attempts >= 6, within=30)
                assert await outbox.depth() == {"event": 2, "telemetry": 20}
                assert uplink.tally.acked == 0
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"next attempt .* in ([\d.]+) s", r.getMessage()))
    ]
    assert len(delays) >= 5, delays
    # Every attempt waited its backoff (no busy loop), growing to the cap.
    assert all(d >= 0.5 for d in delays), delays
    assert max(delays) >= 1.0, delays
    # One MQTT session per counted attempt, each ended by its first PUBLISH: no hidden
    # reconnects (the other TCP connections are the half-second port looks of the backoff).
    assert proxy.sessions == proxy.dropped <= uplink.tally.attempts
