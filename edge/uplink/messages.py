"""What the uplink sends, built from outbox rows: messages kept exact until their PUBACK, the
payload size limit and the encoding."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from buffer import Record
from edge import contract
from edge.uplink.drain import Lane

if TYPE_CHECKING:
    from edge.config.model import Uplink as UplinkConfig

__all__ = ["Message", "MessageBuilder"]

log = logging.getLogger("edge.uplink")

#: An event field longer than this (as JSON) is the first to go when an event must be cut.
_FIELD_KEEP: Final = 256
#: Reading fields longer than this (characters) are cut when a single reading does not fit.
_TEXT_KEEP: Final = 128


@dataclass(slots=True)
class Message:
    """A message built from outbox rows: kept, exact, until its PUBACK, so that a resend after
    a reconnect is the same message (same ``message_id``, same rows, same bytes)."""

    topic: str
    payload: bytes
    seqs: tuple[int, ...]
    #: For the counters and the rate limits.
    lane: Lane


class MessageBuilder:
    """Builds the messages of one gateway: events one each, telemetry batches cut to fit the
    payload limit, in the configured encoding and compression."""

    def __init__(
        self,
        config: UplinkConfig,
        gateway_id: str,
        *,
        events_topic: str,
        telemetry_topic: str,
        clock_synced: Callable[[], bool],
        aliases: contract.Aliases | None,
    ) -> None:
        self._config = config
        self._gateway_id = gateway_id
        self.events_topic = events_topic
        self.telemetry_topic = telemetry_topic
        self._clock_synced = clock_synced
        #: The point table compact telemetry refers to (None: the verbose form).
        self.aliases = aliases
        #: Largest payload now: the configured one, or less for the broker of this session.
        self.max_payload = config.max_message_bytes
        #: Wall time of the current session's start: rows stored before it waited through an
        #: outage and go out marked historical (backfill).
        self.session_wall_start = float("inf")
        #: Events sent with their own fields cut because they exceeded the size limit.
        self.truncated = 0

    def grace(self) -> float:
        # One batch interval plus a second: rows committed while the connection was being set
        # up are live data, not backfill.
        return self._config.batch_interval + 1.0

    def historical(self, created: float) -> bool:
        return created < self.session_wall_start - self.grace()

    def event(self, record: Record, epoch: str) -> Message:
        historical = self.historical(record.created)
        payload = contract.event_message(
            self._gateway_id,
            epoch,
            record,
            clock_synced=self._clock_synced(),
            historical=historical,
        )
        if len(payload) > self.max_payload:
            payload = self._cut_event(record, epoch, historical, len(payload))
        return Message(self.events_topic, payload, (record.seq,), "event")

    def _cut_event(self, record: Record, epoch: str, historical: bool, size: int) -> bytes:
        """An event that cannot be split: keep its envelope and as many of its own fields as
        fit (short ones first), mark it ``truncated``; its seq and message_id stay."""
        body = dict(record.body)
        kept: dict[str, Any] = {"kind": body.pop("kind", None), "ts": body.pop("ts", None)}
        kept["truncated"] = True
        dropped: list[str] = []
        for name, value in body.items():
            if len(json.dumps(value, default=str)) > _FIELD_KEEP:
                dropped.append(name)
            else:
                kept[name] = value
        payload = b""
        while True:
            cut = Record(record.seq, record.stream, record.created, kept)
            payload = contract.event_message(
                self._gateway_id,
                epoch,
                cut,
                clock_synced=self._clock_synced(),
                historical=historical,
            )
            own = [k for k in kept if k not in ("kind", "ts", "truncated")]
            if len(payload) <= self.max_payload or not own:
                break
            dropped.append(own[-1])
            del kept[own[-1]]
        self.truncated += 1
        log.error(
            "uplink: event seq %d (%s) is %d bytes, over the %d-byte message limit: sent "
            "without its fields %s",
            record.seq,
            kept["kind"],
            size,
            self.max_payload,
            ", ".join(sorted(dropped)) or "(none)",
        )
        return payload

    def telemetry(self, rows: list[Record], epoch: str, lane: Lane) -> Message:
        """A telemetry message of the longest run of ``rows`` (from the first) that fits."""
        count = len(rows)
        while True:
            chunk = rows[:count]
            payload = self._telemetry_payload(chunk, epoch)
            if len(payload) <= self.max_payload:
                break
            if count == 1:
                payload = self._telemetry_payload([shortened(chunk[0])], epoch)
                log.error(
                    "uplink: reading seq %d does not fit in %d bytes even alone: its text "
                    "fields were cut to %d characters",
                    chunk[0].seq,
                    self.max_payload,
                    _TEXT_KEEP,
                )
                break
            # Cut in proportion to the excess (readings are of similar size), with a margin.
            count = max(1, min(count - 1, int(count * self.max_payload / len(payload) * 0.95)))
        return Message(self.telemetry_topic, payload, tuple(r.seq for r in chunk), lane)

    def _telemetry_payload(self, rows: Sequence[Record], epoch: str) -> bytes:
        columnar = self._config.telemetry_encoding == "columnar"
        payload = contract.telemetry_message(
            self._gateway_id,
            epoch,
            rows,
            clock_synced=self._clock_synced(),
            historical=self.historical(rows[0].created),
            aliases=self.aliases if columnar else None,
        )
        # Telemetry only: a batch of similar readings deflates to a fraction. An event is one
        # short message that compresses little, and stays readable by any subscriber.
        if self._config.compression == "deflate":
            payload = contract.compress(payload)
        return payload


def shortened(record: Record) -> Record:
    """``record`` with its long text fields cut, for a reading too large for any message."""
    body = {
        k: v[:_TEXT_KEEP] if isinstance(v, str) and len(v) > _TEXT_KEEP else v
        for k, v in record.body.items()
    }
    return Record(record.seq, record.stream, record.created, body)
