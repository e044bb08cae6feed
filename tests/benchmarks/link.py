"""What a site sends over its 4G link in a month, all of it (``python -m tests.benchmarks --only
link``): telemetry, events, health, metadata, status, PUBACKs, keepalives, MQTT and TLS framing
and the TCP/IP headers, over ``mqtts://`` with the gateway's defaults.

How the figure is made (docs/benchmarks.md, "link"):

1. **A live run.** A real Mosquitto with a TLS listener (certificates from
   tests/fixtures/certs.py), the demo site's simulators (hil.simulator) and the real gateway
   (``edge run`` on config/example-site.yaml, its broker URL pointed at ``mqtts://`` and
   nothing else changed). Between the gateway and the broker sits a TCP proxy of this module
   that counts the bytes each way and reads the TLS record headers (5 bytes: type, version,
   length), so it knows every record's size without decrypting anything. A subscriber on the
   broker's plain listener sees every message the gateway publishes (topic, payload size).
   One leakage alarm is raised and cleared in the simulator during the run.
2. **What the live run gives.** Every MQTT message the subscriber saw costs, over TLS 1.3,
   its PUBLISH packet plus :data:`TLS_RECORD` bytes, and its PUBACK (MQTT 5, 4 bytes) plus
   :data:`TLS_RECORD`. What the proxy counted beyond those is the rest: the TCP and TLS
   handshakes, CONNECT/CONNACK, SUBSCRIBE/SUBACK, PINGREQ/PINGRESP. The part of the rest in
   the first :data:`SETTLE` seconds of the connection is the cost of a session; the part
   after, per second, is the steady overhead (keepalives).
3. **A month.** Telemetry comes from the day-long simulated trace of tests/benchmarks/storage.py
   (the demo site with its default policies, drifts, noise, steps, alarms with their full-rate
   windows), batched and deflated as the uplink does with the site's ``batch_interval``,
   ``batch_size`` and ``compression``; each message priced as in 2. Events: two per alarm of
   that day (raised, cleared), each at the mean cost of the live run's events. Health: one
   message every ``health_interval`` at the live run's health cost. Sessions: one a day
   (:data:`SESSIONS_PER_MONTH`; a 4G link that drops more often pays a session's cost each
   time), each the live session's cost (handshakes, status, metadata). Steady overhead: the
   live rate times a month.
4. **TCP/IP** is estimated, not seen (the proxy gets the TCP payload): every TLS record is
   sent in ``ceil(size / MSS)`` segments (MSS 1448, a 1500-byte MTU with TCP timestamps), each
   with 52 bytes of IPv4 and TCP header, and answered by a 52-byte ACK of its own: an upper
   bound, as ACKs often ride on data going the other way. The TCP handshake and close add
   :data:`TCP_SESSION` bytes per session. A carrier bills IP bytes, so that is what counts.

``link_mb_per_month_demo_site_all`` is the demo site storing every reading, and
``link_mb_per_month_demo_site_defaults_before`` its policies' readings with the uplink's
defaults before (:data:`BEFORE`), both priced the same way.

The reference site (50 monitors x 20 points at 1 s, its telemetry from the storage benchmark's
simulated hour) is priced the same way, with the demo's live session, steady and health costs
and its own metadata (built for 50 monitors; the 6 metering points a monitor adds are counted
by scaling it by 20/14).

Besides: ``link_live_minutes`` (how long the live run was), ``link_live_kib_measured`` (what the
proxy counted, TCP/IP included), ``link_live_unattributed_share`` (the share of it that is not a
message the subscriber saw: handshakes and keepalives), ``link_live_mispriced_messages`` (messages
the subscriber saw for which the proxy passed no TLS record of the size step 2 gives: 0 when
the pricing holds), ``card_mb_per_day_demo_site`` (the live
gateway's ``write_bytes`` in ``/proc/PID/io`` over the steady part, per day: every card write of
a running gateway, the outbox with its acks and checkpoints, rule state, whatever else; the run
holds one alarm, whose full-rate windows are synced every second),
``card_mb_per_day_demo_site_quiet`` (the same before the alarm: the steady pace) and
``card_mb_per_day_demo_site_three_alarms`` (that pace for a day plus three alarms like the
live one, what the alarm wrote above the pace: the storage benchmark's day).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiomqtt
import yaml

from edge import contract
from edge.config import load_site
from edge.config.storage import storage_of
from edge.storage_policy import Storage
from hil.simulator import send_control
from tests.benchmarks import storage as storage_bench
from tests.fixtures.broker import Mosquitto, TlsListener, find_mosquitto, free_port
from tests.fixtures.certs import Authority
from tests.fixtures.traces import EFM_SHAPES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"
GATEWAY = "gw-demo-0001"

#: TLS 1.3 record: 5 bytes of header, 1 of inner content type, 16 of AEAD tag.
TLS_RECORD: Final = 22
TLS_MAX_PLAINTEXT: Final = 16_384
#: IPv4 (20) + TCP with timestamps (32); a 1500-byte MTU leaves this much payload a segment.
TCP_IP_HEADER: Final = 52
MSS: Final = 1448
#: SYN, SYN-ACK, ACK and the two FIN/ACK pairs of a connection (SYNs carry 20 bytes of options).
TCP_SESSION: Final = 3 * 60 + 4 * TCP_IP_HEADER
#: MQTT 5 PUBACK with reason "success" and no properties: fixed header 2, packet id 2.
PUBACK: Final = 4
#: The first seconds of a connection: TCP and TLS handshakes, CONNECT, SUBSCRIBE, status,
#: metadata; what is not a message in them is a session's cost.
SETTLE: Final = 5.0
SESSIONS_PER_MONTH: Final = 30
#: The uplink's defaults before they were chosen for a metered link: a message a second, plain,
#: health every minute (and a 30 s keepalive, which never pinged with a message a second).
BEFORE: Final = {"batch_interval": 1.0, "batch_size": 100, "deflate": False, "health": 60.0}
MONTH_S: Final = 30 * 86_400


def on_the_wire(tls_bytes: int) -> int:
    """IP bytes of ``tls_bytes`` of one TLS record sent over TCP (see the module docstring)."""
    segments = max(1, math.ceil(tls_bytes / MSS))
    return tls_bytes + 2 * TCP_IP_HEADER * segments


def _varint_len(n: int) -> int:
    length = 1
    while n >= 128**length:
        length += 1
    return length


def publish_packet(topic_len: int, payload_len: int) -> int:
    """Bytes of an MQTT 5 QoS 1 PUBLISH without properties."""
    remaining = 2 + topic_len + 2 + 1 + payload_len
    return 1 + _varint_len(remaining) + remaining


def message_cost(topic_len: int, payload_len: int) -> int:
    """IP bytes of one QoS 1 message over TLS: the PUBLISH in records, and its PUBACK."""
    plain = publish_packet(topic_len, payload_len)
    records = math.ceil(plain / TLS_MAX_PLAINTEXT)
    cost = 0
    for i in range(records):
        part = min(TLS_MAX_PLAINTEXT, plain - i * TLS_MAX_PLAINTEXT)
        cost += on_the_wire(part + TLS_RECORD)
    return cost + on_the_wire(PUBACK + TLS_RECORD)


# --- the counting proxy ----------------------------------------------------------------------


@dataclass
class Record:
    """One TLS record the proxy passed: when, which way (True: gateway to broker), its size
    with its header."""

    at: float
    upstream: bool
    size: int


@dataclass
class CountingProxy:
    """A TCP proxy that counts what passes and parses the TLS record headers."""

    broker_port: int
    port: int = 0
    connections: list[float] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections.append(time.monotonic())
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
        for reader, writer, upstream in (
            (client_r, broker_w, True),
            (broker_r, client_w, False),
        ):
            task = asyncio.create_task(self._pump(reader, writer, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        pending = bytearray()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                pending += data
                # Whole records only: type (1), version (2), length (2), then the body.
                while len(pending) >= 5:
                    size = 5 + int.from_bytes(pending[3:5], "big")
                    if len(pending) < size:
                        break
                    self.records.append(Record(time.monotonic(), upstream, size))
                    del pending[:size]
                await writer.drain()
        writer.close()


# --- the live run ------------------------------------------------------------------------------


@dataclass
class Seen:
    """A message the subscriber saw: when, the topic's last part, the topic and payload size."""

    at: float
    kind: str
    topic_len: int
    size: int

    @property
    def cost(self) -> int:
        return message_cost(self.topic_len, self.size)


