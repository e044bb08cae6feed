"""The uplink's service: connect, drain the outbox in order through the in-flight window,
reconnect. The package docstring (edge/uplink/__init__.py) says how it behaves.

Tasks and their owners: :meth:`Uplink.run` owns the deleter (deletions outlive a session) and
one attempt at a time; an attempt owns its session and the stop watch; a session owns, in one
``asyncio.TaskGroup``, the command watch, the drain, the health reports, the retries of a
status or metadata the broker refused, and one send per message in the window. The first of
them to fail (a lost connection) ends the session, and the group ends the others with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import aiomqtt

from buffer import Outbox, OutboxClosed, OutboxUnavailable, Record, Stream
from drivers.backoff import Backoff
from edge import contract, timesync
from edge.commands import Commands, Handler
from edge.signing import KeyRing, load_key_ring
from edge.timesync import SyncProbe
from edge.uplink.client import MqttClient, PublishRefused
from edge.uplink.connection import (
    PROTOCOLS,
    BrokerAddress,
    describe,
    parse_broker_url,
    port_accepts,
    refused_by_broker,
    tls_context,
)
from edge.uplink.drain import DrainPolicy, Send, Waiting
from edge.uplink.inflight import InFlight
from edge.uplink.messages import Message, MessageBuilder
from edge.uplink.refusals import Refusals

if TYPE_CHECKING:
    from edge.config.model import CommandPolicy
    from edge.config.model import Uplink as UplinkConfig

__all__ = ["Tally", "Uplink", "UplinkState"]

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


@dataclass(slots=True)
class Tally:
    """The uplink's counters since it was made, for display and the health message."""

    #: Messages the broker acknowledged (PUBACK), status messages excluded.
    published: int = 0
    #: Outbox rows deleted after their PUBACK.
    acked: int = 0
    #: Connection attempts so far.
    attempts: int = 0
    #: Backlog (backfill) messages acknowledged, a part of ``published``.
    backfill_published: int = 0
    #: Messages sent again after a reconnect, identical to the first time.
    resent: int = 0
    #: Payload bytes of the outbox's messages acknowledged so far.
    bytes_sent: int = 0
    #: Health messages acknowledged.
    health_published: int = 0


@dataclass(slots=True)
class _Cursors:
    """Where one session has read up to in each lane (rows with a seq up to the mark are either
    built into a message or will not be sent by this session)."""

    #: Telemetry above this seq is live data (from about the session's start on); the rest,
    #: up to it, is the backlog.
    live_from: int
    event_after: int = 0
    live_after: int = 0
    backlog_after: int = 0
    events: deque[Record] = field(default_factory=deque)


class _Stopping(Exception):
    """:meth:`Uplink.stop` was called: ends the attempt under way."""


