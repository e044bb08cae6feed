"""A local MQTT broker for the demo: Mosquitto when installed, else amqtt.

The demo must run on any machine, including one where nobody can ``apt-get install
mosquitto``; amqtt is a pure-Python broker from PyPI that is good enough for one gateway and
one subscriber. Mosquitto is started by :mod:`hil.mosquitto`, as the tests and the scenario
rig start it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hil.mosquitto import Mosquitto, MosquittoError, mosquitto_binary


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts a TCP connection, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g}s") from None
            time.sleep(0.05)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # Servers set SO_REUSEADDR, so connections in TIME_WAIT from a previous run do not
        # make the port busy for them; the probe must judge the same way.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class LocalBroker:
    """A broker process on ``host:port``; ``kind`` says which one runs."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._binary = mosquitto_binary()
        self.kind = "mosquitto" if self._binary is not None else "amqtt (embedded)"
        self._mosquitto: Mosquitto | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="edge-broker-")

    def start(self, *, busy_grace: float = 5.0) -> None:
        # A broker a previous run just stopped may hold the port a moment longer (a demo
        # started again right after Ctrl-C): wait that long before calling the port busy.
        deadline = time.monotonic() + busy_grace
        while not port_is_free(self.host, self.port):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"port {self.host}:{self.port} is busy; stop what uses it first")
            time.sleep(0.2)
        if self._binary is not None:
            # No log: the demo may run for hours.
            self._mosquitto = Mosquitto(
                self._binary, Path(self._workdir.name), self.port, host=self.host, log_types=()
            )
            try:
                self._mosquitto.start()
            except MosquittoError as exc:
                raise RuntimeError(str(exc)) from None
            return
        command = [
            sys.executable,
            "-m",
            "hil.broker",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_port(self.host, self.port)

    def stop(self) -> None:
        if self._mosquitto is not None:
            self._mosquitto.stop()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self) -> None:
        self.stop()
        self._workdir.cleanup()


async def serve_amqtt(host: str, port: int) -> None:
    # Imported here: amqtt is an optional dependency (the "demo" extra), needed only when
    # Mosquitto is absent.
    from amqtt.broker import Broker  # noqa: PLC0415

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="Embedded MQTT broker (amqtt) for the demo.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_amqtt(args.host, args.port))


if __name__ == "__main__":
    main()
