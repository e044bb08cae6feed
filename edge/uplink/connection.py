"""The uplink's connection to a broker: broker URLs, TLS, and the bare TCP look that tells
when a broker that went away is back. The MQTT client itself is :mod:`.client`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from edge.config.issues import url_without_login
from edge.uplink.client import ClosedBeforeConnack

if TYPE_CHECKING:
    from edge.config.model import Uplink as UplinkConfig

__all__ = [
    "PROTOCOLS",
    "BrokerAddress",
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
