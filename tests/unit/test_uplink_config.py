"""The uplink section's connection settings: what the model accepts and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from edge.config.model import Uplink


def uplink(**settings: Any) -> Uplink:
    return Uplink.model_validate({"brokers": ["mqtts://broker.example:8883"], **settings})


def test_tls_files_username_and_protocol_are_taken() -> None:
    config = uplink(
        ca_file="ca.pem",
        cert_file="client.pem",
        key_file="client.key",
        username="gw",
        password="pw",
        protocol="5",
    )
    assert (config.ca_file, config.cert_file, config.key_file) == (
        "ca.pem",
        "client.pem",
        "client.key",
    )
    assert config.protocol == "5"
    assert uplink().protocol == "5"


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"cert_file": "client.pem"}, "cert_file and key_file go together"),
        ({"key_file": "client.key"}, "cert_file and key_file go together"),
        ({"password": "pw"}, "password without username"),
        ({"keepalive": "19h"}, "less than or equal to 65535"),
        ({"keepalive": "500ms"}, "greater than or equal to 1"),
        ({"batch_interval": "2h"}, "less than or equal to 3600"),
        ({"batch_interval": "-5m"}, "not a duration"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"health_interval": "0s"}, "greater than or equal to 1"),
        ({"compression": "gzip"}, "'none' or 'deflate'"),
        ({"protocol": "4"}, "protocol"),
        ({"protocol": 5}, "protocol"),
        (
            {"brokers": ["mqtt://broker.example:1883"], "ca_file": "ca.pem"},
            "no broker URL is mqtts://",
        ),
    ],
)
def test_inconsistent_connection_settings_are_refused_with_the_reason(
    settings: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle):
        uplink(**settings)


def test_delivery_settings_have_defaults_and_take_units() -> None:
    config = uplink()
    assert config.inflight == 10
    assert config.backfill_messages_per_s is None
    assert config.backfill_bytes_per_s is None
    assert config.max_message_bytes == 256 * 1024
    # For a metered link (docs/config.md): deflated, in 5-minute batches of up to 1000
    # readings, health every 15 minutes, a keepalive ping after 10 quiet minutes.
    assert config.compression == "deflate"
    assert config.telemetry_encoding == "columnar"
    assert config.health_interval == 900.0
    assert (config.batch_interval, config.batch_size, config.keepalive) == (300.0, 1000, 600.0)
    tuned = uplink(
        inflight=50,
        backfill_messages_per_s=2.5,
        backfill_bytes_per_s="64KiB",
        max_message_bytes="16KiB",
        compression="deflate",
        telemetry_encoding="verbose",
        health_interval="5m",
    )
    assert (tuned.inflight, tuned.backfill_messages_per_s) == (50, 2.5)
    assert (tuned.backfill_bytes_per_s, tuned.max_message_bytes) == (65536, 16384)
    assert (tuned.compression, tuned.telemetry_encoding, tuned.health_interval) == (
        "deflate",
        "verbose",
        300.0,
    )


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"inflight": 0}, "inflight"),
        ({"inflight": 1001}, "inflight"),
        ({"backfill_messages_per_s": 0}, "backfill_messages_per_s"),
        ({"backfill_bytes_per_s": 65536}, "needs a unit"),
        ({"backfill_bytes_per_s": "10B"}, "backfill_bytes_per_s"),
        ({"max_message_bytes": "100B"}, "max_message_bytes"),
        ({"max_message_bytes": "2MiB"}, "max_message_bytes"),
        ({"max_message_bytes": "lots"}, "not a size"),
        ({"compression": "gzip"}, "compression"),
        ({"telemetry_encoding": "compact"}, "telemetry_encoding"),
        ({"health_interval": 60}, "health_interval"),
        ({"health_interval": "100ms"}, "health_interval"),
    ],
)
def test_bad_delivery_settings_are_refused_with_the_reason(
    settings: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle):
        uplink(**settings)