@dataclass
class Live:
    """What the live run measured."""

    seconds: float
    records: list[Record]
    seen: list[Seen]
    connected_at: float
    card_bytes_per_s: float
    #: The same before the alarm: the steady pace of the card.
    card_quiet_bytes_per_s: float = 0.0
    #: What the alarm's events and full-rate windows wrote above that pace.
    card_alarm_bytes: float = 0.0

    @property
    def stopped_at(self) -> float:
        return self.connected_at + self.seconds

    def wire(self, since: float = -math.inf, until: float | None = None) -> int:
        """IP bytes of the records passed from ``since`` to ``until`` (the end of the run:
        what the gateway sends as it is stopped is no part of it)."""
        end = self.stopped_at if until is None else until
        return sum(on_the_wire(r.size) for r in self.records if since <= r.at < end)

    def attributed(self, since: float = -math.inf, until: float | None = None) -> int:
        """IP bytes of the messages the subscriber saw from ``since`` to ``until``."""
        end = self.stopped_at if until is None else until
        return sum(m.cost for m in self.seen if since <= m.at < end)

    def mispriced(self) -> int:
        """Messages the subscriber saw for which the proxy passed no record of the size
        :func:`message_cost` gives its PUBLISH (the pricing's check; 0 when it holds)."""
        sizes = collections.Counter(r.size for r in self.records if r.upstream)
        missing = 0
        for m in self.seen:
            size = publish_packet(m.topic_len, m.size) + TLS_RECORD
            if sizes[size] > 0:
                sizes[size] -= 1
            else:
                missing += 1
        return missing

    def mean_cost(self, kind: str) -> float:
        costs = [m.cost for m in self.seen if m.kind == kind]
        if not costs:
            raise RuntimeError(f"the live run saw no {kind} message")
        return statistics.fmean(costs)


