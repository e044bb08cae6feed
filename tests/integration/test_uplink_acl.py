"""The per-gateway ACL of docs/deploy.md, read from the page itself, on a real Mosquitto with
mutual TLS and the certificate's CN as the user: a gateway publishes its own topics and reads
its own commands only; configured as another gateway, it has every message refused and keeps
every row."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest

from buffer import Outbox
from edge import contract
from edge.config.model import SiteConfig
from edge.config.model import Uplink as UplinkConfig
from edge.doctor import check_brokers
from edge.uplink import Uplink, tls_context
from tests.fixtures.broker import Mosquitto, MosquittoFactory, TlsListener, collect
from tests.fixtures.certs import Authority
from tests.integration.site import site_dict
from tests.integration.uplink_parts import ALL, running

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
ACL_MARK = "# mosquitto acl_file: one rule set for every gateway"
PREFIX = "district/v1"


def documented_acl() -> list[str]:
    """The rule lines of the fenced block in docs/deploy.md that starts with ACL_MARK."""
    text = DOCS.read_text()
    start = text.index(ACL_MARK)
    block = text[start : text.index("```", start)]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki")


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory, authority: Authority) -> Mosquitto:
    cert, key = authority.issue("server", "broker.test", ip="127.0.0.1")
    return mosquitto_factory(
        tls=TlsListener(authority.cert_path, cert, key, require_client_cert=True),
        use_identity_as_username=True,
        acl=documented_acl(),
    )


def gateway(outbox: Outbox, broker: Mosquitto, ca: Authority, gateway_id: str, cn: str) -> Uplink:
    cert, key = ca.issue(f"client-{cn}", cn)
    config = UplinkConfig.model_validate(
        {
            "brokers": [broker.url],
            "ca_file": str(ca.cert_path),
            "cert_file": str(cert),
            "key_file": str(key),
            "batch_interval": "20ms",
            "reconnect_max": "1s",
        }
    )
    return Uplink(
        config,
        gateway_id,
        outbox,
        version="t",
        boot_time=time.time(),
        command_handlers={"ping": pong},
    )


async def pong(params: object) -> dict[str, bool]:
    return {"pong": True}


async def fill(outbox: Outbox) -> None:
    outbox.submit("event", contract.event_body("alarm-raised", time.time(), device="efm-1"))
    for i in range(5):
        outbox.submit(
            "telemetry",
            {"device": "efm-1", "point": "residual_current", "value": float(i), "unit": "mA"}
            | {"ts": time.time()},
        )
    await outbox.flush()


async def wait_until(condition: object, within: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def test_the_documented_acl_is_per_gateway() -> None:
    acl = documented_acl()
    assert acl
    assert all(line.startswith("pattern ") and "/%u/" in line for line in acl)


async def test_a_gateway_publishes_its_own_topics_under_the_documented_acl(
    broker: Mosquitto, authority: Authority, outbox: Outbox
) -> None:
    await fill(outbox)
    uplink = gateway(outbox, broker, authority, "gw-a", cn="gw-a")
    async with collect(broker, ALL) as got, running(uplink):
        await wait_until(lambda: uplink.tally.acked == 6)
        await got.wait_for(lambda c: bool(c.on("gw-a/events")) and bool(c.on("gw-a/status")))
        assert uplink.state == "online"
    assert await outbox.depth() == {"event": 0, "telemetry": 0}
    assert uplink.refusals.count == 0


async def test_a_certificate_of_another_gateway_has_every_message_refused_and_keeps_every_row(
    broker: Mosquitto, authority: Authority, outbox: Outbox
) -> None:
    await fill(outbox)
    # Configured as gw-b, but the certificate says gw-a: the broker knows it as gw-a.
    uplink = gateway(outbox, broker, authority, "gw-b", cn="gw-a")
    async with collect(broker, ALL) as got, running(uplink):
        await wait_until(lambda: uplink.refusals.count >= 4 and uplink.inflight == 2)
        assert uplink.state == "refused"
        assert await outbox.depth() == {"event": 1, "telemetry": 5}
        assert uplink.tally.acked == 0
    assert [m.topic.value for m in got.messages] == []


async def test_a_gateway_reads_only_its_own_commands(
    broker: Mosquitto, authority: Authority
) -> None:
    cert, key = authority.issue("client-gw-a", "gw-a")
    tls = UplinkConfig.model_validate(
        {
            "brokers": [broker.url],
            "ca_file": str(authority.cert_path),
            "cert_file": str(cert),
            "key_file": str(key),
        }
    )
    listener = aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"gw-a-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls_context(tls),
        timeout=5,
    )
    ((user, password),) = [(u, p) for u, p in (broker.users or {}).items()]
    platform = aiomqtt.Client(
        broker.host, broker.plain_port, username=user, password=password, timeout=5
    )
    async with listener, platform:
        # Its own commands, another gateway's and all of them: only its own may arrive.
        for topic in (
            contract.commands_topic(PREFIX, "gw-a"),
            contract.commands_topic(PREFIX, "gw-b"),
            contract.fleet_filter(PREFIX, "commands"),
        ):
            await listener.subscribe(topic, qos=1)
        await platform.publish(contract.commands_topic(PREFIX, "gw-b"), b"for-b", qos=1)
        await platform.publish(contract.commands_topic(PREFIX, "gw-a"), b"for-a", qos=1)
        await platform.publish(contract.commands_topic(PREFIX, "gw-b"), b"for-b-again", qos=1)
        await platform.publish(contract.commands_topic(PREFIX, "gw-a"), b"last", qos=1)
        received: list[bytes] = []
        # Delivered in the order published: anything for gw-b would come before "last".
        async with asyncio.timeout(10):
            async for message in listener.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)
                if message.payload == b"last":
                    break
    # The gateway's own commands (once per matching subscription), never gw-b's.
    assert set(received) == {b"for-a", b"last"}, received


async def test_edge_doctor_proves_delivery_under_the_documented_acl(
    broker: Mosquitto, authority: Authority, tmp_path: Path
) -> None:
    cert, key = authority.issue("client-gw-a", "gw-a")
    site = site_dict(tmp_path, broker_url=broker.url, tcp_port=1, rtu_link=tmp_path / "tty")
    site["gateway"]["id"] = "gw-a"
    site["uplink"].update(ca_file=str(authority.cert_path), cert_file=str(cert), key_file=str(key))
    checks = await check_brokers(SiteConfig.model_validate(site), tmp_path / "certs", 3)
    assert [(c.name.split()[0], c.level) for c in checks] == [("broker", "ok"), ("delivery", "ok")]
