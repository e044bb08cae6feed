"""The district receiver: contract v1 from every gateway into PostgreSQL, scaled out.

    python -m district receive --broker mqtt://broker:1883 --db postgresql://.../district \\
        --group district --client-id rx-1

Run N instances with the same ``--group`` and different ``--client-id``s: telemetry, events and
health come through MQTT 5 shared subscriptions (``$share/GROUP/PREFIX/+/telemetry`` ...), so
the broker splits them between the instances. Status and metadata are retained, and a broker
never hands retained messages to a shared subscription, so every instance also subscribes to
them directly (they are rare, and storing one twice is an upsert).

Delivery: a persistent session (``clean_start`` off, a session expiry), an in-flight window
(MQTT 5 Receive Maximum, ``--window``) and **acknowledgements only after the commit** (paho's
``manual_ack``). A receiver killed at any point loses nothing: what it had not committed was
not acknowledged, and the broker sends it again when the instance reconnects with its client
id. A database that goes away stops the acknowledgements: the window fills, the broker holds
the rest (its queue must be large enough: docs/platform.md), and the receiver catches up when
the database is back. A message that cannot be stored (malformed, oversized, refused by the
database) goes to ``quarantine`` with its raw payload and the reason; it never holds up the
others.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from district.contract import AliasBook, ContractError, UnknownAliases, read_message
from district.store import Batch, Ids, create_schema, write
from edge import contract
from edge.uplink import parse_broker_url

__all__ = ["Delivery", "Ingest", "ReceiverStats", "run_receiver"]

#: Kinds shared between the instances of a group; the retained ones each instance takes.
SHARED_TOPICS: Final = ("telemetry", "events", "health")
DIRECT_TOPICS: Final = ("status", "metadata")
#: A persistent session outlives a receiver's restart by this much (seconds).
SESSION_EXPIRY: Final = 7 * 24 * 3600
#: How often a receiver looks for undecoded telemetry whose alias table has arrived since.
SWEEP_INTERVAL: Final = 2.0
#: The database is away (not refusing what a message holds): retry, acknowledge nothing.
_AWAY: Final = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass(frozen=True)
class Delivery:
    """One message as the broker handed it over; ``mid`` 0 for one taken from quarantine."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    #: Quarantine row this delivery was read from (undecoded telemetry decoded at last).
    quarantined: int | None = None


@dataclass
class ReceiverStats:
    """What one receiver instance did, for its progress line and its summary."""

    messages: int = 0
    readings: int = 0
    duplicate_readings: int = 0
    events: int = 0
    quarantined: int = 0
    undecoded: int = 0
    released: int = 0
    database_outages: int = 0
    #: Wall clock of the first message taken and of the last commit (None before any).
    first_message_at: float | None = None
    last_commit_at: float | None = None
    #: CPU seconds this receiver process used (all its threads), at the end.
    cpu_s: float = 0.0
    #: Milliseconds from a message's ``sent_at`` to the commit of its rows (recent ones).
    lags_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))

    def lag_ms(self, share: float) -> float | None:
        if not self.lags_ms:
            return None
        ordered = sorted(self.lags_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "readings": self.readings,
            "duplicate_readings": self.duplicate_readings,
            "events": self.events,
            "quarantined": self.quarantined,
            "undecoded": self.undecoded,
            "released": self.released,
            "database_outages": self.database_outages,
            "first_message_at": self.first_message_at,
            "last_commit_at": self.last_commit_at,
            "cpu_s": round(self.cpu_s, 3),
            "lag_ms_p50": self.lag_ms(0.5),
            "lag_ms_p99": self.lag_ms(0.99),
        }


def _held(
    delivery: Delivery, reason: str, gateway: str | None = None
) -> tuple[str, str, bool, str | None, str | None, bytes]:
    """A quarantine row for a delivery that cannot be stored."""
    return (delivery.topic, reason, False, gateway, None, delivery.payload)


