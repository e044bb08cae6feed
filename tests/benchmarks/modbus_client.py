"""The gateway's own Modbus master against pymodbus's client, on the same simulator.

Why the gateway polls with a hand-written master (drivers/modbus/client.py) rather than
pymodbus's: these figures are the reason docs/architecture.md gives, re-measured.

Each client runs in a fresh interpreter of its own (``python -m tests.benchmarks.modbus_client
--client own|pymodbus``) that loads asyncio and ``drivers.modbus`` (what any gateway with a
Modbus bus loads: models, codec, schedule, and the own client with them), then the client it
measures, connects to one simulator process (hil/simulator.py, pymodbus's server, Modbus TCP
on loopback) and reads efm-ref's 14 registers ``requests`` times, one after the other, as a
bus does:

- ``modbus_client_own_us_per_request`` / ``modbus_client_pymodbus_us_per_request``: CPU time
  of the client process (user + system, all threads) per request, after a warm-up;
- ``modbus_client_pymodbus_import_mb``: what importing pymodbus's client adds to that
  process's RSS (the own client is part of ``drivers.modbus``: 0 on top of it);
- ``modbus_client_own_rss_mb`` / ``modbus_client_pymodbus_rss_mb``: the process's RSS after
  the requests.

``python -m tests.benchmarks --only modbus_client`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("own", "pymodbus")
KEYS = (
    "modbus_client_own_us_per_request",
    "modbus_client_pymodbus_us_per_request",
    "modbus_client_pymodbus_import_mb",
    "modbus_client_own_rss_mb",
    "modbus_client_pymodbus_rss_mb",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"requests": 200, "trials": 1}
REGISTERS = 14  # efm-ref's one block


def _rss_mb() -> float:
    """This process's resident set, from /proc (no psutil: it would weigh on the figure)."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match[1]) / 1024


async def _measure(client: str, port: int, requests: int) -> dict[str, float]:
    """In the child: import one client, read ``requests`` times, report the figures."""
    import drivers.modbus  # noqa: F401, PLC0415 (loaded by every gateway with a Modbus bus)

    before = _rss_mb()
    if client == "own":
        from drivers.modbus.client import TcpClient  # noqa: PLC0415 (already loaded)

        own = TcpClient("127.0.0.1", port, 2.0)
        imported = _rss_mb()
        if not await own.connect():
            raise RuntimeError(f"cannot connect: {own.last_error}")

        async def read() -> None:
            answer = await own.read(1, 3, 0, REGISTERS)
            assert len(getattr(answer, "registers", ())) == REGISTERS, answer

        close = own.close
    else:
        from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

        theirs = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
        imported = _rss_mb()
        if not await theirs.connect():
            raise RuntimeError("cannot connect")

        async def read() -> None:
            answer = await theirs.read_holding_registers(0, count=REGISTERS, device_id=1)
            assert not answer.isError(), answer
            assert len(answer.registers) == REGISTERS, answer

        close = theirs.close
    try:
        for _ in range(min(200, requests)):  # warm-up: first-use caches, the socket
            await read()
        cpu = time.process_time()
        for _ in range(requests):
            await read()
        cpu = time.process_time() - cpu
    finally:
        close()
    return {
        "us_per_request": cpu / requests * 1e6,
        "import_mb": imported - before,
        "rss_mb": _rss_mb(),
    }


async def _one(client: str, port: int, requests: int) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.modbus_client",
        "--client", client, "--port", str(port), "--requests", str(requests),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 600)
    if process.returncode != 0:
        raise RuntimeError(f"{client} client: {err.decode()[-2000:]}")
    figures: dict[str, float] = json.loads(out)
    return figures


async def run(requests: int = 5000, trials: int = 3) -> dict[str, float]:
    """Both clients against one simulator; medians of ``trials`` alternating runs."""
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.simulator", "serve", "--tcp", "127.0.0.1:0",
        "--tcp-devices", "1", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert simulator.stdout is not None
        banner = (await asyncio.wait_for(simulator.stdout.readline(), 30)).decode()
        found = re.search(r"modbus-tcp 127\.0\.0\.1:(\d+)", banner)
        if found is None:
            raise RuntimeError(f"simulator banner without a port: {banner!r}")
        port = int(found[1])
        runs: dict[str, list[dict[str, float]]] = {client: [] for client in CLIENTS}
        for _ in range(trials):
            for client in CLIENTS:
                runs[client].append(await _one(client, port, requests))
    finally:
        if simulator.returncode is None:
            simulator.terminate()
            await simulator.wait()
    figures: dict[str, float] = {}
    print(f"modbus clients: {requests} reads of {REGISTERS} registers each, Modbus TCP loopback")
    for client in CLIENTS:
        median = {k: statistics.median(r[k] for r in runs[client]) for k in runs[client][0]}
        print(
            f"  {client:9} {median['us_per_request']:7.1f} µs CPU per request, import "
            f"+{median['import_mb']:.1f} MiB, RSS {median['rss_mb']:.1f} MiB"
        )
        figures[f"modbus_client_{client}_us_per_request"] = round(median["us_per_request"], 1)
        figures[f"modbus_client_{client}_rss_mb"] = round(median["rss_mb"], 1)
        if client == "pymodbus":
            figures["modbus_client_pymodbus_import_mb"] = round(median["import_mb"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_measure(args.client, args.port, args.requests))))


if __name__ == "__main__":
    main()
