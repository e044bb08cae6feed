"""The reference receiver's bookkeeping, fed messages built by edge.contract."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import contract
from edge.config.loader import load_site
from hil.receiver import MAX_PAYLOAD, Receiver

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-1"
TELEMETRY = f"district/v1/{GW}/telemetry"
EVENTS = f"district/v1/{GW}/events"
METADATA = f"district/v1/{GW}/metadata"
HEALTH = f"district/v1/{GW}/health"
SITE = load_site(ROOT / "config" / "example-site.yaml")
ALIASES = contract.Aliases.of_site(SITE)
DEVICE = "efm-shop-101"


@dataclass(frozen=True)
class Row:
    seq: int
    body: dict[str, Any]


def batch(epoch: str, *seqs: int) -> bytes:
    rows = [
        Row(s, {"device": "efm-1", "point": "rc", "value": float(s), "unit": "mA",
                "ts": time.time()})
        for s in seqs
    ]  # fmt: skip
    return contract.telemetry_message(GW, epoch, rows, clock_synced=True, historical=False)


def compact(epoch: str, *seqs: int, aliases: contract.Aliases = ALIASES) -> bytes:
    """Readings of one device's points in alias order, one poll per 3 seqs."""
    points = [(p, u) for d, p, u in ALIASES if d == DEVICE]
    rows = [
        Row(s, {"device": DEVICE, "point": points[s % 3][0], "value": s + 0.5,
                "unit": points[s % 3][1], "ts": 1_714_550_400.0 + s // 3})
        for s in seqs
    ]  # fmt: skip
    return contract.telemetry_message(
        GW, epoch, rows, clock_synced=True, historical=False, aliases=aliases
    )


def metadata() -> bytes:
    return contract.metadata_message(GW, "e1", SITE, ALIASES, clock_synced=True)


def stored_readings(receiver: Receiver) -> list[tuple[Any, ...]]:
    return receiver._db.execute(
        "SELECT epoch, seq, device, point, value, unit, ts FROM readings ORDER BY epoch, seq"
    ).fetchall()


def event(epoch: str, seq: int, kind: contract.EventKind = "alarm-raised", **fields: Any) -> bytes:
    body = contract.event_body(kind, time.time(), **fields)
    return contract.event_message(GW, epoch, Row(seq, body), clock_synced=True, historical=False)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(tmp_path / "rx.sqlite")
    yield rx
    rx.close()


def test_keeps_stores_and_drops_duplicates_by_message_id(receiver: Receiver) -> None:
    assert receiver.handle(TELEMETRY, batch("e1", 1, 2)) == "kept"
    assert receiver.handle(EVENTS, event("e1", 3, device="efm-1")) == "kept"
    assert receiver.handle(TELEMETRY, batch("e1", 1, 2)) == "duplicate"
    summary = receiver.summary()
    assert (summary.received, summary.kept, summary.duplicates) == (3, 2, 1)
    g = summary.gateways[GW]
    assert (g.readings, g.events) == (2, 1)
    assert g.gaps == {"e1": []}
    assert g.seq_range == {"e1": (1, 3)}


def test_detects_gaps_but_not_where_the_buffer_reported_thinning(receiver: Receiver) -> None:
    receiver.handle(TELEMETRY, batch("e1", 1, 2))
    receiver.handle(TELEMETRY, batch("e1", 5, 6))  # 3 and 4 lost
    receiver.handle(TELEMETRY, batch("e1", 10))
    receiver.handle(
        EVENTS,
        event("e1", 11, "buffer-dropped", reason="max_size", seq_first=7, seq_last=9),
    )
    g = receiver.summary().gateways[GW]
    assert g.gaps["e1"] == [3, 4]
    assert "2 missing: 3, 4" in receiver.summary().text()


def test_counts_an_epoch_reset(receiver: Receiver) -> None:
    receiver.handle(TELEMETRY, batch("old-epoch", 100, 101))
    receiver.handle(TELEMETRY, batch("new-epoch", 1, 2))
    g = receiver.summary().gateways[GW]
    assert g.epochs == ["old-epoch", "new-epoch"]
    assert g.epoch_resets == 1
    assert g.gaps == {"old-epoch": [], "new-epoch": []}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TELEMETRY, b"{not json", "not JSON"),
        (TELEMETRY, b"\xff\xfe", "byte 0xff"),
        (TELEMETRY, b"\x78\x9c\x00", "zlib"),
        (TELEMETRY, b"[1, 2]", "JSON object"),
        (TELEMETRY, json.dumps({"schema": "edge.telemetry/9"}).encode(), "unknown schema"),
        (EVENTS, batch("e1", 1), "expected .../gw-1/telemetry"),
        ("district/v1/gw-other/telemetry", batch("e1", 1), "expected .../gw-1/telemetry"),
        (TELEMETRY, b" " * (MAX_PAYLOAD + 1), "over"),
    ],
)
def test_rejects_with_the_reason_and_stores_nothing(
    receiver: Receiver, topic: str, payload: bytes, reason: str
) -> None:
    result = receiver.handle(topic, payload)
    assert result.startswith("rejected")
    assert reason in result
    summary = receiver.summary()
    assert (summary.rejected, summary.kept) == (1, 0)
    assert reason in summary.rejections[0]


