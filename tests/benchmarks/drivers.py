"""Bus scheduler figures on the line-timed RTU simulator (hil/rtu_line.py).

- ``rtu_bus_efficiency_9600`` / ``_19200``: 16 reference monitors (efm-ref, 14 registers each)
  on one bus, polled as fast as the bus allows. Registers per second achieved, divided by the
  line ceiling for the same registers read with the fewest requests Modbus allows (one read of
  14 per device: 8 + 5 + 28 + 7 = 48 characters of 11 bits). The simulator's slave turnaround
  is 0, so the ceiling is the wire's and every millisecond the master wastes shows.
- ``poll_jitter_ms_p99``: 60 monitors on 4 buses at 9600 baud (15 per bus, 1 s interval,
  about 83 % of each line's time busy), all four buses in one event loop. Jitter is how late a
  poll starts after it was due; p99 over every poll of the run.
- ``poll_jitter_ms_p99_one_port_hung``: the same, while a fifth bus's port hangs in its open
  (held in the kernel, hil/port_faults.py) for the whole run: what a hung adapter costs the
  other buses.
- ``tcp_1000rps_cpu_pct`` / ``tcp_1000rps_rss_mb``: the whole gateway (``edge run``, its
  own process, started with the installed unit's interpreter flags: ``python -OO``) polling
  50 Modbus TCP monitors of 20 registers each every second, served by the simulator
  (another process), every reading going through the rules into the SQLite outbox and out
  to a local MQTT broker. The 20-register monitor is efm-ref's map plus six
  more points, a site-local model file (``$EDGE_MODEL_PATH``). CPU is the gateway process's,
  in % of one core, over a measuring window after a warm-up; RSS at its end. The reference
  receiver (hil/receiver.py) takes everything the gateway publishes, validates it and decodes
  the telemetry of either form; the readings it decoded that were polled in the window (by
  their own times) give ``tcp_1000rps_readings_per_s``, which shows whether
  the gateway really moved 1,000 readings a second end to end while it used that CPU (a
  message it refuses fails the suite).
- ``tcp_1000rps_mqtts_rss_mb`` / ``tcp_1000rps_mqtts_cpu_pct``: the same gateway over
  ``mqtts://`` (a Mosquitto TLS listener with a CA made for the run): what speaking TLS costs,
  OpenSSL's libraries loaded with it (edge/openssl.py keeps them out over ``mqtt://``).
- ``start_first_poll_s``: how long ``edge run`` takes on the same site (50 monitors, 1,000
  readings/s) from its spawn to its first Modbus request on the wire, which a plain listening
  socket takes in place of the simulator; median of ``start_trials`` starts. It includes the
  child process that validates the site file (docs/architecture.md, "The site file's model
  stays out of the running gateway").

``python -m tests.benchmarks --only drivers`` runs these alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import yaml

from drivers.modbus import ModbusBus, PolledDevice, RtuSettings, load_model
from drivers.modbus.codec import read_chars
from drivers.types import DeviceStatus, Reading
from edge.contract import decode_payload
from hil.mosquitto import Mosquitto, TlsListener, find_mosquitto
from hil.port_faults import HeldOpen
from hil.receiver import Receiver
from hil.rtu_line import RtuLine
from tests.fixtures.broker import free_port
from tests.fixtures.certs import Authority
from tests.fixtures.service import compile_as_installed, interpreter_flags

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"

EFM = load_model("efm-ref")
REGISTERS = 14  # efm-ref's one block


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _discard(_: Reading | DeviceStatus) -> None:
    pass


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def efficiency(baudrate: int, seconds: float, devices: int = 16) -> dict[str, float]:
    """Saturate one bus of ``devices`` monitors; return achieved/ceiling and the raw figures."""
    async with RtuLine(dict.fromkeys(range(1, devices + 1), EFM), baudrate=baudrate) as line:
        bus = ModbusBus(
            f"rtu-{baudrate}",
            RtuSettings(line.path, baudrate, timeout=0.5),
            # An interval far below a cycle keeps every device always due: the bus never idles.
            [PolledDevice(f"m{a}", EFM, a, 0.01) for a in range(1, devices + 1)],
            _discard,
        )
        task = asyncio.create_task(bus.run())
        try:
            await asyncio.sleep(1.0)  # connect, first cycle
            answers, started = bus.stats.answers, time.monotonic()
            await asyncio.sleep(seconds)
            answers, elapsed = bus.stats.answers - answers, time.monotonic() - started
        finally:
            await _stop(task)
        collisions = line.stats.collisions
    achieved = answers * REGISTERS / elapsed
    ceiling = REGISTERS / (read_chars(REGISTERS) * 11 / baudrate)
    print(
        f"  rtu {baudrate}: {achieved:.1f} registers/s of a {ceiling:.1f} ceiling "
        f"({achieved / ceiling:.1%}), {collisions} t3.5 violations"
    )
    return {"efficiency": achieved / ceiling, "registers_per_s": achieved}


async def jitter(
    seconds: float, buses: int = 4, per_bus: int = 15, *, one_port_hung: bool = False
) -> dict[str, float]:
    """Poll lateness over ``buses`` x ``per_bus`` monitors at 1 s; with ``one_port_hung`` a
    fifth bus's port hangs in its open the whole time (hil/port_faults.py)."""
    late: list[float] = []

    def observe(_device: str, _lane: str, due: float, started: float, _end: float) -> None:
        late.append(started - due)

    lines = [RtuLine(dict.fromkeys(range(1, per_bus + 1), EFM)) for _ in range(buses)]
    leader, follower = os.openpty()
    hung_port = os.ttyname(follower)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(os.close, leader)
        stack.callback(os.close, follower)
        gate = stack.enter_context(HeldOpen(hung_port)) if one_port_hung else None
        for line in lines:
            await stack.enter_async_context(line)
        tasks = []
        for number, line in enumerate(lines):
            bus = ModbusBus(
                f"rtu{number}",
                RtuSettings(line.path, 9600, timeout=0.3),
                [PolledDevice(f"b{number}-m{a}", EFM, a, 1.0) for a in range(1, per_bus + 1)],
                _discard,
                observer=observe,
            )
            tasks.append(asyncio.create_task(bus.run()))
        if gate is not None:
            hung = ModbusBus(
                "hung",
                RtuSettings(hung_port, 9600, timeout=0.3),
                [PolledDevice(f"hung-m{a}", EFM, a, 1.0) for a in range(1, per_bus + 1)],
                _discard,
            )
            tasks.append(asyncio.create_task(hung.run()))
        try:
            await asyncio.sleep(2.0)  # connect; the first staggered cycle settles
            late.clear()
            await asyncio.sleep(seconds)
            if gate is not None and not (gate.held.is_set() and not gate.passed.is_set()):
                raise RuntimeError("the hung port's open was not held for the whole run")
        finally:
            for task in tasks:
                await _stop(task)
    p50, p99 = percentile(late, 50) * 1000, percentile(late, 99) * 1000
    what = ", a fifth bus's open hung" if one_port_hung else ""
    print(
        f"  jitter{what}: {len(late)} polls of {buses * per_bus} devices on {buses} buses, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(late) * 1000:.2f} ms"
    )
    return {"p50": p50, "p99": p99, "polls": float(len(late))}


