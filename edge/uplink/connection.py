"""The uplink's connection to a broker: broker URLs, TLS, the MQTT client, and the bare TCP
look that tells when a broker that went away is back."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config.model import Uplink as UplinkConfig

__all__ = [
    "PROTOCOLS",
    "BrokerAddress",
    "ClosedBeforeConnack",
    "MqttClient",
    "describe",
    "parse_broker_url",
    "port_accepts",
    "refused_by_broker",
    "tls_context",
]

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


class ClosedBeforeConnack(aiomqtt.MqttError):
    """The broker closed the connection before its CONNACK (TLS refusal, connection limit)."""


class MqttClient(aiomqtt.Client):
    """aiomqtt's client, failing the connect at once when the broker closes before CONNACK,
    and keeping the Maximum Packet Size an MQTT 5 broker announces in its CONNACK.

    aiomqtt 2.5.1 ignores a disconnect that comes before the CONNACK and waits for the
    operation timeout instead. A TLS 1.3 broker refusing our client certificate does exactly
    that (the handshake completes on our side, the alert follows), as does a broker at its
    connection limit: without this, every such attempt would hang for 10 s.
    """

    #: The broker's limit on a packet's size (MQTT 5 CONNACK), None when it set none.
    max_packet_size: int | None = None

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
