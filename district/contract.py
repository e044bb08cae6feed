"""What a platform engineer imports to speak contract v1 without reading the docs twice.

    from district.contract import read_message, AliasBook, seq_gaps, sign_command, send_command

- :func:`read_message`: payload bytes (JSON or deflated) and topic -> a validated
  :class:`Message`, or :class:`ContractError` saying what is wrong (size, deflate bomb, schema,
  a topic that names another gateway or kind);
- :class:`AliasBook`: the alias tables of every gateway's metadata; ``readings(message)``
  gives the rows of a telemetry message in either encoding (:class:`UnknownAliases` when the
  table named by a compact message has not been seen);
- :func:`carried_seqs`, :func:`removed_range`, :func:`seq_gaps`: seq continuity per gateway and
  epoch, less what the gateway's outbox thinned or dropped on purpose;
- :func:`sign_command` and :func:`send_command`: a signed ``edge.command/1`` with the
  platform's Ed25519 key (docs/commands.md), published to the gateway, its ack awaited.

Everything here is the gateway's own code (``edge.contract``, ``edge.schemas``,
``edge.signing``) seen from the platform side, so both ends read the wire the same way.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator

from edge import contract as wire
from edge.schemas import ContractError, load, validate_message
from hil.signer import build_command, send

__all__ = [
    "GATEWAY_TOPICS",
    "MAX_PAYLOAD",
    "AliasBook",
    "ContractError",
    "Message",
    "UnknownAliases",
    "carried_seqs",
    "read_message",
    "removed_range",
    "send_command",
    "seq_gaps",
    "sign_command",
]

#: Largest payload read; a bigger one is refused unread (as the reference receiver does).
MAX_PAYLOAD: Final = 1 << 20
#: The last topic level of what a gateway publishes, by message kind.
GATEWAY_TOPICS: Final[Mapping[str, str]] = {
    "telemetry": "telemetry",
    "event": "events",
    "status": "status",
    "metadata": "metadata",
    "health": "health",
    "ack": "acks",
}


@dataclass(frozen=True)
class Message:
    """One validated gateway message."""

    topic: str
    #: ``telemetry``, ``event``, ``status``, ``metadata``, ``health`` or ``ack``.
    kind: str
    gateway_id: str
    epoch: str
    body: dict[str, Any]

    @property
    def sent_at(self) -> str:
        return str(self.body.get("sent_at", ""))


class UnknownAliases(LookupError):
    """Compact telemetry naming an alias table whose metadata has not been seen yet."""

    def __init__(self, gateway_id: str, aliases_id: str) -> None:
        super().__init__(f"no metadata with aliases_id {aliases_id!r} from {gateway_id!r} yet")
        self.gateway_id = gateway_id
        self.aliases_id = aliases_id


def read_message(topic: str, payload: bytes, *, max_payload: int = MAX_PAYLOAD) -> Message:
    """Decode (inflating a deflated payload, capped), validate against the JSON Schemas and
    check that the topic names the message's own gateway and kind.

    Telemetry is checked in two parts, with the same verdict as the whole schema: the
    envelope by the schema without its row arrays, every row by :func:`_check_rows`; a row of
    a shape it does not know, or one it finds wrong, goes to the whole schema, which alone
    refuses. A general validator walking a 100-reading batch costs about 7 ms, which would
    make schema validation the receiver's bottleneck (docs/platform.md).
    ``tests/unit/test_district_contract.py`` holds the two to the same answers.
    """
    if len(payload) > max_payload:
        raise ContractError(f"payload of {len(payload)} bytes, over {max_payload}")
    body = wire.decode_payload(payload, max_inflated=wire.MAX_INFLATED)
    if isinstance(body.get("schema"), str) and body["schema"].startswith("edge.telemetry/"):
        kind = _validate_telemetry(body)
    else:
        kind = validate_message(body)
    if kind == "command":
        raise ContractError("a command is the platform's message, not a gateway's")
    gateway = body["gateway_id"]
    parts = topic.split("/")
    expected = GATEWAY_TOPICS[kind]
    if len(parts) < 3 or parts[-1] != expected or parts[-2] != gateway:
        raise ContractError(
            f"a {kind} message from {gateway!r} on topic {topic!r} (expected .../{gateway}/"
            f"{expected})"
        )
    return Message(topic=topic, kind=kind, gateway_id=gateway, epoch=body["epoch"], body=body)


#: The row arrays of a telemetry message, checked by :func:`_check_rows` instead.
_ROW_ARRAYS: Final = ("readings", "groups", "fallback", "skip")
#: A reading of edge.telemetry/1 as the short way knows it; any other key (``window``, or
#: one added later) sends the message to the full schema.
_READING_KEYS: Final = frozenset({"seq", "device", "point", "value", "unit", "ts"})
_UTC: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@functools.cache
def _envelope_validator() -> Draft202012Validator:
    schema = copy.deepcopy(load("telemetry"))
    for name in _ROW_ARRAYS:
        schema["properties"][name].pop("items", None)
    return Draft202012Validator(schema)


def _validate_telemetry(body: dict[str, Any]) -> str:
    """The full schema's verdict, taken the short way when the rows have the shapes
    :func:`_check_rows` knows: it only ever accepts; refusing is left to the schema."""
    if body["schema"] not in (wire.SCHEMA_TELEMETRY, wire.SCHEMA_TELEMETRY_COMPACT):
        return validate_message(body)  # names the unknown version
    if not _envelope_validator().is_valid(body):
        return validate_message(body)  # the full schema names the field
    try:
        _check_rows(body)
    except (TypeError, ValueError, KeyError, IndexError):
        # A row of another shape (a field added to the contract, a wrong type): the whole
        # schema decides, and names the field when it refuses.
        return validate_message(body)
    return "telemetry"


def _text(value: object) -> bool:
    return value is None or type(value) is str


def _number(value: object) -> bool:
    return value is None or type(value) is float or type(value) is int


def _seq(value: object) -> bool:
    return type(value) is int and value >= 1


def _utc(value: object) -> bool:
    return value is None or (type(value) is str and _UTC.match(value) is not None)


def _check_rows(body: Mapping[str, Any]) -> None:
    """Every row of a telemetry message has the shape telemetry.json gives it."""
    for i, r in enumerate(body.get("readings", ())):
        if not (
            type(r) is dict
            and r.keys() == _READING_KEYS
            and _seq(r["seq"])
            and _text(r["device"])
            and _text(r["point"])
            and _number(r["value"])
            and _text(r["unit"])
            and _utc(r["ts"])
        ):
            raise ValueError(f"readings/{i}: not a reading {r!r}")
    for i, g in enumerate(body.get("groups", ())):
        if not (
            type(g) is list
            and len(g) >= 3
            and type(g[0]) is int
            and type(g[1]) is int
            and g[1] >= 0
            and all(_number(v) for v in g[2:])
        ):
            raise ValueError(f"groups/{i}: not [dt_ms, alias, value, ...]")
    for i, f in enumerate(body.get("fallback", ())):
        if not (
            type(f) is list
            and len(f) == 6
            and _seq(f[0])
            and _text(f[1])
            and _text(f[2])
            and _number(f[3])
            and _text(f[4])
            and _utc(f[5])
        ):
            raise ValueError(f"fallback/{i}: not [seq, device, point, value, unit, ts]")
    for i, k in enumerate(body.get("skip", ())):
        if not (type(k) is list and len(k) == 2 and _seq(k[0]) and _seq(k[1])):
            raise ValueError(f"skip/{i}: not [first, last]")


class AliasBook:
    """Every alias table gateways announced, by (gateway, aliases_id): keep them all, since
    telemetry that waited through a configuration change still names the older table."""

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], wire.Aliases] = {}

    def learn(self, metadata: Mapping[str, Any]) -> wire.Aliases:
        """Keep the table of a metadata message (:class:`ContractError` if its points do not
        hash to its ``aliases_id``)."""
        table = wire.Aliases.from_metadata(metadata)
        self._tables[(str(metadata["gateway_id"]), table.table_id)] = table
        return table

    def knows(self, gateway_id: str, aliases_id: str) -> bool:
        return (gateway_id, aliases_id) in self._tables

    def readings(self, telemetry: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The readings of a telemetry message: ``seq``, ``device``, ``point``, ``value``,
        ``unit``, ``ts`` (ISO UTC), whichever its encoding."""
        table = None
        if telemetry.get("schema") == wire.SCHEMA_TELEMETRY_COMPACT:
            key = (str(telemetry.get("gateway_id")), str(telemetry.get("aliases_id")))
            table = self._tables.get(key)
            if table is None:
                raise UnknownAliases(*key)
        return wire.decode_telemetry(telemetry, table)