def test_rejects_a_message_missing_a_contract_field(receiver: Receiver) -> None:
    message = json.loads(batch("e1", 1))
    del message["clock_synced"]
    result = receiver.handle(TELEMETRY, json.dumps(message).encode())
    assert "clock_synced" in result
    assert receiver.summary().gateways == {}


def test_compact_telemetry_is_decoded_with_the_metadata_aliases(receiver: Receiver) -> None:
    assert receiver.handle(METADATA, metadata()) == "kept"
    assert receiver.handle(TELEMETRY, compact("e1", 3, 4, 5, 7)) == "kept"
    assert receiver.handle(TELEMETRY, contract.compress(compact("e1", 8, 9))) == "kept"
    assert receiver.handle(EVENTS, event("e1", 6)) == "kept"
    assert receiver.handle(TELEMETRY, compact("e1", 8, 9)) == "duplicate"
    rows = stored_readings(receiver)
    assert [r[1] for r in rows] == [3, 4, 5, 7, 8, 9]
    assert rows[0][2:] == (DEVICE, "residual_current", 3.5, "mA", "2024-05-01T08:00:01.000Z")
    summary = receiver.summary()
    assert (summary.kept, summary.duplicates, summary.metadata, summary.undecoded) == (4, 1, 1, 0)
    g = summary.gateways[GW]
    assert g.aliases_id == ALIASES.table_id
    assert g.gaps == {"e1": []}
    assert g.readings == 6
    assert "metadata 1" in summary.text()


def test_compact_telemetry_before_its_metadata_waits_raw_then_is_decoded(
    receiver: Receiver,
) -> None:
    result = receiver.handle(TELEMETRY, compact("e1", 1, 2, 3))
    assert result.startswith("undecoded")
    assert ALIASES.table_id in result
    assert receiver.summary().undecoded == 1
    assert stored_readings(receiver) == []
    # Another site's table does not decode it.
    other = contract.Aliases([("x", "y", "")])
    assert receiver.handle(TELEMETRY, compact("e1", 5, aliases=other)).startswith("undecoded")
    assert receiver.handle(METADATA, metadata()) == "kept"
    assert [r[1] for r in stored_readings(receiver)] == [1, 2, 3]
    summary = receiver.summary()
    assert (summary.undecoded, summary.rejected) == (1, 0)
    assert summary.gateways[GW].gaps == {"e1": []}


def test_alias_tables_outlive_a_receiver_restart(tmp_path: Path) -> None:
    first = Receiver(tmp_path / "rx.sqlite")
    first.handle(METADATA, metadata())
    first.close()
    again = Receiver(tmp_path / "rx.sqlite")
    try:
        assert again.handle(TELEMETRY, compact("e1", 1, 2)) == "kept"
    finally:
        again.close()


def test_gaps_and_epoch_resets_are_found_in_compact_telemetry(receiver: Receiver) -> None:
    receiver.handle(METADATA, metadata())
    receiver.handle(TELEMETRY, compact("e1", 1, 2, 5, 6))  # 3 and 4 skipped: events...
    receiver.handle(EVENTS, event("e1", 3))  # ...of which only 3 arrives
    receiver.handle(TELEMETRY, compact("e2", 1, 2))
    g = receiver.summary().gateways[GW]
    assert g.gaps == {"e1": [4], "e2": []}
    assert g.epoch_resets == 1