def _site(workdir: Path, tcp_port: int, proxy_port: int, ca: Path) -> Path:
    """The example site as `make demo` runs it, over mqtts:// through the proxy."""
    site: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for bus in site["buses"]:
        if bus["kind"] == "modbus-tcp":
            bus["port"] = tcp_port
        else:
            bus["port"] = str(workdir / "rtu")
    site["uplink"]["brokers"] = [f"mqtts://127.0.0.1:{proxy_port}"]
    site["uplink"]["ca_file"] = str(ca)
    site["buffer"]["path"] = str(workdir / "outbox.sqlite")
    site["commands"]["keys"] = str(workdir / "keys")
    site["control"]["socket"] = str(workdir / "control.sock")
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/PID/io")


async def _wait(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"link benchmark: {what} within {within:g} s")
        await asyncio.sleep(0.1)


async def live_run(workdir: Path, minutes: float) -> Live:
    """The demo site's gateway over TLS through the counting proxy for ``minutes``."""
    pki = Authority(workdir / "pki")
    cert, key = pki.issue("broker", "broker", ip="127.0.0.1")
    broker = Mosquitto(
        find_mosquitto(),
        workdir / "broker",
        free_port(),
        tls=TlsListener(pki.cert_path, cert, key),
    )
    await broker.start_async()
    proxy = CountingProxy(broker.port)
    await proxy.start()
    tcp_port, control_port = free_port(), free_port()
    processes: list[asyncio.subprocess.Process] = []
    seen: list[Seen] = []
    prefix = f"district/v1/{GATEWAY}"
    try:
        simulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hil.simulator", "serve",
            "--tcp", f"127.0.0.1:{tcp_port}", "--tcp-devices", "1,2",
            "--rtu-link", str(workdir / "rtu"), "--rtu-devices", "1",
            "--control", f"127.0.0.1:{control_port}", "--noise", "0.01", "--seed", "1",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(simulator)

        async def control(point: str, value: float | None = None) -> None:
            command: dict[str, Any] = {"cmd": "get" if value is None else "set", "bus": "tcp"}
            command |= {"address": 1, "point": point}
            if value is not None:
                command["value"] = value
            await send_control("127.0.0.1", control_port, command)

        for _ in range(400):
            try:
                await control("residual_current")
                break
            except OSError:
                await asyncio.sleep(0.05)
        site = _site(workdir, tcp_port, proxy.port, pki.cert_path)
        async with aiomqtt.Client("127.0.0.1", broker.plain_port) as client:
            await client.subscribe(f"{prefix}/#", qos=1)

            async def collect() -> None:
                async for message in client.messages:
                    topic = str(message.topic)
                    payload = message.payload
                    size = len(payload) if isinstance(payload, bytes | bytearray) else 0
                    kind = topic.removeprefix(prefix + "/")
                    seen.append(Seen(time.monotonic(), kind, len(topic.encode()), size))

            collector = asyncio.create_task(collect())
            gateway = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge.cli", "run", "--config", str(site),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(gateway)
            await _wait(lambda: bool(proxy.connections), 60, "the gateway did not connect")
            connected = proxy.connections[0]
            await asyncio.sleep(SETTLE)
            card_from, card_at = _write_bytes(gateway.pid), time.monotonic()
            end = connected + SETTLE + minutes * 60
            # One leakage alarm, raised and cleared, a third of the way in.
            await asyncio.sleep(max(0.0, (end - time.monotonic()) / 3))
            quiet = (_write_bytes(gateway.pid) - card_from) / (time.monotonic() - card_at)
            await control("residual_current", 350)
            await _wait(lambda: any(m.kind == "events" for m in seen), 60, "no alarm event")
            await asyncio.sleep(3)
            await control("residual_current", 120)
            await _wait(
                lambda: sum(m.kind == "events" for m in seen) >= 2, 60, "no alarm-cleared event"
            )
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            card_span = time.monotonic() - card_at
            card = (_write_bytes(gateway.pid) - card_from) / card_span
            if len(proxy.connections) != 1:
                raise RuntimeError(
                    f"the gateway connected {len(proxy.connections)} times: the run is not one "
                    "session and its figures would mix session and steady costs"
                )
            await asyncio.sleep(1)  # the last PUBACKs
            stop = time.monotonic()
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    finally:
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
                await process.wait()
        await proxy.stop()
        await broker.stop_async()
    alarm = (card - quiet) * card_span
    return Live(stop - connected, list(proxy.records), seen, connected, card, quiet, alarm)


