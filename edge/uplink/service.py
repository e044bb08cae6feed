"""The uplink's service: connect, drain the outbox in order through the in-flight window,
reconnect. The package docstring (edge/uplink/__init__.py) says how it behaves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import aiomqtt

from buffer import Outbox, OutboxClosed, OutboxUnavailable, Record, Stream
from drivers.backoff import Backoff
from edge import contract, timesync
from edge.commands import Commands, Handler
from edge.config.model import CommandPolicy
from edge.config.model import Uplink as UplinkConfig
from edge.signing import load_key_ring
from edge.timesync import SyncProbe
from edge.uplink.connection import (
    PROTOCOLS,
    BrokerAddress,
    MqttClient,
    PublishRefused,
    describe,
    parse_broker_url,
    port_accepts,
    refused_by_broker,
    tls_context,
)
from edge.uplink.messages import Lanes, Message, MessageBuilder, TokenBucket
from edge.uplink.refusals import Refusals

__all__ = ["Uplink", "UplinkState"]

log = logging.getLogger("edge.uplink")

#: "offline" means not connected and waiting before the next attempt (backing off);
#: "refused" means connected, but the broker's last answer on some topic was a PUBACK that
#: refused the message (MQTT 5 reason code 0x80 or above: an ACL, a quota).
UplinkState = Literal["connecting", "online", "refused", "offline", "stopped"]

_BACKOFF_FIRST: Final = 0.5
#: A session that stayed up this long resets the backoff; a broker that accepts and then drops
#: us at once must not turn the reconnect into a tight loop.
_STABLE_AFTER: Final = 5.0
#: CONNACK and PUBACK waits. A dead connection is usually noticed sooner (socket error, or
#: paho's keepalive check); this bounds a broker that is connected but never answers.
_OPERATION_TIMEOUT: Final = 10.0
#: How long the shutdown may spend publishing the offline status and disconnecting.
_STOP_TIMEOUT: Final = 2.0
_STATUS_TIMEOUT: Final = 1.0
#: Events read from the outbox per look; each still goes out as its own message.
_EVENT_CHUNK: Final = 50
_ACK_RETRY_FIRST: Final = 0.2
_ACK_RETRY_MAX: Final = 5.0
#: While waiting to reconnect after the broker went away: a bare TCP connect this often (with
#: a fifth of jitter), so that the uplink is back within about this long of the broker.
_PROBE_EVERY: Final = 0.5
_PROBE_TIMEOUT: Final = 1.0
#: Room an MQTT PUBLISH needs besides topic and payload: fixed header (up to 5), topic length
#: (2), packet id (2) and, for MQTT 5, the properties length and a few properties.
_PUBLISH_OVERHEAD: Final = 32
#: Connections in a row that must end with the same message unacknowledged before the uplink
#: takes it for too large for the broker, and the smallest payload limit it will learn.
_REFUSED_AFTER: Final = 3
_SMALLEST_LIMIT: Final = 1024


class Uplink:
    """Store-and-forward from the outbox to the district broker.

    ``run()`` until cancelled or until ``stop()``; ``state`` and the counters are for display.
    """

    def __init__(
        self,
        config: UplinkConfig,
        gateway_id: str,
        outbox: Outbox,
        *,
        version: str,
        boot_time: float,
        config_hash: str = "",
        clock_synced: SyncProbe | None = None,
        command_handlers: Mapping[str, Handler] | None = None,
        command_policy: CommandPolicy | None = None,
        metadata: Callable[[str], bytes] | None = None,
        health: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        aliases: contract.Aliases | None = None,
        certs: Path | None = None,
    ) -> None:
        """``metadata(epoch)`` builds the retained metadata message, published on every connect
        before any telemetry (and by :meth:`republish_metadata`). ``health()`` gives the
        health message's fields (edge/health.py: outbox depth, bus errors, ...); the uplink
        adds only its own numbers and publishes it every ``health_interval``. ``aliases``: the point
        table the metadata announces; with it (and ``telemetry_encoding: columnar``) telemetry
        goes in the compact form. Set :attr:`aliases` anew along with a new metadata.
        ``certs``: the folder of the installed TLS files (``ca.pem``, ``client.pem``,
        ``client.key``), used for mqtts:// when the site file names none of its own."""
        self._config = config
        self._certs = certs
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._version = version
        self._boot_time = boot_time
        self._config_hash = config_hash
        self._clock_synced = clock_synced or timesync.cached(timesync.kernel_clock_synced)
        self._brokers = [parse_broker_url(url) for url in config.brokers]
        self._client_id = config.client_id or f"edge-{gateway_id}"
        self._keepalive = max(1, round(config.keepalive))
        prefix = config.topic_prefix
        self.telemetry_topic = contract.telemetry_topic(prefix, gateway_id)
        self.events_topic = contract.events_topic(prefix, gateway_id)
        self.status_topic = contract.status_topic(prefix, gateway_id)
        self.metadata_topic = contract.metadata_topic(prefix, gateway_id)
        self.health_topic = contract.health_topic(prefix, gateway_id)
        self._metadata = metadata
        self._health = health
        self.commands_topic = f"{prefix}/{gateway_id}/commands"
        self.acks_topic = f"{prefix}/{gateway_id}/acks"
        #: Downlink commands, answered on the acks topic; off without handlers.
        self._commands: Commands | None = None
        if command_handlers:
            policy = command_policy or CommandPolicy()
            self._commands = Commands(
                gateway_id,
                lambda: self._outbox.epoch,
                command_handlers,
                ttl=config.command_ttl,
                clock_synced=self._clock_synced,
                keys=None if policy.keys is None else load_key_ring(Path(policy.keys)),
                insecure_unsigned=policy.insecure_unsigned_commands,
                max_skew=policy.max_clock_skew,
                max_per_minute=policy.max_per_minute,
                store=outbox,
            )

        self._state: UplinkState = "offline"
        #: The broker of the current or last attempt, as logged (no credentials).
        self.broker: str | None = None
        #: Messages the broker acknowledged (PUBACK), status messages excluded.
        self.published = 0
        #: Outbox rows deleted after their PUBACK.
        self.acked = 0
        #: Connection attempts so far.
        self.attempts = 0
        #: Backlog (backfill) messages acknowledged, a part of ``published``.
        self.backfill_published = 0
        #: Messages sent again after a reconnect, identical to the first time.
        self.resent = 0
        #: Payload bytes of the outbox's messages acknowledged so far.
        self.bytes_sent = 0
        #: Health messages acknowledged.
        self.health_published = 0
        #: The error that ended the last attempt, for display.
        self.last_error: str | None = None
        #: Whether this session's own online status came back from the broker: the broker
        #: both took it and let this gateway read its topics, so the prefix and the broker's
        #: access rules work (a pushed config is confirmed on it, edge/site_runner.py).
        self.heard_back = False
        #: The topics the broker refuses (PUBACK reason codes), and when to log it.
        self.refusals = Refusals()

        self._online_status = b""
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._new_rows = asyncio.Event()
        self._backoff = Backoff(_BACKOFF_FIRST, config.reconnect_max)
        self._stragglers: set[asyncio.Task[None]] = set()
        self._online_since: float | None = None
        #: Messages built and not yet acknowledged, in the order they were built. Survives a
        #: lost connection: they go first, unchanged, on the next one. Never more than the
        #: window, since a message is built only when a window slot is free.
        self._unacked: dict[int, Message] = {}
        self._next_key = 0
        #: Seqs of rows in a message built but not yet deleted: a session does not read them
        #: into a second message.
        self._claimed: set[int] = set()
        #: Backfill messages awaiting their PUBACK now.
        self._backfill_sending = 0
        #: Status and metadata the broker refused at connect, published again with backoff;
        #: they end with the session.
        self._retries: set[asyncio.Task[None]] = set()
        #: Deletions of acknowledged rows; they outlive the session that started them.
        self._deletions: set[asyncio.Task[None]] = set()
        self._build = MessageBuilder(
            config,
            gateway_id,
            events_topic=self.events_topic,
            telemetry_topic=self.telemetry_topic,
            clock_synced=self._clock_synced,
            aliases=aliases,
        )
        #: Keys of the messages resent at the start of the current session.
        self._resent_keys: set[int] = set()
        #: The oldest unacknowledged message and how many sessions in a row ended with it
        #: resent and still unacknowledged.
        self._stuck: tuple[int, int] = (-1, 0)
        #: A payload limit learnt from a broker that drops larger messages (MQTT 3.1.1 has no
        #: way to announce one).
        self._learnt_limit: int | None = None
        #: The connected client, while online (for republish_metadata).
        self._client: aiomqtt.Client | None = None
        clock = time.monotonic
        self._backfill_limits = [
            TokenBucket(config.backfill_messages_per_s, 1.0, clock)
            if config.backfill_messages_per_s is not None
            else None,
            TokenBucket(
                float(config.backfill_bytes_per_s),
                float(config.backfill_bytes_per_s),
                clock,
            )
            if config.backfill_bytes_per_s is not None
            else None,
        ]

    @property
    def state(self) -> UplinkState:
        """``connecting``, ``online``, ``refused`` (connected, but the broker refuses messages
        on some topic), ``offline`` (backing off before the next attempt) or ``stopped``."""
        if self._state == "online" and self.refusals.active:
            return "refused"
        return self._state

    @property
    def inflight(self) -> int:
        """Messages sent (or to be sent again) and not yet acknowledged."""
        return len(self._unacked)

    @property
    def aliases(self) -> contract.Aliases | None:
        """The point table compact telemetry refers to; set a new one along with the metadata
        that announces it (then :meth:`republish_metadata`)."""
        return self._build.aliases

    @aliases.setter
    def aliases(self, table: contract.Aliases | None) -> None:
        self._build.aliases = table

    @property
    def truncated(self) -> int:
        """Events sent with their own fields cut because they exceeded the size limit."""
        return self._build.truncated

    @property
    def unacknowledged(self) -> list[bytes]:
        """The payloads of those messages, oldest first: exactly what goes again first after a
        reconnect."""
        return [message.payload for message in self._unacked.values()]

    async def stop(self) -> None:
        """Publish the offline status if connected, disconnect and make :meth:`run` return.

        Takes at most about two seconds. Once stopped, an uplink stays stopped.
        """
        self._stopping.set()
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), _STOP_TIMEOUT + 0.5)

    async def republish_metadata(self) -> bool:
        """Publish the metadata again now (after a config change); True once the broker has it.

        While offline this does nothing and says False: every connect publishes it anyway.
        """
        client = self._client
        if client is None or self._metadata is None:
            return False
        try:
            return await self._publish_metadata(client)
        except aiomqtt.MqttError as exc:
            # The session notices a lost connection itself; the next connect publishes it.
            log.warning("uplink: metadata not republished (%s)", exc)
            return False

    async def run(self) -> None:
        """Connect, drain, reconnect, until :meth:`stop` or cancellation. Never raises else."""
        if self._running:
            raise RuntimeError("Uplink.run() is already running")
        self._running = True
        self._stopped.clear()
        loop = asyncio.get_running_loop()
        remove_listener = self._outbox.add_commit_listener(self._on_commit)
        index = 0
        try:
            while not self._stopping.is_set():
                broker = self._brokers[index]
                self.broker = broker.display
                self._state = "connecting"
                self.attempts += 1
                self._online_since = None
                error = await self._attempt(broker)
                if self._stopping.is_set():
                    break
                if (
                    self._online_since is not None
                    and loop.time() - self._online_since >= _STABLE_AFTER
                ):
                    self._backoff.reset()
                index = (index + 1) % len(self._brokers)
                delay = self._backoff.next_delay()
                self._state = "offline"
                self.last_error = describe(error)
                log.warning(
                    "uplink: broker %s: %s; next attempt (%s) in %.1f s",
                    broker.display,
                    self.last_error,
                    self._brokers[index].display,
                    delay,
                )
                await self._wait_to_retry(self._brokers[index], delay, error)
        finally:
            remove_listener()
            leftovers = self._stragglers | self._deletions
            if leftovers:
                await asyncio.wait(leftovers, timeout=_STOP_TIMEOUT)
            self._state = "stopped"
            self._running = False
            self._stopped.set()

    async def _wait_to_retry(
        self, broker: BrokerAddress, delay: float, error: BaseException | None
    ) -> None:
        """Wait ``delay`` before the next attempt, or less once the broker is back.

        A broker that went away (restart, outage) comes back at some moment the backoff knows
        nothing about; waiting out the rest of a 10 s backoff then delays every alarm that
        waited through the outage. So a bare TCP connect (closed at once: no MQTT session, just
        the port) looks every half second, and when the port that was seen closed accepts
        again the attempt starts. A port that accepts all along does not shorten the wait: a
        broker that takes the TCP connection but drops the session must not see a tight loop,
        nor must one that refused our login or certificate (no probing then at all).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        probing = not refused_by_broker(error)
        seen_closed = False
        while True:
            if probing:
                if not await port_accepts(broker, _PROBE_TIMEOUT):
                    seen_closed = True
                elif seen_closed:
                    log.info("uplink: %s accepts connections again", broker.display)
                    return
            remaining = deadline - loop.time()
            if remaining <= 0 or self._stopping.is_set():
                return
            pause = min(remaining, _PROBE_EVERY * random.uniform(0.8, 1.2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    # --- one connection -------------------------------------------------------------------------

    async def _attempt(self, broker: BrokerAddress) -> BaseException | None:
        """Run one session until it fails or we stop; return what ended it."""
        session = asyncio.create_task(self._session(broker), name="uplink-session")
        stopping = asyncio.create_task(self._stopping.wait(), name="uplink-stop-wait")
        try:
            await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also on cancellation of run(): the session says "offline" as it unwinds.
            stopping.cancel()
            if not session.done():
                session.cancel()
                _, pending = await asyncio.wait({session}, timeout=_STOP_TIMEOUT)
                if pending:
                    log.warning("uplink: the session did not end within %.1f s", _STOP_TIMEOUT)
        if session.cancelled():
            return None
        error = session.exception()
        if error is not None and not isinstance(error, aiomqtt.MqttError | OSError):
            # A bug rather than the network; keep the gateway running but keep the traceback.
            log.error("uplink: unexpected error", exc_info=error)
        return error

    async def _session(self, broker: BrokerAddress) -> None:
        client = MqttClient(
            broker.host,
            broker.port,
            identifier=self._client_id,
            username=self._config.username,
            password=self._config.password,
            will=aiomqtt.Will(self.status_topic, self._status("offline"), qos=1, retain=True),
            keepalive=self._keepalive,
            timeout=_OPERATION_TIMEOUT,
            protocol=PROTOCOLS[self._config.protocol],
            # Built per attempt, so certificates renewed on disk are picked up by a reconnect.
            tls_context=tls_context(self._config, self._certs) if broker.tls else None,
            # Our window plus room for the status, acks of commands and health.
            max_inflight_messages=self._config.inflight + 4,
        )
        await self._connect(client)
        try:
            self._state = "online"
            self._online_since = asyncio.get_running_loop().time()
            self._build.session_wall_start = time.time()
            self.last_error = None
            self._build.max_payload = self._payload_limit(client.max_packet_size)
            try:
                self.heard_back = False
                if not await self._publish_status(client):
                    self._keep_trying(self._publish_status, client)
                # Before any telemetry: compact telemetry refers to the table it announces.
                if not await self._publish_metadata(client):
                    self._keep_trying(self._publish_metadata, client)
                if self._commands is not None:
                    await client.subscribe(self.commands_topic, qos=1)
                # The retained status just published comes back only through a broker that
                # lets this gateway use its topics; a PUBACK alone does not say so (Mosquitto
                # acknowledges a publish its access rules then drop).
                await client.subscribe(self.status_topic, qos=1)
                log.info("uplink: online via %s as %s", broker.display, self._client_id)
                self._client = client
                await self._pump(client)
            except asyncio.CancelledError:
                await self._say_offline(client)
                raise
        finally:
            self._client = None
            self.heard_back = False
            for task in self._retries:
                task.cancel()
            if self._retries:
                await asyncio.wait(self._retries)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _publish_status(self, client: aiomqtt.Client) -> bool:
        online = self._status("online")
        self._online_status = online  # what the echo must bring back (heard_back)
        return await self._publish(self.status_topic, client, online, retain=True)

    def _keep_trying(
        self,
        publish: Callable[[aiomqtt.Client], Awaitable[bool]],
        client: aiomqtt.Client,
    ) -> None:
        """Publish again, with backoff, what the broker refused at connect (status, metadata)
        until it takes it or the session ends: the uplink stays "refused" meanwhile."""

        async def retry() -> None:
            backoff = Backoff(_BACKOFF_FIRST, self._config.reconnect_max)
            with contextlib.suppress(aiomqtt.MqttError):  # the session notices a lost link
                while True:
                    await asyncio.sleep(backoff.next_delay())
                    if await publish(client):
                        return

        task = asyncio.create_task(retry(), name="uplink-retry-refused")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _check_refused_message(self) -> None:
        """A message the broker never acknowledges over several connections, each of which it
        dropped, is most likely over the broker's packet limit: Mosquitto closes the
        connection of a client that sends one (MQTT 3.1.1 cannot tell us the limit). Resent
        unchanged it would fail forever, so it is taken apart and its rows go again in smaller
        messages (the platform never had it: no duplicate under another id)."""
        if not self._unacked:
            self._stuck = (-1, 0)
            return
        key, message = next(iter(self._unacked.items()))
        # A message the broker answered with a refusing PUBACK was not too large: it was read.
        if key not in self._resent_keys or message.topic in self.refusals.topics:
            self._stuck = (-1, 0)
            return
        count = self._stuck[1] + 1 if self._stuck[0] == key else 1
        self._stuck = (key, count)
        if count < _REFUSED_AFTER or len(message.payload) <= _SMALLEST_LIMIT:
            return
        limit = max(_SMALLEST_LIMIT, len(message.payload) // 2)
        log.error(
            "uplink: a %d-byte message (rows %d-%d) was not acknowledged over %d connections, "
            "each dropped: the broker seems to refuse messages this large; sending its rows "
            "again in messages up to %d bytes (lower uplink.max_message_bytes to match the "
            "broker)",
            len(message.payload),
            message.seqs[0],
            message.seqs[-1],
            count,
            limit,
        )
        # The others over the new limit as well: they stood behind it on the same connection,
        # so the broker never took them either.
        for other in [k for k, m in self._unacked.items() if len(m.payload) > limit]:
            self._claimed.difference_update(self._unacked.pop(other).seqs)
        self._learnt_limit = limit
        self._stuck = (-1, 0)

    def _payload_limit(self, max_packet_size: int | None) -> int:
        limit = self._config.max_message_bytes
        if self._learnt_limit is not None:
            limit = min(limit, self._learnt_limit)
        if max_packet_size is not None:
            longest_topic = max(len(self.telemetry_topic), len(self.events_topic))
            broker_limit = max_packet_size - _PUBLISH_OVERHEAD - longest_topic
            if broker_limit < limit:
                log.info(
                    "uplink: the broker takes packets up to %d bytes: payloads up to %d bytes",
                    max_packet_size,
                    broker_limit,
                )
                limit = broker_limit
        return max(limit, 1)

    async def _connect(self, client: aiomqtt.Client) -> None:
        # aiomqtt connects on a worker thread; cancelling the await does not stop it. Shield the
        # connect so that a connection completing after a stop is still closed properly.
        enter = asyncio.ensure_future(client.__aenter__())
        try:
            await asyncio.shield(enter)
        except asyncio.CancelledError:
            enter.add_done_callback(functools.partial(self._leave_late, client))
            raise

    def _leave_late(self, client: aiomqtt.Client, enter: asyncio.Future[aiomqtt.Client]) -> None:
        if enter.cancelled() or enter.exception() is not None:
            return

        async def leave() -> None:
            await self._say_offline(client)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

        task = asyncio.get_running_loop().create_task(leave(), name="uplink-late-leave")
        self._stragglers.add(task)
        task.add_done_callback(self._stragglers.discard)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, OSError, PublishRefused):
            await client.publish(
                self.status_topic,
                self._status("offline"),
                qos=1,
                retain=True,
                timeout=_STATUS_TIMEOUT,
            )

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Drain until the connection fails; raise what failed."""
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        window = asyncio.Semaphore(self._config.inflight)
        sending: set[asyncio.Task[None]] = set()
        drain = asyncio.create_task(
            self._drain(client, window, failed, sending), name="uplink-drain"
        )
        watch = asyncio.create_task(self._watch(client), name="uplink-watch")
        ended: set[asyncio.Future[None]] = {drain, watch, failed}
        if self._health is not None:
            ended.add(asyncio.create_task(self._report_health(client), name="uplink-health"))
        try:
            done, _ = await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*ended, *sending):
                if task is not failed:
                    task.cancel()
            await asyncio.wait({*(t for t in ended if t is not failed), *sending})
            if failed.done():
                # Marked as seen: when another task ended the session first, this error is
                # not raised, and asyncio would log it (with a traceback) at garbage collection.
                failed.exception()
            else:
                failed.cancel()
            self._check_refused_message()
        for future in done:
            error = future.exception()
            if error is not None:
                raise error
        raise aiomqtt.MqttError("connection ended")

    async def _publish_metadata(self, client: aiomqtt.Client) -> bool:
        if self._metadata is None:
            return False
        try:
            payload = self._metadata(self._outbox.epoch)
        except Exception:
            # A bug in building it must not keep the alarms from going out.
            log.exception("uplink: cannot build the metadata message")
            return False
        return await self._publish(self.metadata_topic, client, payload, retain=True)

    async def _report_health(self, client: aiomqtt.Client) -> None:
        """The health message at connect and every ``health_interval``, QoS 1, never stored:
        a missed one is superseded by the next. Only when the gateway gave a ``health``."""
        while True:
            payload = await self._health_message()
            if payload is not None and await self._publish(self.health_topic, client, payload):
                self.health_published += 1
            await asyncio.sleep(self._config.health_interval)

    async def _health_message(self) -> bytes | None:
        """The gateway's health (edge/health.py builds it) with the uplink's own numbers."""
        try:
            report: dict[str, Any] = {}
            if self._health is not None:
                report.update(await self._health())
            report["uplink"] = {**report.get("uplink", {}), **self.counters}
            report["uplink_state"] = self.state
            if self.refusals.active:
                report["uplink_refused_topics"] = self.refusals.topics
            return contract.health_message(
                self._gateway_id, self._outbox.epoch, report, clock_synced=self._clock_synced()
            )
        except (OutboxUnavailable, OutboxClosed) as exc:
            log.warning("uplink: no health message this time (%s)", exc)
        except Exception:
            log.exception("uplink: cannot build the health message")
        return None

    @property
    def counters(self) -> dict[str, int]:
        """The uplink's counters since it was made, as the health message carries them."""
        return {
            "published": self.published,
            "acked": self.acked,
            "attempts": self.attempts,
            "resent": self.resent,
            "backfill_published": self.backfill_published,
            "truncated": self.truncated,
            "inflight": self.inflight,
            "bytes_sent": self.bytes_sent,
            "refused": self.refusals.count,
        }

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Answer commands; raise :class:`aiomqtt.MqttError` as soon as the connection is lost.

        The subscriptions are the commands topic (when commands are on) and the gateway's own
        status topic (whose echo sets :attr:`heard_back`); aiomqtt ends the
        iteration with an error when the client disconnects. Without this, a publish waiting
        for its PUBACK on a dead connection would wait for the operation timeout, and an idle
        uplink would not notice the loss until it had something to send.
        """
        try:
            async for message in client.messages:
                if message.topic.matches(self.status_topic):
                    self.heard_back = self.heard_back or message.payload == self._online_status
                    continue
                if self._commands is None or not message.topic.matches(self.commands_topic):
                    continue
                payload = message.payload
                raw = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                ack = await self._commands.handle(raw, retained=bool(message.retain))
                # QoS 1 like everything else; acks are not stored: a command whose ack is lost
                # is repeated by the platform and answered again from the remembered ack.
                await self._publish(self.acks_topic, client, ack)
        except aiomqtt.MqttError as exc:
            reason = exc.__cause__ or exc
            raise aiomqtt.MqttError(f"connection lost ({reason})") from reason

    # --- draining -------------------------------------------------------------------------------

    def _on_commit(self, streams: frozenset[Stream]) -> None:
        self._new_rows.set()

    async def _drain(
        self,
        client: aiomqtt.Client,
        window: asyncio.Semaphore,
        failed: asyncio.Future[None],
        sending: set[asyncio.Task[None]],
    ) -> None:
        """Send what the outbox holds, in order, up to ``window`` messages awaiting PUBACK."""

        def launch(message: Message) -> None:
            if message.lane == "backfill":
                self._backfill_sending += 1
            task = asyncio.create_task(self._send(client, message, window, failed))
            sending.add(task)
            task.add_done_callback(sending.discard)

        # Every send task of the last session has ended (_pump waits for them).
        self._backfill_sending = 0
        # What the last connection left unacknowledged goes first and unchanged.
        self._resent_keys.clear()
        for key, message in list(self._unacked.items()):
            await window.acquire()
            self.resent += 1
            self._resent_keys.add(key)
            launch(message)
        # Live data: readings from the session's start on, with the same grace as the
        # historical flag (rows committed while connecting are live data, not backfill).
        live_from = await self._outbox.recent_since(
            self._build.session_wall_start - self._build.grace()
        )
        lanes = Lanes(live_from=live_from, live_after=live_from)
        while not failed.done():
            await window.acquire()
            # Cleared before looking, so a commit during the look wakes the next wait.
            self._new_rows.clear()
            try:
                built, wait = await self._next_message(lanes)
            except BaseException:
                window.release()
                raise
            if built is not None:
                self._unacked[self._next_key] = built
                self._next_key += 1
                self._claimed.update(built.seqs)
                launch(built)
                continue
            window.release()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_rows.wait(), wait)

    async def _next_message(self, lanes: Lanes) -> tuple[Message | None, float | None]:
        """The next message to send, or None and how long to wait at most (None: until new rows
        are committed)."""
        epoch = self._outbox.epoch
        # 1. Events, oldest first, one message each.
        if not lanes.events:
            peeked = await self._outbox.peek("event", _EVENT_CHUNK, after=lanes.event_after)
            if peeked:
                lanes.event_after = peeked[-1].seq
                lanes.events.extend(r for r in peeked if r.seq not in self._claimed)
        if lanes.events:
            return self._build.event(lanes.events.popleft(), epoch), 0

        # 2. Live telemetry: rows committed since the session came up.
        batch_size = self._config.batch_size
        wait: float | None = None
        live = await self._unclaimed(lanes.live_after, None, batch_size)
        if not live:
            lanes.live_started = True
        else:
            # Wall clock, because `created` is; a clock stepped backwards sends at once.
            age = time.time() - live[0].created
            fill_wait = self._config.batch_interval - age
            # Rows waiting at the session's start go at once: they waited through the outage.
            if not lanes.live_started or len(live) >= batch_size or age < 0 or fill_wait <= 0:
                lanes.live_started = True
                message = self._build.telemetry(live, epoch, "live")
                lanes.live_after = message.seqs[-1]
                return message, 0
            # Let the batch fill; the backlog may use the time meanwhile.
            wait = fill_wait

        # 3. The backlog that waited when the session came up, oldest first, rate-limited. It
        # leaves one slot of the window free, so that an alarm raised meanwhile does not wait
        # for a backfill PUBACK to get a slot (a round trip of a second or more over 4G).
        if not lanes.backlog_done:
            if 1 < self._config.inflight <= self._backfill_sending + 1:
                return None, wait  # a backfill PUBACK wakes the loop
            hold = max((b.delay() for b in self._backfill_limits if b is not None), default=0.0)
            if hold > 0:
                return None, hold if wait is None else min(wait, hold)
            backlog = await self._unclaimed(lanes.backlog_after, lanes.live_from, batch_size)
            if backlog:
                message = self._build.telemetry(backlog, epoch, "backfill")
                lanes.backlog_after = message.seqs[-1]
                messages, volume = self._backfill_limits
                if messages is not None:
                    messages.take(1)
                if volume is not None:
                    volume.take(len(message.payload))
                return message, 0
            lanes.backlog_done = True
        return None, wait

    async def _unclaimed(self, after: int, through: int | None, limit: int) -> list[Record]:
        """Telemetry rows in (``after``, ``through``] not already in a message, up to ``limit``
        (skipping claimed rows, which only a previous session leaves behind)."""
        while True:
            rows = await self._outbox.peek("telemetry", limit, after=after, through=through)
            if not rows or not self._claimed:
                return rows
            free = [r for r in rows if r.seq not in self._claimed]
            if free:
                # Stop at the first claimed row: a message carries a run of rows, oldest first.
                run: list[Record] = []
                for r in rows:
                    if r.seq in self._claimed:
                        if run:
                            break
                        continue
                    run.append(r)
                return run
            after = rows[-1].seq

    async def _send(
        self,
        client: aiomqtt.Client,
        message: Message,
        window: asyncio.Semaphore,
        failed: asyncio.Future[None],
    ) -> None:
        """Publish one message holding one window slot; on its PUBACK, delete its rows.

        A PUBACK that refuses the message (MQTT 5 reason code 0x80 or above) keeps the rows and
        the slot: the message goes again, unchanged, after a growing pause. Holding the slot
        keeps the refused messages within the window, and leaves the other slots to what the
        broker still takes (telemetry, when only events are denied).
        """
        backfill = message.lane == "backfill"  # counted by launch() in _drain
        retry = Backoff(_BACKOFF_FIRST, self._config.reconnect_max)
        try:
            while True:
                try:
                    await client.publish(message.topic, message.payload, qos=1)
                    break
                except PublishRefused as exc:
                    self._refused(exc)
                await asyncio.sleep(retry.next_delay())
        except aiomqtt.MqttError as exc:
            # The message stays in _unacked and goes again, unchanged, after the reconnect.
            if not failed.done():
                failed.set_exception(exc)
            return
        finally:
            window.release()
            if backfill:
                self._backfill_sending -= 1
                self._new_rows.set()  # the backlog may take the next slot
        self._accepted(message.topic)
        for key, kept in self._unacked.items():
            if kept is message:
                del self._unacked[key]
                break
        self.published += 1
        self.bytes_sent += len(message.payload)
        if message.lane == "backfill":
            self.backfill_published += 1
        # The deletion outlives this session: rows acknowledged must go even if the connection
        # drops now, or they would stay claimed (never re-read) until the next start.
        deletion = asyncio.get_running_loop().create_task(self._ack(message.seqs))
        self._deletions.add(deletion)
        deletion.add_done_callback(self._deletions.discard)

    async def _publish(
        self, topic: str, client: aiomqtt.Client, payload: bytes, *, retain: bool = False
    ) -> bool:
        """Publish a message that is not stored (status, metadata, health, an ack): True once
        the broker took it, False when it refused it (said in the log; nothing to keep).

        MqttClient.publish() with qos=1 returns only once the PUBACK has arrived and raises
        :class:`PublishRefused` when its reason code refuses the message. A lost connection or
        no PUBACK within the timeout raises aiomqtt.MqttError.
        """
        try:
            await client.publish(topic, payload, qos=1, retain=retain)
        except PublishRefused as exc:
            self._refused(exc)
            return False
        self._accepted(topic)
        return True

    def _refused(self, error: PublishRefused) -> None:
        """Say that the broker refuses a topic: the first time at once, then at most once a
        minute, with how many refusals the line covers."""
        refusal = error.refusal
        covered = self.refusals.refused(refusal)
        if covered is None:
            return
        log.error(
            "uplink: REFUSED: the broker %s refused %s on %s: %s; refused topics now: %s; "
            "refused outbox messages keep their rows and go again with backoff (check the "
            "broker's ACL or quota for this gateway's user and topics)",
            self.broker,
            "a message" if covered == 1 else f"{covered} messages since the last report, the last",
            refusal.topic,
            refusal.describe(),
            ", ".join(self.refusals.topics),
        )

    def _accepted(self, topic: str) -> None:
        if self.refusals.accepted(topic):
            log.warning("uplink: the broker %s accepts messages on %s again", self.broker, topic)

    async def _ack(self, seqs: Sequence[int]) -> None:
        """Delete rows the broker acknowledged; while the disk refuses, retry."""
        delay = _ACK_RETRY_FIRST
        try:
            while True:
                try:
                    await self._outbox.ack(seqs)
                except OutboxUnavailable as exc:
                    log.warning("uplink: cannot delete %d sent rows yet (%s)", len(seqs), exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _ACK_RETRY_MAX)
                except OutboxClosed:
                    # Shutting down: the rows go again after the next start (same seqs).
                    return
                else:
                    self.acked += len(seqs)
                    return
        finally:
            self._claimed.difference_update(seqs)

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        return contract.status_message(
            self._gateway_id,
            self._outbox.epoch,
            state,
            version=self._version,
            boot_time=self._boot_time,
            config_hash=self._config_hash,
            clock_synced=self._clock_synced(),
        )
