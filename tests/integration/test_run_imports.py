"""The import budget of ``edge run`` (docs/benchmarks.md): what a running gateway loads, and what
each group of its imports may cost.

A gateway process runs the example site on a Modbus TCP bus (a real simulator, a real
Mosquitto) until its readings and its health message reach the broker; then it writes out its
``sys.modules``. Heavy modules that this site does not use must be absent: the JSON Schema
library (a valid health message is checked without it), cryptography without command keys,
pyserial, the serial link and the UART and GPIO sensor drivers without such a bus, zoneinfo
without a rule that reads the calendar, SMS and calls without a modem, the other commands'
tools, and the modules only a mistake in a site file needs; pydantic, the site model and
PyYAML never, also after pushes of the site (as text and as an object) and threshold changes
by command (the site file and its device models are read in a child process). With a command
key installed, cryptography must be there, so the check is seen to fail when a module is
loaded. Every
package the running gateway loads must have its row in the budget table of
docs/benchmarks.md, and a fresh interpreter that imports the table's groups in its order must
find each group within its budget (resident memory, ``/proc/self/status`` VmRSS).

The running gateway also reports its malloc arenas: no more than edge/heap.py allows, however
many threads it has.

Both the gateway and the budget's interpreter start as the installed unit starts ``edge run``
(its interpreter flags: ``python -OO``, docstrings and asserts stripped), with the bytecode
deploy/install.sh compiles for it, so the gateway is also seen to work under them; and the
project's modules it loaded neither read a docstring nor import ``decimal`` themselves (a
library may still bring it).

``python -m tests.integration.test_run_imports`` prints what each group adds on this machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiomqtt
import pytest
import yaml

from edge import heap, lastgood
from edge.signing import generate_key
from tests.benchmarks.drivers import _site
from tests.fixtures.broker import (
    Collector,
    Mosquitto,
    MosquittoFactory,
    TlsListener,
    collect,
    free_port,
)
from tests.fixtures.certs import Authority
from tests.fixtures.command_keys import install, signed_command
from tests.fixtures.service import compile_as_installed, interpreter_flags
from tests.unit.test_import_cycles import modules_of
from tests.unit.test_runs_optimized import PACKAGES, docstring_reads_in, imports_of_module

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUDGET_PAGE = ROOT / "docs" / "benchmarks.md"
BUDGET_SECTION = "### Import budget of `edge run`"

#: Never loaded by ``edge run`` at all: the site model validates in a child process
#: (edge/config/compile.py), through start, push-config and threshold tuning alike.
PYDANTIC = (
    "pydantic", "pydantic_core", "annotated_types", "typing_inspection", "edge.config.model",
    "edge.config.loader", "edge.config.annotated",
)  # fmt: skip
#: Never loaded by ``edge run`` at all: the validating process hands over the device models
#: as data (drivers/modbus/model.py's ``model_data``) and writes a pushed object out as YAML.
YAML = ("yaml", "drivers.yamlpos")
#: Never loaded by ``edge run`` on a Modbus TCP site without command keys (nor, over
#: ``mqtt://``, OpenSSL: ``_ssl`` and ``_hashlib``, edge/openssl.py).
NOT_LOADED = (
    "jsonschema", "referencing", "rpds", "cryptography", "serial", "aiohttp", "segno",
    "playwright", "edge.doctor", "edge.commission", "edge.installer_cli", "edge.buffer_cli",
    "edge.replay", "edge.watch", "edge.selftest", "edge.sms", "edge.calls", "difflib",
    "drivers.serial_link", "drivers.ports", "drivers.ld2410", "drivers.witmotion", "drivers.pir",
    "zoneinfo", "sysconfig", "ctypes.util", "_ssl", "_hashlib", *PYDANTIC, *YAML,
)  # fmt: skip
#: Loaded by any running gateway: proof that the list came from one.
LOADED = (
    "edge.gateway",
    "edge.uplink.service",
    "drivers.modbus.bus",
    "aiomqtt",
    "edge.config.plain",
)

#: Runs ``edge run`` and, once the file ASK exists, writes to ANSWER the modules loaded (a
#: ``None`` in sys.modules, a module kept out, is not), the number of malloc arenas (None
#: without glibc), and the modules that hold one of ssl's exception classes as it stands
#: while TLS is not loaded (edge/openssl.py): bound by name, it would stay the stand-in.
_RUNNER = """
import ctypes, json, os, re, runpy, sys, threading, time
ask, answer, site = sys.argv[1:4]
def arenas():
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_info"):
        return None
    text, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(text), ctypes.byref(size)))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    return len(re.findall(r'<heap nr="', text.value.decode()))
def stand_ins():
    from edge.openssl import NeverRaised
    held = [(n, m) for n, m in list(sys.modules.items()) if m is not None and n != "edge.openssl"]
    return sorted(n for n, m in held if any(v is NeverRaised for v in list(vars(m).values())))
