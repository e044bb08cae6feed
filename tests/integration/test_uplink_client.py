"""edge/uplink/client.py against a real Mosquitto: what its overrides of aiomqtt's private
parts promise. An aiomqtt upgrade that breaks one of them fails here (and its names and
signatures in tests/unit/test_uplink_client.py). The connect that fails at once when the broker
hangs up before its CONNACK is proven with a TLS broker refusing the client certificate
(tests/integration/test_uplink_tls.py::test_mutual_tls_without_a_client_certificate_is_refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import aiomqtt
import pytest

from edge.uplink.client import MqttClient, PublishRefused
from tests.fixtures.broker import Mosquitto, MosquittoFactory, collect

pytestmark = pytest.mark.integration

USER, PASSWORD = "client-user", "client-password"


_Client = TypeVar("_Client", bound=MqttClient)


def client_as(kind: type[_Client], broker: Mosquitto, **settings: object) -> _Client:
    """A client of class ``kind`` (the gateway's, or a test's subclass) on the plain port."""
    given: dict[str, object] = {
        "identifier": f"client-test-{uuid.uuid4().hex[:8]}",
        "protocol": aiomqtt.ProtocolVersion.V5,
        "timeout": 10,
        **settings,
    }
    return kind(broker.host, broker.plain_port, **given)


def client_of(broker: Mosquitto, **settings: object) -> MqttClient:
    return client_as(MqttClient, broker, **settings)


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """The broker process stopped (SIGSTOP): its port still accepts, nothing is answered."""
    assert broker._proc is not None
    os.kill(broker._proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(broker._proc.pid, signal.SIGCONT)


async def test_a_refusing_puback_raises_and_the_next_publish_on_an_allowed_topic_goes(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(
        users={USER: PASSWORD}, acl=[f"user {USER}", "topic write allowed/#"]
    )
    async with (
        collect(broker, "allowed/#") as got,
        client_of(broker, username=USER, password=PASSWORD) as client,
    ):
        with pytest.raises(PublishRefused) as refused:
            await client.publish("denied/x", b"{}", qos=1)
        assert (refused.value.refusal.topic, refused.value.refusal.reason_code) == (
            "denied/x",
            0x87,
        )
        # Packet ids are reused: the refusal of one must not stick to the next message.
        for _ in range(3):
            await client.publish("allowed/x", b'{"n": 1}', qos=1)
        await got.wait_for(lambda c: len(c.messages) == 3)


class CancelledAtPuback(MqttClient):
    """Cancels the publishing task in the very callback that delivers the PUBACK: the verdict
    and the cancellation arrive together, as when a session ends while a refused message's
    PUBACK comes in."""

    publisher: asyncio.Task[None] | None = None

    def _on_publish(self, *args: Any) -> None:
        super()._on_publish(*args)
        if self.publisher is not None:
            self.publisher.cancel()


async def test_a_cancellation_that_comes_with_the_puback_is_not_lost(
    mosquitto_factory: MosquittoFactory,
) -> None:
    """asyncio.wait_for on Python 3.11 returns a result that arrives together with a
    cancellation and drops the cancellation: a send task retrying a refused message then never
    ended, and held the gateway's stop. The publish must end cancelled."""
    broker = mosquitto_factory(
        users={USER: PASSWORD}, acl=[f"user {USER}", "topic write allowed/#"]
    )
    for topic in ("denied/x", "allowed/x"):
        client = client_as(CancelledAtPuback, broker, username=USER, password=PASSWORD)
        async with client:
            client.publisher = asyncio.create_task(client.publish(topic, b"{}", qos=1))
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(client.publisher, 30)
            assert client.publisher.cancelled(), topic


class CancelledAtSuback(MqttClient):
    """The same for a subscription: the task is cancelled in the callback of its SUBACK."""

    subscriber: asyncio.Task[Any] | None = None

    def _on_subscribe(self, *args: Any) -> None:
        super()._on_subscribe(*args)
        if self.subscriber is not None:
            self.subscriber.cancel()


async def test_a_cancellation_that_comes_with_the_suback_is_not_lost(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(users={USER: PASSWORD}, acl=[f"user {USER}", "topic read allowed/#"])
    for topic in ("denied/#", "allowed/#"):
        client = client_as(CancelledAtSuback, broker, username=USER, password=PASSWORD)
        async with client:
            client.subscriber = asyncio.create_task(client.subscribe(topic, qos=1))
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(client.subscriber, 30)
            assert client.subscriber.cancelled(), topic


async def test_the_maximum_packet_size_of_the_connack_is_kept(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(extra_config=["max_packet_size 4096"])
    async with client_of(broker) as client:
        assert client.max_packet_size == 4096
    async with client_of(mosquitto_factory()) as unlimited:
        assert unlimited.max_packet_size is None


async def test_a_connect_cancelled_before_its_connack_publishes_the_will_and_hangs_up(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory()
    will = aiomqtt.Will("gw/status", b'{"state": "offline"}', qos=1, retain=True)
    identifier = f"late-{uuid.uuid4().hex[:8]}"
    async with collect(broker, "gw/status") as got:
        client = client_of(broker, will=will, identifier=identifier)
        connected = asyncio.Event()

        async def session() -> None:
            async with client:
                connected.set()
                await asyncio.Event().wait()

        with frozen(broker):
            task = asyncio.create_task(session())
            await asyncio.sleep(0.5)  # CONNECT sent, no CONNACK: the broker is stopped
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # The connection completes after the cancellation: it says the will's message itself
        # (a clean disconnect would make the broker drop the will) and hangs up.
        await got.wait_for(lambda c: c.on("/status") == [{"state": "offline"}], within=10)
        assert not connected.is_set()
        deadline = asyncio.get_running_loop().time() + 10
        while f"Client {identifier} disconnected" not in broker.log_tail(200):
            assert asyncio.get_running_loop().time() < deadline, broker.log_tail()
            await asyncio.sleep(0.05)
