"""Downlink commands from the district platform: validated, answered, never applied twice.

A command arrives on ``{prefix}/{gateway}/commands`` as an ``edge.command/1`` JSON object (the
schema is ``edge/schemas/command.json``). Each one gets exactly one answer, an
``edge.ack/1`` on ``{prefix}/{gateway}/acks``, with its ``command_id``, ``result`` (``ok`` or
``error``) and ``error`` in plain words:

- a payload that is not JSON, breaks the schema, names an unknown command or is too large is
  answered with an error and changes nothing;
- a command issued longer ago than ``uplink.command_ttl`` is refused (a silence command that
  waited through an outage must not silence the alarm of today);
- a command that is not signed by one of the platform's keys installed on this gateway
  (edge/signing.py), or whose signature does not cover it exactly as it arrived, is refused;
  without keys every command is refused (``commands.insecure_unsigned_commands`` runs unsigned
  ones too, for a demo only);
- a command issued further in the future than ``commands.max_clock_skew``, a retained command
  (it would run again at every reconnect) and a command beyond ``commands.max_per_minute`` are
  refused;
- a ``command_id`` seen before gets the first answer again, without running the command twice
  (the platform retries over QoS 1, so duplicates are normal); the ids of the commands run are
  stored in the outbox's state store, so one repeated after a restart is refused, not run.

:class:`Commands` does this on plain bytes; the uplink feeds it and publishes the answer.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Final, Protocol

from edge import contract
from edge.log import fields
from edge.schemas import ContractError, validate
from edge.signing import KeyClass, KeyRing, SignatureRefused, verify

__all__ = [
    "COMMANDS",
    "MAX_COMMAND_BYTES",
    "CommandError",
    "Commands",
    "Handler",
    "RateLimit",
    "SeenCommands",
    "current_command_id",
    "current_key_class",
]

log = logging.getLogger("edge.commands")

#: The commands this gateway carries out, as edge/schemas/command.json names them (a test holds
#: the two, and the gateway's handlers in edge/command_handlers.py, to the same list).
COMMANDS: Final = ("get-status", "ping", "push-config", "set-threshold", "silence", "storm-mode")

#: Largest command payload read; a whole site file fits many times over.
MAX_COMMAND_BYTES: Final = 256 * 1024
#: Answers kept for repeated command ids; older ids fall out oldest first.
_REMEMBERED: Final = 1024
#: Where the ids of the commands run are kept in the state store, one key each.
SEEN_PREFIX: Final = "commands/seen/"

#: A command's action: its params in, what the ack's ``data`` carries out.
Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any] | None]]


#: The id of the command whose handler is running, so that the events a command causes can
#: name it without every handler taking it as an argument.
_COMMAND_ID: ContextVar[str | None] = ContextVar("command_id", default=None)
#: The class of the key that signed it, for the handlers whose bounds depend on it.
_KEY_CLASS: ContextVar[KeyClass | None] = ContextVar("key_class", default=None)


def current_command_id() -> str | None:
    """The ``command_id`` of the command being handled (None outside a handler)."""
    return _COMMAND_ID.get()


def current_key_class() -> KeyClass | None:
    """The class of the key that signed the command being handled: ``operations`` or
    ``engineering`` (an unsigned command let through by ``insecure_unsigned_commands`` counts
    as ``operations``). None outside a handler."""
    return _KEY_CLASS.get()


class CommandError(Exception):
    """Raised by a handler to answer with this error; nothing was changed."""


class StateStore(Protocol):
    """The part of the outbox that keeps the seen command ids."""

    async def state_items(self, prefix: str = "") -> list[Any]: ...
    async def state_put(self, key: str, value: Any) -> int: ...
    async def state_delete(self, key: str) -> bool: ...


class SeenCommands:
    """The ids of the commands run, with when they were issued, kept in the state store.

    An id is kept until the command it names would be refused as expired anyway (twice the
    TTL, a margin for a clock set back), so the store holds at most the commands of that
    window, which the rate limit bounds.
    """

    def __init__(self, store: StateStore | None, keep: float) -> None:
        self._store = store
        self._keep = keep
        self._issued: dict[str, float] = {}
        self._loaded = store is None

    async def load(self, now: float) -> None:
        store = self._store
        if self._loaded or store is None:
            return
        for entry in await store.state_items(SEEN_PREFIX):
            issued = entry.value.get("issued_at") if isinstance(entry.value, dict) else None
            command_id = entry.key.removeprefix(SEEN_PREFIX)
            self._issued[command_id] = float(issued) if isinstance(issued, int | float) else now
        self._loaded = True
        await self._forget_old(now)

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._issued

    async def record(self, command_id: str, issued_at: float, now: float) -> None:
        """Remember ``command_id``; returns once stored (raises when it cannot be)."""
        if self._store is not None:
            await self._store.state_put(SEEN_PREFIX + command_id, {"issued_at": issued_at})
        self._issued[command_id] = issued_at
        await self._forget_old(now)

    async def _forget_old(self, now: float) -> None:
        old = [cid for cid, issued in self._issued.items() if now - issued > self._keep]
        for command_id in old:
            if self._store is not None:
                await self._store.state_delete(SEEN_PREFIX + command_id)
            del self._issued[command_id]


class RateLimit:
    """A token bucket on an injected clock: a burst of ``per_minute``, then that rate."""

    def __init__(self, per_minute: int, now: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._now = now
        self._tokens = float(per_minute)
        self._at = now()

    def take(self) -> bool:
        now = self._now()
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(float(self.per_minute), self._tokens + elapsed * self.per_minute / 60)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


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
        keys: KeyRing | None,
        insecure_unsigned: bool = False,
        max_skew: float = 60.0,
        max_per_minute: int = 30,
        store: StateStore | None = None,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway_id = gateway_id
        self._epoch = epoch
        self._handlers = dict(handlers)
        self._ttl = ttl
        self._clock_synced = clock_synced
        self._keys = keys if keys is not None else KeyRing({})
        self._insecure = insecure_unsigned
        self._max_skew = max_skew
        self._rate = RateLimit(max_per_minute, monotonic)
        self._now = now
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self._seen = SeenCommands(store, keep=2 * ttl + max_skew)
        if insecure_unsigned:
            log.error(
                "INSECURE: commands.insecure_unsigned_commands is on; anybody who can publish "
                "to the commands topic commands this gateway (for a demo only)"
            )
        if not self._keys.keys:
            log.warning("no command keys installed (commands.keys); every command is refused")
        for problem in self._keys.problems:
            log.error("command key not used", extra=fields(problem=problem))
        #: Commands run (not counting repeats and refusals).
        self.executed = 0

    async def handle(self, payload: bytes, *, retained: bool = False) -> bytes:
        """The ack for ``payload``; runs the command if it is signed, valid, new and fresh.

        ``retained``: the broker delivered it as a retained message (it was not sent now)."""
        command_id: str | None = None
        verified = False
        try:
            command = _decode(payload)
            raw_id = command.get("command_id")
            command_id = raw_id if isinstance(raw_id, str) and raw_id else None
            if retained:
                raise CommandError(
                    "retained command ignored: a command is run only when it is sent, never "
                    "replayed by the broker at a connect (publish it with retain off)"
                )
            if not self._rate.take():
                raise CommandError(
                    f"rate limit: more than {self._rate.per_minute} commands a minute "
                    "(commands.max_per_minute); refused, send it again later"
                )
            validate("command", command)
            key_class = self._authority(command)
            verified = True
            if command_id is not None and command_id in self._answers:
                self._answers.move_to_end(command_id)
                return self._answers[command_id]
            now = self._now()
            await self._seen.load(now)
            if command_id is None:  # the schema requires it: a schema that lost it is a bug
                raise CommandError("command_id must be a non-empty string")
            if command_id in self._seen:
                raise CommandError(
                    f"command {command_id!r} was run before (before a restart); "
                    "a command id runs once"
                )
            name = command["command"]
            handler = self._handlers.get(name)
            if handler is None:
                raise CommandError(f"command {name!r} is not supported by this gateway")
            issued = _posix(command["issued_at"])
            age = now - issued
            if age > self._ttl:
                raise CommandError(
                    f"command issued {age:.0f} s ago, older than the {self._ttl:g} s TTL"
                )
            if -age > self._max_skew:
                raise CommandError(
                    f"command issued {-age:.0f} s in the future, beyond the "
                    f"{self._max_skew:g} s clock skew allowed (commands.max_clock_skew)"
                )
            try:
                await self._seen.record(command_id, issued, now)
            except Exception as exc:
                # Run only what can be refused if it comes again.
                raise CommandError(f"cannot record the command id, so not run: {exc}") from exc
            token = _COMMAND_ID.set(command_id)
            class_token = _KEY_CLASS.set(key_class)
            try:
                data = await handler(command["params"])
            finally:
                _KEY_CLASS.reset(class_token)
                _COMMAND_ID.reset(token)
        except (ContractError, CommandError, SignatureRefused) as exc:
            ack = self._ack(command_id, "error", str(exc), None)
        except Exception as exc:  # a handler's bug must still be answered
            ack = self._ack(command_id, "error", f"failed: {type(exc).__name__}: {exc}", None)
        else:
            self.executed += 1
            ack = self._ack(command_id, "ok", None, data)
        # Only an answer to a command the platform signed is remembered: a forged command must
        # not occupy an id the platform may use.
        if command_id is not None and verified:
            self._answers[command_id] = ack
            while len(self._answers) > _REMEMBERED:
                self._answers.popitem(last=False)
        return ack

    def _authority(self, command: Mapping[str, Any]) -> KeyClass:
        """The class of the key that signed ``command``; raises when it may not run."""
        if "signature" not in command and self._insecure:
            log.warning(
                "running an UNSIGNED command: commands.insecure_unsigned_commands is on",
                extra=fields(command_id=command.get("command_id"), command=command.get("command")),
            )
            return "operations"
        if not self._keys.keys:
            raise SignatureRefused(
                "this gateway has no command keys installed (commands.keys); every command "
                "is refused"
            )
        return verify(command, self._gateway_id, self._keys).key_class

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