def report():
    while not os.path.exists(ask):
        time.sleep(0.05)
    with open(answer + ".part", "w") as f:
        flags = {"optimize": sys.flags.optimize}
        modules = sorted(name for name, module in sys.modules.items() if module is not None)
        json.dump({"modules": modules, "arenas": arenas(), "flags": flags,
                   "stand_ins": stand_ins()}, f)
    os.replace(answer + ".part", answer)
threading.Thread(target=report, daemon=True).start()
sys.argv = ["edge", "run", "--config", site, "--log-level", "warning"]
runpy.run_module("edge.cli", run_name="__main__", alter_sys=True)
"""


class Running(NamedTuple):
    """What a running gateway reported: its modules, its malloc arenas (None: not glibc) and
    its interpreter's flags (``sys.flags``: ``optimize``, ...)."""

    modules: set[str]
    arenas: int | None
    flags: dict[str, int]
    stand_ins: list[str]


#: What a test does to the running gateway before it reports its modules.
Meanwhile = Callable[[Collector, Path], Awaitable[None]]


async def _a_running_gateway(
    tmp_path: Path,
    mosquitto: Mosquitto,
    keys: Path,
    meanwhile: Meanwhile | None = None,
    *,
    prepare: Callable[[Path], None] | None = None,
    started: tuple[str, ...] = ("telemetry", "health"),
) -> Running:
    """Run ``edge run`` (``prepare`` changes its site file first) until it has published each
    of the ``started`` kinds of message, do ``meanwhile``, and take its report."""
    tcp_port = free_port()
    site = _site(tmp_path, tcp_port, mosquitto.url, devices=2, interval=0.5)
    text = site.read_text(encoding="utf-8").replace("var/demo/command-keys", str(keys))
    site.write_text(text, encoding="utf-8")
    if prepare is not None:
        prepare(site)
    ask, answer = tmp_path / "ask", tmp_path / "modules.json"
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.simulator", "serve", "--tcp", f"127.0.0.1:{tcp_port}",
        "--tcp-devices", "1,2", "--model", "efm-ref", stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    gateway = None
    await asyncio.to_thread(compile_as_installed)
    try:
        async with collect(mosquitto, "district/v1/#") as seen:
            gateway = await asyncio.create_subprocess_exec(
                sys.executable, *interpreter_flags(), "-c", _RUNNER, str(ask), str(answer),
                str(site), stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip

            def arrived(kind: str) -> bool:
                return any(m.topic.value.endswith(f"/{kind}") for m in seen.messages)

            await seen.wait_for(lambda _: all(arrived(kind) for kind in started), within=60)
            if meanwhile is not None:
                await meanwhile(seen, site)
        ask.touch()
        for _ in range(600):
            if answer.exists() or gateway.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert gateway.returncode is None, f"the gateway exited with {gateway.returncode}"
        report = json.loads(answer.read_text(encoding="utf-8"))
    finally:
        for process in (gateway, simulator):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
    return Running(set(report["modules"]), report["arenas"], report["flags"], report["stand_ins"])


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(f"{name}.") for m in modules)


class BudgetRow(NamedTuple):
    """One row of the budget table: the modules a group imports and the MiB it may add."""

    group: str
    modules: list[str]
    budget: float


def budget_rows(page: Path = BUDGET_PAGE) -> list[BudgetRow]:
    """The rows of the import budget table that have a budget, in the table's order."""
    text = page.read_text(encoding="utf-8")
    start = text.index(BUDGET_SECTION)
    rows: list[BudgetRow] = []
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        budget = re.fullmatch(r"([0-9.]+) MiB", cells[-1]) if len(cells) == 5 else None
        if budget is None:
            continue  # the header, its rule, and rows measured but not budgeted
        rows.append(BudgetRow(cells[0], re.findall(r"`([\w.]+)`", cells[1]), float(budget[1])))
    return rows


#: Imports each group of argv[1] (a JSON list of module lists) in order and prints, as JSON,
#: the VmRSS (KiB) before the first and after each.
_MEASURE = """
import importlib, json, sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
sizes = [rss()]
for group in json.loads(sys.argv[1]):
    for name in group:
        importlib.import_module(name)
    sizes.append(rss())
print(json.dumps(sizes))
"""


def measure_groups(rows: list[BudgetRow]) -> tuple[float, list[float]]:
    """The interpreter's own MiB, and what each row's imports add on top of the rows above."""
    groups = json.dumps([row.modules for row in rows])
    compile_as_installed()
    done = subprocess.run(
        [sys.executable, *interpreter_flags(), "-c", _MEASURE, groups],
        capture_output=True,
        text=True,
        check=True,
    )
    sizes = [kib / 1024 for kib in json.loads(done.stdout)]
    return sizes[0], [after - before for before, after in itertools.pairwise(sizes)]


