"""Warnings about a valid site file: settings that run, but put something at risk (a password
in clear text, a broker that cannot say it refused a message).

Each check is a function from the validated :class:`SiteConfig` to ``(place, message)`` pairs;
the loader turns the place into the file's line and column. Add a check by appending it to
:data:`CHECKS`. A warning never stops the gateway; ``edge check-config --strict`` makes it an
error. A message never repeats a secret: URLs are shown without their user and password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from edge.config.bus_budget import bus_budget_warnings
from edge.config.issues import ConfigWarning, url_without_login
from edge.config.model import SiteConfig
from edge.config.plausibility import implausible_thresholds
from edge.config.site_files import missing_file_warnings

__all__ = ["CHECKS", "ConfigWarning", "Place", "site_warnings", "url_without_login"]

#: A place in the site file's data: ``("uplink", "brokers", 1)``.
Place = tuple[str | int, ...]
WarningCheck = Callable[[SiteConfig], Iterable[tuple[Place, str]]]

_PLAIN_PORT = 1883
_TLS_PORT = 8883


def _uplink_tls(config: SiteConfig) -> Iterable[tuple[Place, str]]:
    uplink = config.uplink
    schemes = {urlsplit(url).scheme for url in uplink.brokers}
    for index, url in enumerate(uplink.brokers):
        place: Place = ("uplink", "brokers", index)
        parts = urlsplit(url)
        plain = url_without_login(url)
        if "@" in parts.netloc:
            yield (
                place,
                f"{plain} carries a user or password in the URL: it is not used (the "
                "login is uplink.username and uplink.password) and shows wherever the URL is "
                "shown; remove it from the URL",
            )
        try:
            port = parts.port
        except ValueError:
            continue  # the model refuses a bad port; nothing to add here
        if parts.scheme == "mqtts" and port == _PLAIN_PORT:
            yield (
                place,
                f"{plain} speaks TLS to port 1883, the plain MQTT port: use mqtts:// with "
                "the broker's TLS port (usually 8883), or mqtt:// if 1883 is really plain",
            )
        if parts.scheme == "mqtt" and port == _TLS_PORT:
            yield (
                place,
                f"{plain} speaks plain MQTT to port 8883, the MQTT-over-TLS port: use "
                "mqtts:// for it",
            )
        if parts.scheme == "mqtt" and uplink.password is not None:
            yield (
                place,
                f"the password goes in clear text to {plain}: use mqtts:// (TLS) for every "
                "broker that gets a password",
            )
    if schemes == {"mqtt", "mqtts"}:
        yield (
            ("uplink", "brokers"),
            "mixed mqtts:// and mqtt:// brokers: a failover to an mqtt:// broker sends every "
            "reading and alarm (and any login) unencrypted; use mqtts:// for all of them",
        )


def _uplink_protocol(config: SiteConfig) -> Iterable[tuple[Place, str]]:
    if config.uplink.protocol == "3.1.1":
        yield (
            ("uplink", "protocol"),
            "MQTT 3.1.1 cannot say that the broker refused a message (an ACL, a quota): the "
            "gateway deletes the rows all the same; use protocol 5, or prove delivery with "
            "`edge doctor` after every change of the broker's ACL",
        )


#: Every warning check, run in this order on a valid site file.
CHECKS: list[WarningCheck] = [
    _uplink_tls,
    _uplink_protocol,
    implausible_thresholds,
    missing_file_warnings,
    bus_budget_warnings,
]


def site_warnings(
    config: SiteConfig, filename: str, position: Callable[[Place], tuple[int, int]]
) -> list[ConfigWarning]:
    """Every warning about ``config``, placed by ``position`` (line, column of a place)."""
    found = [
        ConfigWarning(filename, *position(place), _dotted(place), message)
        for check in CHECKS
        for place, message in check(config)
    ]
    return sorted(found, key=lambda w: (w.line, w.column, w.field, w.message))


def _dotted(place: Place) -> str:
    text = ""
    for part in place:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
