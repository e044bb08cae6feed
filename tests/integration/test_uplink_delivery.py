"""The uplink's delivery against a real Mosquitto: the in-flight window, resending unchanged,
live data before the backlog, backfill limits, the size limit, a broker that stops answering,
and reconnecting as soon as a broker is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import edge.uplink.service
from buffer import Outbox
from edge import contract
from edge.schemas import validate_message
from tests.fixtures.broker import Collector, Mosquitto, MosquittoFactory, collect
from tests.integration.uplink_parts import ALL, make_uplink, running

pytestmark = pytest.mark.integration


def body(value: float, ts: float | None = None, device: str = "efm-1") -> dict[str, Any]:
    return {
        "device": device,
        "point": "residual_current",
        "value": value,
        "unit": "mA",
        "ts": time.time() if ts is None else ts,
    }


async def store(outbox: Outbox, bodies: list[dict[str, Any]]) -> list[int]:
    """Store readings in one go (one commit rather than one each); their seqs."""
    for reading in bodies:
        outbox.submit("telemetry", reading)
    await outbox.flush()
    return list(range(outbox.last_seq - len(bodies) + 1, outbox.last_seq + 1))


def carried(collector: Collector) -> list[int]:
    seqs: list[int] = [m["seq"] for m in collector.on("/events")]
    for message in collector.on("/telemetry"):
        seqs.extend(r["seq"] for r in message["readings"])
    return seqs


async def wait_until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


@contextmanager
def frozen(broker: Mosquitto) -> Iterator[int]:
    """The broker process stopped (SIGSTOP): its port still accepts, nothing is answered."""
    proc = broker._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed meanwhile
            os.kill(proc.pid, signal.SIGCONT)


async def test_unacknowledged_messages_go_again_unchanged_after_the_broker_dies(
    mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    broker = mosquitto_factory(persistence=True)
    # Register the platform's session and have it saved, so it outlives the broker's crash.
    async with collect(broker, ALL, session="platform"):
        pass
    await broker.stop_async()
    await broker.start_async()
    uplink = make_uplink(outbox, broker.url, batch_size=7, inflight=4)
    submitted: list[int] = []
    producing = True

    async def produce() -> None:
        i = 0
        while producing:
            if i % 40 == 0:
                event = contract.event_body("alarm-raised", time.time(), device="efm-1", n=i)
                submitted.append(await outbox.append("event", event))
            else:
                submitted.append(await outbox.append("telemetry", body(float(i))))
            i += 1
            await asyncio.sleep(0.003)

    async with collect(broker, ALL, session="platform") as got, running(uplink):
        producer = asyncio.create_task(produce())
        await got.wait_for(lambda c: len(carried(c)) >= 50, within=10)
        with frozen(broker):
            # Nothing is acknowledged now: the window fills with messages built from live rows.
            await wait_until(lambda: uplink.inflight == 4)
            kept = uplink.unacknowledged
            broker.kill()  # the broker dies with them unacknowledged
        await broker.start_async()
        await wait_until(lambda: uplink.tally.resent >= 4, within=10)
        producing = False
        await producer
        await wait_until(lambda: uplink.tally.acked >= len(submitted), within=15)

    assert await outbox.depth() == {"event": 0, "telemetry": 0}
    # The platform got the kept messages byte for byte, not re-cut batches of the same rows.
    payloads = {bytes(m.payload) for m in got.messages}
    assert all(p in payloads for p in kept)
    ids: dict[int, set[str]] = {}
    for message in got.on("/telemetry"):
        for reading in message["readings"]:
            ids.setdefault(reading["seq"], set()).add(message["message_id"])
    for message in got.on("/events"):
        ids.setdefault(message["seq"], set()).add(message["message_id"])
    assert ids, "nothing arrived"
    assert all(len(v) == 1 for v in ids.values()), {k: v for k, v in ids.items() if len(v) > 1}


async def test_live_readings_go_before_the_backlog_which_goes_oldest_first(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    old = time.time() - 600
    backlog = await store(outbox, [body(float(i), old + i) for i in range(30)])
    live = await store(outbox, [body(100.0 + i) for i in range(3)])
    uplink = make_uplink(outbox, mosquitto.url, batch_size=10, inflight=1)

    async with collect(mosquitto, ALL) as got, running(uplink):
        await got.wait_for(lambda c: set(carried(c)) == {*backlog, *live})

    batches = got.on("/telemetry")
    first = batches[0]
    assert [r["seq"] for r in first["readings"]] == live
    assert first["historical"] is False
    rest = [r["seq"] for b in batches[1:] for r in b["readings"]]
    assert rest == backlog  # oldest first
    assert all(b["historical"] is True for b in batches[1:])


async def test_backfill_keeps_to_its_rate_while_live_data_flows(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    old = time.time() - 3600
    backlog = await store(outbox, [body(float(i), old + i) for i in range(300)])
    uplink = make_uplink(
        outbox, mosquitto.url, batch_size=10, batch_interval="200ms", backfill_messages_per_s=5
    )
    live: list[int] = []
    sent_at: dict[int, float] = {}

    async with collect(mosquitto, ALL) as got, running(uplink):
        await wait_until(lambda: uplink.state == "online")
        began = time.monotonic()
        while time.monotonic() - began < 3.0:
            seq = await outbox.append("telemetry", body(1.0))
            live.append(seq)
            sent_at[seq] = time.monotonic()
            await asyncio.sleep(0.05)
        await got.wait_for(lambda c: set(live) <= set(carried(c)), within=3)
        elapsed = time.monotonic() - began

    backfill = [b for b in got.on("/telemetry") if b["historical"]]
    # 5 a second over about 3 s, plus the first one at once: well below an unlimited drain
    # (30 messages within the first second here).
    assert 3 <= len(backfill) <= 5 * elapsed + 3, (len(backfill), elapsed)
    assert [r["seq"] for b in backfill for r in b["readings"]] == backlog[: 10 * len(backfill)]
    # Live data was not held back by the limit: every reading went in its own batch window.
    live_batches = [b for b in got.on("/telemetry") if not b["historical"]]
    assert len(live_batches) >= 5


async def test_backfill_keeps_to_its_byte_rate(mosquitto: Mosquitto, outbox: Outbox) -> None:
    old = time.time() - 3600
    await store(outbox, [body(float(i), old + i) for i in range(400)])
    # Ten verbose readings make a message of about 1.2 kB: some 3 messages a second.
    uplink = make_uplink(
        outbox,
        mosquitto.url,
        batch_size=10,
        backfill_bytes_per_s="4KiB",
        telemetry_encoding="verbose",
        compression="none",  # the sizes above are of plain JSON, and so is the check below
    )
    async with collect(mosquitto, ALL) as got, running(uplink):
        await wait_until(lambda: uplink.state == "online")
        began = time.monotonic()
        await asyncio.sleep(3.0)
        elapsed = time.monotonic() - began
        received = sum(
            len(bytes(m.payload)) for m in got.messages if b'"historical":true' in bytes(m.payload)
        )
    # The rate over the time plus the one-second burst and one message of debt; unlimited, the
    # 400 readings (about 48 kB) would all be there within the first second.
    assert 4096 <= received <= 4096 * (elapsed + 1) + 1300, (received, elapsed)


async def test_oversized_batches_are_split_and_an_oversized_event_is_cut_mqtt311(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Mosquitto 2.0.11 drops a 3.1.1 client that sends a larger packet (no PUBACK, no error
    # code): max_message_bytes must stay under the broker's limit, and then nothing is lost.
    broker = mosquitto_factory(extra_config=["max_packet_size 4096"])
    await oversized_delivery(
        broker, outbox, caplog, protocol="3.1.1", max_message_bytes="3KiB", limit=3 * 1024
    )


async def test_the_brokers_maximum_packet_size_is_honoured_mqtt5(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # MQTT 5: the broker announces its limit in the CONNACK, below the configured one.
    broker = mosquitto_factory(extra_config=["max_packet_size 4096"])
    await oversized_delivery(broker, outbox, caplog, protocol="5", limit=4096)


async def oversized_delivery(
    broker: Mosquitto,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
    *,
    protocol: str,
    limit: int,
    max_message_bytes: str | None = None,
) -> None:
    rows = await store(outbox, [body(float(i)) for i in range(200)])
    huge = contract.event_body(
        "alarm-raised", time.time(), device="efm-1", rule="rc", trace="x" * 20_000, value=312.0
    )
    event = await outbox.append("event", huge)
    # Plain JSON: 200 readings deflated would fit the limits this test is about.
    settings: dict[str, Any] = {"batch_size": 200, "protocol": protocol, "compression": "none"}
    if max_message_bytes is not None:
        settings["max_message_bytes"] = max_message_bytes
    uplink = make_uplink(outbox, broker.url, **settings)
    with caplog.at_level(logging.ERROR, logger="edge.uplink"):
        async with collect(broker, ALL) as got, running(uplink):
            await got.wait_for(lambda c: set(carried(c)) == {*rows, event}, within=10)
            await wait_until(lambda: uplink.tally.acked == 201)
            assert uplink.tally.attempts == 1  # no disconnect, no loop
    assert await outbox.depth() == {"event": 0, "telemetry": 0}
    sizes = [len(bytes(m.payload)) for m in got.messages]
    assert max(sizes) <= limit
    assert len(got.on("/telemetry")) >= 2  # 200 readings of ~110 bytes do not fit in one
    (sent,) = got.on("/events")
    assert sent["truncated"] is True
    assert (sent["seq"], sent["message_id"]) == (event, f"{outbox.epoch}:{event}-{event}")
    assert (sent["kind"], sent["device"], sent["value"]) == ("alarm-raised", "efm-1", 312.0)
    assert "trace" not in sent
    validate_message(sent)
    assert uplink.truncated == 1
    assert any(f"event seq {event}" in r.getMessage() for r in caplog.records)


async def test_a_broker_that_stops_answering_fills_the_window_then_the_next_one_gets_it_all(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shorter PUBACK wait than the field's 10 s keeps the test short; the logic is the same.
    monkeypatch.setattr(edge.uplink.service, "_OPERATION_TIMEOUT", 2.0)
    stuck = mosquitto_factory()
    spare = mosquitto_factory()
    uplink = make_uplink(outbox, stuck.url, spare.url, batch_size=5, inflight=3, keepalive="30s")
    submitted: list[int] = []

    async def produce(count: int) -> None:
        for i in range(count):
            submitted.append(await outbox.append("telemetry", body(float(i))))
            await asyncio.sleep(0.01)

    async with collect(spare, ALL) as got, running(uplink):
        # Its own status echoed: the session is set up and draining (not merely connected).
        await wait_until(lambda: uplink.state == "online" and uplink.heard_back)
        with frozen(stuck):
            producer = asyncio.create_task(produce(150))
            await wait_until(lambda: uplink.inflight == 3, within=3)
            published = uplink.tally.published
            depth = await outbox.depth()
            most, published_meanwhile = 0, published
            while uplink.broker == stuck.url:
                if uplink.state == "online":  # read in one step with the counters below
                    most = max(most, uplink.inflight)
                    published_meanwhile = uplink.tally.published
                await asyncio.sleep(0.01)
            # Never more than the window in memory, nothing acknowledged, nothing deleted.
            assert most == 3
            assert published_meanwhile == published
            assert (await outbox.depth())["telemetry"] >= depth["telemetry"]
            await wait_until(lambda: uplink.broker == spare.url, within=10)
            await producer
            await got.wait_for(lambda c: set(carried(c)) == set(submitted), within=10)
        await wait_until(lambda: uplink.tally.acked >= len(submitted))
    assert uplink.tally.attempts >= 2
    assert uplink.tally.resent >= 1
    assert await outbox.depth() == {"event": 0, "telemetry": 0}


async def test_reconnects_as_soon_as_the_broker_is_back_not_after_the_backoff(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory()
    uplink = make_uplink(outbox, broker.url, reconnect_max="10s")
    long_wait = [0.0]

    def waiting_long() -> bool:
        for record in caplog.records:
            text = record.getMessage()
            if "next attempt" in text and float(text.rsplit(" in ", 1)[1].split()[0]) >= 3.0:
                long_wait[0] = time.monotonic()
                return True
        return False

    with caplog.at_level(logging.WARNING, logger="edge.uplink"):
        async with running(uplink):
            await wait_until(lambda: uplink.state == "online")
            await broker.stop_async()
            # The backoff doubles from 0.5 s; wait until the uplink means to wait 3 s or more.
            await wait_until(waiting_long, within=15)
            attempts = uplink.tally.attempts
            await broker.start_async()
            await wait_until(lambda: uplink.state == "online", within=2.5)
            back_after = time.monotonic() - long_wait[0]
            assert uplink.tally.attempts == attempts + 1
    # Waiting out the backoff would take 3 s or more from the log line; a look at the port
    # every half second finds the broker back within about that.
    assert back_after < 2.8


async def test_a_refused_login_keeps_the_full_backoff(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory(users={"gw": "right"})
    uplink = make_uplink(outbox, broker.url, username="gw", password="wrong")
    with caplog.at_level(logging.WARNING, logger="edge.uplink"):
        async with running(uplink):
            await asyncio.sleep(2.5)
            # 0.25-0.5 s, 0.5-1 s, then at the 1 s cap: 3 to 5 attempts, not a probe-fast loop.
            assert 2 <= uplink.tally.attempts <= 5, uplink.tally.attempts
            assert uplink.state != "online"
    messages = [r.getMessage() for r in caplog.records if r.name == "edge.uplink"]
    assert messages
    assert all("not authori" in m.lower() for m in messages), messages


async def test_a_broker_dropping_large_messages_silently_is_learnt_and_nothing_is_lost(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # MQTT 3.1.1 with max_message_bytes left above the broker's limit: Mosquitto drops the
    # connection at each oversized message, which resent unchanged would fail for ever.
    broker = mosquitto_factory(extra_config=["max_packet_size 4096"])
    rows = await store(outbox, [body(float(i)) for i in range(300)])
    # Plain JSON: 100 readings deflated would fit the broker's limit this test is about.
    uplink = make_uplink(
        outbox, broker.url, batch_size=100, reconnect_max="500ms", protocol="3.1.1",
        compression="none",
    )  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="edge.uplink"):
        async with collect(broker, ALL) as got, running(uplink):
            await got.wait_for(lambda c: set(carried(c)) == set(rows), within=20)
            await wait_until(lambda: uplink.tally.acked == 300)
    assert await outbox.depth() == {"event": 0, "telemetry": 0}
    # Three drops per halving of the limit (11 KiB -> 5.5 -> 2.7), then it all goes.
    assert 4 <= uplink.tally.attempts <= 12, uplink.tally.attempts
    assert max(len(bytes(m.payload)) for m in got.messages) <= 4096
    assert any("seems to refuse messages this large" in r.getMessage() for r in caplog.records)
