"""The reference receiver's bookkeeping, fed messages built by edge.contract."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge import contract
from hil.receiver import MAX_PAYLOAD, Receiver

GW = "gw-1"
TELEMETRY = f"district/v1/{GW}/telemetry"
EVENTS = f"district/v1/{GW}/events"


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
        (TELEMETRY, b"\xff\xfe", "not JSON"),
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
