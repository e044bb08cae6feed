"""The uplink's connection settings against a real Mosquitto: TLS with a CA, mutual TLS,
username and password, MQTT 5 and 3.1.1. Certificates are made by the test."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from buffer import Outbox
from drivers.types import Reading
from edge import contract
from edge.config.model import Uplink as UplinkConfig
from edge.uplink import Uplink
from tests.fixtures.broker import Mosquitto, MosquittoFactory, TlsListener, collect
from tests.fixtures.certs import Authority

pytestmark = pytest.mark.integration

GATEWAY = "gw-tls"
ALL = "district/v1/#"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "pki")


def tls_broker(factory: MosquittoFactory, ca: Authority, *, mutual: bool) -> Mosquitto:
    cert, key = ca.issue("server", "broker.test", ip="127.0.0.1")
    return factory(tls=TlsListener(ca.cert_path, cert, key, require_client_cert=mutual))


def uplink(outbox: Outbox, url: str, **settings: Any) -> Uplink:
    config = UplinkConfig.model_validate(
        {"brokers": [url], "batch_interval": "20ms", "reconnect_max": "1s", **settings}
    )
    return Uplink(config, GATEWAY, outbox, version="t", boot_time=time.time())


async def delivered(broker: Mosquitto, outbox: Outbox, link: Uplink, within: float = 10) -> bool:
    """Whether a reading stored now reaches a subscriber through ``link`` within ``within`` s."""
    now = time.time()
    reading = Reading("efm-1", "residual_current", 12.0, "mA", now, time.monotonic())
    seq = await outbox.append("telemetry", contract.reading_body(reading))
    task = asyncio.create_task(link.run())
    try:
        async with collect(broker, ALL) as got:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                if any(r["seq"] == seq for b in got.on("/telemetry") for r in b["readings"]):
                    return True
                await asyncio.sleep(0.05)
            return False
    finally:
        await link.stop()
        await asyncio.wait_for(task, 5)


async def test_tls_with_the_sites_ca(
    mosquitto_factory: MosquittoFactory, authority: Authority, outbox: Outbox
) -> None:
    broker = tls_broker(mosquitto_factory, authority, mutual=False)
    assert broker.url.startswith("mqtts://")
    link = uplink(outbox, broker.url, ca_file=str(authority.cert_path))
    assert await delivered(broker, outbox, link)
    assert link.state == "stopped"


async def test_tls_refuses_a_broker_signed_by_another_ca(
    mosquitto_factory: MosquittoFactory, authority: Authority, tmp_path: Path, outbox: Outbox
) -> None:
    broker = tls_broker(mosquitto_factory, authority, mutual=False)
    stranger = Authority(tmp_path / "other-pki", name="Some Other CA")
    link = uplink(outbox, broker.url, ca_file=str(stranger.cert_path))
    assert not await delivered(broker, outbox, link, within=3)
    assert link.last_error is not None
    assert "certificate verify failed" in link.last_error.lower()


async def test_mutual_tls_with_a_client_certificate(
    mosquitto_factory: MosquittoFactory, authority: Authority, outbox: Outbox
) -> None:
    broker = tls_broker(mosquitto_factory, authority, mutual=True)
    cert, key = authority.issue("gw", GATEWAY)
    link = uplink(
        outbox, broker.url, ca_file=str(authority.cert_path), cert_file=str(cert), key_file=str(key)
    )
    assert await delivered(broker, outbox, link)


async def test_mutual_tls_without_a_client_certificate_is_refused(
    mosquitto_factory: MosquittoFactory, authority: Authority, outbox: Outbox
) -> None:
    broker = tls_broker(mosquitto_factory, authority, mutual=True)
    link = uplink(outbox, broker.url, ca_file=str(authority.cert_path))
    # Refused at once, not after the 10 s CONNACK timeout: delivered() gives it 3 s and the
    # attempts go on with the backoff.
    assert not await delivered(broker, outbox, link, within=3)
    assert link.tally.attempts >= 2
    assert link.last_error is not None
    assert "before accepting it" in link.last_error


async def test_a_missing_key_file_is_named_in_the_error(
    mosquitto_factory: MosquittoFactory, authority: Authority, tmp_path: Path, outbox: Outbox
) -> None:
    broker = tls_broker(mosquitto_factory, authority, mutual=True)
    cert, _ = authority.issue("gw", GATEWAY)
    missing = tmp_path / "nowhere.key"
    link = uplink(
        outbox,
        broker.url,
        ca_file=str(authority.cert_path),
        cert_file=str(cert),
        key_file=str(missing),
    )
    assert not await delivered(broker, outbox, link, within=2)
    assert link.last_error is not None
    assert "key_file" in link.last_error
    assert str(missing) in link.last_error


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_username_and_password_over_both_protocols(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, protocol: str
) -> None:
    broker = mosquitto_factory(users={"gw-tls": "right-password"})
    link = uplink(
        outbox, broker.url, username="gw-tls", password="right-password", protocol=protocol
    )
    assert await delivered(broker, outbox, link)


async def test_wrong_credentials_give_a_clear_error_and_back_off(
    mosquitto_factory: MosquittoFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory(users={"gw-tls": "right-password"})
    link = uplink(outbox, broker.url, username="gw-tls", password="wrong", reconnect_max="1s")
    caplog.set_level(logging.WARNING, logger="edge.uplink")
    task = asyncio.create_task(link.run())
    try:
        await asyncio.sleep(3.0)
        assert link.state in {"offline", "connecting"}
        assert link.last_error is not None
        assert "not authori" in link.last_error.lower() or "bad user" in link.last_error.lower()
        # Backoff (0.5 s doubling, capped at 1 s, jittered down to half): in 3 s at most about
        # 1 + 3 / 0.25 attempts even with the smallest draws; a tight loop would make hundreds.
        assert 2 <= link.tally.attempts <= 13
        assert link.tally.published == 0
    finally:
        await link.stop()
        await asyncio.wait_for(task, 5)
    assert "wrong" not in caplog.text  # the password is never logged
    assert any("authori" in r.getMessage().lower() for r in caplog.records)


async def test_the_installed_certs_are_used_when_the_site_file_names_none(
    mosquitto_factory: MosquittoFactory, authority: Authority, tmp_path: Path, outbox: Outbox
) -> None:
    # An installed gateway: ca.pem, client.pem and client.key beside the site file, and a site
    # file that only says mqtts://.
    broker = tls_broker(mosquitto_factory, authority, mutual=True)
    certs = tmp_path / "etc" / "certs"
    certs.mkdir(parents=True)
    cert, key = authority.issue("gw", GATEWAY)
    (certs / "ca.pem").write_bytes(authority.cert_path.read_bytes())
    (certs / "client.pem").write_bytes(cert.read_bytes())
    (certs / "client.key").write_bytes(key.read_bytes())
    config = UplinkConfig.model_validate(
        {"brokers": [broker.url], "batch_interval": "20ms", "reconnect_max": "1s"}
    )
    without = Uplink(config, GATEWAY, outbox, version="t", boot_time=time.time())
    assert not await delivered(broker, outbox, without, within=2)
    assert without.last_error is not None
    installed = Uplink(config, GATEWAY, outbox, version="t", boot_time=time.time(), certs=certs)
    assert await delivered(broker, outbox, installed)
