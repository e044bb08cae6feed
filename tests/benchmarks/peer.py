"""The gateway next to a widely used Python gateway ("the peer"), on the same site in one run.

The peer is ThingsBoard IoT Gateway (PyPI ``thingsboard-gateway``, pinned in :data:`PEER`) with
its Modbus connector. It is installed once into its own virtual environment under ``build/``
(:func:`peer_ready`, reused by later runs; the suite is skipped, saying why, when it cannot be
installed) and configured to do the job ``tcp_1000rps_*`` measures for ``edge run``
(tests/benchmarks/drivers.py):

- the same simulator process (``hil.simulator``), the same 50 Modbus TCP monitors of the same
  20-register model (``bench-monitor-20``), each polled every second;
- every reading stored before it is sent: the peer's SQLite storage, ours with ``storage.policy:
  all``; both log at WARNING;
- one ``timeseries`` entry per point for the peer (the way its connector maps points, so it
  sends one request per point), where ours reads a monitor's 20 registers in one request;
- the same Mosquitto, QoS 1. The peer publishes ThingsBoard's gateway topics
  (``v1/gateway/telemetry``); before it sends anything it waits for the answer a ThingsBoard
  server gives to its ``getSessionLimits`` request, so the benchmark's subscriber answers it
  (no limits), as the platform would.

The peer runs alone, then ``edge run`` storing every reading and ``edge run`` with the models'
default storage policies side by side, each with its own simulator and broker, in the same
window: what the machine's other work takes then weighs on both alike, so the two are compared
in one measurement instead of two windows that other work moves by more than they differ (one
after the other, in the last three runs of the suite: 0.86, 0.80 and 1.01). Each after a
warm-up (the peer's starts once its first readings reach the broker: it takes a few seconds
more to come up). CPU is
the gateway process's (user + system, threads included) over the measuring window, in % of one
core; RSS at its end. Readings per second are counted the same way for both: point values that
reached the broker in the window, as a subscriber decodes them (one value of one point of one
device at one time; the reference receiver for ours, the ``values`` of the peer's telemetry).

- ``peer_1000rps_cpu_pct``, ``peer_1000rps_rss_mb``, ``peer_1000rps_readings_per_s``;
- ``tcp_1000rps_cpu_over_peer``: ``edge run``'s CPU with every reading stored over the peer's;
- ``tcp_1000rps_default_cpu_over_peer``: the same with the models' default storage policies;
- ``tcp_1000rps_default_cpu_over_all``: the default policies' CPU over every reading stored's,
  measured in the same window.

The peer phones home for updates at start; its HTTP(S) proxy is set to a closed loopback port so
that nothing it does leaves the machine.

``python -m tests.benchmarks --only peer`` runs it alone (needs Mosquitto and, the first time,
the package index).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiomqtt
import psutil
import yaml

from hil.broker import LocalBroker
from tests.benchmarks import drivers
from tests.fixtures.broker import free_port

ROOT = Path(__file__).resolve().parents[2]

#: The peer and what its Modbus connector would otherwise pip-install at its first start
#: (it pins pymodbus exactly and reinstalls any other version).
PEER: Final = (
    "thingsboard-gateway==3.8.5",
    "pymodbus==3.9.2",
    "pyserial==3.5",
    "pyserial-asyncio==0.6",
)
PEER_VENV: Final = ROOT / "build" / "peer" / "thingsboard-gateway-3.8.5"
_STAMP = ".installed"
INSTALL_TIMEOUT: Final = 900.0

#: ThingsBoard's answer to getSessionLimits when the tenant sets no rate limits.
SESSION_LIMITS: Final = {
    "rateLimits": {},
    "gatewayRateLimits": {},
    "maxInflightMessages": 100,
    "maxPayloadSize": 65536,
}
_RPC_REQUEST = "v1/devices/me/rpc/request/"
_RPC_RESPONSE = "v1/devices/me/rpc/response/"
_TELEMETRY = "v1/gateway/telemetry"

#: Modbus register types of the bench model in the peer's words.
_PEER_TYPES: Final = {"u16": "16uint", "i16": "16int"}


def peer_binary(venv: Path = PEER_VENV) -> Path:
    return venv / "bin" / "thingsboard-gateway"


def peer_ready(venv: Path = PEER_VENV) -> str | None:
    """None once the peer is installed in ``venv`` (installing it the first time), else why not.

    The stamp file holds the pinned requirements, so a changed pin installs afresh."""
    stamp = venv / _STAMP
    wanted = "\n".join(PEER) + "\n"
    if stamp.exists() and stamp.read_text() == wanted and peer_binary(venv).exists():
        return None
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    shown = venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv
    print(f"  installing the peer ({', '.join(PEER)}) into {shown}", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120
        )
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *PEER],
            check=True,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        output = getattr(exc, "stderr", None) or ""
        lines = [line for line in str(output).splitlines() if not line.startswith("WARNING")]
        detail = lines[-1] if lines else str(exc)
        return f"cannot install the peer {PEER[0]} (no package index?): {detail}"
    stamp.write_text(wanted)
    return None


def peer_config(
    folder: Path,
    models: Path,
    *,
    tcp_port: int,
    broker_port: int,
    devices: int,
    interval: float,
    shipped: Path | None = None,
) -> Path:
    """Write the peer's configuration folder for the bench site, from the configuration the
    peer ships (``shipped``: its folder, found in the peer's environment by default)."""
    model = yaml.safe_load((models / f"{drivers.BENCH_MODEL}.yaml").read_text(encoding="utf-8"))
    series = [_peer_point(point) for point in model["points"]]
    slaves = [
        {
            "host": "127.0.0.1",
            "port": tcp_port,
            "type": "tcp",
            "method": "socket",
            "unitId": address,
            "deviceName": f"efm-{address:02d}",
            "deviceType": model["name"],
            "timeout": 1,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 1,
            "pollPeriod": round(interval * 1000),
            "attributes": [],
            "timeseries": series,
            "attributeUpdates": [],
            "rpc": [],
        }
        for address in range(1, devices + 1)
    ]
    config = folder / "config"
    data = folder / "data"
    for made in (config, data, folder / "logs"):
        made.mkdir(parents=True, exist_ok=True)
    modbus = {"name": "Modbus", "logLevel": "WARNING", "master": {"slaves": slaves}}
    (config / "modbus.json").write_text(json.dumps(modbus, indent=1))
    # The package's own defaults, changed only where this machine differs from a ThingsBoard
    # install: the broker, no remote configuration, SQLite storage (ours stores too), logs at
    # WARNING (as our gateway runs here).
    shipped = shipped or _shipped_config()
    gateway = json.loads((shipped / "tb_gateway.json").read_text())
    gateway["thingsboard"].update(
        host="127.0.0.1",
        port=broker_port,
        remoteConfiguration=False,
        security={"type": "accessToken", "accessToken": "bench"},
    )
    gateway["storage"] = {
        "type": "sqlite",
        "data_file_path": f"{data}{os.sep}",
        "messages_ttl_check_in_hours": 1,
        "messages_ttl_in_days": 7,
        "max_read_records_count": 1000,
    }
    gateway["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
    (config / "tb_gateway.json").write_text(json.dumps(gateway, indent=1))
    logs = json.loads((shipped / "logs.json").read_text())
    for logger in logs["loggers"].values():
        logger["level"] = "WARNING"
    (config / "logs.json").write_text(json.dumps(logs, indent=1))
    return config


def _shipped_config(venv: Path = PEER_VENV) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages/thingsboard_gateway/config"))
    if not found:
        raise RuntimeError(f"the peer's shipped configuration is not in {venv}")
    return found[0]


def _peer_point(point: dict[str, Any]) -> dict[str, Any]:
    kind = _PEER_TYPES.get(point.get("type", "u16"))
    if kind is None:
        raise ValueError(f"point {point['name']}: type {point.get('type')!r} has no peer mapping")
    entry: dict[str, Any] = {
        "tag": point["name"],
        "type": kind,
        "functionCode": 3,
        "objectsCount": 1,
        "address": point["address"],
    }
    scale = float(point.get("scale", 1))
    if scale != 1:
        divider = round(1 / scale)
        if abs(divider * scale - 1) < 1e-9:
            entry["divider"] = divider
        else:
            entry["multiplier"] = scale
    return entry


def peer_readings(payload: bytes) -> int:
    """Point values in one message of the peer's gateway telemetry topic."""
    body = json.loads(payload)
    count = 0
    for entries in body.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            values = entry.get("values", entry) if isinstance(entry, dict) else {}
            count += len(values)
    return count


class PeerPlatform:
    """What the peer needs of a ThingsBoard server on a plain broker: the answer to its session
    limits request. Counts the readings of its telemetry."""

    def __init__(self) -> None:
        self.readings = 0
        self.limits_answered = 0

    async def serve(self, port: int, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(_TELEMETRY, qos=1)
            await client.subscribe(_RPC_REQUEST + "+", qos=1)
            ready.set()
            async for message in client.messages:
                topic = message.topic.value
                payload = message.payload
                if not isinstance(payload, bytes):
                    continue
                if topic == _TELEMETRY:
                    self.readings += peer_readings(payload)
                elif topic.startswith(_RPC_REQUEST):
                    request = json.loads(payload)
                    if request.get("method") == "getSessionLimits":
                        reply = _RPC_RESPONSE + topic.removeprefix(_RPC_REQUEST)
                        await client.publish(reply, json.dumps(SESSION_LIMITS), qos=1)
                        self.limits_answered += 1


def _cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of a process and its children."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def _closed_proxy() -> dict[str, str]:
    """Environment that sends the peer's HTTP(S) requests (its update check) to a loopback port
    where nothing listens."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    return dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), nowhere)


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {within:g} s")
        await asyncio.sleep(0.2)


async def peer_footprint(
    seconds: float, devices: int = 50, interval: float = 1.0, warmup: float = 10.0
) -> dict[str, float]:
    """CPU, RSS and delivered readings of the peer on the bench site."""
    processes: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-peer-") as folder:
        workdir = Path(folder)
        models = drivers._bench_model(workdir / "models")
        broker = LocalBroker("127.0.0.1", free_port())
        tcp_port = free_port()
        broker.start()
        platform = PeerPlatform()
        ready = asyncio.Event()
        subscriber = asyncio.create_task(platform.serve(broker.port, ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            processes.append(await drivers.start_simulator(tcp_port, devices, models))
            config = peer_config(
                workdir,
                models,
                tcp_port=tcp_port,
                broker_port=broker.port,
                devices=devices,
                interval=interval,
            )
            gateway = await asyncio.create_subprocess_exec(
                str(peer_binary()),
                cwd=workdir,
                env={**os.environ, **_closed_proxy(), "TB_GW_CONFIG_DIR": f"{config}{os.sep}"},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            processes.append(gateway)
            await _until(lambda: platform.readings > 0, 60, "no reading of the peer arrived")
            await asyncio.sleep(warmup)
            if gateway.returncode is not None:
                raise RuntimeError(f"the peer exited with {gateway.returncode}")
            process = psutil.Process(gateway.pid)
            cpu_before, arrived_before = _cpu_seconds(process), platform.readings
            started = time.monotonic()
            await asyncio.sleep(seconds)
            used = _cpu_seconds(process) - cpu_before
            arrived = platform.readings - arrived_before
            elapsed = time.monotonic() - started
            rss = process.memory_info().rss / 2**20
        finally:
            await drivers.stop_processes(processes)
            await drivers.stop_subscriber(subscriber)
            broker.close()
    return drivers.footprint(
        "peer", devices, cpu_seconds=used, elapsed=elapsed, rss_mb=rss, rate=arrived / elapsed
    )


KEYS = (
    "peer_1000rps_cpu_pct",
    "peer_1000rps_rss_mb",
    "peer_1000rps_readings_per_s",
    "tcp_1000rps_cpu_over_peer",
    "tcp_1000rps_default_cpu_over_peer",
    "tcp_1000rps_default_cpu_over_all",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"seconds": 1.0, "warmup": 2.0, "devices": 5}


async def run(seconds: float = 60.0, warmup: float = 10.0, devices: int = 50) -> dict[str, float]:
    """The peer, then ``edge run`` storing every reading and with the default policies, side
    by side."""
    print(f"peer: {PEER[0]} and edge run, {devices * 20:,} readings/s over Modbus TCP")
    peer = await peer_footprint(seconds, devices=devices, warmup=warmup)
    ours, default = await asyncio.gather(
        drivers.tcp_footprint(seconds, devices=devices, warmup=warmup),
        drivers.tcp_footprint(seconds, devices=devices, warmup=warmup, policy=None),
    )
    figures = {
        "tcp_1000rps_cpu_over_peer": _over(ours["cpu_pct"], peer["cpu_pct"]),
        "tcp_1000rps_default_cpu_over_peer": _over(default["cpu_pct"], peer["cpu_pct"]),
        "tcp_1000rps_default_cpu_over_all": _over(default["cpu_pct"], ours["cpu_pct"]),
    }
    print(
        f"  edge run / peer CPU: {figures['tcp_1000rps_cpu_over_peer']:.2f} storing every "
        f"reading, {figures['tcp_1000rps_default_cpu_over_peer']:.2f} with the default storage "
        f"policies ({figures['tcp_1000rps_default_cpu_over_all']:.2f} of the first, in the same "
        "window)"
    )
    return {
        "peer_1000rps_cpu_pct": round(peer["cpu_pct"], 2),
        "peer_1000rps_rss_mb": round(peer["rss_mb"], 1),
        "peer_1000rps_readings_per_s": round(peer["readings_per_s"], 1),
        **{key: round(value, 3) for key, value in figures.items()},
    }


def _over(cpu: float, base: float) -> float:
    """``cpu / base``; 0.0 when ``base`` is 0, which only a toy run (``--tiny``) shorter than
    the clock tick that CPU times are counted in can measure."""
    return cpu / base if base else 0.0


if __name__ == "__main__":
    print(asyncio.run(run()))
