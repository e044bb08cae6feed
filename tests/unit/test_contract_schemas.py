"""Contract v1: the JSON Schemas in edge/schemas/ against what edge.contract builds.

Each schema must accept the messages the gateway builds and refuse ones that break the
contract, so a schema that accepted anything would fail here.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from edge import contract, schemas
from edge.schemas import ContractError, validate, validate_message
from tests.fixtures.command_keys import sign

ROOT = Path(__file__).resolve().parents[2]
EPOCH = "0b6c1f7e-3c1a-4d55-9a59-2f4f1c8e7d10"


@dataclass(frozen=True)
class Row:
    seq: int
    body: dict[str, Any]


def telemetry(**overrides: Any) -> dict[str, Any]:
    rows = [
        Row(7, {"device": "efm-1", "point": "residual_current", "value": 36.0, "unit": "mA",
                "ts": time.time()}),
        Row(8, {"device": "efm-1", "point": "temperature_1", "value": math.nan, "unit": "°C",
                "ts": time.time()}),
    ]  # fmt: skip
    message = json.loads(
        contract.telemetry_message("gw-1", EPOCH, rows, clock_synced=True, historical=False)
    )
    return {**message, **overrides}


def event(**overrides: Any) -> dict[str, Any]:
    body = contract.event_body(
        "alarm-raised",
        time.time(),
        device="efm-1",
        rule="rc",
        value=312.0,
        location={"building": "B3", "floor": "1", "room": "102", "venue_type": "restaurant"},
    )
    message = json.loads(
        contract.event_message("gw-1", EPOCH, Row(9, body), clock_synced=False, historical=True)
    )
    return {**message, **overrides}


def status(**overrides: Any) -> dict[str, Any]:
    message = json.loads(
        contract.status_message(
            "gw-1",
            EPOCH,
            "online",
            version="0.1.0",
            boot_time=time.time() - 5,
            config_hash="0123456789abcdef",
            clock_synced=True,
        )
    )
    return {**message, **overrides}


def command(name: str, params: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "schema": "edge.command/1",
        "command_id": "c-1",
        "command": name,
        "issued_at": "2024-05-01T08:30:00.000Z",
        "params": params,
        **overrides,
    }


@pytest.mark.parametrize("name", schemas.NAMES)
def test_every_schema_is_valid_draft_2020_12_and_names_its_version(name: str) -> None:
    schema = schemas.load(name)
    Draft202012Validator.check_schema(schema)
    tag = schema["properties"]["schema"]
    tags = tag["enum"] if "enum" in tag else [tag["const"]]
    assert tags == [f"edge.{name}/{version}" for version in schemas.VERSIONS[name]]


def test_built_messages_validate_and_carry_the_flags() -> None:
    for message, kind in ((telemetry(), "telemetry"), (event(), "event"), (status(), "status")):
        assert validate_message(message) == kind
    assert telemetry()["readings"][1]["value"] is None  # NaN goes as null
    assert (event()["clock_synced"], event()["historical"]) == (False, True)
    assert status()["config_hash"] == "0123456789abcdef"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (telemetry(clock_synced="yes"), "clock_synced"),
        (telemetry(historical=None), "historical"),
        (telemetry(readings=[]), "readings"),
        (telemetry(sent_at="2024-05-01 08:30:00"), "sent_at"),
        (telemetry(seq_first=0), "seq_first"),
        (event(kind="alarm-exploded"), "kind"),
        (event(seq="9"), "seq"),
        (status(state="maybe"), "state"),
        ({k: v for k, v in status().items() if k != "config_hash"}, "config_hash"),
        ({k: v for k, v in event().items() if k != "clock_synced"}, "clock_synced"),
    ],
)
def test_a_message_breaking_the_contract_is_refused_naming_the_field(
    message: dict[str, Any], field: str
) -> None:
    with pytest.raises(ContractError, match=field):
        validate_message(message)


def test_unknown_or_missing_schema_tag_is_refused() -> None:
    with pytest.raises(ContractError, match="unknown schema"):
        validate_message({**status(), "schema": "edge.status/2"})
    with pytest.raises(ContractError, match="unknown schema"):
        validate_message({"gateway_id": "gw-1"})
    with pytest.raises(ContractError, match="JSON object"):
        validate_message([1, 2])
    with pytest.raises(ValueError, match="no schema"):
        schemas.load("nonsense")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ping", {}),
        ("get-status", {}),
        ("silence", {"device": "efm-1", "rule": "rc"}),
        ("set-threshold", {"rule": "rc", "threshold": 250}),
        ("storm-mode", {"on": True, "duration_s": 3600, "devices": ["efm-1"]}),
        ("storm-mode", {"on": False}),
        ("push-config", {"site": {"gateway": {"id": "gw-1"}}}),
    ],
)
def test_well_formed_commands_validate(name: str, params: dict[str, Any]) -> None:
    validate("command", command(name, params))
    validate("command", sign(command(name, params), "gw-1"))  # and signed


_SIGNATURE = {"key": "operations-2026a", "ed25519": "A" * 86 + "=="}


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        (command("reboot", {}), "command"),
        (command("set-threshold", {"rule": "rc", "threshold": "high"}), "threshold"),
        (command("set-threshold", {"rule": "rc"}), "threshold"),
        (command("silence", {"device": "efm-1", "rule": "rc", "forever": True}), "forever"),
        (command("storm-mode", {"on": True, "duration_s": -5}), "duration_s"),
        (command("ping", {}, extra=1), "extra"),
        ({k: v for k, v in command("ping", {}).items() if k != "command_id"}, "command_id"),
        (command("ping", {}, issued_at="yesterday"), "issued_at"),
        (command("ping", {}, signature="A" * 88), "signature"),
        (command("ping", {}, signature={**_SIGNATURE, "key": "admin-1"}), "key"),
        (command("ping", {}, signature={**_SIGNATURE, "ed25519": "AAAA"}), "ed25519"),
        (command("ping", {}, signature={"key": "operations-2026a"}), "ed25519"),
        (command("ping", {}, signature={**_SIGNATURE, "alg": "none"}), "alg"),
    ],
)
def test_malformed_commands_are_refused_naming_the_problem(
    message: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ContractError, match=needle):
        validate("command", message)


def test_ack_health_and_metadata_examples_validate() -> None:
    envelope = {
        "gateway_id": "gw-1",
        "epoch": EPOCH,
        "message_id": "m-1",
        "sent_at": "2024-05-01T08:30:00.000Z",
        "clock_synced": True,
    }
    validate(
        "ack",
        {**envelope, "schema": "edge.ack/1", "command_id": "c-1", "result": "ok", "error": None},
    )
    with pytest.raises(ContractError, match="result"):
        validate(
            "ack",
            {**envelope, "schema": "edge.ack/1", "command_id": None, "result": "meh", "error": "x"},
        )
    validate(
        "health",
        {
            **envelope,
            "schema": "edge.health/1",
            "uptime_s": 12.5,
            "buffer_rows": 3,
            "oldest_unsent_age_s": None,
            "bus_errors": {"rs485-1": 2},
        },
    )
    with pytest.raises(ContractError, match="bus_errors"):
        validate(
            "health",
            {
                **envelope,
                "schema": "edge.health/1",
                "uptime_s": 1,
                "buffer_rows": 0,
                "oldest_unsent_age_s": 0,
                "bus_errors": {"rs485-1": -1},
            },
        )
    device = {
        "id": "efm-1",
        "model": "acrel-arcm300",
        "bus": "rs485-1",
        "bus_kind": "modbus-rtu",
        "location": {"building": "B3", "floor": "1", "room": "102", "venue_type": "restaurant"},
        "points": [{"point": "residual_current", "unit": "mA", "alias": 0}],
    }
    metadata = {**envelope, "schema": "edge.metadata/1", "aliases_id": "a1", "devices": [device]}
    validate("metadata", metadata)
    with pytest.raises(ContractError, match="location"):
        validate("metadata", {**metadata, "devices": [{**device, "location": 3}]})
    with pytest.raises(ContractError, match="aliases_id"):
        validate("metadata", {k: v for k, v in metadata.items() if k != "aliases_id"})


def test_asyncapi_document_names_every_schema_file() -> None:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.0")
    text = json.dumps(doc)
    for name in schemas.NAMES:
        assert f"edge/schemas/{name}.json" in text, name
