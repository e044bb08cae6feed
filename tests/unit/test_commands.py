"""Downlink commands: every command answered once, bad ones refused, nothing run twice."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from edge import contract
from edge.commands import MAX_COMMAND_BYTES, CommandError, Commands, current_command_id
from edge.schemas import validate
from tests.fixtures.command_keys import key_ring, sign

NOW = 1_700_000_000.0


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def handler(self, name: str, result: dict[str, Any] | None = None) -> Any:
        async def run(params: Mapping[str, Any]) -> dict[str, Any] | None:
            self.calls.append((name, dict(params)))
            if params.get("rule") == "no-such-rule":
                raise CommandError("no rule 'no-such-rule'")
            return result

        return run


def commands(recorder: Recorder, now: float = NOW) -> Commands:
    return Commands(
        "gw-1",
        lambda: "epoch-1",
        {
            "ping": recorder.handler("ping", {"pong": True}),
            "silence": recorder.handler("silence", {"silenced": 1}),
        },
        ttl=60.0,
        clock_synced=lambda: True,
        keys=key_ring(),
        now=lambda: now,
    )


def command(
    name: str,
    params: dict[str, Any],
    *,
    cid: str = "c-1",
    age: float = 1.0,
    key: str = "operations",
) -> bytes:
    """A command signed for gateway gw-1 with the test key ``key``."""
    body = {
        "schema": "edge.command/1",
        "command_id": cid,
        "command": name,
        "issued_at": contract.iso_utc(NOW - age),
        "params": params,
    }
    return json.dumps(sign(body, "gw-1", key)).encode()


async def answer(handler: Commands, payload: bytes) -> dict[str, Any]:
    ack: dict[str, Any] = json.loads(await handler.handle(payload))
    validate("ack", ack)  # every answer, good or bad, follows the contract
    return ack


async def test_a_valid_command_runs_once_and_is_acknowledged_with_its_data() -> None:
    rec = Recorder()
    handler = commands(rec)
    ack = await answer(handler, command("silence", {"device": "efm-1", "rule": "rc"}))
    assert (ack["command_id"], ack["result"], ack["error"]) == ("c-1", "ok", None)
    assert ack["data"] == {"silenced": 1}
    assert rec.calls == [("silence", {"device": "efm-1", "rule": "rc"})]


async def test_a_repeated_command_id_gets_the_same_answer_without_running_again() -> None:
    rec = Recorder()
    handler = commands(rec)
    first = await handler.handle(command("ping", {}))
    again = await handler.handle(command("ping", {}))
    assert first == again
    assert len(rec.calls) == 1
    assert handler.executed == 1


@pytest.mark.parametrize(
    ("payload", "needle", "cid"),
    [
        (b"{nope", "not JSON", None),
        (b"\xff", "not JSON", None),
        (b"[]", "JSON object", None),
        (b" " * (MAX_COMMAND_BYTES + 1), "over", None),
        (command("reboot", {}), "command", "c-1"),
        (command("silence", {"device": 5, "rule": "rc"}), "device", "c-1"),
        (command("silence", {"device": "efm-1"}), "rule", "c-1"),
        (command("set-threshold", {"rule": "rc", "threshold": 1}), "not supported", "c-1"),
        (command("silence", {"device": "efm-1", "rule": "no-such-rule"}), "no rule", "c-1"),
        (command("ping", {}, age=61), "TTL", "c-1"),
        (command("storm-mode", {"on": True}), "duration_s", "c-1"),
        (command("storm-mode", {"on": True, "duration_s": 604801}), "604800", "c-1"),
        (command("storm-mode", {"on": True, "duration_s": 0}), "0", "c-1"),
        (command("storm-mode", {"on": True, "duration_s": 9, "devices": []}), "devices", "c-1"),
        (command("storm-mode", {"on": False, "threshold_factor": 2}), "threshold_factor", "c-1"),
        (command("set-threshold", {"rule": "rc", "threshold": True}), "threshold", "c-1"),
        (command("set-threshold", {"rule": "rc", "threshold": 1, "field": "x"}), "field", "c-1"),
        (command("push-config", {"site": {}, "site_yaml": "a: 1"}), "params", "c-1"),
        (command("push-config", {"site_yaml": ""}), "site_yaml", "c-1"),
        (command("push-config", {"site": {}, "extra": 1}), "extra", "c-1"),
    ],
)
async def test_bad_commands_get_an_error_ack_naming_the_problem(
    payload: bytes, needle: str, cid: str | None
) -> None:
    rec = Recorder()
    handler = commands(rec)
    ack = await answer(handler, payload)
    assert ack["result"] == "error"
    assert needle in ack["error"]
    assert ack["command_id"] == cid
    assert handler.executed == 0
    # Nothing that was refused by the checks reached a handler.
    assert all(p.get("rule") == "no-such-rule" for _, p in rec.calls)


async def test_a_handler_that_crashes_is_still_answered() -> None:
    async def broken(params: Mapping[str, Any]) -> dict[str, Any] | None:
        raise RuntimeError("boom")

    handler = Commands(
        "gw-1",
        lambda: "e",
        {"ping": broken},
        ttl=60,
        clock_synced=lambda: False,
        keys=key_ring(),
        now=lambda: NOW,
    )
    ack = await answer(handler, command("ping", {}))
    assert ack["result"] == "error"
    assert "boom" in ack["error"]
    assert ack["clock_synced"] is False


async def test_a_handler_knows_the_id_of_the_command_it_runs() -> None:
    seen: list[str | None] = []

    async def ping(params: Mapping[str, Any]) -> dict[str, Any] | None:
        seen.append(current_command_id())
        return None

    handler = Commands(
        "gw-1",
        lambda: "e",
        {"ping": ping},
        ttl=60,
        clock_synced=lambda: True,
        keys=key_ring(),
        now=lambda: NOW,
    )
    await answer(handler, command("ping", {}, cid="p-7"))
    assert seen == ["p-7"]
    assert current_command_id() is None  # only while the handler runs
