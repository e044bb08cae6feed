"""What the uplink does when the broker will not take its messages (``--only refusal``), against
a real local Mosquitto:

- ``uplink_refused_said_ms``: from ``Uplink.run()`` with 1,000 readings and 10 alarm events
  waiting, over MQTT 5, to the uplink's state ``refused``, against a broker whose ACL denies
  every topic of the gateway (median of 5 runs);
- ``uplink_refused_rows_kept``: rows still in the outbox after 20 s of refusals (of 1,010);
- ``uplink_refused_publishes_per_s``: PUBLISHes the broker refused per second over those 20 s
  (the window of 10 messages, each again after a pause growing to ``reconnect_max``, 10 s);
- ``uplink_dropping_broker_sessions_per_s``: MQTT sessions per second over 20 s with a broker
  (a proxy in front of Mosquitto) that hangs up on every PUBLISH, rows kept
  (``uplink_dropping_broker_rows_kept``).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from buffer import Outbox
from edge import contract
from edge.config.model import Uplink as UplinkConfig
from edge.uplink import Uplink
from tests.fixtures.broker import Mosquitto, find_mosquitto, free_port
from tests.fixtures.mqtt_proxy import dropping_proxy

GATEWAY = "gw-bench-0001"
USER, PASSWORD = "gw-bench", "bench-password"
READINGS, EVENTS = 1000, 10
WATCH_S = 20.0


@asynccontextmanager
async def _rig(*, deny_all: bool) -> AsyncIterator[tuple[Mosquitto, Outbox]]:
    """A Mosquitto (denying the gateway's user every topic when ``deny_all``) and an outbox
    holding READINGS readings and EVENTS events."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        broker = Mosquitto(
            find_mosquitto(),
            work / "mosquitto",
            free_port(),
            users={USER: PASSWORD},
            acl=[f"user {USER}"] if deny_all else None,
        )
        await asyncio.to_thread(broker.start)
        try:
            async with await Outbox.open(work / "outbox.db", commit_interval=0.05) as outbox:
                for i in range(EVENTS):
                    outbox.submit("event", contract.event_body("alarm-raised", time.time(), n=i))
                for i in range(READINGS):
                    outbox.submit(
                        "telemetry",
                        {
                            "device": "efm-1",
                            "point": "residual_current",
                            "value": float(i),
                            "unit": "mA",
                            "ts": time.time(),
                        },
                    )
                await outbox.flush()
                yield broker, outbox
        finally:
            await asyncio.to_thread(broker.stop)


def _uplink(outbox: Outbox, url: str) -> Uplink:
    config = UplinkConfig.model_validate(
        {"brokers": [url], "username": USER, "password": PASSWORD, "protocol": "5"}
    )
    return Uplink(config, GATEWAY, outbox, version="bench", boot_time=time.time())


async def _until(condition: object, within: float) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s")
        await asyncio.sleep(0.001)


async def refused(watch: bool, seconds: float = WATCH_S) -> tuple[float, int, float]:
    """Time to ``refused`` (ms); with ``watch``, the rows kept and refusals per second over
    ``seconds``."""
    async with _rig(deny_all=True) as (broker, outbox):
        uplink = _uplink(outbox, broker.url)
        started = time.monotonic()
        task = asyncio.create_task(uplink.run())
        try:
            await _until(lambda: uplink.state == "refused", 30)
            said = (time.monotonic() - started) * 1000
            kept, rate = 0, 0.0
            if watch:
                counted = uplink.refusals.count
                await asyncio.sleep(seconds)
                rate = (uplink.refusals.count - counted) / seconds
                kept = sum((await outbox.depth()).values())
        finally:
            await uplink.stop()
            await task
        return said, kept, rate


async def dropping_broker(seconds: float = WATCH_S) -> tuple[float, int]:
    async with (
        _rig(deny_all=False) as (broker, outbox),
        dropping_proxy(broker.host, broker.port) as proxy,
    ):
        uplink = _uplink(outbox, proxy.url)
        task = asyncio.create_task(uplink.run())
        try:
            await asyncio.sleep(seconds)
            sessions = proxy.sessions / seconds
            kept = sum((await outbox.depth()).values())
        finally:
            await uplink.stop()
            await task
        return sessions, kept


KEYS = (
    "uplink_refused_said_ms",
    "uplink_refused_rows_kept",
    "uplink_refused_publishes_per_s",
    "uplink_dropping_broker_sessions_per_s",
    "uplink_dropping_broker_rows_kept",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"trials": 1, "seconds": 1.0}


def run(trials: int = 5, seconds: float = WATCH_S) -> dict[str, float]:
    """Every figure of this suite: ``trials`` times to ``refused``, ``seconds`` of watching."""
    said = [asyncio.run(refused(watch=False))[0] for _ in range(trials - 1)]
    first, kept, rate = asyncio.run(refused(watch=True, seconds=seconds))
    sessions, kept_dropping = asyncio.run(dropping_broker(seconds))
    figures = {
        "uplink_refused_said_ms": round(statistics.median([*said, first]), 1),
        "uplink_refused_rows_kept": float(kept),
        "uplink_refused_publishes_per_s": round(rate, 2),
        "uplink_dropping_broker_sessions_per_s": round(sessions, 2),
        "uplink_dropping_broker_rows_kept": float(kept_dropping),
    }
    for key, value in figures.items():
        print(f"{key} {value}")
    return figures
