"""The uplink against a real Mosquitto and a real SQLite outbox."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from buffer import Outbox
from drivers.types import Reading
from edge import contract
from edge.config.model import Uplink as UplinkConfig
from edge.schemas import validate_message
from edge.uplink import Uplink
from tests.fixtures.broker import Collector, Mosquitto, MosquittoFactory, collect
from tests.integration.uplink_parts import ALL, GATEWAY, PREFIX, make_uplink, running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def reading(device: str, value: float, point: str = "residual_current") -> Reading:
    now = time.time()
    return Reading(device, point, value, "mA", now, time.monotonic())


def carried_seqs(collector: Collector) -> list[int]:
    """Every outbox seq that arrived, duplicates included, in arrival order."""
    seqs: list[int] = []
    for message in collector.on("/events"):
        seqs.append(message["seq"])
    for message in collector.on("/telemetry"):
        seqs.extend(r["seq"] for r in message["readings"])
    return seqs


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


async def test_rows_arrive_with_their_fields_and_are_deleted_after_puback(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    t0 = time.time()
    event_seqs = [
        await outbox.append(
            "event",
            contract.event_body("alarm-raised", t0, device="efm-1", rule="rc-limit", value=312.0),
        ),
        await outbox.append("event", contract.event_body("device-offline", t0, device="efm-2")),
    ]
    telemetry_seqs = [
        await outbox.append("telemetry", contract.reading_body(reading("efm-1", 10.0 + i)))
        for i in range(5)
    ]
    uplink = make_uplink(outbox, mosquitto.url, batch_size=3)

    async with collect(mosquitto, ALL) as got, running(uplink):
        await got.wait_for(lambda c: len(set(carried_seqs(c))) == 7)
        await wait_until(lambda: uplink.tally.acked == 7)
        assert await outbox.depth() == {"event": 0, "telemetry": 0}
        assert uplink.state == "online"
        assert uplink.tally.published == 4  # 2 events + telemetry batches of 3 and 2

    events = got.on("/events")
    assert [e["seq"] for e in events] == event_seqs
    raised = events[0]
    assert raised["schema"] == "edge.event/1"
    assert raised["gateway_id"] == GATEWAY
    assert raised["epoch"] == outbox.epoch
    assert raised["message_id"] == f"{outbox.epoch}:{event_seqs[0]}-{event_seqs[0]}"
    assert raised["kind"] == "alarm-raised"
    assert (raised["device"], raised["rule"], raised["value"]) == ("efm-1", "rc-limit", 312.0)
    assert ISO_Z.match(raised["ts"])
    assert ISO_Z.match(raised["sent_at"])
    assert events[1]["kind"] == "device-offline"

    batches = got.on("/telemetry")
    assert [(b["seq_first"], b["seq_last"]) for b in batches] == [
        (telemetry_seqs[0], telemetry_seqs[2]),
        (telemetry_seqs[3], telemetry_seqs[4]),
    ]
    first = batches[0]
    assert first["schema"] == "edge.telemetry/1"
    assert first["message_id"] == f"{outbox.epoch}:{telemetry_seqs[0]}-{telemetry_seqs[2]}"
    assert first["readings"][0] == {
        "seq": telemetry_seqs[0],
        "device": "efm-1",
        "point": "residual_current",
        "value": 10.0,
        "unit": "mA",
        "ts": first["readings"][0]["ts"],
    }
    assert ISO_Z.match(first["readings"][0]["ts"])
    assert [r["value"] for b in batches for r in b["readings"]] == [10.0, 11.0, 12.0, 13.0, 14.0]

    # Topics are {prefix}/{gateway}/{kind}.
    topics = {m.topic.value for m in got.messages}
    assert topics == {
        f"{PREFIX}/{GATEWAY}/status",
        f"{PREFIX}/{GATEWAY}/events",
        f"{PREFIX}/{GATEWAY}/telemetry",
    }


async def test_events_overtake_telemetry_queued_earlier(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    for i in range(20):
        await outbox.append("telemetry", contract.reading_body(reading("efm-1", float(i))))
    event_seq = await outbox.append(
        "event", contract.event_body("alarm-raised", time.time(), device="efm-1")
    )
    # A full first batch goes at once; a long fill window keeps the live batch below waiting.
    uplink = make_uplink(outbox, mosquitto.url, batch_size=20, batch_interval="1500ms")

    async with collect(mosquitto, ALL) as got, running(uplink):
        await got.wait_for(lambda c: len(set(carried_seqs(c))) == 21)
        data = [m for m in got.messages if not m.topic.value.endswith("/status")]
        assert data[0].topic.value.endswith("/events")
        assert got.on("/events")[0]["seq"] == event_seq

        # Now the outbox is empty; new telemetry waits up to 2 s to fill a batch, and an event
        # committed meanwhile goes out at once rather than after it.
        await outbox.append("telemetry", contract.reading_body(reading("efm-1", 99.0)))
        await asyncio.sleep(0.1)
        began = time.monotonic()
        late_event = await outbox.append(
            "event", contract.event_body("alarm-cleared", time.time(), device="efm-1")
        )
        await got.wait_for(lambda c: late_event in carried_seqs(c), within=1.5)
        assert time.monotonic() - began < 0.5
        assert not any(r["value"] == 99.0 for b in got.on("/telemetry") for r in b["readings"])
        # ... and the waiting batch still goes out when its window closes.
        await got.wait_for(
            lambda c: any(r["value"] == 99.0 for b in c.on("/telemetry") for r in b["readings"]),
            within=3,
        )


async def test_status_is_retained_online_and_offline_after_a_clean_stop(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    uplink = make_uplink(outbox, mosquitto.url)
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: uplink.state == "online")
        # A subscriber arriving later gets the retained status.
        async with collect(mosquitto, contract.fleet_filter(PREFIX, "status")) as late:
            await late.wait_for(lambda c: len(c.on("/status")) >= 1)
            status = late.on("/status")[0]
            assert status["state"] == "online"
            assert status["schema"] == "edge.status/1"
            assert status["gateway_id"] == GATEWAY
            assert status["version"] == "0.1.0-test"
            assert ISO_Z.match(status["boot_time"])
            assert late.messages[0].retain

            began = time.monotonic()
            await uplink.stop()
            await asyncio.wait_for(task, 1)
            assert time.monotonic() - began < 2.0
            assert uplink.state == "stopped"
            await late.wait_for(lambda c: c.on("/status")[-1]["state"] == "offline")
    finally:
        task.cancel()

    async with collect(mosquitto, contract.fleet_filter(PREFIX, "status")) as later:
        await later.wait_for(lambda c: len(c.on("/status")) >= 1)
        assert later.on("/status")[-1]["state"] == "offline"


async def test_cancelling_run_also_says_offline(mosquitto: Mosquitto, outbox: Outbox) -> None:
    uplink = make_uplink(outbox, mosquitto.url)
    async with collect(mosquitto, contract.fleet_filter(PREFIX, "status")) as got:
        task = asyncio.create_task(uplink.run())
        await got.wait_for(lambda c: [s["state"] for s in c.on("/status")] == ["online"])
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - began < 2.0
        await got.wait_for(lambda c: c.on("/status")[-1]["state"] == "offline")


_GATEWAY_PROCESS = """
import asyncio, sys, time
from buffer import Outbox
from edge.config.model import Uplink as UplinkConfig
from edge.uplink import Uplink

