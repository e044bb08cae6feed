"""docs/asyncapi.yaml says what the schema files really are: JSON Schema 2020-12, and MQTT over
TLS by AsyncAPI's own protocol name."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from edge import contract, schemas

ROOT = Path(__file__).resolve().parents[2]


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    return doc


def test_every_payload_declares_the_dialect_its_schema_file_is_written_in() -> None:
    messages = _doc()["components"]["messages"]
    assert messages
    for name, message in messages.items():
        payload = message["payload"]
        target = (ROOT / "docs" / payload["schema"]["$ref"]).resolve()
        dialect = json.loads(target.read_text())["$schema"]
        assert dialect == "https://json-schema.org/draft/2020-12/schema", target
        assert payload["schemaFormat"] == "application/schema+json;version=2020-12", name


def test_the_server_protocol_is_asyncapis_name_for_mqtt_over_tls() -> None:
    servers = _doc()["servers"]
    assert {s["protocol"] for s in servers.values()} == {"secure-mqtt"}


def test_a_draft07_validator_would_accept_a_compact_message_the_schema_refuses() -> None:
    """Why the dialect matters: draft-07 ignores prefixItems."""
    schema = schemas.load("telemetry")
    # A compact message whose one reading (a point without an alias) goes as a fallback row.
    row = SimpleNamespace(
        seq=1, body={"device": "x", "point": "y", "unit": "", "value": 1.0, "ts": 1.7e9}
    )
    table = contract.Aliases([("efm-1", "residual_current", "mA")])
    message = json.loads(
        contract.telemetry_message(
            "gw-1", "e", [row], clock_synced=True, historical=False, aliases=table
        )
    )
    assert not list(Draft202012Validator(schema).iter_errors(message))
    # Its seq as text: refused by 2020-12, accepted by draft-07.
    message["fallback"][0][0] = "one"
    assert list(Draft202012Validator(schema).iter_errors(message))
    assert not list(Draft7Validator(schema).iter_errors(message))
