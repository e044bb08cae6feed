"""Uplink figures against a real local Mosquitto (``--only uplink``).

- ``uplink_drain_readings_per_s``: readings acknowledged per second while the uplink drains a
  backlog (1 million readings by default) with live readings still arriving (1,000/s);
- ``uplink_bytes_per_reading_plain``: bytes on the wire per reading, PUBLISH packets as MQTT
  3.1.1 frames them (fixed header, topic, packet id, payload) divided by the readings carried,
  for 50 devices x 20 points every second with realistic values, at the default batch size;
- ``uplink_alarm_after_outage_s``: from the broker's return after an outage (with a backlog
  waiting) until a subscriber has the alarm raised during the outage, at the default
  reconnect cap (``uplink_backoff_cap_s``; the wait is drawn between half and all of it).

No compressed figure: the uplink does not compress yet.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from buffer import Outbox
from drivers.types import Reading
from edge import contract
from edge.config.model import Uplink as UplinkConfig
from edge.uplink import Uplink
from tests.fixtures.broker import Mosquitto, find_mosquitto, free_port

GATEWAY = "gw-bench-0001"
PREFIX = "district/v1"


def _site_readings(second: int, rng: random.Random) -> list[Reading]:
    """One second of 50 devices x 20 points, values as an electrical fire monitor gives them."""
    now = 1_700_000_000.0 + second
    out = []
    for d in range(50):
        for p in range(20):
            if p < 4:
                value, unit = round(rng.uniform(20, 60), 1), "mA"  # residual current
            elif p < 8:
                value, unit = round(rng.uniform(25, 45), 1), "°C"  # cable temperatures
            elif p < 14:
                value, unit = round(rng.uniform(215, 235), 1), "V"
            else:
                value, unit = round(rng.uniform(0, 32), 2), "A"
            out.append(Reading(f"efm-{d:03d}", f"point_{p:02d}", value, unit, now, now))
    return out


def bytes_per_reading_plain(seconds: int = 10) -> float:
    """Wire bytes per reading for the site above, batches of the default size."""
    rng = random.Random(1)
    batch_size = UplinkConfig.model_validate({"brokers": ["mqtt://x:1"]}).batch_size
    topic = contract.telemetry_topic(PREFIX, GATEWAY).encode()
    total = readings = 0
    seq = 1
    for second in range(seconds):
        rows = []
        for reading in _site_readings(second, rng):
            rows.append(_Row(seq, contract.reading_body(reading)))
            seq += 1
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            payload = contract.telemetry_message(
                GATEWAY, "0b6c1f7e-3c1a-4d55-9a59-2f4f1c8e7d10", chunk,
                clock_synced=True, historical=False,
            )  # fmt: skip
            total += _publish_size(len(topic), len(payload))
            readings += len(chunk)
    return total / readings


class _Row:
    def __init__(self, seq: int, body: dict[str, object]) -> None:
        self.seq = seq
        self.body = body


def _publish_size(topic_len: int, payload_len: int) -> int:
    remaining = 2 + topic_len + 2 + payload_len  # topic length, topic, packet id, payload
    header = 1
    length = remaining
    while True:
        header += 1
        length //= 128
        if length == 0:
            break
    return header + remaining


async def drain(backlog: int, live_per_s: float = 1000.0) -> float:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        broker = Mosquitto(find_mosquitto(), work / "mosquitto", free_port())
        broker.start()
        try:
            async with await Outbox.open(work / "outbox.db", commit_interval=0.05) as outbox:
                rng = random.Random(2)
                second = 0
                while outbox.pending + sum((await outbox.depth()).values()) < backlog:
                    for reading in _site_readings(second, rng):
                        outbox.submit("telemetry", contract.reading_body(reading))
                    second += 1
                    if second % 50 == 0:
                        await outbox.flush()
                await outbox.flush()
                stored = sum((await outbox.depth()).values())
                config = UplinkConfig.model_validate(
                    {"brokers": [broker.url], "batch_size": 1000, "batch_interval": "100ms"}
                )
                uplink = Uplink(config, GATEWAY, outbox, version="bench", boot_time=time.time())
                stop_live = asyncio.Event()

                async def live() -> int:
                    sent = 0
                    while not stop_live.is_set():
                        for reading in _site_readings(second + sent, rng)[: int(live_per_s / 10)]:
                            outbox.submit("telemetry", contract.reading_body(reading))
                            sent += 1
                        await asyncio.sleep(0.1)
                    return sent

                began = time.perf_counter()
                task = asyncio.create_task(uplink.run())
                feeder = asyncio.create_task(live())
                # Polling a counter: the uplink has no event for "this many acked".
                while uplink.acked < stored:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - began
                stop_live.set()
                await feeder
                await uplink.stop()
                await task
                return uplink.acked / elapsed
        finally:
            broker.stop()


async def alarm_after_outage(outage_s: float = 15.0, trials: int = 3) -> tuple[float, float]:
    """Median seconds from the broker's return to the alarm at a subscriber; the cap used."""
    results = []
    cap = UplinkConfig.model_validate({"brokers": ["mqtt://x:1"]}).reconnect_max
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            broker = Mosquitto(find_mosquitto(), work / "mosquitto", free_port())
            broker.start()
            async with await Outbox.open(work / "outbox.db", commit_interval=0.05) as outbox:
                config = UplinkConfig.model_validate({"brokers": [broker.url]})
                uplink = Uplink(config, GATEWAY, outbox, version="bench", boot_time=time.time())
                task = asyncio.create_task(uplink.run())
                while uplink.state != "online":  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                broker.stop()
                rng = random.Random(3)
                for second in range(int(outage_s)):
                    for reading in _site_readings(second, rng):
                        outbox.submit("telemetry", contract.reading_body(reading))
                    if second == int(outage_s) // 2:
                        outbox.submit(
                            "event",
                            contract.event_body("alarm-raised", time.time(), device="efm-007"),
                        )
                    await asyncio.sleep(1.0)
                broker.start()
                back = time.perf_counter()
                # Subscribed within milliseconds of the restart; the uplink's next attempt comes
                # after its backoff wait (at least a quarter second), so nothing is missed.
                async with (
                    asyncio.timeout(120),
                    aiomqtt.Client(broker.host, broker.port) as client,
                ):
                    await client.subscribe(f"{PREFIX}/+/events", qos=1)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes) and b"alarm-raised" in payload:
                            results.append(time.perf_counter() - back)
                            break
                await uplink.stop()
                await task
            broker.stop()
    return statistics.median(results), cap


def run(backlog: int = 1_000_000) -> dict[str, float]:
    plain = bytes_per_reading_plain()
    rate = asyncio.run(drain(backlog))
    alarm, cap = asyncio.run(alarm_after_outage())
    return {
        "uplink_drain_readings_per_s": round(rate),
        "uplink_bytes_per_reading_plain": round(plain, 1),
        "uplink_alarm_after_outage_s": round(alarm, 2),
        "uplink_backoff_cap_s": cap,
    }
