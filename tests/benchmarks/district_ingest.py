"""The district platform at scale (``make bench-platform``): the fleet simulator, Mosquitto,
the district receiver and PostgreSQL on this machine, each receiver and the fleet its own
process.

- ``platform_ingest_readings_per_s_1`` / ``_2``: readings committed per second by 1 and by 2
  receiver instances (one shared subscription group) draining a backlog: the receivers'
  sessions are registered, the fleet publishes ``backlog_seconds`` of its traffic as fast as it
  can while they are away (the broker queues it), then they start and the rate is counted
  from the first committed row to the last, by polling the database;
- ``platform_messages_per_s_1`` / ``_2``: the MQTT messages those drains took from the broker
  per second;
- ``platform_lag_ms_p99``: one receiver, the fleet publishing at its real pace
  (``gateways`` gateways for ``lag_seconds``): 99th percentile of the time from a message's
  ``sent_at`` (set when the fleet builds it, just before it publishes) to the commit of its
  rows, as the receiver measures it;
- ``platform_lag_ms_p50``: the median of the same;
- ``platform_readings_per_receiver_cpu_s``: readings stored per CPU second of the receiver
  process itself (all its threads), in the 1-instance drain: what one receiver core carries
  when the broker and the database have cores of their own;
- ``platform_db_bytes_per_reading``: ``pg_total_relation_size('readings')`` (heap, primary key
  index, free space map) over the readings stored, after the drains;
- ``fleet_gateways_simulated``: the gateways of the paced run;
- ``platform_db_outage_readings_lost``: a receiver storing a paced fleet while PostgreSQL is
  stopped for ``outage_seconds`` (30 s) in the middle: readings the fleet published that
  never reached the database (0 is the promise);
- ``platform_db_outage_catch_up_s``: from the database's return to the last reading stored
  (the fleet has stopped by then: the backlog of the outage alone, reconnect backoff included).

    python -m tests.benchmarks.district_ingest [--tiny] [--out bench-results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import psycopg

from district.postgres import ThrowawayPostgres
from hil.mosquitto import Mosquitto, mosquitto_binary

ROOT: Final = Path(__file__).resolve().parents[2]
KEYS: Final = (
    "platform_ingest_readings_per_s_1",
    "platform_ingest_readings_per_s_2",
    "platform_messages_per_s_1",
    "platform_messages_per_s_2",
    "platform_lag_ms_p50",
    "platform_lag_ms_p99",
    "platform_readings_per_receiver_cpu_s",
    "platform_db_bytes_per_reading",
    "fleet_gateways_simulated",
    "platform_db_outage_readings_lost",
    "platform_db_outage_catch_up_s",
)
TINY: Final[dict[str, Any]] = {
    "gateways": 10,
    "devices": 1,
    "backlog_seconds": 1,
    "lag_gateways": 10,
    "lag_poll": 1.0,
    "lag_seconds": 1,
    "outage_seconds": 1,
}
_TIMEOUT: Final = 600.0


def _broker(folder: Path) -> Mosquitto:
    """Mosquitto as a district would run it for this: QoS 1 queues without a count limit (the
    receivers' sessions hold the backlog), logging off the hot path."""
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("needs Mosquitto (apt-get install mosquitto)")
    broker = Mosquitto(
        binary,
        folder,
        log_types=("error",),
        extra_config=("max_queued_messages 0", "max_inflight_messages 0"),
    )
    broker.start()
    return broker


def _python(args: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "district", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _receivers(broker: str, db: str, count: int, run: str) -> list[subprocess.Popen[str]]:
    return [
        _python(
            [
                "receive",
                "--broker",
                broker,
                "--db",
                db,
                "--client-id",
                f"rx-{run}-{i}",
                "--group",
                f"g-{run}",
                "--json",
            ]
        )
        for i in range(count)
    ]


def _stop(procs: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"receiver exited {proc.returncode}: {stderr[-2000:]}")
        out.append(json.loads(lines[-1]))
    return out


def _fleet(
    broker: str, gateways: int, devices: int, seconds: float, *, paced: bool, poll: float = 1.0
) -> dict[str, Any]:
    args = ["fleet", "--broker", broker, "--gateways", str(gateways), "--devices", str(devices),
            "--seconds", str(seconds), "--poll", str(poll), "--json"]  # fmt: skip
    if not paced:
        args.append("--unpaced")
    proc = _python(args)
    stdout, stderr = proc.communicate(timeout=_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"fleet exited {proc.returncode}: {stderr[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    return result


def _count(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
        return int(row[0]) if row else 0


def _wait_subscribed(db: str, procs: Sequence[subprocess.Popen[str]]) -> None:
    """A receiver has connected and subscribed once it has created the schema; give it a
    moment more for the SUBACK."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(db) as conn:
                if conn.execute("SELECT to_regclass('readings')").fetchone() != (None,):
                    time.sleep(0.5)
                    return
        except psycopg.Error:
            pass
        time.sleep(0.2)
    raise RuntimeError("the receivers did not start")


def _drain(
    broker: str, pg: ThrowawayPostgres, count: int, *, gateways: int, devices: int, seconds: float
) -> tuple[float, float, float]:
    """(readings/s, messages/s, readings per receiver CPU second) of ``count`` receivers
    draining a backlog."""
    db = pg.url
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS readings, events, streams, points, statuses, "
                     "metadata, alias_tables, health, quarantine")  # fmt: skip
    run = f"drain{count}"
    procs = _receivers(broker, db, count, run)
    _wait_subscribed(db, procs)
    _stop(procs)  # the sessions stay, subscribed: the broker queues for them
    fleet = _fleet(broker, gateways, devices, seconds, paced=False)
    total = fleet["readings"]
    procs = _receivers(broker, db, count, run)
    deadline = time.monotonic() + _TIMEOUT
    try:
        while (n := _count(db)) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} receiver(s) stored {n} of {total} readings")
            time.sleep(0.05)
    finally:
        stats = _stop(procs)
    # From the first message any instance took to the last commit of any.
    began = min(s["first_message_at"] for s in stats if s["first_message_at"])
    ended = max(s["last_commit_at"] for s in stats if s["last_commit_at"])
    elapsed = max(1e-6, ended - began)
    cpu = sum(s["cpu_s"] for s in stats)
    return total / elapsed, sum(s["messages"] for s in stats) / elapsed, total / max(cpu, 1e-6)


def _outage(broker: str, pg: ThrowawayPostgres, seconds: float) -> tuple[int, float]:
    """(readings lost, seconds to catch up) of one receiver across a database outage of
    ``seconds`` while a paced fleet (200 gateways of one monitor, every second: 2,800
    readings/s) publishes."""
    db = pg.new_database("outage")
    procs = _receivers(broker, db, 1, "outage")
    _wait_subscribed(db, procs)
    fleet: dict[str, Any] = {}
    # The fleet stops publishing shortly before the database returns: what follows is the
    # backlog alone.
    publisher = threading.Thread(
        target=lambda: fleet.update(_fleet(broker, 200, 1, seconds, paced=True))
    )
    publisher.start()
    try:
        deadline = time.monotonic() + _TIMEOUT
        while _count(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        pg.stop()
        time.sleep(seconds)
        pg.start()
        back = time.monotonic()
        publisher.join(timeout=_TIMEOUT)
        while _count(db) < fleet["readings"] and time.monotonic() < deadline:
            time.sleep(0.1)
        caught_up = time.monotonic() - back
        stored = _count(db)
    finally:
        _stop(procs)
    return fleet["readings"] - stored, caught_up


def _has_table(db: str) -> bool:
    with psycopg.connect(db) as conn:
        return conn.execute("SELECT to_regclass('readings')").fetchone() != (None,)


def run(  # noqa: PLR0917 -- one keyword per size, as every suite's run()
    gateways: int = 500,
    devices: int = 5,
    backlog_seconds: float = 8,
    lag_gateways: int = 2000,
    lag_devices: int = 1,
    lag_poll: float = 10.0,
    lag_seconds: float = 40,
    outage_seconds: float = 30,
) -> dict[str, float]:
    """Measure. The drains: ``gateways`` gateways of ``devices`` monitors (14 points each,
    every second: 70 readings/s a gateway at the default), ``backlog_seconds`` of their
    traffic. The paced run: ``lag_gateways`` gateways of ``lag_devices`` monitors polled every
    ``lag_poll`` s for ``lag_seconds``, a load one receiver carries with room to spare."""
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, ThrowawayPostgres() as pg:
        broker = _broker(Path(folder))
        try:
            for count in (1, 2):
                rate, messages, per_cpu = _drain(
                    broker.url,
                    pg,
                    count,
                    gateways=gateways,
                    devices=devices,
                    seconds=backlog_seconds,
                )
                result[f"platform_ingest_readings_per_s_{count}"] = round(rate)
                result[f"platform_messages_per_s_{count}"] = round(messages)
                if count == 1:
                    result["platform_readings_per_receiver_cpu_s"] = round(per_cpu)
            with psycopg.connect(pg.url) as conn:
                row = conn.execute(
                    "SELECT pg_total_relation_size('readings')::float8 / greatest(1, count(*)) "
                    "FROM readings"
                ).fetchone()
                result["platform_db_bytes_per_reading"] = round(float(row[0]) if row else 0.0, 1)
            procs = _receivers(broker.url, pg.url, 1, "lag")
            _wait_subscribed(pg.url, procs)
            try:
                fleet = _fleet(
                    broker.url, lag_gateways, lag_devices, lag_seconds, paced=True, poll=lag_poll
                )
                deadline = time.monotonic() + _TIMEOUT
                while _count(pg.url) < fleet["readings"] and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                stats = _stop(procs)
            result["platform_lag_ms_p99"] = round(float(stats[0]["lag_ms_p99"] or 0.0), 1)
            result["platform_lag_ms_p50"] = round(float(stats[0]["lag_ms_p50"] or 0.0), 1)
            result["fleet_gateways_simulated"] = lag_gateways
            lost, catch_up = _outage(broker.url, pg, outage_seconds)
            result["platform_db_outage_readings_lost"] = lost
            result["platform_db_outage_catch_up_s"] = round(catch_up, 2)
        finally:
            broker.stop()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.district_ingest")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, a few seconds")
    parser.add_argument("--out", type=Path, help="merge the figures into this JSON file")
    parser.add_argument("--gateways", type=int)
    parser.add_argument("--devices", type=int)
    parser.add_argument("--lag-gateways", type=int)
    args = parser.parse_args(argv)
    params: dict[str, Any] = dict(TINY) if args.tiny else {}
    if args.gateways:
        params["gateways"] = args.gateways
    if args.devices:
        params["devices"] = args.devices
    if args.lag_gateways:
        params["lag_gateways"] = args.lag_gateways
    figures = run(**params)
    for key in KEYS:
        print(f"{key}: {figures[key]}")
    if args.out is not None:
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        args.out.write_text(json.dumps({**old, **figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