#: Top-level modules of a running process that are not packages of a dependency.
_NOT_PACKAGES = re.compile(r"_.*|cython_runtime")


def _packages_without_a_row(modules: set[str]) -> list[str]:
    named = {name.split(".")[0] for row in budget_rows() for name in row.modules}
    packages = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names)
    return sorted(p for p in packages if p not in named and not _NOT_PACKAGES.fullmatch(p))


async def test_a_tcp_site_without_command_keys_loads_none_of_the_heavy_modules(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def restart_the_broker(seen: Collector, site: Path) -> None:
        # The gateway's socket fails and its backlog drains in bursts after: the paths where
        # paho evaluates its except clauses that name ssl's errors (edge/openssl.py).
        await mosquitto.stop_async()
        await asyncio.sleep(1.0)  # an outage of a few polls, so that a backlog builds up
        await mosquitto.start_async()
        async with collect(mosquitto, "district/v1/#") as again:
            await again.wait_for(lambda c: bool(c.on("/telemetry")), within=60)

    running = await _a_running_gateway(
        tmp_path, mosquitto, tmp_path / "no-keys", restart_the_broker
    )
    modules = running.modules
    assert [name for name in LOADED if not _loaded(modules, name)] == []
    assert [name for name in NOT_LOADED if _loaded(modules, name)] == []
    assert running.stand_ins == []
    # A new dependency of the run path gets its row (and its cost) in the budget table.
    assert _packages_without_a_row(modules) == []
    # Five threads (and this test's reporter), yet no more malloc arenas than edge/heap.py allows.
    assert running.arenas is None or running.arenas <= heap.ARENAS
    # It ran under -OO: what it loaded of the project reads no docstring, and no module of
    # the project imports decimal for it (pydantic_core may, while it is loaded).
    assert running.flags["optimize"] == 2
    own = modules_of(ROOT, PACKAGES)
    loaded = [path for name, path in own.items() if name in modules]
    assert len(loaded) > 50
    assert [str(p.relative_to(ROOT)) for p in loaded if docstring_reads_in(p)] == []
    assert [str(p.relative_to(ROOT)) for p in loaded if imports_of_module(p, "decimal")] == []


def test_the_budget_table_names_importable_groups() -> None:
    rows = budget_rows()
    assert len(rows) >= 10
    assert all(row.modules and row.budget > 0 for row in rows)
    assert _packages_without_a_row({"edge.gateway", "gpiozero", "paho.mqtt"}) == []
    assert _packages_without_a_row({"edge", "msgspec"}) == ["msgspec"]


GATEWAY = "gw-demo-0001"


async def _command(
    mosquitto: Mosquitto, seen: Collector, cid: str, name: str, params: dict[str, Any], *, key: str
) -> dict[str, Any]:
    payload = signed_command(GATEWAY, cid, name, params, key=key)
    async with aiomqtt.Client(mosquitto.host, mosquitto.plain_port, timeout=5) as client:
        await client.publish(f"district/v1/{GATEWAY}/commands", payload, qos=1)

    def acked(c: Collector) -> list[dict[str, Any]]:
        return [a for a in c.on("/acks") if a.get("command_id") == cid]

    await seen.wait_for(lambda c: bool(acked(c)), within=60)
    return acked(seen)[-1]


async def _applied(seen: Collector, command_id: str) -> None:
    await seen.wait_for(
        lambda c: any(
            e["kind"] == "config-applied" and e.get("command_id") == command_id
            for e in c.on("/events")
        ),
        within=90,
    )


async def test_a_gateway_never_loads_pydantic_nor_yaml_through_pushes_and_threshold_changes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def push_and_tune(seen: Collector, site: Path) -> None:
        async def tune(command_id: str, threshold: float) -> None:
            tuned = await _command(
                mosquitto,
                seen,
                command_id,
                "set-threshold",
                {"rule": "residual-current-over-limit", "threshold": threshold},
                key="operations",
            )
            assert tuned["result"] == "ok", tuned

        await tune("t-1", 280)
        pushed = yaml.safe_load(await asyncio.to_thread(site.read_text, encoding="utf-8"))
        pushed["rules"][0]["raise_at"] = 320
        text = yaml.safe_dump(pushed, sort_keys=False)
        applied = await _command(
            mosquitto, seen, "p-1", "push-config", {"site_yaml": text}, key="engineering"
        )
        assert applied["result"] == "ok", applied
        await _applied(seen, "p-1")
        # Confirmed on the event's PUBACK, a moment after the platform sees it.
        pending = site.with_name(site.name + ".pending")
        for _ in range(600):
            if not pending.exists():
                break
            await asyncio.sleep(0.1)
        # The site as an object: written out as YAML, yet not by the running gateway.
        pushed["rules"][0]["raise_at"] = 330
        applied = await _command(
            mosquitto, seen, "p-2", "push-config", {"site": pushed}, key="engineering"
        )
        assert applied["result"] == "ok", applied.get("error")
        await _applied(seen, "p-2")
        # The pushed gateway takes a threshold change too.
        await tune("t-2", 300)

    running = await _a_running_gateway(
        tmp_path, mosquitto, install(tmp_path / "keys"), push_and_tune
    )
    assert _loaded(running.modules, "edge.config.plain")
    assert [name for name in (*PYDANTIC, *YAML) if _loaded(running.modules, name)] == []


def _broken(site: Path) -> bytes:
    """Give ``site`` a device on a bus it does not have; its good bytes."""
    good = site.read_bytes()
    data = yaml.safe_load(good)
    data["devices"][0]["bus"] = "no-such-bus"
    site.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return good


async def _push_fixed(mosquitto: Mosquitto, seen: Collector, site: Path, good: bytes) -> None:
    """Push the good site as an object and wait until it runs: readings arrive after it."""
    fixed = yaml.safe_load(good)
    applied = await _command(
        mosquitto, seen, "p-fix", "push-config", {"site": fixed}, key="engineering"
    )
    assert applied["result"] == "ok", applied.get("error")
    await _applied(seen, "p-fix")
    before = len(seen.on("/telemetry"))
    await seen.wait_for(lambda c: len(c.on("/telemetry")) > before, within=60)


@pytest.mark.parametrize(
    ("last_good", "started", "running_on"),
    [
        (True, ("telemetry", "health"), "drivers.modbus.bus"),
        (False, ("events",), "edge.fault"),  # no last good config: fault mode, nothing polled
    ],
    ids=["on-the-last-good-config", "in-fault-mode"],
)
async def test_a_gateway_started_on_a_broken_site_file_never_loads_yaml(
    tmp_path: Path,
    mosquitto: Mosquitto,
    last_good: bool,
    started: tuple[str, ...],
    running_on: str,
) -> None:
    good = b""

    def break_the_site_file(site: Path) -> None:
        nonlocal good
        if last_good:
            lastgood.save(site, site.read_bytes())
        good = _broken(site)

    async def push(seen: Collector, site: Path) -> None:
        if not last_good:
            assert any(e["kind"] == "config-invalid" for e in seen.on("/events"))
            assert seen.on("/telemetry") == []
        await _push_fixed(mosquitto, seen, site, good)

    running = await _a_running_gateway(
        tmp_path,
        mosquitto,
        install(tmp_path / "keys"),
        push,
        prepare=break_the_site_file,
        started=started,
    )
    assert _loaded(running.modules, running_on)
    assert [name for name in (*PYDANTIC, *YAML) if _loaded(running.modules, name)] == []


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="the budgets were measured on Linux x86-64 (docs/benchmarks.md)",
)
def test_each_import_group_of_edge_run_stays_within_its_budget() -> None:
    rows = budget_rows()
    _, added = measure_groups(rows)
    over = [
        f"{row.group}: {size:.1f} MiB, budget {row.budget:g} MiB"
        for row, size in zip(rows, added, strict=True)
        if size > row.budget
    ]
    assert over == []


