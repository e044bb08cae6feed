"""End-to-end latency and footprint of the gateway on the demo site.

Everything runs as separate processes, as on a real gateway: the broker, the simulator, the
gateway (``edge run``). The benchmark changes a value in the simulator and measures:

- change -> buzzer: until the gateway's log line ``buzzer on`` (its timestamp, taken right
  after the pin was driven);
- change -> platform: until the ``alarm-raised`` event reaches a subscriber on the broker.

The site is the example site as shipped, with the gateway's defaults: telemetry waits up to
``uplink.batch_interval`` (5 minutes) for its batch and readings up to
``buffer.commit_interval`` (2 s) for their commit, but the figure is the ``alarm-raised`` event,
which waits for neither (an event closes the commit window at once and goes before any
telemetry), so neither setting is in it.

With a 1 s poll the poll phase dominates both (expect ~500 ms median, ~1 s worst), which is
exactly what an installer should know. Then it samples the gateway's RSS and CPU while the
demo site runs quietly.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import yaml

from edge import contract
from edge.contract import decode_payload
from edge.log import parse_logfmt
from hil.broker import LocalBroker
from hil.simulator import send_control
from tests.fixtures.broker import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def stamp(entry: dict[str, str]) -> float:
    parsed = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return parsed.replace(tzinfo=UTC).timestamp()


class Rig:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = LocalBroker("127.0.0.1", free_port())
        self.tcp_port = free_port()
        self.control_port = free_port()
        self.buzzer_events: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self.processes: list[asyncio.subprocess.Process] = []
        self.gateway: asyncio.subprocess.Process | None = None

    def site(self) -> Path:
        site: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
        for bus in site["buses"]:
            if bus["kind"] == "modbus-tcp":
                bus["port"] = self.tcp_port
            else:
                bus["port"] = str(self.workdir / "rtu")
        site["uplink"]["brokers"] = [f"mqtt://127.0.0.1:{self.broker.port}"]
        site["buffer"]["path"] = str(self.workdir / "outbox.sqlite")
        path = self.workdir / "site.yaml"
        path.write_text(yaml.safe_dump(site, sort_keys=False))
        return path

    async def start(self) -> None:
        self.broker.start()
        simulator = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hil.simulator",
            "serve",
            "--tcp",
            f"127.0.0.1:{self.tcp_port}",
            "--tcp-devices",
            "1,2",
            "--rtu-link",
            str(self.workdir / "rtu"),
            "--rtu-devices",
            "1",
            "--control",
            f"127.0.0.1:{self.control_port}",
            stdout=asyncio.subprocess.DEVNULL,
        )
        self.processes.append(simulator)
        await self._wait_control()
        self.gateway = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            str(self.site()),
            stderr=asyncio.subprocess.PIPE,
        )
        self.processes.append(self.gateway)
        assert self.gateway.stderr is not None
        asyncio.get_running_loop().create_task(self._follow(self.gateway.stderr))

    async def _wait_control(self) -> None:
        for _ in range(200):
            try:
                await send_control(
                    "127.0.0.1",
                    self.control_port,
                    {"cmd": "get", "bus": "tcp", "address": 1, "point": "residual_current"},
                )
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the simulator did not start")

    async def _follow(self, stream: asyncio.StreamReader) -> None:
        while line := (await stream.readline()).decode():
            entry = parse_logfmt(line)
            if entry.get("msg") in ("buzzer on", "buzzer off"):
                self.buzzer_events.put_nowait((entry["msg"], stamp(entry)))

    async def set(self, point: str, value: float) -> None:
        answer = await send_control(
            "127.0.0.1",
            self.control_port,
            {"cmd": "set", "bus": "tcp", "address": 1, "point": point, "value": value},
        )
        if not answer.get("ok"):
            raise RuntimeError(f"simulator refused: {answer}")

    async def stop(self) -> None:
        for process in reversed(self.processes):
            if process.returncode is None:
                process.terminate()
                await process.wait()
        self.broker.close()


async def measure_latency(rig: Rig, trials: int) -> tuple[list[float], list[float]]:
    to_buzzer: list[float] = []
    to_platform: list[float] = []
    topics = contract.Topics.of("district/v1", "gw-demo-0001")
    async with aiomqtt.Client("127.0.0.1", rig.broker.port) as client:
        await client.subscribe(topics.events, qos=1)
        messages = client.messages
        for trial in range(trials):
            # A random phase against the 1 s poll, so the figures cover the whole cycle.
            await asyncio.sleep(random.uniform(0.0, 1.0))
            changed = time.time()
            await rig.set("residual_current", 350)
            kind, at = await asyncio.wait_for(rig.buzzer_events.get(), 10)
            assert kind == "buzzer on", kind
            to_buzzer.append((at - changed) * 1000)
            while True:
                message = await asyncio.wait_for(anext(messages), 10)
                event = decode_payload(bytes(message.payload))
                if event.get("kind") == "alarm-raised":
                    to_platform.append((time.time() - changed) * 1000)
                    break
            await rig.set("residual_current", 120)
            kind, _ = await asyncio.wait_for(rig.buzzer_events.get(), 10)
            assert kind == "buzzer off", kind
            print(
                f"  trial {trial + 1}/{trials}: buzzer {to_buzzer[-1]:.0f} ms, "
                f"platform {to_platform[-1]:.0f} ms",
                flush=True,
            )
    return to_buzzer, to_platform


def measure_footprint(pid: int, seconds: float) -> tuple[float, float]:
    process = psutil.Process(pid)
    process.cpu_percent(None)
    time.sleep(seconds)
    cpu = process.cpu_percent(None)
    rss = process.memory_info().rss / (1024 * 1024)
    return rss, cpu


KEYS = (
    "e2e_change_to_buzzer_ms_p50",
    "e2e_change_to_buzzer_ms_p99",
    "e2e_change_to_platform_ms_p50",
    "e2e_change_to_platform_ms_p99",
    "demo_site_rss_mb",
    "demo_site_cpu_pct",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"trials": 1, "footprint_seconds": 0.5}


async def run(trials: int = 20, footprint_seconds: float = 20.0) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as workdir:
        rig = Rig(Path(workdir))
        try:
            await rig.start()
            await asyncio.sleep(3)  # startup, first polls, uplink online
            print(f"e2e: {trials} trials on the demo site (1 s poll), broker: {rig.broker.kind}")
            buzzer, platform = await measure_latency(rig, trials)
            assert rig.gateway is not None
            print(f"footprint: sampling the gateway process for {footprint_seconds:g} s")
            rss, cpu = await asyncio.to_thread(
                measure_footprint, rig.gateway.pid, footprint_seconds
            )
        finally:
            await rig.stop()
    return {
        "e2e_change_to_buzzer_ms_p50": round(statistics.median(buzzer), 1),
        "e2e_change_to_buzzer_ms_p99": round(percentile(buzzer, 99), 1),
        "e2e_change_to_platform_ms_p50": round(statistics.median(platform), 1),
        "e2e_change_to_platform_ms_p99": round(percentile(platform, 99), 1),
        "demo_site_rss_mb": round(rss, 1),
        "demo_site_cpu_pct": round(cpu, 2),
    }
