"""edge/schemas/accept.py against jsonschema: the same verdict on every message kind.

The gateway skips jsonschema when the small evaluator says a message is valid, so the two must
agree. Each well-formed message of the contract tests is taken apart field by field (removed,
replaced by a value of every JSON type, an out-of-range number, a bad string) and both
evaluators judge every variant; a variant only one of them refuses fails the test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from edge import contract, schemas
from edge.schemas.accept import Unsupported, is_valid
from tests.fixtures.command_keys import sign
from tests.unit.test_contract_compact import EPOCH as COMPACT_EPOCH
from tests.unit.test_contract_compact import GW, HEALTH
from tests.unit.test_contract_schemas import command, event, status, telemetry

#: What replaces a field: every JSON type, numbers either side of the usual bounds, strings
#: that break patterns and lengths, containers that are empty or hold the wrong thing.
REPLACEMENTS: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 1.5, -0.5, 1e12, "", "x", "on", "2024-05-01T08:30:00.000Z",
    "A" * 300, [], [1], ["x", "x"], {}, {"x": 1}, {"key": "k", "ed25519": "A" * 86 + "=="},
)  # fmt: skip


def _valid_messages() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "telemetry", telemetry()
    yield "event", event()
    yield "status", status()
    health = contract.health_message(GW, COMPACT_EPOCH, HEALTH, clock_synced=True)
    yield "health", json.loads(health)
    for name, params in (
        ("ping", {}),
        ("silence", {"device": "efm-1", "rule": "rc"}),
        ("set-threshold", {"rule": "rc", "threshold": 250}),
        ("storm-mode", {"on": True, "duration_s": 3600, "devices": ["efm-1"]}),
        ("storm-mode", {"on": False}),
        ("push-config", {"site": {"gateway": {"id": "gw-1"}}}),
    ):
        yield "command", command(name, params)
        yield "command", sign(command(name, params), "gw-1")


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place inside ``value`` a field or item sits."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, inner in items:
        yield (*path, key)
        yield from _paths(inner, (*path, key))


def _variants(message: dict[str, Any]) -> Iterator[Any]:
    yield message
    for path in _paths(message):
        for replacement in (*REPLACEMENTS, "<removed>"):
            variant = copy.deepcopy(message)
            parent = variant
            for key in path[:-1]:
                parent = parent[key]
            if replacement == "<removed>":
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(replacement)
            yield variant


@pytest.mark.parametrize(("kind", "message"), list(_valid_messages()))
def test_the_small_evaluator_agrees_with_jsonschema_on_every_variant(
    kind: str, message: dict[str, Any]
) -> None:
    schema = schemas.load(kind)
    reference = Draft202012Validator(schema)
    judged = refused = 0
    for variant in _variants(message):
        expected = reference.is_valid(variant)
        try:
            answer = is_valid(schema, variant)
        except Unsupported as exc:  # allowed: jsonschema then decides; but the contract's
            pytest.fail(f"{kind}: the contract uses {exc}")  # schemas should all be known
        assert answer == expected, f"{kind}: {variant!r}: jsonschema says {expected}"
        judged += 1
        refused += not expected
    # the variants tried both verdicts
    assert refused > 0
    assert judged > refused


def test_unknown_keywords_and_outside_refs_are_left_to_jsonschema() -> None:
    with pytest.raises(Unsupported, match="dependentRequired"):
        is_valid({"dependentRequired": {"a": ["b"]}}, {"a": 1})
    with pytest.raises(Unsupported, match="outside"):
        is_valid({"$ref": "https://example.org/x.json"}, 1)
    # and validate() still answers, through jsonschema, with the field named
    with pytest.raises(schemas.ContractError, match="buffer_rows"):
        contract.health_message(GW, COMPACT_EPOCH, {**HEALTH, "buffer_rows": -3}, clock_synced=True)


def test_json_equality_keeps_true_apart_from_one() -> None:
    assert not is_valid({"const": 1}, True)
    assert not is_valid({"enum": [True]}, 1)
    assert is_valid({"const": 1}, 1.0)
    assert not is_valid({"type": "integer"}, True)
    assert is_valid({"type": "integer"}, 2.0)
    assert not is_valid({"uniqueItems": True}, [{"a": 1}, {"a": 1}])
    assert is_valid({"uniqueItems": True}, [1, True])
