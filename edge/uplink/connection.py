"""The uplink's connection to a broker: broker URLs, TLS, the MQTT client, and the bare TCP
look that tells when a broker that went away is back."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from aiomqtt.types import PayloadType
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config.model import Uplink as UplinkConfig
from edge.config.warning_checks import url_without_login
from edge.uplink.refusals import Refusal

__all__ = [
    "PROTOCOLS",
    "BrokerAddress",
    "ClosedBeforeConnack",
    "MqttClient",
    "PublishRefused",
    "describe",
    "parse_broker_url",
    "port_accepts",
    "refused_by_broker",
    "tls_context",
    "tls_files",
]

#: ``uplink.protocol`` to aiomqtt's protocol version.
PROTOCOLS: Final = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}


#: The TLS files an installed gateway keeps beside its site file (docs/deploy.md).
CA_FILE: Final = "ca.pem"
CLIENT_CERT: Final = "client.pem"
CLIENT_KEY: Final = "client.key"


def tls_files(
    config: UplinkConfig, certs: Path | None = None
) -> tuple[str | None, str | None, str | None]:
    """``(ca_file, cert_file, key_file)`` for TLS: the site file's when it names any, else the
    installed ones in ``certs`` (``ca.pem``, and ``client.pem`` with ``client.key``) that
    exist; None where neither has one (the system's authorities, no client certificate)."""
    if config.ca_file or config.cert_file or certs is None:
        return config.ca_file, config.cert_file, config.key_file
    ca = certs / CA_FILE
    cert, key = certs / CLIENT_CERT, certs / CLIENT_KEY
    pair = cert.is_file() and key.is_file()
    return (
        str(ca) if ca.is_file() else None,
        str(cert) if pair else None,
        str(key) if pair else None,
    )


def tls_context(config: UplinkConfig, certs: Path | None = None) -> ssl.SSLContext:
    """The TLS settings of :func:`tls_files`: the CA file (else the system's), the client pair
    if any.

    Raises :class:`OSError` (``ssl.SSLError`` is one) naming the file that cannot be loaded;
    the uplink then backs off like for any other failed attempt.
    """
    ca_file, cert_file, key_file = tls_files(config, certs)
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        raise OSError(f"cannot load ca_file {ca_file}: {exc}") from exc
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except OSError as exc:
            raise OSError(
                f"cannot load cert_file {cert_file} with key_file {key_file}: {exc}"
            ) from exc
    return context


class ClosedBeforeConnack(aiomqtt.MqttError):
    """The broker closed the connection before its CONNACK (TLS refusal, connection limit)."""


class PublishRefused(Exception):
    """The broker answered a QoS 1 PUBLISH with a PUBACK whose reason code is a failure
    (0x80 or above, MQTT 5 only): it did not take the message, e.g. 0x87 Not authorized for a
    topic its ACL denies, 0x97 Quota exceeded. The connection stays up.

    Not an :class:`aiomqtt.MqttError` on purpose: the connection is fine, and every caller
    must decide what a refusal means rather than treat it as a lost connection.
    """

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        self.refusal = Refusal(topic, int(reason.value), str(reason))
        super().__init__(f"the broker refused the message on {topic}: {self.refusal.describe()}")


class MqttClient(aiomqtt.Client):
    """aiomqtt's client, failing the connect at once when the broker closes before CONNACK,
    keeping the Maximum Packet Size an MQTT 5 broker announces in its CONNACK, and reading
    the reason code of every PUBACK (:class:`PublishRefused`).

    aiomqtt 2.5.1 ignores a disconnect that comes before the CONNACK and waits for the
    operation timeout instead. A TLS 1.3 broker refusing our client certificate does exactly
    that (the handshake completes on our side, the alert follows), as does a broker at its
    connection limit: without this, every such attempt would hang for 10 s.
    """

    #: The broker's limit on a packet's size (MQTT 5 CONNACK), None when it set none.
    max_packet_size: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Failure reason codes of PUBACKs that arrived, by packet id, until publish() reads
        #: them.
        self._refusals: dict[int, ReasonCode] = {}

    async def publish(  # type: ignore[override]
        self,
        /,
        topic: str,
        payload: PayloadType = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (aiomqtt's signature)
    ) -> None:
        """aiomqtt 2.5.1's publish, plus the PUBACK's verdict: raises :class:`PublishRefused`
        when the broker answered with a failure reason code.

        aiomqtt sets the same event for every PUBACK whatever its reason code, and the packet
        id that would tell them apart stays inside its publish(); so this is its publish again
        (same steps, same errors), reading the verdict by packet id at the end. It returns only
        on the PUBACK for QoS 1: paho marks a QoS 1 message published, and calls on_publish,
        only from its PUBACK handler.
        """
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            if self._disconnected.done() and self._disconnected.exception():
                raise MqttCodeError(
                    info.rc, "Could not publish message"
                ) from self._disconnected.exception()
            raise MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout=timeout)
            if not info.is_published():
                # Woken by _on_disconnect: the connection went before the PUBACK.
                lost = self._disconnected
                cause = lost.exception() if lost.done() and not lost.cancelled() else None
                raise aiomqtt.MqttError("connection lost before the PUBACK") from cause
        reason = self._refusals.pop(info.mid, None)
        if reason is not None:
            raise PublishRefused(topic, reason)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self._refusals[mid] = reason_code
        else:
            # A packet id is reused once acknowledged: no stale verdict may stay behind.
            self._refusals.pop(mid, None)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        limit = getattr(properties, "MaximumPacketSize", None)
        if isinstance(limit, int) and limit > 0:
            self.max_packet_size = limit
        super()._on_connect(client, userdata, flags, reason_code, properties)

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
                ClosedBeforeConnack(
                    f"the broker closed the connection before accepting it ({reason_code}); "
                    "with mutual TLS, check that it accepts cert_file"
                )
            )
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        # aiomqtt leaves a pending publish waiting out its whole timeout on a connection that
        # is gone: a broker that hangs up on every PUBLISH would make each attempt last the
        # operation timeout. Wake them; publish() sees no PUBACK and raises at once.
        for waiting in self._pending_publishes.values():
            waiting.set()


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
        raise ValueError(
            f"not a broker URL: {url_without_login(url)!r} (expected mqtt://host:port or "
            "mqtts://...)"
        )
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return BrokerAddress(host=host, port=port, tls=tls, display=f"{parts.scheme}://{shown}:{port}")


async def port_accepts(broker: BrokerAddress, within: float) -> bool:
    """Whether the broker's port takes a TCP connection ``within`` seconds (closed again at
    once: no MQTT session, nothing in the broker but a log line)."""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(broker.host, broker.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def describe(error: BaseException | None) -> str:
    """One line for the log: the error and what caused it, without a traceback."""
    if error is None:
        return "connection ended"
    text = str(error) or type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


def refused_by_broker(error: BaseException | None) -> bool:
    """True when the broker was reached and said no (login, TLS): nothing to wait for but the
    backoff. False for a broker that went away (refused, unreachable, reset, lost)."""
    if isinstance(error, MqttConnectError | ClosedBeforeConnack):
        return True
    # aiomqtt turns connect-time OSErrors (ssl.SSLError among them) into a bare MqttError with
    # the text only; tls_context() raises "cannot load ..." before any connection is made.
    text = str(error)
    return any(mark in text for mark in ("SSL", "certificate", "cannot load"))
