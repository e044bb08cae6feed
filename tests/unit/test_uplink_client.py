"""The private parts of aiomqtt that edge/uplink/client.py relies on still exist, with the
parameters it passes: an aiomqtt upgrade that moves them fails here, by name, rather than as
a publish that never returns in the field."""

from __future__ import annotations

import asyncio
import inspect

import aiomqtt
import pytest

from edge.uplink.client import AIOMQTT_PRIVATE, MqttClient


@pytest.mark.parametrize("name", sorted(n for n, params in AIOMQTT_PRIVATE.items() if params))
def test_every_private_method_the_client_relies_on_has_the_parameters_it_passes(
    name: str,
) -> None:
    method = getattr(aiomqtt.Client, name, None)
    assert method is not None, f"aiomqtt.Client.{name} is gone: edge/uplink/client.py needs it"
    parameters = tuple(inspect.signature(method).parameters)
    assert parameters == AIOMQTT_PRIVATE[name], (
        f"aiomqtt.Client.{name}{parameters} changed: edge/uplink/client.py passes "
        f"{AIOMQTT_PRIVATE[name]}"
    )


async def test_every_private_attribute_the_client_reads_is_set_by_aiomqtt() -> None:
    client = MqttClient("127.0.0.1", 1, identifier="attribute-check")
    for name in (n for n, params in AIOMQTT_PRIVATE.items() if not params):
        assert name in vars(client), f"aiomqtt.Client no longer sets {name}"
    # paho calls the callbacks aiomqtt registered by name: ours, since they override them.
    for callback in ("on_connect", "on_disconnect", "on_publish"):
        registered = getattr(client._client, callback)
        assert registered.__func__ is getattr(MqttClient, f"_{callback}"), callback
    assert isinstance(client._disconnected, asyncio.Future)
    assert isinstance(client._pending_publishes, dict)


def test_the_overrides_cover_the_version_they_were_written_for() -> None:
    # The publish() override copies aiomqtt 2.5.1's steps; another version must be read again
    # (and this pin moved with pyproject.toml's) before it is trusted.
    from importlib.metadata import version  # noqa: PLC0415

    assert version("aiomqtt") == "2.5.1"