class Uplink:
    """Store-and-forward from the outbox to the district broker.

    ``run()`` until cancelled or until ``stop()``; ``state``, ``tally`` and the counters are
    for display.
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
        self._boot_time = boot_time
        self._clock_synced = clock_synced or timesync.cached(timesync.kernel_clock_synced)
        self._status_message = functools.partial(
            contract.status_message,
            gateway_id,
            version=version,
            boot_time=boot_time,
            config_hash=config_hash,
        )
        self._brokers = [parse_broker_url(url) for url in config.brokers]
        self.topics = contract.Topics.of(config.topic_prefix, gateway_id)
        self._metadata = metadata
        self._health = health
        #: Downlink commands, answered on the acks topic; off without handlers.
        self._commands: Commands | None = None
        if command_handlers:
            # Without a policy: no keys (every command refused) and Commands' own defaults,
            # which are the site model's.
            keys: KeyRing | None = None
            limits: dict[str, Any] = {}
            if command_policy is not None:
                if command_policy.keys is not None:
                    keys = load_key_ring(Path(command_policy.keys))
                limits = {
                    "insecure_unsigned": command_policy.insecure_unsigned_commands,
                    "max_skew": command_policy.max_clock_skew,
                    "max_per_minute": command_policy.max_per_minute,
                }
            self._commands = Commands(
                gateway_id,
                lambda: self._outbox.epoch,
                command_handlers,
                ttl=config.command_ttl,
                clock_synced=self._clock_synced,
                keys=keys,
                store=outbox,
                **limits,
            )

        self._state: UplinkState = "offline"
        #: The broker of the current or last attempt, as logged (no credentials).
        self.broker: str | None = None
        #: The error that ended the last attempt, for display.
        self.last_error: str | None = None
        #: Whether this session's own online status came back from the broker: the broker
        #: both took it and let this gateway read its topics, so the prefix and the broker's
        #: access rules work (a pushed config is confirmed on it, edge/site_runner.py).
        self.heard_back = False
        #: The topics the broker refuses (PUBACK reason codes), and when to log it.
        self.refusals = Refusals()
        self.tally = Tally()

        self._online_status = b""
        self._stopping = asyncio.Event()
        #: Set when run() returns; None while it is not running.
        self._finished: asyncio.Event | None = None
        self._new_rows = asyncio.Event()
        self._in_flight = InFlight()
        self._policy = DrainPolicy.of(config, time.monotonic())
        self._build = MessageBuilder(
            config,
            gateway_id,
            events_topic=self.topics.events,
            telemetry_topic=self.topics.telemetry,
            clock_synced=self._clock_synced,
            aliases=aliases,
        )
        #: The connected client, while online (for republish_metadata).
        self._client: aiomqtt.Client | None = None

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
        return len(self._in_flight)

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
        return self._in_flight.payloads()

    async def stop(self) -> None:
        """Publish the offline status if connected, disconnect and make :meth:`run` return.

        Takes at most about two seconds. Once stopped, an uplink stays stopped.
        """
        self._stopping.set()
        finished = self._finished
        if finished is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_TIMEOUT + 0.5):
                    await finished.wait()

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
        if self._finished is not None:
            raise RuntimeError("Uplink.run() is already running")
        finished = self._finished = asyncio.Event()
        remove_listener = self._outbox.add_commit_listener(self._on_commit)
        # Rows of acknowledged messages, in the order their PUBACKs came.
        deletions: asyncio.Queue[tuple[int, ...]] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as lifetime:
                # The deletions outlive a session: rows acknowledged must go even if the
                # connection drops now, or they would stay claimed (never re-read) until the
                # next start.
                deleter = lifetime.create_task(self._delete(deletions), name="uplink-delete")
                try:
                    await self._reconnect(deletions)
                finally:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_STOP_TIMEOUT):
                            await deletions.join()
                    deleter.cancel()
        finally:
            remove_listener()
            self._state = "stopped"
            self._finished = None
            finished.set()

    async def _reconnect(self, deletions: asyncio.Queue[tuple[int, ...]]) -> None:
        """One attempt after the other, brokers in turn, with backoff, until :meth:`stop`."""
        backoff = Backoff(_BACKOFF_FIRST, self._config.reconnect_max)
        index = 0
        while not self._stopping.is_set():
            broker = self._brokers[index]
            self.broker = broker.display
            self._state = "connecting"
            self.tally.attempts += 1
            error = await self._attempt(broker, backoff, deletions)
            if self._stopping.is_set():
                return
            index = (index + 1) % len(self._brokers)
            delay = backoff.next_delay()
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
                async with asyncio.timeout(pause):
                    await self._stopping.wait()

    # --- one connection -------------------------------------------------------------------------

    async def _attempt(
        self, broker: BrokerAddress, backoff: Backoff, deletions: asyncio.Queue[tuple[int, ...]]
    ) -> BaseException | None:
        """Run one session until it fails or :meth:`stop`; return what ended it (None: the
        stop). Cancelling it also ends the session, which says "offline" as it unwinds."""
        try:
            async with asyncio.TaskGroup() as attempt:
                attempt.create_task(
                    self._session(broker, backoff, deletions), name="uplink-session"
                )
                attempt.create_task(self._until_stopped(), name="uplink-stop-wait")
        except ExceptionGroup as ended:
            return _cause(ended)
        return None  # neither task returns: the session raises, the stop watch too

    async def _until_stopped(self) -> None:
        await self._stopping.wait()
        raise _Stopping

    async def _session(
        self, broker: BrokerAddress, backoff: Backoff, deletions: asyncio.Queue[tuple[int, ...]]
    ) -> None:
        """Connect, say online, then drain, answer commands and report health until one of
        them fails; raise what failed."""
        config = self._config
        client = MqttClient(
            broker.host,
            broker.port,
            identifier=config.client_id or f"edge-{self._gateway_id}",
            username=config.username,
            password=config.password,
            will=aiomqtt.Will(self.topics.status, self._status("offline"), qos=1, retain=True),
            keepalive=max(1, round(config.keepalive)),
            timeout=_OPERATION_TIMEOUT,
            protocol=PROTOCOLS[config.protocol],
            # Built per attempt, so certificates renewed on disk are picked up by a reconnect.
            tls_context=tls_context(config, self._certs) if broker.tls else None,
            # Our window plus room for the status, acks of commands and health.
            max_inflight_messages=config.inflight + 4,
        )
        async with client:
            loop = asyncio.get_running_loop()
            stable_at = loop.time() + _STABLE_AFTER
            self._state = "online"
            self._build.session_wall_start = time.time()
            self.last_error = None
            self._build.max_payload = self._payload_limit(client.max_packet_size)
            self.heard_back = False
            try:
                async with asyncio.TaskGroup() as tasks:
                    await self._come_online(client, tasks)
                    log.info("uplink: online via %s as %s", broker.display, client.identifier)
                    self._client = client
                    window = asyncio.Semaphore(config.inflight)
                    tasks.create_task(self._watch(client), name="uplink-watch")
                    tasks.create_task(
                        self._drain(client, tasks, window, deletions), name="uplink-drain"
                    )
                    if self._health is not None:
                        tasks.create_task(self._report_health(client), name="uplink-health")
            except asyncio.CancelledError:
                await self._say_offline(client)
                raise
            finally:
                self._client = None
                self.heard_back = False
                if loop.time() >= stable_at:
                    backoff.reset()
                self._in_flight.session_ended(self.refusals.topics)
        raise aiomqtt.MqttError("connection ended")  # the watch raises first: never reached

    async def _come_online(self, client: aiomqtt.Client, tasks: asyncio.TaskGroup) -> None:
        """The online status, the metadata (both again with backoff while the broker refuses
        them), then the subscriptions."""
        if not await self._publish_status(client):
            tasks.create_task(
                self._keep_trying(self._publish_status, client), name="uplink-retry-status"
            )
        # Before any telemetry: compact telemetry refers to the table it announces.
        if self._metadata is not None and not await self._publish_metadata(client):
            tasks.create_task(
                self._keep_trying(self._publish_metadata, client), name="uplink-retry-metadata"
            )
        if self._commands is not None:
            await client.subscribe(self.topics.commands, qos=1)
        # The retained status just published comes back only through a broker that lets this
        # gateway use its topics; a PUBACK alone does not say so (Mosquitto acknowledges a
        # publish its access rules then drop).
        await client.subscribe(self.topics.status, qos=1)

    async def _publish_status(self, client: aiomqtt.Client) -> bool:
        online = self._status("online")
        self._online_status = online  # what the echo must bring back (heard_back)
        return await self._publish(self.topics.status, client, online, retain=True)

    async def _keep_trying(
        self,
        publish: Callable[[aiomqtt.Client], Awaitable[bool]],
        client: aiomqtt.Client,
    ) -> None:
        """Publish again, with backoff, what the broker refused at connect (status, metadata)
        until it takes it or the session ends: the uplink stays "refused" meanwhile."""
        backoff = Backoff(_BACKOFF_FIRST, self._config.reconnect_max)
        with contextlib.suppress(aiomqtt.MqttError):  # the session notices a lost link
            while True:
                await asyncio.sleep(backoff.next_delay())
                if await publish(client):
                    return

    def _payload_limit(self, max_packet_size: int | None) -> int:
        limit = self._config.max_message_bytes
        if self._in_flight.learnt_limit is not None:
            limit = min(limit, self._in_flight.learnt_limit)
        if max_packet_size is not None:
            longest_topic = max(len(self.topics.telemetry), len(self.topics.events))
            broker_limit = max_packet_size - _PUBLISH_OVERHEAD - longest_topic
            if broker_limit < limit:
                log.info(
                    "uplink: the broker takes packets up to %d bytes: payloads up to %d bytes",
                    max_packet_size,
                    broker_limit,
                )
                limit = broker_limit
        return max(limit, 1)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, OSError, PublishRefused):
            await client.publish(
                self.topics.status,
                self._status("offline"),
                qos=1,
                retain=True,
                timeout=_STATUS_TIMEOUT,
            )

    async def _publish_metadata(self, client: aiomqtt.Client) -> bool:
        if self._metadata is None:
            return False
        try:
            payload = self._metadata(self._outbox.epoch)
        except Exception:
            # A bug in building it must not keep the alarms from going out.
            log.exception("uplink: cannot build the metadata message")
            return False
        return await self._publish(self.topics.metadata, client, payload, retain=True)

    async def _report_health(self, client: aiomqtt.Client) -> None:
        """The health message at connect and every ``health_interval``, QoS 1, never stored:
        a missed one is superseded by the next. Only when the gateway gave a ``health``."""
        while True:
            payload = await self._health_message()
            if payload is not None and await self._publish(self.topics.health, client, payload):
                self.tally.health_published += 1
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
            "published": self.tally.published,
            "acked": self.tally.acked,
            "attempts": self.tally.attempts,
            "resent": self.tally.resent,
            "backfill_published": self.tally.backfill_published,
            "truncated": self.truncated,
            "inflight": self.inflight,
            "bytes_sent": self.tally.bytes_sent,
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
                if message.topic.matches(self.topics.status):
                    self.heard_back = self.heard_back or message.payload == self._online_status
                    continue
                if self._commands is None or not message.topic.matches(self.topics.commands):
                    continue
                payload = message.payload
                raw = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                ack = await self._commands.handle(raw, retained=bool(message.retain))
                # QoS 1 like everything else; acks are not stored: a command whose ack is lost
                # is repeated by the platform and answered again from the remembered ack.
                await self._publish(self.topics.acks, client, ack)
        except aiomqtt.MqttError as exc:
            reason = exc.__cause__ or exc
            raise aiomqtt.MqttError(f"connection lost ({reason})") from reason
        raise aiomqtt.MqttError("connection ended")

    # --- draining -------------------------------------------------------------------------------

    def _on_commit(self, streams: frozenset[Stream]) -> None:
        self._new_rows.set()

    async def _drain(
        self,
        client: aiomqtt.Client,
        tasks: asyncio.TaskGroup,
        window: asyncio.Semaphore,
        deletions: asyncio.Queue[tuple[int, ...]],
    ) -> None:
        """Send what the outbox holds, in the order :class:`DrainPolicy` says, up to ``window``
        messages awaiting PUBACK, each in its own task of the session."""

        def launch(message: Message) -> None:
            tasks.create_task(self._send(client, message, window, deletions), name="uplink-send")

        # What the last connection left unacknowledged goes first and unchanged.
        for message in self._in_flight.resend():
            await window.acquire()
            self.tally.resent += 1
            launch(message)
        # Live data: readings from the session's start on, with the same grace as the
        # historical flag (rows committed while connecting are live data, not backfill).
        live_from = await self._outbox.recent_since(
            self._build.session_wall_start - self._build.grace()
        )
        cursors = _Cursors(live_from=live_from, live_after=live_from)
        self._policy.new_session()
        while True:
            await window.acquire()
            # Cleared before looking, so a commit during the look wakes the next wait.
            self._new_rows.clear()
            try:
                built, wait = await self._next_message(cursors)
            except BaseException:
                window.release()
                raise
            if built is not None:
                self._in_flight.add(built)
                launch(built)
                continue
            window.release()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._new_rows.wait()

    async def _next_message(self, cursors: _Cursors) -> tuple[Message | None, float | None]:
        """The next message to send, or None and how long to wait at most (None: until new rows
        are committed or a backfill PUBACK frees its slot)."""
        epoch = self._outbox.epoch
        if not cursors.events:
            peeked = await self._outbox.peek("event", _EVENT_CHUNK, after=cursors.event_after)
            if peeked:
                cursors.event_after = peeked[-1].seq
                cursors.events.extend(r for r in peeked if not self._in_flight.claimed(r.seq))
        # While an event waits the policy sends it whatever else waits: no need to look further.
        live = [] if cursors.events else await self._unclaimed(cursors.live_after, None)
        while True:
            decision = self._policy.next(
                Waiting(
                    events=len(cursors.events),
                    live=len(live),
                    live_created=live[0].created if live else None,
                    backfill_in_flight=self._in_flight.backfill,
                ),
                now=time.monotonic(),
                # Wall clock, because `created` is.
                wall=time.time(),
            )
            if not isinstance(decision, Send):
                return None, decision.seconds
            if decision.lane == "event":
                return self._build.event(cursors.events.popleft(), epoch), 0
            if decision.lane == "live":
                message = self._build.telemetry(live, epoch, "live")
                cursors.live_after = message.seqs[-1]
                return message, 0
            backlog = await self._unclaimed(cursors.backlog_after, cursors.live_from)
            if not backlog:
                self._policy.backlog_finished()
                continue
            message = self._build.telemetry(backlog, epoch, "backfill")
            cursors.backlog_after = message.seqs[-1]
            self._policy.backfill_sent(len(message.payload), time.monotonic())
            return message, 0

    async def _unclaimed(self, after: int, through: int | None) -> list[Record]:
        """Telemetry rows in (``after``, ``through``] not already in a message, up to a batch
        (skipping claimed rows, which only a previous session leaves behind)."""
        while True:
            rows = await self._outbox.peek(
                "telemetry", self._config.batch_size, after=after, through=through
            )
            run = self._in_flight.unclaimed_run(rows)
            if run is not None:
                return run
            after = rows[-1].seq

    async def _send(
        self,
        client: aiomqtt.Client,
        message: Message,
        window: asyncio.Semaphore,
        deletions: asyncio.Queue[tuple[int, ...]],
    ) -> None:
        """Publish one message holding one window slot; on its PUBACK, have its rows deleted.

        A PUBACK that refuses the message (MQTT 5 reason code 0x80 or above) keeps the rows and
        the slot: the message goes again, unchanged, after a growing pause. Holding the slot
        keeps the refused messages within the window, and leaves the other slots to what the
        broker still takes (telemetry, when only events are denied). A lost connection raises
        :class:`aiomqtt.MqttError`, which ends the session; the message stays in flight and
        goes again, unchanged, after the reconnect.
        """
        retry = Backoff(_BACKOFF_FIRST, self._config.reconnect_max)
        while True:
            try:
                await client.publish(message.topic, message.payload, qos=1)
                break
            except PublishRefused as exc:
                self._refused(exc)
            await asyncio.sleep(retry.next_delay())
        # The slot is freed only by a PUBACK. A lost connection ends the session (and its
        # window): freeing the slot then would let the drain build one more message while the
        # session winds down, one more than the window in memory.
        window.release()
        if message.lane == "backfill":
            self._new_rows.set()  # the backlog may take the next slot
        self._accepted(message.topic)
        self._in_flight.acknowledged(message)
        self.tally.published += 1
        self.tally.bytes_sent += len(message.payload)
        if message.lane == "backfill":
            self.tally.backfill_published += 1
        deletions.put_nowait(message.seqs)

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

    async def _delete(self, deletions: asyncio.Queue[tuple[int, ...]]) -> None:
        """Delete the rows of acknowledged messages, one message after the other; for as long
        as :meth:`run` runs."""
        while True:
            seqs = await deletions.get()
            try:
                await self._ack(seqs)
            except Exception:
                # A bug rather than the disk; the rows go again after the next start.
                log.exception("uplink: cannot delete %d sent rows", len(seqs))
            finally:
                deletions.task_done()

    async def _ack(self, seqs: Sequence[int]) -> None:
        """Delete rows the broker acknowledged; while the disk refuses, retry."""
        retry = Backoff(_ACK_RETRY_FIRST, _ACK_RETRY_MAX, jitter=False)
        try:
            while True:
                try:
                    await self._outbox.ack(seqs)
                except OutboxUnavailable as exc:
                    log.warning("uplink: cannot delete %d sent rows yet (%s)", len(seqs), exc)
                    await asyncio.sleep(retry.next_delay())
                except OutboxClosed:
                    # Shutting down: the rows go again after the next start (same seqs).
                    return
                else:
                    self.tally.acked += len(seqs)
                    return
        finally:
            self._in_flight.deleted(seqs)

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        return self._status_message(self._outbox.epoch, state, clock_synced=self._clock_synced())


def _cause(ended: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """What ended an attempt: the first error of its tasks (None when it was the stop). An
    error that is not the network's is a bug: the gateway keeps running, the traceback is
    logged."""
    errors = [e for e in _leaves(ended) if not isinstance(e, _Stopping)]
    for error in errors:
        if not isinstance(error, aiomqtt.MqttError | OSError):
            log.error("uplink: unexpected error", exc_info=error)
    return errors[0] if errors else None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
