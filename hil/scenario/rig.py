"""The parts of a simulated rig: a broker, the device simulators, the gateway process, a small
disk for the outbox, and the platform's reference receiver.

Every part is real: Mosquitto on a free loopback port, pymodbus and pty simulators, ``edge
run`` as its own process (so SIGKILL is a real crash), a tmpfs that really fills up, and
:class:`hil.receiver.Receiver` with its gap detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from edge.contract import decode_payload
from edge.log import parse_logfmt
from edge.schemas import ContractError
from hil import mosquitto
from hil.mosquitto import free_port
from hil.receiver import Receiver, receive
from hil.rtu_line import RtuLine
from hil.serial_sim import Ld2410Sim, SerialDeviceSim, WitMotionSim
from hil.simulator import Simulator

__all__ = ["Disk", "GatewayProcess", "Mosquitto", "ObservingReceiver", "free_port", "log_time"]


class RigError(Exception):
    """A part of the rig cannot be set up; the scenario cannot run (not a failed expectation)."""


class RigSkip(Exception):
    """The rig cannot offer what the scenario needs here (no tmpfs, no rig configured)."""


#: Mosquitto's own default log types (what the rig's broker has always logged).
_DEFAULT_LOG = ("error", "warning", "notice", "information")


def log_time(entry: dict[str, str]) -> float | None:
    """The POSIX time of a gateway log line (its ``ts``), or ``None`` if it has none."""
    try:
        parsed = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    except (KeyError, ValueError):
        return None
    return parsed.replace(tzinfo=UTC).timestamp()


class Mosquitto(mosquitto.Mosquitto):
    """A Mosquitto on a free loopback port that keeps sessions and queued messages across a
    stop and start (persistence), as the district's broker does over a restart."""

    def __init__(self, workdir: Path) -> None:
        try:
            binary = mosquitto.find_mosquitto()
        except mosquitto.MosquittoError as exc:
            raise RigError(str(exc)) from None
        super().__init__(binary, workdir, persistence=True, log_types=_DEFAULT_LOG)

    def start(self) -> None:
        try:
            super().start()
        except mosquitto.MosquittoError as exc:
            raise RigError(f"mosquitto did not start: {exc}") from None


@dataclass
class Arrival:
    """One message that reached the platform."""

    at: float
    topic: str
    message: dict[str, Any]
    #: For telemetry: its readings, whatever the encoding (verbose, or compact columnar
    #: decoded with the gateway's alias table), each with device, point, value, unit, ts.
    readings: list[dict[str, Any]] = field(default_factory=list)


class ObservingReceiver(Receiver):
    """The reference receiver, also noting when each message arrived for the expectations."""

    def __init__(self, db: Path) -> None:
        super().__init__(db)
        self.arrivals: list[Arrival] = []
        #: Messages the reference receiver failed on (it should reject, never raise).
        self.crashes: list[str] = []
        #: Called with every message kept (the demo narrates them).
        self.on_arrival: Callable[[Arrival], None] | None = None
        self.arrived = asyncio.Event()

    def handle(self, topic: str, payload: bytes, received_at: float | None = None) -> str:
        now = time.time()
        if topic.endswith("/commands"):
            # The platform's own commands, seen on the same subscription: not the gateway's to
            # judge (hil.receiver.Receiver raises KeyError on one: it has no gateway_id).
            return "ignored"
        try:
            result = super().handle(topic, payload, now)
        except (KeyError, TypeError) as exc:
            self.crashes.append(f"{topic}: {type(exc).__name__}: {exc}")
            return f"rejected: {exc!r}"
        # Acks are kept whatever the receiver makes of them: a command's answer is evidence.
        if result == "kept" or topic.endswith("/acks"):
            with contextlib.suppress(ContractError, ValueError):
                # Plain JSON or a deflated payload, as the receiver itself reads it.
                message = decode_payload(payload)
                if isinstance(message, dict):
                    readings = self.readings_of(message) if topic.endswith("/telemetry") else []
                    arrival = Arrival(now, topic, message, readings)
                    self.arrivals.append(arrival)
                    self.arrived.set()
                    if self.on_arrival is not None:
                        self.on_arrival(arrival)
        return result

    def events(self) -> list[Arrival]:
        return [a for a in self.arrivals if a.topic.endswith("/events")]


