"""The reference receiver as the platform: a real Mosquitto, a real uplink and outbox."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from buffer import Outbox
from drivers.types import Reading
from edge import contract
from edge.config.loader import load_site
from edge.config.model import Uplink as UplinkConfig
from edge.uplink import Uplink
from hil.receiver import Receiver, receive
from tests.fixtures.broker import MosquittoFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-rx"
PREFIX = "district/v1"


def reading(value: float) -> dict[str, object]:
    now = time.time()
    return contract.reading_body(
        Reading("efm-1", "residual_current", value, "mA", now, time.monotonic())
    )


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_broker_restarted_mid_stream_loses_nothing_and_duplicates_share_ids(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    broker = mosquitto_factory(persistence=True)
    config = UplinkConfig.model_validate(
        {"brokers": [broker.url], "batch_interval": "20ms", "batch_size": 20,
         "reconnect_max": "500ms"}
    )  # fmt: skip
    uplink = Uplink(config, GW, outbox, version="t", boot_time=time.time())
    receiver = Receiver(tmp_path / "rx.sqlite")
    stop, ready = asyncio.Event(), asyncio.Event()
    rx = asyncio.create_task(
        receive(receiver, broker.url, PREFIX, stop=stop, client_id="platform", ready=ready)
    )
    link = asyncio.create_task(uplink.run())
    stored: list[int] = []
    try:
        await asyncio.wait_for(ready.wait(), 10)
        for i in range(400):
            stored.append(await outbox.append("telemetry", reading(float(i))))
            if i == 150:
                broker.stop()
            if i == 250:
                stored.append(
                    await outbox.append(
                        "event", contract.event_body("alarm-raised", time.time(), device="efm-1")
                    )
                )
                broker.start()
            await asyncio.sleep(0.005)
        await until(lambda: not (set(stored) - received_seqs(receiver)), 20, "every seq")
    finally:
        await uplink.stop()
        await asyncio.wait_for(link, 5)
        stop.set()
        await asyncio.wait_for(rx, 5)

    summary = receiver.summary()
    g = summary.gateways[GW]
    assert g.gaps == {outbox.epoch: []}
    assert g.epoch_resets == 0
    assert summary.rejected == 0
    # A message sent twice keeps its id: no seq is in two kept messages.
    db = sqlite3.connect(tmp_path / "rx.sqlite")
    carried = [
        r["seq"]
        for (payload,) in db.execute("SELECT payload FROM messages WHERE kind = 'telemetry'")
        for r in receiver.readings_of(json.loads(payload))
    ]
    assert len(carried) == len(set(carried))
    assert set(carried) | {e for e in stored if e not in carried} == set(stored)
    db.close()
    receiver.close()


async def test_compact_deflated_telemetry_through_the_broker_with_retained_metadata(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory()
    site = load_site(ROOT / "config" / "example-site.yaml")
    aliases = contract.Aliases.of_site(site)
    epoch = "e-compact"
    gateway = aiomqtt.Client("127.0.0.1", broker.port, identifier="gateway")
    async with gateway:
        # Retained, as the uplink publishes it at connect: a receiver that subscribes later
        # gets it first.
        await gateway.publish(
            contract.metadata_topic(PREFIX, GW),
            contract.metadata_message(GW, epoch, site, aliases, clock_synced=True),
            qos=1,
            retain=True,
        )
        receiver = Receiver(tmp_path / "rx.sqlite")
        stop, ready = asyncio.Event(), asyncio.Event()
        rx = asyncio.create_task(receive(receiver, broker.url, PREFIX, stop=stop, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            seq = 0
            sent: list[Any] = []
            for second in range(5):
                rows = []
                for device, point, unit in aliases:
                    seq += 1
                    body = {"device": device, "point": point, "value": 20.0 + second + seq / 10,
                            "unit": unit, "ts": 1_714_550_400.0 + second}  # fmt: skip
                    rows.append(_Row(seq, body))
                sent += [(r.seq, r.body["device"], r.body["point"]) for r in rows]
                payload = contract.telemetry_message(
                    GW, epoch, rows, clock_synced=True, historical=False, aliases=aliases
                )
                await gateway.publish(
                    contract.telemetry_topic(PREFIX, GW), contract.compress(payload), qos=1
                )
            health = {"uptime_s": 5.0, "buffer_rows": 0, "oldest_unsent_age_s": None,
                      "bus_errors": {"lan": 0}}  # fmt: skip
            await gateway.publish(
                contract.health_topic(PREFIX, GW),
                contract.compress(contract.health_message(GW, epoch, health, clock_synced=True)),
                qos=1,
            )
            await until(lambda: receiver.summary().health == 1, 10, "the health message")
        finally:
            stop.set()
            await asyncio.wait_for(rx, 5)
    summary = receiver.summary()
    stored = receiver._db.execute("SELECT seq, device, point FROM readings ORDER BY seq").fetchall()
    receiver.close()
    assert (summary.rejected, summary.undecoded, summary.metadata) == (0, 0, 1)
    assert stored == sent
    assert summary.gateways[GW].gaps == {epoch: []}


class _Row:
    def __init__(self, seq: int, body: dict[str, Any]) -> None:
        self.seq = seq
        self.body = body


def received_seqs(receiver: Receiver) -> set[int]:
    db = receiver._db
    return {int(r[0]) for r in db.execute("SELECT seq FROM readings UNION SELECT seq FROM events")}


async def test_the_command_prints_a_summary(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, outbox: Outbox
) -> None:
    broker = mosquitto_factory()
    db = tmp_path / "rx.sqlite"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.receiver", "--broker", broker.url, "--prefix", PREFIX,
        "--db", str(db), "--seconds", "4", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(1.5)  # let it subscribe (a new receiver has no session to catch up)
    config = UplinkConfig.model_validate({"brokers": [broker.url], "batch_interval": "20ms"})
    uplink = Uplink(config, GW, outbox, version="t", boot_time=time.time())
    seqs = [await outbox.append("telemetry", reading(float(i))) for i in range(5)]
    link = asyncio.create_task(uplink.run())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await uplink.stop()
        await asyncio.wait_for(link, 5)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert summary["rejected"] == 0
    assert summary["gateways"][GW]["readings"] == len(seqs)
    assert summary["gateways"][GW]["gaps"] == {outbox.epoch: []}
    assert db.is_file()


def test_a_bad_broker_url_is_refused_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil.receiver", "--broker", "http://x", "--db", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "not a broker URL" in result.stderr
