"""The import budget of ``edge run`` (docs/benchmarks.md): what a running gateway must not load.

A gateway process runs the example site on a Modbus TCP bus (a real simulator, a real
Mosquitto) until its readings and its health message reach the broker; then it writes out its
``sys.modules``. Heavy modules that this site does not use must be absent: the JSON Schema
library (a valid health message is checked without it), cryptography without command keys,
pyserial without a serial port, the other commands' tools. With a command key installed,
cryptography must be there, so the check is seen to fail when a module is loaded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from edge.signing import generate_key
from tests.benchmarks.drivers import _site
from tests.fixtures.broker import Mosquitto, collect, free_port

pytestmark = pytest.mark.integration

#: Never loaded by ``edge run`` on a Modbus TCP site without command keys.
NOT_LOADED = (
    "jsonschema", "referencing", "rpds", "cryptography", "serial", "aiohttp", "segno",
    "playwright", "edge.doctor", "edge.commission", "edge.installer_cli", "edge.buffer_cli",
    "edge.replay", "edge.watch", "edge.selftest",
)  # fmt: skip
#: Loaded by any running gateway: proof that the list came from one.
LOADED = ("edge.gateway", "edge.uplink.service", "drivers.modbus.bus", "aiomqtt", "pydantic")

#: Runs ``edge run`` and, once the file ASK exists, writes sys.modules to ANSWER.
_RUNNER = """
import json, os, runpy, sys, threading, time
ask, answer, site = sys.argv[1:4]
def report():
    while not os.path.exists(ask):
        time.sleep(0.05)
    with open(answer + ".part", "w") as f:
        json.dump(sorted(sys.modules), f)
    os.replace(answer + ".part", answer)
threading.Thread(target=report, daemon=True).start()
sys.argv = ["edge", "run", "--config", site, "--log-level", "warning"]
runpy.run_module("edge.cli", run_name="__main__", alter_sys=True)
"""


async def _modules_of_a_running_gateway(
    tmp_path: Path, mosquitto: Mosquitto, keys: Path
) -> set[str]:
    tcp_port = free_port()
    site = _site(tmp_path, tcp_port, mosquitto.port, devices=2, interval=0.5)
    text = site.read_text(encoding="utf-8").replace("var/demo/command-keys", str(keys))
    site.write_text(text, encoding="utf-8")
    ask, answer = tmp_path / "ask", tmp_path / "modules.json"
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil.simulator", "serve", "--tcp", f"127.0.0.1:{tcp_port}",
        "--tcp-devices", "1,2", "--model", "efm-ref", stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    gateway = None
    try:
        async with collect(mosquitto, "district/v1/#") as seen:
            gateway = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _RUNNER, str(ask), str(answer), str(site),
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip

            def arrived(kind: str) -> bool:
                return any(m.topic.value.endswith(f"/{kind}") for m in seen.messages)

            await seen.wait_for(lambda _: arrived("telemetry") and arrived("health"), within=60)
        ask.touch()
        for _ in range(600):
            if answer.exists() or gateway.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert gateway.returncode is None, f"the gateway exited with {gateway.returncode}"
        modules: list[str] = json.loads(answer.read_text(encoding="utf-8"))
    finally:
        for process in (gateway, simulator):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
    return set(modules)


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(f"{name}.") for m in modules)


async def test_a_tcp_site_without_command_keys_loads_none_of_the_heavy_modules(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    modules = await _modules_of_a_running_gateway(tmp_path, mosquitto, tmp_path / "no-keys")
    assert [name for name in LOADED if not _loaded(modules, name)] == []
    assert [name for name in NOT_LOADED if _loaded(modules, name)] == []


async def test_a_site_with_a_command_key_loads_cryptography(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    _, public = generate_key(tmp_path / "platform", "operations-test")
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(public, keys)
    modules = await _modules_of_a_running_gateway(tmp_path, mosquitto, keys)
    assert _loaded(modules, "cryptography")
    assert not _loaded(modules, "jsonschema")
