"""The uplink's message building, without a broker."""

from __future__ import annotations

import json
import zlib
from typing import Any

from buffer import Record
from edge import contract
from edge.config.model import Uplink as UplinkConfig
from edge.uplink.messages import MessageBuilder


def builder(**settings: Any) -> MessageBuilder:
    config = UplinkConfig.model_validate({"brokers": ["mqtt://x:1"], **settings})
    return MessageBuilder(
        config,
        "gw-1",
        events_topic="d/gw-1/events",
        telemetry_topic="d/gw-1/telemetry",
        clock_synced=lambda: True,
        aliases=None,
    )


def reading(seq: int, device: str = "efm-1") -> Record:
    body = {"device": device, "point": "residual_current", "unit": "mA", "value": 1.5, "ts": 1e9}
    return Record(seq, "telemetry", 1e9, body)


def test_a_batch_over_the_limit_is_cut_to_the_longest_run_that_fits() -> None:
    build = builder(max_message_bytes="2KiB", telemetry_encoding="verbose", compression="none")
    rows = [reading(seq) for seq in range(1, 101)]
    message = build.telemetry(rows, "ep", "live")
    assert len(message.payload) <= 2048
    assert 5 < len(message.seqs) < 100
    assert message.seqs == tuple(range(1, len(message.seqs) + 1))
    body = json.loads(message.payload)
    assert body["message_id"] == f"ep:1-{len(message.seqs)}"


def test_a_single_reading_too_large_goes_with_its_text_cut() -> None:
    build = builder(max_message_bytes="1KiB", telemetry_encoding="verbose", compression="none")
    message = build.telemetry([reading(7, device="d" * 5000)], "ep", "live")
    assert len(message.payload) <= 1024
    (sent,) = json.loads(message.payload)["readings"]
    assert sent["seq"] == 7
    assert sent["device"] == "d" * 128


def test_an_event_too_large_keeps_its_envelope_and_short_fields() -> None:
    build = builder(max_message_bytes="1KiB")
    body = contract.event_body("alarm-raised", 1e9, device="efm-1", dump="x" * 4000, value=3.0)
    message = build.event(Record(42, "event", 1e9, body), "ep")
    sent = json.loads(message.payload)
    assert len(message.payload) <= 1024
    assert (sent["seq"], sent["message_id"], sent["truncated"]) == (42, "ep:42-42", True)
    assert (sent["kind"], sent["device"], sent["value"]) == ("alarm-raised", "efm-1", 3.0)
    assert "dump" not in sent
    assert build.truncated == 1


def test_deflate_applies_to_telemetry_not_to_events() -> None:
    build = builder(compression="deflate", telemetry_encoding="verbose")
    telemetry = build.telemetry([reading(1), reading(2)], "ep", "live")
    assert json.loads(zlib.decompress(telemetry.payload))["seq_first"] == 1
    event = build.event(Record(3, "event", 1e9, contract.event_body("gateway-started", 1e9)), "ep")
    assert json.loads(event.payload)["seq"] == 3
