"""district.contract: what a platform imports to read and answer gateways (no broker, no
database: the gateway's own builders make the messages)."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from district.contract import (
    AliasBook,
    ContractError,
    UnknownAliases,
    carried_seqs,
    read_message,
    removed_range,
    seq_gaps,
    sign_command,
)
from district.fleet import _aliases, _site
from edge import contract
from edge.signing import SignatureRefused, generate_key, load_key_ring, verify

GATEWAY, EPOCH, PREFIX = "gw-0042", "epoch-1", "district/v1"


@dataclass(frozen=True)
class Row:
    seq: int
    body: dict[str, Any]


def rows() -> list[Row]:
    table = _aliases(2)
    return [
        Row(seq, {"device": d, "point": p, "unit": u, "value": 20.0 + seq, "ts": 1.7e9 + seq // 5})
        for seq, (d, p, u) in enumerate(table, start=1)
        if seq != 7  # an event took seq 7
    ]


def metadata() -> dict[str, Any]:
    payload = contract.metadata_message(GATEWAY, EPOCH, _site(2), _aliases(2), clock_synced=True)
    return read_message(contract.metadata_topic(PREFIX, GATEWAY), payload).body


def test_both_encodings_give_the_same_readings_and_seqs() -> None:
    book = AliasBook()
    compact = contract.telemetry_message(
        GATEWAY, EPOCH, rows(), clock_synced=True, historical=False, aliases=_aliases(2)
    )
    verbose = contract.telemetry_message(
        GATEWAY, EPOCH, rows(), clock_synced=True, historical=False
    )
    topic = contract.telemetry_topic(PREFIX, GATEWAY)
    small = read_message(topic, contract.compress(compact))
    with pytest.raises(UnknownAliases, match=_aliases(2).table_id):
        book.readings(small.body)
    book.learn(metadata())
    decoded = book.readings(small.body)
    assert decoded == book.readings(read_message(topic, verbose).body)
    assert [r["seq"] for r in decoded] == [r.seq for r in rows()]
    assert decoded[0]["device"] == "efm-000"
    assert carried_seqs(small, decoded) == [r.seq for r in rows()]
    assert seq_gaps(carried_seqs(small, decoded)) == [(7, 7)]


def test_bad_payloads_and_topics_are_refused_with_the_reason() -> None:
    topic = contract.telemetry_topic(PREFIX, GATEWAY)
    good = contract.telemetry_message(GATEWAY, EPOCH, rows(), clock_synced=True, historical=False)
    cases = {
        b"\x00garbage": "neither a JSON object",
        b"{" + b" " * (1 << 20): "over 1048576",
        zlib.compress(b"{" + b" " * (17 << 20)): "16777216",
        json.dumps({**json.loads(good), "seq_first": 0}).encode(): "seq_first",
    }
    for payload, reason in cases.items():
        with pytest.raises(ContractError, match=reason):
            read_message(topic, payload)
    with pytest.raises(ContractError, match=r"expected .*/gw-0042/telemetry"):
        read_message(contract.telemetry_topic(PREFIX, "gw-other"), good)
    with pytest.raises(ContractError, match=r"on topic .*/events"):
        read_message(contract.health_topic(PREFIX, GATEWAY).replace("health", "events"), good)


def test_seq_gaps_leave_out_what_the_outbox_removed_on_purpose() -> None:
    thinned = {"kind": "buffer-thinned", "seq_first": 20, "seq_last": 29}
    assert removed_range(thinned) == (20, 29)
    assert removed_range({"kind": "alarm-raised", "seq_first": 1, "seq_last": 2}) is None
    seen = [*range(1, 15), 16, *range(35, 41), 40, 3]
    assert seq_gaps(seen) == [(15, 15), (17, 34)]
    assert seq_gaps(seen, [(20, 29)]) == [(15, 15), (17, 19), (30, 34)]
    assert seq_gaps(seen, [(15, 34)]) == []
    assert seq_gaps([]) == []


def test_a_signed_command_is_accepted_by_its_gateway_only(tmp_path: Path) -> None:
    private, _ = generate_key(tmp_path, "operations-2026a")
    ring = load_key_ring(tmp_path)
    command = sign_command(
        GATEWAY, "set-threshold", {"rule": "residual-current-over-limit", "threshold": 250},
        private,
    )  # fmt: skip
    assert verify(command, GATEWAY, ring).key_id == "operations-2026a"
    with pytest.raises(SignatureRefused):
        verify(command, "gw-other", ring)
    with pytest.raises(SignatureRefused):
        verify({**command, "params": {**command["params"], "threshold": 900}}, GATEWAY, ring)


def _mutations(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message with one row field at a time made wrong, and a few right variants."""
    wrong: list[Any] = ["x", -1, 0, True, 1.5, None, [], {}, "2026-01-01T00:00:00Z"]
    out = []
    for array in ("readings", "groups", "fallback", "skip", "window_pre", "window_post"):
        for i, row in enumerate(message.get(array, [])[:2]):
            keys = list(row) if isinstance(row, dict) else range(len(row))
            for key in keys:
                for value in wrong:
                    changed = json.loads(json.dumps(message))
                    changed[array][i][key] = value
                    out.append(changed)
            shorter = json.loads(json.dumps(message))
            shorter[array][i] = row[:-1] if isinstance(row, list) else dict(list(row.items())[1:])
            out.append(shorter)
            out.append({**message, array: [*message[array], "not a row"]})
    return out


def test_the_receivers_telemetry_check_gives_the_whole_schemas_verdict() -> None:
    """read_message checks telemetry rows without a general validator; the schema is the
    reference, for the fleet's messages and every one-field mutation of them."""
    from edge.schemas import validate_message  # noqa: PLC0415

    table = _aliases(2)
    extra = Row(99, {"device": "x", "point": "y", "unit": "", "value": None, "ts": None})
    # Readings kept at full rate around an alarm carry a window (a reading field the short
    # way does not know: the whole schema judges those messages).
    windowed = [Row(r.seq, {**r.body, "window": "pre" if r.seq < 4 else "post"}) for r in rows()]
    messages = [
        json.loads(
            contract.telemetry_message(
                GATEWAY, EPOCH, [*rows(), extra], clock_synced=True, historical=False, aliases=a
            )
        )
        for a in (None, table)
    ] + [
        json.loads(
            contract.telemetry_message(
                GATEWAY, EPOCH, windowed, clock_synced=True, historical=False, aliases=a
            )
        )
        for a in (None, table)
    ]
    compact = messages[1]
    assert compact["fallback"]
    assert compact["skip"]
    assert messages[2]["readings"][0]["window"] == "pre"
    assert messages[3]["window_pre"]
    topic = contract.telemetry_topic(PREFIX, GATEWAY)
    checked = 0
    for message in [m for base in messages for m in (base, *_mutations(base))]:
        try:
            validate_message(message)
            schema_says = True
        except ContractError:
            schema_says = False
        try:
            read_message(topic, json.dumps(message).encode())
            we_say = True
        except ContractError:
            we_say = False
        assert we_say == schema_says, message
        checked += 1
    assert checked > 300