def carried_seqs(message: Message, readings: Iterable[Mapping[str, Any]] = ()) -> list[int]:
    """The outbox seqs a telemetry message (give its ``readings``) or an event carries."""
    if message.kind == "event":
        return [int(message.body["seq"])]
    return [int(r["seq"]) for r in readings]


def removed_range(event: Mapping[str, Any]) -> tuple[int, int] | None:
    """The seqs a ``buffer-thinned`` or ``buffer-dropped`` event says were removed on
    purpose (they are no gap); None for any other event."""
    if event.get("kind") not in ("buffer-thinned", "buffer-dropped"):
        return None
    first, last = event.get("seq_first"), event.get("seq_last")
    if type(first) is int and type(last) is int and first <= last:
        return (first, last)
    return None


def seq_gaps(seqs: Iterable[int], removed: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """The missing seq ranges ``[first, last]`` between the lowest and highest seq seen of
    one gateway and epoch, less the ``removed`` ranges. Duplicates and order do not matter."""
    seen = sorted(set(seqs))
    cuts = sorted(removed)
    gaps: list[tuple[int, int]] = []
    for low, high in itertools.pairwise(seen):
        first = low + 1
        while first < high:
            # Skip what a removed range covers, then report the rest up to the next cut.
            inside = next((c for c in cuts if c[0] <= first <= c[1]), None)
            if inside is not None:
                first = inside[1] + 1
                continue
            nxt = min((c[0] for c in cuts if first < c[0] < high), default=high)
            gaps.append((first, nxt - 1))
            first = nxt
    return gaps


def sign_command(
    gateway_id: str,
    command: str,
    params: Mapping[str, Any],
    key_file: Path,
    *,
    command_id: str | None = None,
    issued_at: float | None = None,
) -> dict[str, Any]:
    """A signed ``edge.command/1`` for one gateway, with the private key of ``keygen``
    (``python -m hil.receiver keygen``), checked against the command schema."""
    return build_command(
        gateway_id, command, params, key_file, command_id=command_id, issued_at=issued_at
    )


async def send_command(
    broker_url: str,
    gateway_id: str,
    command: Mapping[str, Any],
    *,
    prefix: str = "district/v1",
    wait: float = 10.0,
) -> dict[str, Any] | None:
    """Publish ``command`` to ``{prefix}/{gateway}/commands`` (QoS 1, never retained: a
    gateway refuses retained commands) and return the gateway's ``edge.ack/1``, or None when
    none came within ``wait`` seconds. Resending the same command is safe: the gateway
    answers a ``command_id`` it has run with the first answer."""
    return await send(broker_url, prefix, gateway_id, command, wait)


def dumps(body: Mapping[str, Any]) -> bytes:
    """Compact JSON, as the contract's payloads are."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
