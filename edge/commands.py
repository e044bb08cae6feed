"""Downlink commands from the district platform: validated, answered, never applied twice.

A command arrives on ``{prefix}/{gateway}/commands`` as an ``edge.command/1`` JSON object (the
schema is ``edge/schemas/command.json``). Each one gets exactly one answer, an
``edge.ack/1`` on ``{prefix}/{gateway}/acks``, with its ``command_id``, ``result`` (``ok`` or
``error``) and ``error`` in plain words:

- a payload that is not JSON, breaks the schema, names an unknown command or is too large is
  answered with an error and changes nothing;
- a command issued longer ago than ``uplink.command_ttl`` is refused (a silence command that
  waited through an outage must not silence the alarm of today);
- a ``command_id`` seen before gets the first answer again, without running the command twice
  (the platform retries over QoS 1, so duplicates are normal).

:class:`Commands` does this on plain bytes; the uplink feeds it and publishes the answer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Final

from edge import contract
from edge.schemas import ContractError, validate

__all__ = ["MAX_COMMAND_BYTES", "CommandError", "Commands", "Handler", "current_command_id"]

#: Largest command payload read; a whole site file fits many times over.
MAX_COMMAND_BYTES: Final = 256 * 1024
#: Answers kept for repeated command ids; older ids fall out oldest first.
_REMEMBERED: Final = 1024

#: A command's action: its params in, what the ack's ``data`` carries out.
Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any] | None]]


#: The id of the command whose handler is running, so that the events a command causes can
#: name it without every handler taking it as an argument.
_COMMAND_ID: ContextVar[str | None] = ContextVar("command_id", default=None)


def current_command_id() -> str | None:
    """The ``command_id`` of the command being handled (None outside a handler)."""
    return _COMMAND_ID.get()


class CommandError(Exception):
    """Raised by a handler to answer with this error; nothing was changed."""


class Commands:
    """Checks and runs commands; returns the ack payload for each."""

    def __init__(
        self,
        gateway_id: str,
        epoch: Callable[[], str],
        handlers: Mapping[str, Handler],
        *,
        ttl: float,
        clock_synced: Callable[[], bool],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._gateway_id = gateway_id
        self._epoch = epoch
        self._handlers = dict(handlers)
        self._ttl = ttl
        self._clock_synced = clock_synced
        self._now = now
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        #: Commands run (not counting repeats and refusals).
        self.executed = 0

    async def handle(self, payload: bytes) -> bytes:
        """The ack for ``payload``; runs the command if it is valid, new and fresh."""
        command_id: str | None = None
        try:
            command = _decode(payload)
            raw_id = command.get("command_id")
            command_id = raw_id if isinstance(raw_id, str) and raw_id else None
            if command_id is not None and command_id in self._answers:
                self._answers.move_to_end(command_id)
                return self._answers[command_id]
            validate("command", command)
            name = command["command"]
            handler = self._handlers.get(name)
            if handler is None:
                raise CommandError(f"command {name!r} is not supported by this gateway")
            age = self._now() - _posix(command["issued_at"])
            if age > self._ttl:
                raise CommandError(
                    f"command issued {age:.0f} s ago, older than the {self._ttl:g} s TTL"
                )
            token = _COMMAND_ID.set(command_id)
            try:
                data = await handler(command["params"])
            finally:
                _COMMAND_ID.reset(token)
        except (ContractError, CommandError) as exc:
            ack = self._ack(command_id, "error", str(exc), None)
        except Exception as exc:  # a handler's bug must still be answered
            ack = self._ack(command_id, "error", f"failed: {type(exc).__name__}: {exc}", None)
        else:
            self.executed += 1
            ack = self._ack(command_id, "ok", None, data)
        if command_id is not None:
            self._answers[command_id] = ack
            while len(self._answers) > _REMEMBERED:
                self._answers.popitem(last=False)
        return ack

    def _ack(
        self, command_id: str | None, result: str, error: str | None, data: dict[str, Any] | None
    ) -> bytes:
        return json.dumps(
            {
                "schema": contract.SCHEMA_ACK,
                "gateway_id": self._gateway_id,
                "epoch": self._epoch(),
                "message_id": str(uuid.uuid4()),
                "sent_at": contract.iso_utc(self._now()),
                "clock_synced": self._clock_synced(),
                "command_id": command_id,
                "result": result,
                "error": error,
                "data": data,
            },
            separators=(",", ":"),
        ).encode()


def _decode(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_COMMAND_BYTES:
        raise ContractError(f"command of {len(payload)} bytes, over {MAX_COMMAND_BYTES}")
    try:
        command = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"command is not JSON: {exc}") from exc
    if not isinstance(command, dict):
        raise ContractError(f"a command is a JSON object, not {type(command).__name__}")
    return command


def _posix(iso: str) -> float:
    # The schema has checked the shape (…T…Z with milliseconds).
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
