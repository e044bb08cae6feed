"""The uplink: drains the outbox to the district broker over MQTT, ack then delete.

One connection at a time, brokers tried in the configured order (the next one after each
failure), a fresh :class:`aiomqtt.Client` per attempt. While connected the uplink publishes
events first (one message each), then telemetry in batches; every message goes out with QoS 1
and its rows are deleted from the outbox only after the broker's PUBACK. A connection lost
mid-drain leaves the rows in place; after the reconnect they go out again with the same
``message_id`` (see :mod:`edge.contract`), so the platform can drop the duplicate.

The retained status topic says "online" once connected; the MQTT will says "offline" for an
unclean loss, and :meth:`Uplink.stop` (or cancelling :meth:`Uplink.run`) publishes "offline"
before a clean disconnect, since a clean DISCONNECT makes the broker discard the will.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from buffer import Outbox, OutboxUnavailable, Record, Stream
from drivers.backoff import Backoff
from edge import contract, timesync
from edge.commands import Commands, Handler
from edge.config.model import Uplink as UplinkConfig
from edge.timesync import SyncProbe

__all__ = [
    "PROTOCOLS",
    "BrokerAddress",
    "Uplink",
    "UplinkState",
    "parse_broker_url",
    "tls_context",
]

log = logging.getLogger("edge.uplink")

#: "offline" means not connected and waiting before the next attempt (backing off).
UplinkState = Literal["connecting", "online", "offline", "stopped"]

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


#: ``uplink.protocol`` to aiomqtt's protocol version.
PROTOCOLS: Final = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}


def tls_context(config: UplinkConfig) -> ssl.SSLContext:
    """The TLS settings of ``config``: its CA file (else the system's), its client pair if any.

    Raises :class:`OSError` (``ssl.SSLError`` is one) naming the file that cannot be loaded;
    the uplink then backs off like for any other failed attempt.
    """
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
    except OSError as exc:
        raise OSError(f"cannot load ca_file {config.ca_file}: {exc}") from exc
    if config.cert_file is not None and config.key_file is not None:
        try:
            context.load_cert_chain(config.cert_file, config.key_file)
        except OSError as exc:
            raise OSError(
                f"cannot load cert_file {config.cert_file} with key_file {config.key_file}: {exc}"
            ) from exc
    return context


class _Client(aiomqtt.Client):
    """aiomqtt's client, failing the connect at once when the broker closes before CONNACK.

    aiomqtt 2.5.1 ignores a disconnect that comes before the CONNACK and waits for the
    operation timeout instead. A TLS 1.3 broker refusing our client certificate does exactly
    that (the handshake completes on our side, the alert follows), as does a broker at its
    connection limit: without this, every such attempt would hang for 10 s.
    """

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            self._connected.set_exception(
                aiomqtt.MqttError(
                    f"the broker closed the connection before accepting it ({reason_code}); "
                    "with mutual TLS, check that it accepts cert_file"
                )
            )
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A broker URL taken apart. ``display`` is safe to log (no credentials)."""

    host: str
    port: int
    tls: bool
    display: str


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` (default port 1883) or ``mqtts://host:port`` (default 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"not a broker URL: {url!r} (expected mqtt://host:port or mqtts://...)")
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return BrokerAddress(host=host, port=port, tls=tls, display=f"{parts.scheme}://{shown}:{port}")


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
    ) -> None:
        self._config = config
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._version = version
        self._boot_time = boot_time
        self._config_hash = config_hash
        self._clock_synced = clock_synced or timesync.cached(timesync.kernel_clock_synced)
        #: Wall time of the current session's start: rows stored before it waited through an
        #: outage and go out marked historical (backfill).
        self._session_wall_start = float("inf")
        self._brokers = [parse_broker_url(url) for url in config.brokers]
        self._client_id = config.client_id or f"edge-{gateway_id}"
        self._keepalive = max(1, round(config.keepalive))
        prefix = config.topic_prefix
        self.telemetry_topic = contract.telemetry_topic(prefix, gateway_id)
        self.events_topic = contract.events_topic(prefix, gateway_id)
        self.status_topic = contract.status_topic(prefix, gateway_id)
        self.commands_topic = f"{prefix}/{gateway_id}/commands"
        self.acks_topic = f"{prefix}/{gateway_id}/acks"
        #: Downlink commands, answered on the acks topic; off without handlers.
        self._commands = (
            None
            if not command_handlers
            else Commands(
                gateway_id,
                lambda: self._outbox.epoch,
                command_handlers,
                ttl=config.command_ttl,
                clock_synced=self._clock_synced,
            )
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
        #: The error that ended the last attempt, for display.
        self.last_error: str | None = None

        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._new_rows = asyncio.Event()
        self._backoff = Backoff(_BACKOFF_FIRST, config.reconnect_max)
        self._stragglers: set[asyncio.Task[None]] = set()
        self._online_since: float | None = None

    @property
    def state(self) -> UplinkState:
        """``connecting``, ``online``, ``offline`` (backing off before the next attempt) or
        ``stopped``."""
        return self._state

    async def stop(self) -> None:
        """Publish the offline status if connected, disconnect and make :meth:`run` return.

        Takes at most about two seconds. Once stopped, an uplink stays stopped.
        """
        self._stopping.set()
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), _STOP_TIMEOUT + 0.5)

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
                self.last_error = _describe(error)
                log.warning(
                    "uplink: broker %s: %s; next attempt (%s) in %.1f s",
                    broker.display,
                    self.last_error,
                    self._brokers[index].display,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            remove_listener()
            if self._stragglers:
                await asyncio.wait(self._stragglers, timeout=_STOP_TIMEOUT)
            self._state = "stopped"
            self._running = False
            self._stopped.set()

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
        client = _Client(
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
            tls_context=tls_context(self._config) if broker.tls else None,
        )
        await self._connect(client)
        try:
            self._state = "online"
            self._online_since = asyncio.get_running_loop().time()
            self._session_wall_start = time.time()
            self.last_error = None
            try:
                await self._publish(self.status_topic, client, self._status("online"), retain=True)
                if self._commands is not None:
                    await client.subscribe(self.commands_topic, qos=1)
                log.info("uplink: online via %s as %s", broker.display, self._client_id)
                await self._pump(client)
            except asyncio.CancelledError:
                await self._say_offline(client)
                raise
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

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
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.publish(
                self.status_topic,
                self._status("offline"),
                qos=1,
                retain=True,
                timeout=_STATUS_TIMEOUT,
            )

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Drain until the connection fails; raise what failed."""
        drain = asyncio.create_task(self._drain(client), name="uplink-drain")
        watch = asyncio.create_task(self._watch(client), name="uplink-watch")
        try:
            done, _ = await asyncio.wait({drain, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            watch.cancel()
            await asyncio.wait({drain, watch})
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
        raise aiomqtt.MqttError("connection ended")

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Answer commands; raise :class:`aiomqtt.MqttError` as soon as the connection is lost.

        The only subscription is the commands topic (when commands are on); aiomqtt ends the
        iteration with an error when the client disconnects. Without this, a publish waiting
        for its PUBACK on a dead connection would wait for the operation timeout, and an idle
        uplink would not notice the loss until it had something to send.
        """
        try:
            async for message in client.messages:
                if self._commands is None or not message.topic.matches(self.commands_topic):
                    continue
                payload = message.payload
                raw = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                ack = await self._commands.handle(raw)
                # QoS 1 like everything else; acks are not stored: a command whose ack is lost
                # is repeated by the platform and answered again from the remembered ack.
                await client.publish(self.acks_topic, ack, qos=1)
        except aiomqtt.MqttError as exc:
            reason = exc.__cause__ or exc
            raise aiomqtt.MqttError(f"connection lost ({reason})") from reason

    # --- draining -------------------------------------------------------------------------------

    def _on_commit(self, streams: frozenset[Stream]) -> None:
        self._new_rows.set()

    async def _drain(self, client: aiomqtt.Client) -> None:
        epoch = self._outbox.epoch
        batch_size = self._config.batch_size
        while True:
            # Cleared before looking, so a commit during the look wakes the next wait.
            self._new_rows.clear()
            events = await self._outbox.peek("event", _EVENT_CHUNK)
            if events:
                for record in events:
                    payload = contract.event_message(
                        self._gateway_id,
                        epoch,
                        record,
                        clock_synced=self._clock_synced(),
                        historical=self._historical(record.created),
                    )
                    await self._publish(self.events_topic, client, payload)
                    await self._ack([record])
                continue
            batch = await self._outbox.peek("telemetry", batch_size)
            if not batch:
                await self._new_rows.wait()
                continue
            # Wall clock, because `created` is; a clock stepped backwards sends at once.
            age = time.time() - batch[0].created
            fill_wait = self._config.batch_interval - age
            if len(batch) < batch_size and age >= 0 and fill_wait > 0:
                # Let the batch fill, but any commit (an event above all) wakes us to look again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_rows.wait(), fill_wait)
                continue
            payload = contract.telemetry_message(
                self._gateway_id,
                epoch,
                batch,
                clock_synced=self._clock_synced(),
                historical=self._historical(batch[0].created),
            )
            await self._publish(self.telemetry_topic, client, payload)
            await self._ack(batch)

    async def _publish(
        self, topic: str, client: aiomqtt.Client, payload: bytes, *, retain: bool = False
    ) -> None:
        # aiomqtt 2.5.1 Client.publish() with qos=1 returns only once the PUBACK has arrived:
        # paho marks a QoS>0 message published (and calls on_publish, which sets the event
        # publish() waits on) only from _handle_pubackcomp, i.e. on PUBACK; for QoS 0 it would
        # return as soon as the bytes were written. A lost connection or no PUBACK within the
        # timeout raises aiomqtt.MqttError, and then nothing is acked.
        await client.publish(topic, payload, qos=1, retain=retain)
        if not retain:
            self.published += 1

    async def _ack(self, records: Sequence[Record]) -> None:
        """Delete rows the broker acknowledged; while the disk refuses, retry (stay connected)."""
        seqs = [r.seq for r in records]
        delay = _ACK_RETRY_FIRST
        while True:
            try:
                await self._outbox.ack(seqs)
            except OutboxUnavailable as exc:
                log.warning("uplink: cannot delete %d sent rows yet (%s)", len(seqs), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _ACK_RETRY_MAX)
            else:
                self.acked += len(seqs)
                return

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

    def _historical(self, created: float) -> bool:
        # A grace of one batch interval plus a second: rows committed while the connection was
        # being set up are live data, not backfill.
        grace = self._config.batch_interval + 1.0
        return created < self._session_wall_start - grace


def _describe(error: BaseException | None) -> str:
    """One line for the log: the error and what caused it, without a traceback."""
    if error is None:
        return "connection ended"
    text = str(error) or type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text