async def test_a_site_on_mqtts_loads_tls_when_it_connects(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    authority = Authority(tmp_path / "pki")
    cert, key = authority.issue("server", "broker.test", ip="127.0.0.1")
    broker = mosquitto_factory(tls=TlsListener(authority.cert_path, cert, key))

    def trust_its_ca(site: Path) -> None:
        data = yaml.safe_load(site.read_bytes())
        data["uplink"]["ca_file"] = str(authority.cert_path)
        site.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    # Its telemetry and health arrive, over TLS: ssl was loaded when it was first used.
    running = await _a_running_gateway(tmp_path, broker, tmp_path / "no-keys", prepare=trust_its_ca)
    assert broker.url.startswith("mqtts://")
    assert _loaded(running.modules, "_ssl")
    assert running.stand_ins == []


async def test_a_site_with_a_command_key_loads_cryptography(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    _, public = generate_key(tmp_path / "platform", "operations-test")
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(public, keys)
    modules = (await _a_running_gateway(tmp_path, mosquitto, keys)).modules
    assert _loaded(modules, "cryptography")
    assert not _loaded(modules, "jsonschema")


if __name__ == "__main__":
    table = budget_rows()
    interpreter, costs = measure_groups(table)
    print(f"{'CPython itself':50s} {interpreter:5.1f} MiB")
    for line, cost in zip(table, costs, strict=True):
        print(f"{line.group:50s} {cost:5.1f} MiB (budget {line.budget:g})")
    print(f"{'all of the above':50s} {interpreter + sum(costs):5.1f} MiB")