@contextlib.asynccontextmanager
async def receiving(receiver: ObservingReceiver, broker_url: str, prefix: str) -> Any:
    """Run the receiver on ``prefix`` (persistent session) for the block."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(
        receive(
            receiver,
            broker_url,
            prefix,
            stop=stop,
            client_id=f"platform-{uuid.uuid4().hex[:8]}",
            ready=ready,
        )
    )
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield receiver
    finally:
        stop.set()
        await task


async def publish(broker_url: str, topic: str, payload: dict[str, Any]) -> None:
    """Publish one QoS 1 message, as the platform sends a command."""
    host, _, port = broker_url.removeprefix("mqtt://").rpartition(":")
    async with aiomqtt.Client(
        host, int(port), identifier=f"platform-cmd-{uuid.uuid4().hex[:8]}"
    ) as c:
        await c.publish(topic, json.dumps(payload), qos=1)


@dataclass
class LogLine:
    at: float
    entry: dict[str, str]
    instance: int


@dataclass
class GatewayProcess:
    """``edge run`` as its own process; its log lines are kept with their timestamps."""

    site: Path
    log_path: Path
    lines: list[LogLine] = field(default_factory=list)
    on_line: Callable[[LogLine], None] | None = None
    process: asyncio.subprocess.Process | None = None
    instance: int = 0
    #: gpiozero's mock pins (the simulated rig); a real rig drives real ones.
    mock_pins: bool = True
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.running:
            return
        self.instance += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.mock_pins:
            env["GPIOZERO_PIN_FACTORY"] = "mock"
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            str(self.site),
            "--status-every",
            "1s",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        assert self.process.stderr is not None
        self._reader = asyncio.create_task(self._follow(self.process.stderr, self.instance))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def _follow(self, stream: asyncio.StreamReader, instance: int) -> None:
        with self.log_path.open("a") as log_file:
            while raw := await stream.readline():
                text = raw.decode(errors="replace")
                log_file.write(text)
                entry = parse_logfmt(text)
                at = log_time(entry) or time.time()
                line = LogLine(at, entry, instance)
                self.lines.append(line)
                if self.on_line is not None:
                    self.on_line(line)

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, as a power cut or the OOM killer."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        await self._drain_reader()

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``grace`` seconds); the exit status."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._drain_reader()
        return self.process.returncode

    async def _drain_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._reader
            self._reader = None


class Disk:
    """A small tmpfs for the outbox, to fill and free. Needs root (CI runs as root)."""

    def __init__(self, mountpoint: Path, size: str = "8m") -> None:
        self.mountpoint = mountpoint
        self.size = size
        self.mounted = False
        self._filler = mountpoint / "filler"

    def mount(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            raise RigSkip("disk steps mount a small tmpfs for the outbox and need root")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RigSkip(f"cannot mount a tmpfs for the outbox: {result.stderr.strip()}")
        self.mounted = True

    def fill(self) -> int:
        """Write until the file system refuses; the bytes written."""
        written = 0
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # Big writes first, then smaller ones, so not even a page is left free.
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        written += os.write(fd, chunk)
                    except OSError:
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._filler.unlink()

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, capture_output=True)
            self.mounted = False


Sim = Simulator | RtuLine | SerialDeviceSim


def make_serial_sim(kind: str, seed: int) -> SerialDeviceSim:
    if kind == "witmotion":
        return WitMotionSim(rate=20.0, seed=seed)
    return Ld2410Sim(rate=20.0, seed=seed)