# --- the month ---------------------------------------------------------------------------------


def telemetry_cost(
    stored: list[tuple[float, Any]],
    aliases: contract.Aliases,
    *,
    deflate: bool,
    batch_interval: float,
    batch_size: int,
) -> tuple[int, int]:
    """(IP bytes, messages) of the telemetry the uplink sends for ``stored``."""
    topic_len = len(contract.telemetry_topic("district/v1", GATEWAY).encode())
    payloads = list(
        storage_bench.telemetry_payloads(
            stored, aliases, deflate=deflate, batch_interval=batch_interval, batch_size=batch_size
        )
    )
    return sum(message_cost(topic_len, len(p)) for p in payloads), len(payloads)


@dataclass(frozen=True)
class Overheads:
    """Per-month costs measured in the live run, other than telemetry."""

    session: float  # one session: handshakes, CONNECT, SUBSCRIBE, status, metadata
    session_metadata: float  # of which the metadata message
    steady_per_s: float  # keepalives and whatever else is neither a message nor the session
    health: float  # one health message
    event: float  # one event message


def overheads(live: Live) -> Overheads:
    settle_end = live.connected_at + SETTLE
    session_messages = [
        m for m in live.seen if m.at < settle_end and m.kind in ("status", "metadata")
    ]
    session_rest = live.wire(until=settle_end) - live.attributed(until=settle_end)
    steady_rest = live.wire(since=settle_end) - live.attributed(since=settle_end)
    steady_s = live.seconds - SETTLE
    return Overheads(
        session=TCP_SESSION + session_rest + sum(m.cost for m in session_messages),
        session_metadata=live.mean_cost("metadata"),
        steady_per_s=max(0.0, steady_rest) / steady_s,
        health=live.mean_cost("health"),
        event=live.mean_cost("events"),
    )