#: efm-ref's 14 points and six more: a 20-register three-phase monitor.
BENCH_MODEL = "bench-monitor-20"


def _bench_model(folder: Path) -> Path:
    model = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "drivers" / "models" / "efm-ref.yaml").read_text(
            encoding="utf-8"
        )
    )
    model["name"] = BENCH_MODEL
    extra = ["power_a", "power_b", "power_c", "power_factor", "frequency", "energy_kwh"]
    for offset, name in enumerate(extra):
        model["points"].append(
            {"name": name, "address": 14 + offset, "type": "u16", "scale": 0.1, "typical": 50.0}
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{BENCH_MODEL}.yaml").write_text(yaml.safe_dump(model), encoding="utf-8")
    return folder


def _site(
    workdir: Path,
    tcp_port: int,
    broker_url: str,
    devices: int,
    interval: float,
    *,
    model: str = "efm-ref",
    policy: str | None = "all",
    ca_file: Path | None = None,
) -> Path:
    site: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["buses"] = [
        {"id": "lan", "kind": "modbus-tcp", "host": "127.0.0.1", "port": tcp_port, "timeout": "1s"}
    ]
    location = {"building": "B", "floor": "1", "room": "R", "venue_type": "shop"}
    site["devices"] = [
        {
            "id": f"efm-{address:02d}",
            "model": model,
            "bus": "lan",
            "address": address,
            "poll_interval": f"{round(interval * 1000)}ms",
            "location": location,
        }
        for address in range(1, devices + 1)
    ]
    site["uplink"]["brokers"] = [broker_url]
    if ca_file is not None:
        site["uplink"]["ca_file"] = str(ca_file)
    site["buffer"]["path"] = str(workdir / "outbox.sqlite")
    # Every reading stored and sent: the figure is the whole path at 1,000 readings/s (the
    # storage policies' savings are the storage suite's figures). None: the models' defaults.
    if policy is not None:
        site["storage"] = {"policy": policy}
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


async def _receive(
    port: int, receiver: Receiver, ready: asyncio.Event, polled: list[float]
) -> None:
    """Feed everything the gateway publishes to the reference receiver, which validates each
    message and decodes telemetry of either form (compact with the metadata's aliases); the
    time each reading delivered was polled goes to ``polled``."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("district/v1/#", qos=1)
        ready.set()
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                topic = message.topic.value
                if receiver.handle(topic, message.payload) == "kept" and topic.endswith(
                    "/telemetry"
                ):
                    rows = receiver.readings_of(decode_payload(message.payload))
                    polled.extend(datetime.fromisoformat(r["ts"]).timestamp() for r in rows)


def _polled_rate(polled: list[float], start: float, end: float) -> float:
    """Readings a second polled from ``start`` to ``end`` (wall clock) that reached the broker.

    Counted by the readings' own times, not by when their message came: a message carries a
    whole batch (1,000 readings, a second of this site), so counting arrivals in a window is
    off by a message or two at its ends."""
    return sum(start <= at < end for at in polled) / (end - start)


def _readings_received(receiver: Receiver) -> int:
    """Readings decoded so far; a message the receiver refused fails the measurement."""
    summary = receiver.summary()
    if summary.rejected:
        raise RuntimeError(
            f"the reference receiver refused {summary.rejected} messages: {summary.rejections[:3]}"
        )
    return sum(gateway.readings for gateway in summary.gateways.values())


async def start_simulator(tcp_port: int, devices: int, models: Path) -> asyncio.subprocess.Process:
    """The simulator serving ``devices`` bench monitors (units 1..devices) on ``tcp_port``."""
    units = ",".join(map(str, range(1, devices + 1)))
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.simulator", "serve",
        "--tcp", f"127.0.0.1:{tcp_port}", "--tcp-devices", units,
        "--noise", "0.01", "--model", BENCH_MODEL, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "EDGE_MODEL_PATH": str(models)},
    )  # fmt: skip
    await asyncio.sleep(1.5)
    return simulator


async def stop_processes(processes: list[asyncio.subprocess.Process]) -> None:
    """Terminate the processes, last started first, and wait for each."""
    for process in reversed(processes):
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def stop_subscriber(subscriber: asyncio.Task[None]) -> None:
    """Cancel the benchmark's subscriber and wait for it (a broken connection is no error)."""
    subscriber.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await subscriber


def footprint(
    who: str, devices: int, *, cpu_seconds: float, elapsed: float, rss_mb: float, rate: float
) -> dict[str, float]:
    """A gateway's figures over a measuring window, printed and returned."""
    cpu = 100 * cpu_seconds / elapsed
    print(
        f"  {who}: {devices} devices, {rate:.0f} readings/s reached the broker; "
        f"{'its' if who == 'peer' else 'gateway'} CPU {cpu:.1f} % of one core, "
        f"RSS {rss_mb:.1f} MiB"
    )
    return {"cpu_pct": cpu, "rss_mb": rss_mb, "readings_per_s": rate}


def _broker(workdir: Path, tls: bool) -> Mosquitto:
    """The footprint's Mosquitto (not started): plain, or TLS with a CA made here (its
    subscriber then connects to the plain listener beside it)."""
    listener = None
    if tls:
        pki = Authority(workdir / "pki")
        cert, key = pki.issue("broker", "broker", ip="127.0.0.1")
        listener = TlsListener(pki.cert_path, cert, key)
    return Mosquitto(find_mosquitto(), workdir / "broker", tls=listener)


async def tcp_footprint(
    seconds: float,
    devices: int = 50,
    interval: float = 1.0,
    warmup: float = 10.0,
    *,
    policy: str | None = "all",
    tls: bool = False,
) -> dict[str, float]:
    """CPU and RSS of ``edge run`` moving ~1,000 readings/s from Modbus TCP to the broker
    (``policy``: the site's storage policy, None for the models' defaults; ``tls``: over
    ``mqtts://`` to a Mosquitto with the test's CA, rather than ``mqtt://``)."""
    processes: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as folder:
        workdir = Path(folder)
        broker = _broker(workdir, tls)
        tcp_port = free_port()
        broker.start()
        receiver = Receiver(":memory:")
        ready = asyncio.Event()
        models = _bench_model(workdir / "models")
        environment = {**os.environ, "EDGE_MODEL_PATH": str(models)}
        polled: list[float] = []
        subscriber = asyncio.create_task(_receive(broker.plain_port, receiver, ready, polled))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            processes.append(await start_simulator(tcp_port, devices, models))
            site = _site(
                workdir, tcp_port, broker.url, devices, interval, model=BENCH_MODEL,
                policy=policy, ca_file=broker.tls.ca_file if broker.tls is not None else None,
            )  # fmt: skip
            # Started as the installed unit starts it (its interpreter flags: -OO), from the
            # bytecode the installer compiles for it.
            await asyncio.to_thread(compile_as_installed)
            gateway = await asyncio.create_subprocess_exec(
                sys.executable, *interpreter_flags(), "-m", "edge.cli", "run", "--config",
                str(site), "--log-level", "warning", stderr=asyncio.subprocess.DEVNULL,
                env=environment,
            )  # fmt: skip
            processes.append(gateway)
            await asyncio.sleep(warmup)
            if gateway.returncode is not None:
                raise RuntimeError(f"the gateway exited with {gateway.returncode}")
            process = psutil.Process(gateway.pid)
            cpu_before, wall_start = process.cpu_times(), time.time()
            started = time.monotonic()
            await asyncio.sleep(seconds)
            cpu_after, wall_end = process.cpu_times(), time.time()
            elapsed = time.monotonic() - started
            rss = process.memory_info().rss / 2**20
            # Readings polled to the end of the window are delivered a commit window and a
            # batch later: wait for one polled after it (they come in seq order).
            for _ in range(200):  # 20 s at most
                if polled and polled[-1] >= wall_end + 1:
                    break
                await asyncio.sleep(0.1)
            _readings_received(receiver)  # fails the measurement if a message was refused
        finally:
            await stop_processes(processes)
            await stop_subscriber(subscriber)
            broker.stop()
            receiver.close()
    used = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    rate = _polled_rate(polled, wall_start, wall_end)
    return footprint("tcp", devices, cpu_seconds=used, elapsed=elapsed, rss_mb=rss, rate=rate)


async def first_poll_seconds(trials: int, devices: int = 50) -> float:
    """Median wall clock from spawning ``edge run`` to its first Modbus request."""
    times = [await _first_poll(devices) for _ in range(trials)]
    return sorted(times)[len(times) // 2]


async def _first_poll(devices: int) -> float:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as folder:
        workdir = Path(folder)
        models = _bench_model(workdir / "models")
        environment = {**os.environ, "EDGE_MODEL_PATH": str(models)}
        first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                if await reader.read(12) and not first.done():
                    first.set_result(time.monotonic())
            writer.close()

        listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        # No broker: the uplink retries in the background, the buses poll regardless.
        site = _site(
            workdir, port, f"mqtt://127.0.0.1:{free_port()}", devices, 1.0, model=BENCH_MODEL,
            policy=None,
        )  # fmt: skip
        spawned = time.monotonic()
        gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "run", "--config", str(site),
            "--log-level", "warning", stderr=asyncio.subprocess.DEVNULL, env=environment,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(first, 60) - spawned
        finally:
            await stop_processes([gateway])
            listener.close()


KEYS = (
    "rtu_bus_efficiency_9600",
    "rtu_bus_efficiency_19200",
    "poll_jitter_ms_p99",
    "poll_jitter_ms_p50",
    "poll_jitter_ms_p99_one_port_hung",
    "tcp_1000rps_cpu_pct",
    "tcp_1000rps_rss_mb",
    "tcp_1000rps_readings_per_s",
    "tcp_1000rps_mqtts_rss_mb",
    "tcp_1000rps_mqtts_cpu_pct",
    "start_first_poll_s",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {
    "seconds": 0.5,
    "footprint_seconds": 1.0,
    "footprint_warmup": 3.0,
    "footprint_devices": 5,
    "start_trials": 1,
}


async def run(
    seconds: float = 10.0,
    footprint_seconds: float = 30.0,
    footprint_warmup: float = 10.0,
    footprint_devices: int = 50,
    start_trials: int = 5,
) -> dict[str, float]:
    """Every drivers figure; ``seconds`` is the measuring window of each bus figure."""
    print("drivers: bus scheduler on the line-timed RTU simulator")
    slow = await efficiency(9600, seconds)
    fast = await efficiency(19200, seconds)
    spread = await jitter(seconds)
    spread_hung = await jitter(seconds, one_port_hung=True)
    print(
        f"drivers: the gateway at {footprint_devices * 20:,} readings/s over Modbus TCP "
        f"({footprint_seconds:g} s)"
    )
    tcp = await tcp_footprint(footprint_seconds, devices=footprint_devices, warmup=footprint_warmup)
    print("drivers: the same over mqtts:// (OpenSSL loaded: edge/openssl.py)")
    tls = await tcp_footprint(
        footprint_seconds, devices=footprint_devices, warmup=footprint_warmup, tls=True
    )
    print(f"drivers: edge run from its spawn to its first poll ({start_trials} starts)")
    start = await first_poll_seconds(start_trials, devices=footprint_devices)
    return {
        "rtu_bus_efficiency_9600": round(slow["efficiency"], 4),
        "rtu_bus_efficiency_19200": round(fast["efficiency"], 4),
        "poll_jitter_ms_p99": round(spread["p99"], 2),
        "poll_jitter_ms_p50": round(spread["p50"], 2),
        "poll_jitter_ms_p99_one_port_hung": round(spread_hung["p99"], 2),
        "tcp_1000rps_cpu_pct": round(tcp["cpu_pct"], 2),
        "tcp_1000rps_rss_mb": round(tcp["rss_mb"], 1),
        "tcp_1000rps_readings_per_s": round(tcp["readings_per_s"], 1),
        "tcp_1000rps_mqtts_rss_mb": round(tls["rss_mb"], 1),
        "tcp_1000rps_mqtts_cpu_pct": round(tls["cpu_pct"], 2),
        "start_first_poll_s": round(start, 3),
    }


if __name__ == "__main__":
    print(asyncio.run(run()))
