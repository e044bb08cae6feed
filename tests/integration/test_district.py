"""The district receiver against a real Mosquitto and a real PostgreSQL server.

PostgreSQL comes from the distribution's packages (``apt-get install postgresql``; .ci/run
installs it); without it these tests skip, saying so. Each test gets its own database on one
server per worker, and its own broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from district.postgres import ThrowawayPostgres, postgres_bin
from tests.fixtures.broker import Mosquitto, MosquittoFactory

psycopg = pytest.importorskip("psycopg", reason="the platform extra (psycopg) is not installed")

from district.fleet import FleetProfile, FleetStats, run_fleet  # noqa: E402
from district.receiver import ReceiverStats, run_receiver  # noqa: E402
from district.store import epochs, gaps  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        postgres_bin() is None,
        reason="PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
#: A district broker keeps every QoS 1 message for a receiver's session (docs/platform.md).
QUEUE_ALL = ("max_queued_messages 0",)
DEADLINE = 60.0
#: Outages and epoch resets often enough to happen in a few seconds of a small fleet.
BUSY = FleetProfile(
    devices=1,
    duplicate_share=0.05,
    outages_per_hour=900,
    outage_seconds=1.0,
    epoch_resets_per_hour=300,
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture
def db(postgres: ThrowawayPostgres) -> str:
    return postgres.new_database(f"t_{uuid.uuid4().hex[:10]}")


@dataclass
class Running:
    stop: threading.Event
    thread: threading.Thread
    result: list[ReceiverStats]

    def finish(self) -> ReceiverStats:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def receivers() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(broker: Mosquitto, db: str, client_id: str, **kw: Any) -> Running:
        stop, result = threading.Event(), []
        thread = threading.Thread(
            target=lambda: result.append(
                run_receiver(broker.url, db, stop=stop, client_id=client_id, **kw)
            ),
            name=f"receiver-{client_id}",
        )
        thread.start()
        running = Running(stop, thread, result)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop.set()
        running.thread.join(timeout=30)


def count(db: str, table: str = "readings") -> int:
    with psycopg.connect(db) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
            return 0
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


def wait_for(what: Callable[[], bool], why: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def wait_schema(db: str) -> None:
    wait_for(lambda: _has(db), "no receiver made the schema")
    time.sleep(0.5)  # the SUBACK follows the connect that came before the schema


def _has(db: str) -> bool:
    with psycopg.connect(db) as conn:
        return bool(conn.execute("SELECT to_regclass('quarantine')").fetchone() != (None,))


def fleet(broker: Mosquitto, gateways: int, seconds: float, **kw: Any) -> FleetStats:
    return run_fleet(broker.url, gateways=gateways, seconds=seconds, profile=BUSY, **kw)


def stored_per_stream(db: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT st.gateway_id, st.epoch, count(*) FROM (SELECT stream_id FROM readings "
            "UNION ALL SELECT stream_id FROM events) x JOIN streams st USING (stream_id) "
            "GROUP BY 1, 2"
        ).fetchall()
    return {(g, e): int(n) for g, e, n in rows}


def test_two_instances_split_the_load_and_store_every_reading_once(
    mosquitto_factory: MosquittoFactory, db: str, receivers: Callable[..., Running]
) -> None:
    broker = mosquitto_factory(extra_config=QUEUE_ALL)
    one, two = receivers(broker, db, "rx-a"), receivers(broker, db, "rx-b")
    wait_schema(db)
    sent = fleet(broker, gateways=12, seconds=4)
    wait_for(lambda: count(db) >= sent.readings, f"stored {count(db)} of {sent.readings}")
    a, b = one.finish(), two.finish()
    # The broker split the shared subscription: each instance stored part, none all.
    assert a.readings > 0
    assert b.readings > 0
    assert a.readings + b.readings == sent.readings == count(db)
    # Every seq each gateway published under each epoch is there exactly once.
    assert stored_per_stream(db) == sent.seqs
    assert sent.duplicates > 0
    assert sent.outages > 0
    with psycopg.connect(db) as conn:
        assert gaps(conn) == {}
        resets = sum(len(e) - 1 for e in epochs(conn).values())
        statuses = conn.execute("SELECT count(*) FROM statuses").fetchone()
        assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    assert resets >= 1
    assert sent.epoch_resets >= resets
    assert statuses == (12,)


def test_a_receiver_killed_with_sigkill_loses_nothing(
    mosquitto_factory: MosquittoFactory, db: str
) -> None:
    broker = mosquitto_factory(extra_config=QUEUE_ALL)
    args = [sys.executable, "-m", "district", "receive", "--broker", broker.url, "--db", db,
            "--client-id", "rx-killed", "--window", "50"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_schema(db)
        stop = threading.Event()
        result: list[FleetStats] = []
        publisher = threading.Thread(target=lambda: result.append(fleet(broker, 10, 3, stop=stop)))
        publisher.start()
        # Killed in mid-stream, rows committed and others in flight.
        wait_for(lambda: count(db) > 200, "the receiver stored nothing")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        publisher.join(timeout=DEADLINE)
    finally:
        first.kill()
        first.wait(timeout=10)
    sent = result[0]
    assert count(db) < sent.readings
    again = subprocess.Popen([*args, "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        wait_for(lambda: count(db) >= sent.readings, f"{count(db)} of {sent.readings} stored")
    finally:
        again.send_signal(signal.SIGTERM)
        out, _ = again.communicate(timeout=30)
    assert stored_per_stream(db) == sent.seqs
    # The restarted instance got again what the killed one had not acknowledged.
    assert json.loads(out.splitlines()[-1])["messages"] > 0


def test_malformed_and_oversized_messages_are_quarantined_and_the_others_flow(
    mosquitto_factory: MosquittoFactory, db: str, receivers: Callable[..., Running]
) -> None:
    broker = mosquitto_factory(extra_config=QUEUE_ALL)
    rx = receivers(broker, db, "rx-q")
    wait_schema(db)
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    bad = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bad-gw", protocol=mqtt.MQTTv5)
    bad.connect(broker.host, broker.port)
    bad.loop_start()
    base = "district/v1/gw-bad"
    valid = {
        "schema": "edge.event/1", "gateway_id": "gw-bad", "epoch": "e1", "message_id": "e1:1-1",
        "seq": 1, "sent_at": "2026-01-01T00:00:00.000Z", "clock_synced": True,
        "historical": False, "ts": "2026-01-01T00:00:00.000Z", "kind": "alarm-raised",
    }  # fmt: skip
    garbage = {
        "not json": b"\xff\xfe garbage",
        "a list": b"[1, 2]",
        "against the schema": json.dumps({**valid, "seq": -3}).encode(),
        "another gateway's topic": json.dumps({**valid, "gateway_id": "gw-other"}).encode(),
        "a deflate bomb": zlib.compress(b"{" + b" " * (20 * 2**20)),
        "oversized": b"{" + b" " * (2 * 2**20) + b"}",
        # Valid by the schema, refused by PostgreSQL (jsonb holds no NUL character).
        "refused by the database": json.dumps({**valid, "note": "a\u0000b"}).encode(),
    }
    for payload in garbage.values():
        bad.publish(f"{base}/events", payload, qos=1).wait_for_publish(10)
    sent = fleet(broker, gateways=4, seconds=2)
    bad.disconnect()
    bad.loop_stop()
    wait_for(lambda: count(db) >= sent.readings, "the good gateways were held up")
    wait_for(lambda: count(db, "quarantine") >= len(garbage), "not all quarantined")
    rx.finish()
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT reason, size, length(payload) FROM quarantine").fetchall()
        assert conn.execute("SELECT count(*) FROM events e JOIN streams USING (stream_id) "
                            "WHERE gateway_id = 'gw-bad'").fetchone() == (0,)  # fmt: skip
    reasons = " | ".join(r[0] for r in rows)
    assert len(rows) == len(garbage), reasons
    for needle in ("neither a JSON object", "over 1048576", "16777216", "gw-other", "database",
                   "seq"):  # fmt: skip
        assert needle.lower() in reasons.lower(), (needle, reasons)
    # The raw payload is kept (cut at 64 KiB), with its full size.
    assert max(r[1] for r in rows) > 2 * 2**20
    assert max(r[2] for r in rows) == 64 * 1024
    assert stored_per_stream(db) == sent.seqs


def test_a_database_away_holds_acks_and_loses_nothing(
    mosquitto_factory: MosquittoFactory,
    postgres: ThrowawayPostgres,
    db: str,
    receivers: Callable[..., Running],
) -> None:
    broker = mosquitto_factory(extra_config=QUEUE_ALL)
    rx = receivers(broker, db, "rx-db", window=20)
    wait_schema(db)
    stop = threading.Event()
    result: list[FleetStats] = []
    publisher = threading.Thread(target=lambda: result.append(fleet(broker, 6, 4, stop=stop)))
    publisher.start()
    wait_for(lambda: count(db) > 0, "nothing stored before the outage")
    postgres.stop()
    try:
        # The fleet goes on publishing for seconds while nothing can be committed.
        time.sleep(2)
    finally:
        postgres.start()
    publisher.join(timeout=DEADLINE)
    sent = result[0]
    wait_for(lambda: count(db) >= sent.readings, f"{count(db)} of {sent.readings} after outage")
    stats = rx.finish()
    assert stats.database_outages >= 1
    assert stored_per_stream(db) == sent.seqs


def test_a_broker_restart_loses_nothing_once_the_receiver_is_back(
    mosquitto_factory: MosquittoFactory, db: str, receivers: Callable[..., Running]
) -> None:
    """What the broker held for the receiver's session survives the restart; what gateways
    publish after it is kept once the receiver has resubscribed. (Mosquitto 2.0 does not
    restore shared subscriptions from its persistence file: a message published between the
    broker's start and the receivers' return reaches no one; docs/platform.md.)"""
    broker = mosquitto_factory(persistence=True, extra_config=QUEUE_ALL)
    rx = receivers(broker, db, "rx-restart", window=5)
    wait_schema(db)
    before = fleet(broker, 4, 2)
    connects = broker.log_path.read_text(errors="replace").count(" as rx-restart ")
    # Stopped while the receiver may still have messages queued and in flight.
    broker.stop()
    broker.start()
    wait_for(
        lambda: broker.log_path.read_text(errors="replace").count(" as rx-restart ") > connects,
        "the receiver did not come back",
    )
    time.sleep(0.5)  # its SUBSCRIBE follows the CONNACK
    after = fleet(broker, 4, 1, seed=2)
    wait_for(
        lambda: count(db) >= before.readings + after.readings,
        f"{count(db)} of {before.readings + after.readings} stored",
    )
    rx.finish()
    assert stored_per_stream(db) == {**before.seqs, **after.seqs}


def test_gaps_epochs_and_late_alias_tables_come_from_the_database(db: str) -> None:
    """Two instances (two connections, two caches) see the same gaps and epochs, and
    telemetry that came before its metadata is stored once the table is in the database."""
    from district.fleet import _aliases, _site  # noqa: PLC0415
    from district.receiver import (  # noqa: PLC0415
        Delivery,
        Ingest,
        ReceiverStats,
        _Database,
        _store,
        _undecoded_ready,
    )
    from edge import contract  # noqa: PLC0415

    @dataclass(frozen=True)
    class Row:
        seq: int
        body: dict[str, Any]

    table, prefix, gw = _aliases(1), "district/v1", "gw-7"
    old, new = "epoch-old", "epoch-new"

    def telemetry(epoch: str, seqs: list[int], historical: bool = False) -> Delivery:
        rows = [
            Row(s, {"device": d, "point": p, "unit": u, "value": 1.0, "ts": 1.7e9})
            for s, (d, p, u) in zip(seqs, table, strict=False)
        ]
        payload = contract.telemetry_message(
            gw, epoch, rows, clock_synced=True, historical=historical, aliases=table
        )
        return Delivery(1, 1, contract.telemetry_topic(prefix, gw), payload)

    def event(epoch: str, seq: int, kind: contract.EventKind, **fields: Any) -> Delivery:
        body = contract.event_body(kind, 1.7e9, **fields)
        payload = contract.event_message(
            gw, epoch, Row(seq, body), clock_synced=True, historical=False
        )
        return Delivery(1, 1, contract.events_topic(prefix, gw), payload)

    metadata = Delivery(1, 1, contract.metadata_topic(prefix, gw), contract.metadata_message(
        gw, old, _site(1), table, clock_synced=True))  # fmt: skip
    one, two = _Database(db), _Database(db)
    stats = ReceiverStats()
    # Instance one: telemetry before any metadata, then a thinned range and a real gap.
    _store(
        [
            telemetry(old, [1, 2, 3]),
            telemetry(old, [9, 10]),
            event(old, 11, "buffer-thinned", seq_first=4, seq_last=6),
        ],
        one,
        Ingest(one.alias_table),
        stats,
    )
    assert stats.undecoded == 2
    assert count(db) == 0
    # Instance two stores the metadata; one finds the held telemetry decodable at its sweep.
    _store([metadata], two, Ingest(two.alias_table), stats)
    _store(_undecoded_ready(one), one, Ingest(one.alias_table), stats)
    assert count(db) == 5
    assert count(db, "quarantine") == 0
    # A new epoch, then the old one replayed (an old card image): both kept apart.
    _store([telemetry(new, [1, 2])], two, Ingest(two.alias_table), stats)
    _store([telemetry(old, [3, 12], historical=True)], one, Ingest(one.alias_table), stats)
    for database in (one, two):
        conn = database.get()
        assert epochs(conn) == {gw: [old, new]}
        # 4-6 were thinned on purpose; 7-8 are lost.
        assert gaps(conn) == {(gw, old): [(7, 8)]}
        replayed = conn.execute(
            "SELECT o.last_seen > n.first_seen FROM streams o, streams n "
            "WHERE o.epoch = %s AND n.epoch = %s",
            (old, new),
        ).fetchone()
        assert replayed == (True,)
    assert stats.duplicate_readings == 1  # seq 3 of the old epoch, again
    one.drop()
    two.drop()
