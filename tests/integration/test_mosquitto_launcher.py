"""hil.mosquitto, the one way the tests, the rig, the demo and the benchmarks start Mosquitto:
a real broker on a free port, restartable on it, and a failure that says why."""

from __future__ import annotations

import socket
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hil.mosquitto import Mosquitto, MosquittoError, find_mosquitto, free_port

pytestmark = pytest.mark.integration


def _connect(broker: Mosquitto, user: str | None = None, password: str | None = None) -> int:
    """The CONNACK reason code a client gets from the broker's plain listener."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if user is not None:
        client.username_pw_set(user, password)
    try:
        code = client.connect(broker.host, broker.plain_port, keepalive=10)
        if code != 0:
            return int(code)
        result: list[int] = []
        client.on_connect = lambda _c, _u, _f, reason, _p: result.append(reason.value)
        while not result:
            client.loop(timeout=1.0)
        return result[0]
    finally:
        client.disconnect()


def test_a_broker_starts_on_a_free_port_and_again_on_the_same_one(tmp_path: Path) -> None:
    broker = Mosquitto(find_mosquitto(), tmp_path / "broker")
    try:
        broker.start()
        port = broker.port
        assert broker.running
        assert _connect(broker) == 0
        broker.stop()
        assert not broker.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((broker.host, port), timeout=1).close()
        broker.start()
        assert broker.port == port
        assert _connect(broker) == 0
    finally:
        broker.stop()


def test_with_logins_anonymous_clients_are_refused_and_the_observer_is_let_in(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(
        find_mosquitto(),
        tmp_path / "broker",
        users={"gw-1": "secret"},
        acl=["user gw-1", "topic write edge/gw-1/#"],
    )
    try:
        broker.start()
        assert broker.observer is not None
        assert _connect(broker) != 0
        assert _connect(broker, "gw-1", "wrong") != 0
        assert _connect(broker, "gw-1", "secret") == 0
        assert _connect(broker, *broker.observer) == 0
    finally:
        broker.stop()


def test_a_broker_that_cannot_start_says_why_from_its_log(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        broker = Mosquitto(find_mosquitto(), tmp_path / "broker", port)
        with pytest.raises(MosquittoError, match=f"port 127.0.0.1:{port} is already in use"):
            broker.start()
        assert not broker.running
    finally:
        taken.close()
    bad = Mosquitto(find_mosquitto(), tmp_path / "bad", extra_config=["no_such_option 1"])
    with pytest.raises(MosquittoError, match=r"(?s)exited with \d+ on port \d+:\n.*no_such_option"):
        bad.start()


def test_an_acl_without_logins_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="an ACL needs users"):
        Mosquitto(find_mosquitto(), tmp_path / "broker", free_port(), acl=["topic read #"])
