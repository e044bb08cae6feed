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
    assert uplink().protocol == "3.1.1"


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"cert_file": "client.pem"}, "cert_file and key_file go together"),
        ({"key_file": "client.key"}, "cert_file and key_file go together"),
        ({"password": "pw"}, "password without username"),
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