def test_health_and_metadata_are_kept_and_counted(receiver: Receiver) -> None:
    health: dict[str, Any] = {
        "uptime_s": 5.0,
        "buffer_rows": 0,
        "oldest_unsent_age_s": None,
        "bus_errors": {},
    }
    payload = contract.health_message(GW, "e1", health, clock_synced=True)
    assert receiver.handle(HEALTH, payload) == "kept"
    assert receiver.handle(HEALTH, contract.compress(payload)) == "duplicate"
    assert receiver.handle(METADATA, metadata()) == "kept"
    assert receiver.handle(METADATA, metadata()) == "kept"  # re-published at each connect
    summary = receiver.summary()
    assert (summary.health, summary.metadata) == (1, 2)
    assert (summary.gateways[GW].health, summary.gateways[GW].metadata) == (1, 2)
    assert receiver.handle(TELEMETRY, payload).startswith("rejected")  # health on telemetry


def test_metadata_whose_table_does_not_match_its_id_is_rejected(receiver: Receiver) -> None:
    message = json.loads(metadata())
    message["devices"][0]["points"][0]["unit"] = "A"
    result = receiver.handle(METADATA, json.dumps(message).encode())
    assert result.startswith("rejected")
    assert "does not match" in result
    assert receiver.handle(TELEMETRY, compact("e1", 1)).startswith("undecoded")


def test_malformed_compact_telemetry_is_rejected_not_stored(receiver: Receiver) -> None:
    receiver.handle(METADATA, metadata())
    message = json.loads(compact("e1", 1, 2, 3))
    message["groups"][0].append(99.0)  # one value more than the seqs carry
    result = receiver.handle(TELEMETRY, json.dumps(message).encode())
    assert result.startswith("rejected")
    assert "carried" in result
    assert stored_readings(receiver) == []


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_payload_is_kept_or_rejected_never_raises(payload: bytes) -> None:
    receiver = Receiver(":memory:")
    try:
        for candidate in (payload, b"{" + payload, zlib.compress(payload)):
            result = receiver.handle(TELEMETRY, candidate)
            assert result.startswith(("kept", "rejected", "undecoded", "duplicate"))
    finally:
        receiver.close()


def test_a_deflate_bomb_is_rejected(receiver: Receiver) -> None:
    bomb = zlib.compress(b"{" + b" " * (contract.MAX_INFLATED + 1) + b"}", 9)
    result = receiver.handle(TELEMETRY, bomb)
    assert "inflates to over" in result
    assert receiver.handle(TELEMETRY, batch("e1", 1)) == "kept"


def _command() -> bytes:
    return json.dumps({
        "schema": contract.SCHEMA_COMMAND, "command_id": "c-1", "command": "ping",
        "issued_at": contract.iso_utc(time.time()), "params": {},
    }).encode()  # fmt: skip


def test_the_platforms_own_commands_are_ignored_not_counted(receiver: Receiver) -> None:
    # The subscription covers each gateway's whole subtree, commands to it included.
    assert receiver.handle(f"district/v1/{GW}/commands", _command()).startswith("ignored")
    summary = receiver.summary()
    assert (summary.received, summary.kept, summary.rejected) == (0, 0, 0)


def test_a_command_on_a_gateway_topic_is_rejected_not_a_crash(receiver: Receiver) -> None:
    # A command has no gateway_id; where a gateway message belongs it is an error, reported.
    result = receiver.handle(EVENTS, _command())
    assert result.startswith("rejected"), result
    assert receiver.summary().rejected == 1


def _ack(command_id: str) -> bytes:
    return json.dumps({
        "schema": contract.SCHEMA_ACK, "gateway_id": GW, "epoch": "e1",
        "message_id": f"ack-{command_id}", "sent_at": contract.iso_utc(time.time()),
        "clock_synced": True, "command_id": command_id, "result": "error",
        "error": "the command is not signed", "data": None,
    }).encode()  # fmt: skip


def test_acks_are_kept_on_the_acks_topic_and_rejected_elsewhere(receiver: Receiver) -> None:
    assert receiver.handle(f"district/v1/{GW}/acks", _ack("c-1")) == "kept"
    result = receiver.handle(EVENTS, _ack("c-2"))
    assert result.startswith("rejected"), result
    assert "expected .../gw-1/acks" in result
