"""district.contract's signed commands reach a gateway's own command checks through a real
Mosquitto, and the ack comes back to the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from district.contract import send_command, sign_command
from edge.commands import Commands
from edge.signing import generate_key, load_key_ring
from tests.fixtures.broker import Mosquitto

pytestmark = pytest.mark.integration

GATEWAY = "gw-0042"


async def _gateway(broker: Mosquitto, commands: Commands, ready: asyncio.Event) -> None:
    """The gateway's side: every command through edge.commands, the ack published."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="gw-0042") as client:
        await client.subscribe(f"district/v1/{GATEWAY}/commands", qos=1)
        ready.set()
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            ack = await commands.handle(message.payload, retained=message.retain)
            await client.publish(f"district/v1/{GATEWAY}/acks", ack, qos=1)


async def test_a_signed_command_is_run_and_answered_and_a_forged_one_refused(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    private, _ = generate_key(tmp_path / "keys", "operations-2026a")
    ran: list[Mapping[str, Any]] = []

    async def ping(params: Mapping[str, Any]) -> dict[str, Any]:
        ran.append(params)
        return {"pong": True}

    commands = Commands(
        GATEWAY,
        lambda: "epoch-1",
        {"ping": ping},
        ttl=300,
        clock_synced=lambda: True,
        keys=load_key_ring(tmp_path / "keys"),
    )
    ready = asyncio.Event()
    gateway = asyncio.create_task(_gateway(mosquitto, commands, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        signed = sign_command(GATEWAY, "ping", {}, private)
        ack = await send_command(mosquitto.url, GATEWAY, signed, wait=10)
        assert ack is not None
        assert ack["result"] == "ok", ack
        assert ack["data"] == {"pong": True}
        assert len(ran) == 1
        # Signed for another gateway: refused by this one, nothing run.
        other = sign_command("gw-other", "ping", {}, private)
        refused = await send_command(mosquitto.url, GATEWAY, other, wait=10)
        assert refused is not None
        assert refused["result"] == "error"
        assert "signature" in refused["error"]
        assert len(ran) == 1
    finally:
        gateway.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gateway