async def main() -> None:
    async with await Outbox.open(sys.argv[2]) as outbox:
        config = UplinkConfig.model_validate({"brokers": [sys.argv[1]], "keepalive": "5s"})
        await Uplink(config, "gw-killed", outbox, version="x", boot_time=time.time()).run()

asyncio.run(main())
"""


async def test_will_says_offline_when_the_gateway_dies(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with collect(mosquitto, contract.status_topic(PREFIX, "gw-killed")) as got:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _GATEWAY_PROCESS,
            mosquitto.url,
            str(tmp_path / "k.db"),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        try:
            await got.wait_for(lambda c: [s["state"] for s in c.on("/status")] == ["online"], 15)
            proc.send_signal(signal.SIGKILL)  # no goodbye: only the broker's will can tell
            await asyncio.wait_for(proc.wait(), 5)
            await got.wait_for(lambda c: c.on("/status")[-1]["state"] == "offline", 5)
        finally:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 5)


async def test_broker_down_at_start_keeps_rows_retries_then_delivers(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory(start=True, persistence=True)
    # Register the platform's persistent session, then take the broker down: what the
    # uplink publishes after the broker comes back waits in the session for the subscriber.
    async with collect(broker, ALL, session="platform"):
        pass
    await broker.stop_async()

    seqs = [
        await outbox.append("event", contract.event_body("gateway-started", time.time())),
        *[
            await outbox.append("telemetry", contract.reading_body(reading("efm-1", float(i))))
            for i in range(4)
        ],
    ]
    uplink = make_uplink(outbox, broker.url)
    with caplog.at_level(logging.WARNING, logger="edge.uplink"):
        async with running(uplink):
            await asyncio.sleep(2.0)
            # Retries, but with backoff (0.25-0.5 s, then 0.5-1 s, capped at 1 s): no tight loop.
            assert 2 <= uplink.tally.attempts <= 6, uplink.tally.attempts
            waiting: str = uplink.state
            assert waiting in ("offline", "connecting")
            assert await outbox.depth() == {"event": 1, "telemetry": 4}
            warnings = [r for r in caplog.records if r.name == "edge.uplink"]
            assert len(warnings) >= 2
            assert all(broker.url in r.getMessage() for r in warnings)
            assert all("refused" in r.getMessage().lower() for r in warnings)
            assert all(r.exc_info is None for r in warnings)  # one line each, no traceback

            await broker.start_async()
            async with collect(broker, ALL, session="platform") as got:
                await got.wait_for(lambda c: set(carried_seqs(c)) == set(seqs), within=5)
                await wait_until(lambda: uplink.tally.acked == 5)
                assert uplink.state == "online"
    assert await outbox.depth() == {"event": 0, "telemetry": 0}


async def test_fails_over_to_the_next_broker(
    mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    dead = mosquitto_factory(start=False)
    alive = mosquitto_factory()
    uplink = make_uplink(outbox, dead.url, alive.url)
    async with collect(alive, ALL) as got, running(uplink):
        seq = await outbox.append("event", contract.event_body("gateway-started", time.time()))
        await got.wait_for(lambda c: seq in carried_seqs(c), within=5)
        assert uplink.broker == alive.url
        assert uplink.tally.attempts == 2


async def test_broker_restart_mid_stream_loses_nothing(
    mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    broker = mosquitto_factory(persistence=True)
    uplink = make_uplink(outbox, broker.url, batch_size=20)
    submitted: list[int] = []

    async def produce(count: int) -> None:
        for i in range(count):
            if i % 25 == 0:
                body = contract.event_body("alarm-raised", time.time(), device="efm-1", n=i)
                submitted.append(await outbox.append("event", body))
            else:
                body = contract.reading_body(reading("efm-1", float(i)))
                submitted.append(await outbox.append("telemetry", body))
            await asyncio.sleep(0.002)

    async with collect(broker, ALL, session="platform") as got, running(uplink):
        producer = asyncio.create_task(produce(200))
        await got.wait_for(lambda c: len(carried_seqs(c)) >= 40, within=5)
        await broker.stop_async()  # mid-stream; the producer keeps going into the outbox
        await asyncio.sleep(0.5)
        assert uplink.state != "online"
        await broker.start_async()  # same port
        await producer
        await got.wait_for(lambda c: set(carried_seqs(c)) >= set(submitted), within=10)
        await wait_until(lambda: uplink.tally.acked >= len(submitted), within=5)

    assert set(carried_seqs(got)) == set(submitted)
    assert await outbox.depth() == {"event": 0, "telemetry": 0}
    # A row sent twice (PUBACK lost in the outage) is recognisably the same message.
    ids: dict[int, set[str]] = {}
    for message in got.on("/events"):
        ids.setdefault(message["seq"], set()).add(message["message_id"])
    assert all(len(v) == 1 for v in ids.values())
    assert uplink.tally.attempts >= 2


async def test_backlog_is_marked_historical_live_data_not_and_every_message_validates(
    mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    broker = mosquitto_factory(start=False)
    synced = [False]
    config = UplinkConfig.model_validate(
        {"brokers": [broker.url], "batch_interval": "50ms", "reconnect_max": "500ms"}
    )
    uplink = Uplink(
        config,
        GATEWAY,
        outbox,
        version="0.1.0-test",
        boot_time=time.time(),
        config_hash="0123456789abcdef",
        clock_synced=lambda: synced[0],
    )
    task = asyncio.create_task(uplink.run())
    try:
        # Stored while the broker is down: backfill once it is back.
        old_event = await outbox.append(
            "event", contract.event_body("device-offline", time.time(), device="efm-2")
        )
        old = [
            await outbox.append("telemetry", contract.reading_body(reading("efm-1", float(i))))
            for i in range(3)
        ]
        await asyncio.sleep(1.5)
        synced[0] = True
        await broker.start_async()
        async with collect(broker, ALL) as got:
            await got.wait_for(lambda c: {old_event, *old} <= set(carried_seqs(c)), within=10)
            live = await outbox.append("telemetry", contract.reading_body(reading("efm-1", 9.0)))
            await got.wait_for(lambda c: live in carried_seqs(c))
            await uplink.stop()
            await asyncio.wait_for(task, 5)
            await got.wait_for(lambda c: c.on("/status")[-1]["state"] == "offline")
    finally:
        await uplink.stop()
        await asyncio.wait_for(task, 5)

    for message in got.messages:
        validate_message(contract.decode_payload(bytes(message.payload)))
    (event,) = got.on("/events")
    assert event["historical"] is True
    flags = {r["seq"]: b["historical"] for b in got.on("/telemetry") for r in b["readings"]}
    assert all(flags[seq] is True for seq in old)
    assert flags[live] is False
    assert all(m["clock_synced"] is True for m in got.on("/telemetry") + got.on("/events"))
    assert {s["config_hash"] for s in got.on("/status")} == {"0123456789abcdef"}


async def test_clock_not_synchronised_is_flagged_on_every_message(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    config = UplinkConfig.model_validate({"brokers": [mosquitto.url], "batch_interval": "50ms"})
    uplink = Uplink(
        config, GATEWAY, outbox, version="x", boot_time=time.time(), clock_synced=lambda: False
    )
    seq = await outbox.append("telemetry", contract.reading_body(reading("efm-1", 1.0)))
    async with collect(mosquitto, ALL) as got, running(uplink):
        await got.wait_for(lambda c: seq in carried_seqs(c))
    assert [m["clock_synced"] for m in got.on("/status") + got.on("/telemetry")] == [False] * len(
        got.on("/status") + got.on("/telemetry")
    )
    assert got.on("/telemetry")[0]["historical"] is False