def _when(text: object, cache: dict[str, datetime]) -> datetime | None:
    """An ISO UTC time of the contract as a datetime (the readings of a poll share one)."""
    if not isinstance(text, str):
        return None
    found = cache.get(text)
    if found is None:
        try:
            found = datetime.fromisoformat(text)
        except ValueError:
            return None
        cache[text] = found
    return found


def _number(value: object) -> float | None:
    if type(value) is bool:
        return float(value)
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return None
    return None


class Ingest:
    """Deliveries -> the rows of one :class:`~district.store.Batch` (no I/O but the look-up of
    an alias table another instance stored)."""

    def __init__(self, lookup: Callable[[str, str], dict[str, Any] | None]) -> None:
        self.book = AliasBook()
        self._lookup = lookup

    def add(self, batch: Batch, delivery: Delivery) -> tuple[float | None, bool]:
        """Add one delivery's rows; return (its sent_at as POSIX seconds or None, whether it
        went to quarantine)."""
        one = Batch.empty()
        try:
            result = self._add(one, delivery)
        except Exception as exc:  # one message must never stop the receiver
            # A message the checks let through but this code cannot store: without this it
            # would be redelivered to a receiver that fails on it again, for ever.
            one = Batch.empty()
            one.quarantine.append(_held(delivery, f"receiver could not store it: {exc!r}"))
            result = (None, True)
        batch.extend(one)
        return result

    def _add(self, batch: Batch, delivery: Delivery) -> tuple[float | None, bool]:
        cache: dict[str, datetime] = {}
        try:
            message = read_message(delivery.topic, delivery.payload)
        except ContractError as exc:
            batch.quarantine.append((delivery.topic, str(exc), False, None, None, delivery.payload))
            return None, True
        body, gateway, epoch = message.body, message.gateway_id, message.epoch
        sent_at = _when(body.get("sent_at"), cache)
        if sent_at is None:
            batch.quarantine.append(
                (delivery.topic, "no sent_at", False, gateway, None, delivery.payload)
            )
            return None, True
        if message.kind == "telemetry":
            try:
                rows = self._readings(body)
            except UnknownAliases as exc:
                batch.quarantine.append(
                    (delivery.topic, str(exc), True, gateway, exc.aliases_id, delivery.payload)
                )
                return sent_at.timestamp(), True
            except ContractError as exc:
                batch.quarantine.append(
                    (delivery.topic, str(exc), False, gateway, None, delivery.payload)
                )
                return None, True
            historical = bool(body.get("historical"))
            for r in rows:
                batch.readings.append(
                    (
                        gateway,
                        epoch,
                        int(r["seq"]),
                        (str(r["device"]), str(r["point"]), str(r.get("unit") or "")),
                        _when(r.get("ts"), cache),
                        _number(r.get("value")),
                        historical,
                    )
                )
        elif message.kind == "event":
            batch.events.append(
                (gateway, epoch, int(body["seq"]), str(body["kind"]),
                 _when(body.get("ts"), cache), json.dumps(body))
            )  # fmt: skip
        elif message.kind == "status":
            batch.statuses.append((gateway, str(body["state"]), sent_at, json.dumps(body)))
        elif message.kind == "metadata":
            try:
                self.book.learn(body)
            except ContractError as exc:
                batch.quarantine.append(
                    (delivery.topic, str(exc), False, gateway, None, delivery.payload)
                )
                return None, True
            batch.metadata.append((gateway, str(body["aliases_id"]), sent_at, json.dumps(body)))
        elif message.kind == "health":
            batch.health.append((str(body["message_id"]), gateway, sent_at, json.dumps(body)))
        if delivery.quarantined is not None:
            batch.released.append(delivery.quarantined)
        # Lag is measured on what is sent once, live: status and metadata are retained (an
        # old one arrives at every subscribe).
        live = message.kind in ("telemetry", "event") and delivery.quarantined is None
        return (sent_at.timestamp() if live else None), False

    def _readings(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return self.book.readings(body)
        except UnknownAliases as exc:
            # Another instance may have stored the metadata: the database knows every table.
            stored = self._lookup(exc.gateway_id, exc.aliases_id)
            if stored is None:
                raise
            self.book.learn(stored)
            return self.book.readings(body)


class _Broker:
    """The paho client: a persistent MQTT 5 session whose messages wait in ``inbox`` until
    :meth:`ack` is called for them after the commit."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        group: str,
        client_id: str,
        window: int,
        username: str | None,
        password: str | None,
    ) -> None:
        self.inbox: queue.Queue[Delivery] = queue.Queue()
        self.connected = threading.Event()
        address = parse_broker_url(url)
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if address.tls:
            self._client.tls_set()
        self._subscriptions = [
            (contract.shared_filter(group, contract.fleet_filter(prefix, topic)), 1)
            for topic in SHARED_TOPICS
        ] + [(contract.fleet_filter(prefix, topic), 1) for topic in DIRECT_TOPICS]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 5)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        properties.ReceiveMaximum = window
        self._client.connect_async(
            address.host, address.port, keepalive=30, clean_start=False, properties=properties
        )
        self.display = address.display

    def start(self) -> None:
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, delivery: Delivery) -> None:
        if delivery.mid and delivery.qos > 0:
            self._client.ack(delivery.mid, delivery.qos)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            print(f"receiver: {self.display} refused the connection: {reason}", file=sys.stderr)
            return
        client.subscribe(self._subscriptions)
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.inbox.put(Delivery(message.mid, message.qos, message.topic, bytes(message.payload)))


class _Database:
    """One connection, reopened with backoff while the server is away."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection[Any] | None = None
        self.ids = Ids()

    def get(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.url, connect_timeout=5, autocommit=True)
            create_schema(self.conn)
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    def alias_table(self, gateway: str, aliases_id: str) -> dict[str, Any] | None:
        row = (
            self.get()
            .execute(
                "SELECT body FROM alias_tables WHERE gateway_id = %s AND aliases_id = %s",
                (gateway, aliases_id),
            )
            .fetchone()
        )
        return None if row is None else dict(row[0])


def run_receiver(
    broker_url: str,
    db_url: str,
    *,
    stop: threading.Event,
    prefix: str = "district/v1",
    group: str = "district",
    client_id: str = "district-rx-1",
    window: int = 1000,
    batch_wait: float = 0.05,
    username: str | None = None,
    password: str | None = None,
    progress: Callable[[ReceiverStats], None] | None = None,
    progress_interval: float = 5.0,
) -> ReceiverStats:
    """Receive and store until ``stop`` is set; return what was done. Blocks the thread."""
    stats = ReceiverStats()
    database = _Database(db_url)
    ingest = Ingest(database.alias_table)
    broker = _Broker(
        broker_url,
        prefix=prefix,
        group=group,
        client_id=client_id,
        window=window,
        username=username,
        password=password,
    )
    broker.start()
    pending: list[Delivery] = []
    backoff = 0.0
    outage: str | None = None
    last_sweep = last_progress = time.monotonic()
    try:
        while not stop.is_set() or pending:
            if not pending:
                pending = _collect(broker.inbox, window, batch_wait, stop)
                if pending and stats.first_message_at is None:
                    stats.first_message_at = time.time()
            if not pending and time.monotonic() - last_sweep < SWEEP_INTERVAL:
                continue
            try:
                if time.monotonic() - last_sweep >= SWEEP_INTERVAL:
                    last_sweep = time.monotonic()
                    pending += _undecoded_ready(database)
                if pending:
                    _store(pending, database, ingest, stats)
            except _AWAY as exc:
                # The server is away: nothing is acked, the broker keeps what it sent.
                database.drop()
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if outage is None:
                    stats.database_outages += 1
                    print(
                        f"receiver {client_id}: database unreachable ({text}); holding "
                        f"{len(pending)} messages unacknowledged",
                        file=sys.stderr,
                    )
                outage = text
                backoff = min(5.0, max(0.2, backoff * 2))
                if stop.wait(backoff):
                    break
                continue
            if outage is not None:
                print(f"receiver {client_id}: database back; catching up", file=sys.stderr)
                outage, backoff = None, 0.0
            for delivery in pending:
                broker.ack(delivery)
            pending = []
            if progress is not None and time.monotonic() - last_progress >= progress_interval:
                last_progress = time.monotonic()
                progress(stats)
    finally:
        broker.close()
        database.drop()
        stats.cpu_s = time.process_time()
    return stats


def _collect(
    inbox: queue.Queue[Delivery], most: int, wait: float, stop: threading.Event
) -> list[Delivery]:
    """The next batch: what has arrived, waiting up to ``wait`` after the first for more."""
    try:
        first = inbox.get(timeout=0.2)
    except queue.Empty:
        return []
    batch = [first]
    deadline = time.monotonic() + wait
    while len(batch) < most and not stop.is_set():
        left = deadline - time.monotonic()
        try:
            batch.append(inbox.get(timeout=left) if left > 0 else inbox.get_nowait())
        except queue.Empty:
            break
    return batch


def _undecoded_ready(database: _Database) -> list[Delivery]:
    """Quarantined compact telemetry whose alias table has arrived since (any instance may
    take them: storing them twice is a no-op, deleting them twice too)."""
    rows = (
        database.get()
        .execute(
            "SELECT q.id, q.topic, q.payload FROM quarantine q JOIN alias_tables a "
            "USING (gateway_id, aliases_id) WHERE q.undecoded ORDER BY q.id LIMIT 500"
        )
        .fetchall()
    )
    return [Delivery(0, 0, topic, bytes(payload), quarantined=qid) for qid, topic, payload in rows]


def _store(
    pending: Sequence[Delivery], database: _Database, ingest: Ingest, stats: ReceiverStats
) -> None:
    """Write ``pending`` in one transaction; if the database refuses the batch for what is in
    it (not for being away), write message by message and quarantine the ones it refuses."""
    conn = database.get()
    batch = Batch.empty()
    sent: list[float | None] = []
    quarantined = 0
    for delivery in pending:
        at, held = ingest.add(batch, delivery)
        sent.append(None if held else at)
        quarantined += held
    try:
        stored, events = write(conn, batch, database.ids)
    except _AWAY:
        raise
    except psycopg.Error:
        stored = events = quarantined = 0
        for delivery in pending:
            one = Batch.empty()
            _, held = ingest.add(one, delivery)
            try:
                s, e = write(conn, one, database.ids)
            except _AWAY:
                raise
            except psycopg.Error as exc:
                reason = f"refused by the database: {str(exc).strip().splitlines()[0]}"
                write(
                    conn,
                    Batch(
                        [],
                        [],
                        [],
                        [],
                        [],
                        [(delivery.topic, reason, False, None, None, delivery.payload)],
                    ),
                    database.ids,
                )
                held = True
            else:
                stored, events = stored + s, events + e
            quarantined += held
    now = time.time()
    stats.last_commit_at = now
    stats.messages += sum(1 for d in pending if d.mid)
    stats.readings += stored
    stats.duplicate_readings += len(batch.readings) - stored
    stats.events += events
    stats.quarantined += quarantined
    stats.undecoded += sum(1 for q in batch.quarantine if q[2])
    stats.released += len(batch.released)
    stats.lags_ms.extend((now - at) * 1000 for at in sent if at is not None)


def progress_line(client_id: str) -> Callable[[ReceiverStats], None]:
    """A progress printer: rate of readings since the last line, lag, quarantine."""
    last = [time.monotonic(), 0]

    def show(stats: ReceiverStats) -> None:
        now = time.monotonic()
        rate = (stats.readings - last[1]) / max(1e-9, now - last[0])
        last[:] = [now, stats.readings]
        p99 = stats.lag_ms(0.99)
        print(
            f"receiver {client_id}: {stats.messages:,} messages, {stats.readings:,} readings "
            f"({rate:,.0f}/s), {stats.events:,} events, quarantined {stats.quarantined}, "
            f"lag p99 {'-' if p99 is None else f'{p99:.0f} ms'}",
            file=sys.stderr,
        )

    return show
