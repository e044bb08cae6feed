"""A fleet of simulated gateways publishing contract v1 from one process.

    python -m district fleet --broker mqtt://127.0.0.1:1883 --gateways 2000 --devices 5 \\
        --seconds 60

Each simulated gateway has a real site (``--devices`` electrical fire monitors of the
``efm-ref`` model, polled every ``--poll`` seconds), and every message is built by
``edge.contract`` exactly as a gateway builds it: the retained status and metadata at connect,
telemetry in batches of ``--batch-size`` (compact ``edge.telemetry/2`` for a share of the
gateways, readable ``edge.telemetry/1`` for the rest, deflated for a share), alarm events
taking a seq between readings, health every 60 s. Now and then a gateway loses its connection
(offline status, as its MQTT will would be; its readings wait), comes back (online, metadata,
the backlog as ``historical`` telemetry), sends a message twice (the same bytes, as after a
lost PUBACK), or starts a new outbox epoch (seqs from 1, a ``buffer-reset`` event).

It is not the gateway: there are no buses, rules or outbox, and the gateways share a few MQTT
connections (``--connections``) instead of one each, so the broker's cost per connection is
not part of what it shows. A progress line says how far behind the schedule it is.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge import contract
from edge.config.loader import parse_site
from edge.config.model import SiteConfig
from edge.uplink import parse_broker_url

__all__ = ["FleetProfile", "FleetStats", "run_fleet"]

#: efm-ref's points, what one poll returns: typical value and random-walk step.
_TYPICAL: Final[Mapping[str, tuple[float, float]]] = {
    "residual_current": (35.0, 0.5),
    "leakage_alarm": (0.0, 0.0),
}
HEALTH_INTERVAL: Final = 60.0


@dataclass(frozen=True)
class FleetProfile:
    """What every simulated gateway does; rates are per gateway."""

    devices: int = 5
    poll: float = 1.0
    batch_size: int = 100
    #: Share of gateways sending compact telemetry, and of those deflating their payloads.
    compact_share: float = 0.8
    deflate_share: float = 0.5
    #: Events per reading (an alarm-raised taking a seq between readings).
    event_rate: float = 0.002
    #: Share of messages sent twice (a PUBACK lost, the same rows again).
    duplicate_share: float = 0.01
    #: Connection losses and outbox epoch resets per gateway per hour.
    outages_per_hour: float = 6.0
    outage_seconds: float = 5.0
    epoch_resets_per_hour: float = 0.5

    @property
    def readings_per_s(self) -> float:
        return len(_aliases(self.devices)) / self.poll


@dataclass
class FleetStats:
    gateways: int = 0
    messages: int = 0
    readings: int = 0
    events: int = 0
    duplicates: int = 0
    outages: int = 0
    epoch_resets: int = 0
    payload_bytes: int = 0
    #: Seconds the schedule was behind at the end (0 when the fleet kept up).
    behind_s: float = 0.0
    #: Per (gateway, epoch): every seq published (readings and events), for checks.
    seqs: dict[tuple[str, str], int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "gateways": self.gateways,
            "messages": self.messages,
            "readings": self.readings,
            "events": self.events,
            "duplicates": self.duplicates,
            "outages": self.outages,
            "epoch_resets": self.epoch_resets,
            "payload_bytes": self.payload_bytes,
            "behind_s": round(self.behind_s, 3),
        }


@cache
def _site(devices: int) -> SiteConfig:
    lines = [
        "gateway:\n  id: gw-fleet\n  site:\n    name: Fleet block\n    district: Luohu\n",
        "buses:\n  - id: rs485-1\n    kind: modbus-rtu\n    port: /dev/ttyUSB0\n",
        "devices:\n",
    ]
    for d in range(devices):
        lines.append(
            f"  - id: efm-{d:03d}\n    model: efm-ref\n    bus: rs485-1\n    address: {d + 1}\n"
            f'    location: {{building: Block {d // 10 + 1}, floor: "1", room: Shop {d:03d}, '
            "venue_type: shop}\n"
        )
    lines.append(
        "outputs:\n  pin_factory: mock\n  buzzer: {pin: 17}\n"
        "uplink:\n  brokers: [mqtt://127.0.0.1:1883]\n"
        "buffer:\n  path: /tmp/fleet-outbox.sqlite\n"
    )
    return parse_site("".join(lines), "<fleet>")


@cache
def _aliases(devices: int) -> contract.Aliases:
    return contract.Aliases.of_site(_site(devices))


@dataclass(frozen=True)
class _Row:
    seq: int
    body: Mapping[str, Any]


class _Gateway:
    def __init__(self, index: int, profile: FleetProfile, rng: random.Random) -> None:
        self.index = index
        self.id = f"gw-{index:05d}"
        self.epoch = str(uuid.UUID(int=rng.getrandbits(128)))
        self.seq = 0
        self.compact = rng.random() < profile.compact_share
        self.deflate = self.compact and rng.random() < profile.deflate_share
        self.offline_until = 0.0
        self.held: list[_Row] = []
        self.next_health = 0.0
        self.levels = [_TYPICAL.get(p, (40.0, 0.05))[0] for _, p, _ in _aliases(profile.devices)]


def _publisher(url: str, client_id: str) -> mqtt.Client:
    address = parse_broker_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if address.tls:
        client.tls_set()
    # Everything the fleet publishes waits in paho until the broker takes it.
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(address.host, address.port, keepalive=60)
    client.loop_start()
    return client


def run_fleet(
    broker_url: str,
    *,
    gateways: int,
    seconds: float,
    profile: FleetProfile = FleetProfile(),
    prefix: str = "district/v1",
    connections: int = 4,
    seed: int = 1,
    paced: bool = True,
    stop: threading.Event | None = None,
    progress: Callable[[FleetStats, float], None] | None = None,
) -> FleetStats:
    """Publish ``seconds`` of the fleet's traffic. ``paced``: at the fleet's real rate (each
    gateway polls at its own phase of the interval); otherwise as fast as it can be built,
    the simulated clock running ahead (a backlog for a receiver to drain)."""
    rng = random.Random(seed)
    aliases = _aliases(profile.devices)
    site = _site(profile.devices)
    fleet = [_Gateway(i, profile, rng) for i in range(gateways)]
    stats = FleetStats(gateways=gateways)
    tag = uuid.uuid4().hex[:6]
    clients = [_publisher(broker_url, f"fleet-{tag}-{c}") for c in range(max(1, connections))]
    pending: list[mqtt.MQTTMessageInfo] = []
    start = time.time()

    def publish(gw: _Gateway, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if gw.deflate:
            payload = contract.compress(payload)
        client = clients[gw.index % len(clients)]
        times = 2 if rng.random() < profile.duplicate_share else 1
        for _ in range(times):
            pending.append(client.publish(topic, payload, qos=1, retain=retain))
            stats.messages += 1
            stats.payload_bytes += len(payload)
        stats.duplicates += times - 1
        if len(pending) > 5000:
            for info in pending:
                info.wait_for_publish(timeout=60)
            pending.clear()

    def connect(gw: _Gateway, now: float) -> None:
        publish(
            gw,
            contract.status_topic(prefix, gw.id),
            contract.status_message(
                gw.id, gw.epoch, "online", version="0.1.0", boot_time=start,
                config_hash="fleet", clock_synced=True, sent_at=now,
            ),
            retain=True,
        )  # fmt: skip
        publish(
            gw,
            contract.metadata_topic(prefix, gw.id),
            contract.metadata_message(
                gw.id, gw.epoch, site, aliases, clock_synced=True, sent_at=now
            ),
            retain=True,
        )

    def send(gw: _Gateway, rows: list[_Row], now: float, historical: bool) -> None:
        for i in range(0, len(rows), profile.batch_size):
            chunk = rows[i : i + profile.batch_size]
            stats.readings += len(chunk)
            stats.seqs[(gw.id, gw.epoch)] = stats.seqs.get((gw.id, gw.epoch), 0) + len(chunk)
            payload = contract.telemetry_message(
                gw.id, gw.epoch, chunk, clock_synced=True, historical=historical,
                aliases=aliases if gw.compact else None, sent_at=now,
            )  # fmt: skip
            publish(gw, contract.telemetry_topic(prefix, gw.id), payload)

    def event(gw: _Gateway, kind: contract.EventKind, now: float, **fields: Any) -> None:
        gw.seq += 1
        stats.seqs[(gw.id, gw.epoch)] = stats.seqs.get((gw.id, gw.epoch), 0) + 1
        stats.events += 1
        body = contract.event_body(kind, now, **fields)
        publish(
            gw,
            contract.events_topic(prefix, gw.id),
            contract.event_message(
                gw.id, gw.epoch, _Row(gw.seq, body), clock_synced=True,
                historical=False, sent_at=now,
            ),
        )  # fmt: skip

    def poll(gw: _Gateway, now: float) -> None:
        if gw.offline_until == 0.0 and rng.random() < (
            profile.epoch_resets_per_hour * profile.poll / 3600
        ):
            gw.epoch, gw.seq, gw.held = str(uuid.UUID(int=rng.getrandbits(128))), 0, []
            stats.epoch_resets += 1
            connect(gw, now)
            event(gw, "buffer-reset", now, reason="the outbox file was corrupt")
        if gw.offline_until == 0.0 and rng.random() < (
            profile.outages_per_hour * profile.poll / 3600
        ):
            gw.offline_until = now + profile.outage_seconds
            stats.outages += 1
            publish(
                gw,
                contract.status_topic(prefix, gw.id),
                contract.status_message(
                    gw.id, gw.epoch, "offline", version="0.1.0", boot_time=start,
                    config_hash="fleet", clock_synced=True, sent_at=now,
                ),
                retain=True,
            )  # fmt: skip
        rows: list[_Row] = []
        ts = round(now, 3)
        for alias, (device, point, unit) in enumerate(aliases):
            gw.levels[alias] += rng.gauss(0, 0.05)
            gw.seq += 1
            rows.append(
                _Row(
                    gw.seq,
                    {"device": device, "point": point, "unit": unit, "ts": ts,
                     "value": round(gw.levels[alias], 1)},
                )
            )  # fmt: skip
            if rng.random() < profile.event_rate:
                # An alarm takes the next seq: the telemetry seqs skip it.
                gw.seq += 1
                gw.held.append(_Row(gw.seq, contract.event_body(
                    "alarm-raised", now, device=device, point=point, rule="fleet-over-limit",
                    value=round(gw.levels[alias], 1))))  # fmt: skip
        if gw.offline_until:
            gw.held += rows
            if now < gw.offline_until:
                return
            gw.offline_until = 0.0
            connect(gw, now)
            rows, gw.held = gw.held, []
            historical = True
        else:
            rows, gw.held = gw.held + rows, []
            historical = False
        telemetry = [r for r in rows if "kind" not in r.body]
        for r in rows:
            if "kind" in r.body:
                stats.events += 1
                stats.seqs[(gw.id, gw.epoch)] = stats.seqs.get((gw.id, gw.epoch), 0) + 1
                publish(
                    gw,
                    contract.events_topic(prefix, gw.id),
                    contract.event_message(gw.id, gw.epoch, r, clock_synced=True,
                                           historical=historical, sent_at=now),
                )  # fmt: skip
        if telemetry:
            send(gw, telemetry, now, historical)
        if now >= gw.next_health:
            gw.next_health = now + HEALTH_INTERVAL
            publish(
                gw,
                contract.health_topic(prefix, gw.id),
                contract.health_message(
                    gw.id, gw.epoch,
                    {"uptime_s": now - start, "buffer_rows": len(gw.held),
                     "oldest_unsent_age_s": None, "bus_errors": {"rs485-1": 0}},
                    clock_synced=True, sent_at=now,
                ),
            )  # fmt: skip

    try:
        ticks = max(1, round(seconds / profile.poll))
        last_progress = time.monotonic()
        for tick in range(ticks):
            for index, gw in enumerate(fleet):
                if stop is not None and stop.is_set():
                    return stats
                # Each gateway polls at its own phase of the interval.
                due = start + (tick + index / gateways) * profile.poll
                now = time.time()
                if paced and due > now:
                    time.sleep(due - now)
                now = due if not paced else max(due, time.time())
                if tick == 0:
                    # Gateways come up at their own phase, not all in one millisecond.
                    connect(gw, now)
                poll(gw, now)
            stats.behind_s = max(0.0, time.time() - (start + (tick + 1) * profile.poll))
            if progress is not None and time.monotonic() - last_progress >= 5:
                last_progress = time.monotonic()
                progress(stats, time.time() - start)
        for info in pending:
            info.wait_for_publish(timeout=60)
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
    return stats


def progress_line(stats: FleetStats, elapsed: float) -> None:
    print(
        f"fleet: {stats.gateways:,} gateways, {elapsed:,.0f} s: {stats.messages:,} messages "
        f"({stats.messages / max(elapsed, 1e-9):,.0f}/s), {stats.readings:,} readings, "
        f"{stats.events:,} events, {stats.outages} outages, {stats.epoch_resets} epoch resets, "
        f"{stats.duplicates} duplicates, behind {stats.behind_s:.1f} s",
        file=sys.stderr,
    )