def month_mib(
    telemetry_per_s: float,
    alarms_per_day: float,
    costs: Overheads,
    health_interval: float,
    *,
    metadata_scale: float = 1.0,
) -> float:
    session = costs.session + (metadata_scale - 1.0) * costs.session_metadata
    total = (
        telemetry_per_s * MONTH_S
        + alarms_per_day * 2 * 30 * costs.event
        + MONTH_S / health_interval * costs.health
        + SESSIONS_PER_MONTH * session
        + costs.steady_per_s * MONTH_S
    )
    return total / 2**20


def _reference_metadata_scale() -> float:
    """Metadata size of the reference site over the demo's (50 monitors of 20 points, 3 of 14)."""
    config = load_site(EXAMPLE)
    site: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    template = site["devices"][0]
    site["devices"] = [
        {**template, "id": f"efm-{d:03d}", "address": d % 247 + 1} for d in range(50)
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference.yaml"
        path.write_text(yaml.safe_dump(site, sort_keys=False))
        reference = load_site(path)

    def size(config: Any) -> int:
        aliases = contract.Aliases.of_site(config)
        storage = storage_of(config)
        payload = contract.metadata_message(
            GATEWAY, "e", config, aliases, clock_synced=True, storage=storage
        )
        return len(payload)

    return size(reference) * 20 / 14 / size(config)


KEYS: Final = (
    "link_mb_per_month_demo_site",
    "link_mb_per_month_reference_site",
    "link_mb_per_month_demo_site_all",
    "link_mb_per_month_demo_site_defaults_before",
    "link_mb_per_month_demo_site_telemetry",
    "link_mb_per_month_demo_site_health",
    "link_mb_per_month_demo_site_sessions",
    "link_mb_per_month_demo_site_keepalive",
    "link_live_minutes",
    "link_live_kib_measured",
    "link_live_unattributed_share",
    "link_live_mispriced_messages",
    "card_mb_per_day_demo_site",
    "card_mb_per_day_demo_site_quiet",
    "card_mb_per_day_demo_site_three_alarms",
)
#: A run of seconds that goes through every step (``--tiny``).
TINY: Final = {"minutes": 0.05, "hours": 0.02, "reference_seconds": 30.0}


async def run(
    minutes: float = 6.0, hours: float = 24.0, reference_seconds: float = 3600.0
) -> dict[str, float]:
    """The figures of the module's docstring: a live run of ``minutes``, the demo site's
    simulated trace over ``hours``, the reference site's over ``reference_seconds``."""
    config = load_site(EXAMPLE)
    uplink = config.uplink
    deflate = uplink.compression == "deflate"
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        # On the disk, not a tmpfs: write_bytes counts only what goes to a block device.
        live = await live_run(Path(folder), minutes)
    costs = overheads(live)
    kinds = sorted({m.kind for m in live.seen})
    for kind in kinds:
        sizes = [m.size for m in live.seen if m.kind == kind]
        mean = statistics.fmean(sizes)
        print(f"  live: {len(sizes)} {kind} messages, {mean:.0f} payload bytes on average")
    print(f"  live: {len(live.records)} TLS records, {costs}")

    day, alarms = storage_bench.demo_day(hours)
    demo_bytes, _ = telemetry_cost(
        day.stored, contract.Aliases.of_site(config), deflate=deflate,
        batch_interval=uplink.batch_interval, batch_size=uplink.batch_size,
    )  # fmt: skip
    seconds = hours * 3600
    alarms_per_day = alarms * 86_400 / seconds
    demo = month_mib(demo_bytes / seconds, alarms_per_day, costs, uplink.health_interval)

    _, reference = storage_bench.reference_site(reference_seconds, every_reading=False)
    reference_bytes, _ = telemetry_cost(
        reference.stored, storage_bench.aliases_of(reference), deflate=deflate,
        batch_interval=uplink.batch_interval, batch_size=uplink.batch_size,
    )  # fmt: skip
    # The reference site's alarms: as many per monitor as the demo's.
    reference_alarms = alarms_per_day * 50 / len(config.devices)
    reference_month = month_mib(
        reference_bytes / reference_seconds, reference_alarms, costs, uplink.health_interval,
        metadata_scale=_reference_metadata_scale(),
    )  # fmt: skip
    # The same readings with the uplink's defaults before.
    before_bytes, _ = telemetry_cost(
        day.stored, contract.Aliases.of_site(config), deflate=bool(BEFORE["deflate"]),
        batch_interval=BEFORE["batch_interval"], batch_size=int(BEFORE["batch_size"]),
    )  # fmt: skip
    before = month_mib(before_bytes / seconds, alarms_per_day, costs, BEFORE["health"])
    # The same site storing every reading (storage.policy: all), over at most an hour.
    span = min(3600.0, seconds)
    every = storage_bench.simulate(
        Storage({}, pre=0), [d.id for d in config.devices], EFM_SHAPES, span, {},
        keep_polled=False,
    )  # fmt: skip
    every_bytes, _ = telemetry_cost(
        every.stored, contract.Aliases.of_site(config), deflate=deflate,
        batch_interval=uplink.batch_interval, batch_size=uplink.batch_size,
    )  # fmt: skip
    demo_all = month_mib(every_bytes / span, alarms_per_day, costs, uplink.health_interval)
    measured = live.wire()
    unattributed = measured - live.attributed()
    return {
        "link_mb_per_month_demo_site": round(demo, 2),
        "link_mb_per_month_reference_site": round(reference_month, 1),
        "link_mb_per_month_demo_site_all": round(demo_all, 1),
        "link_mb_per_month_demo_site_defaults_before": round(before, 1),
        "link_mb_per_month_demo_site_telemetry": round(demo_bytes / seconds * MONTH_S / 2**20, 2),
        "link_mb_per_month_demo_site_health": round(
            MONTH_S / uplink.health_interval * costs.health / 2**20, 2
        ),
        "link_mb_per_month_demo_site_sessions": round(
            SESSIONS_PER_MONTH * costs.session / 2**20, 2
        ),
        "link_mb_per_month_demo_site_keepalive": round(costs.steady_per_s * MONTH_S / 2**20, 2),
        "link_live_minutes": round(live.seconds / 60, 2),
        "link_live_kib_measured": round(measured / 1024, 1),
        "link_live_unattributed_share": round(unattributed / measured, 3),
        "link_live_mispriced_messages": live.mispriced(),
        "card_mb_per_day_demo_site": round(live.card_bytes_per_s * 86_400 / 2**20, 1),
        "card_mb_per_day_demo_site_quiet": round(live.card_quiet_bytes_per_s * 86_400 / 2**20, 1),
        # The storage benchmark's day: the steady pace and three alarms like the live one.
        "card_mb_per_day_demo_site_three_alarms": round(
            (live.card_quiet_bytes_per_s * 86_400 + 3 * live.card_alarm_bytes) / 2**20, 1
        ),
    }


if __name__ == "__main__":
    for key, value in asyncio.run(run()).items():
        print(f"{key:<40} {value}")
