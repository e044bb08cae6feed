"""Deploy figures: install time, installed size, unit exposure, start to READY.

``python -m tests.benchmarks.deploy`` prints the figures and merges them into
bench-results.json (other suites' keys are kept). Run as root: the installer creates a
system user (inside a scratch root, never on this machine).

- ``install_offline_s``: ``deploy/install.sh --root SCRATCH --wheels WHEELHOUSE`` into an
  empty root, wheels already built (what an installer with an SD card of wheels waits);
- ``upgrade_offline_s``: the same again over the first install (upgrade in place);
- ``installed_tree_mb``: ``/opt/city-safety-edge`` after one install (one release);
- ``unit_exposure``, ``firstboot_unit_exposure``: ``systemd-analyze security --offline=true``;
- ``start_to_ready_ms_p50``, ``_max``: from spawning ``edge run`` of the installed release with
  ``$NOTIFY_SOCKET`` set, as systemd does at ``systemctl start``, to its ``READY=1`` datagram,
  for the demo site served by the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hil.simulator import Simulator
from tests.deploy.conftest import INSTALL, REPO, UNITS, make_root
from tests.fixtures.broker import free_port
from tests.integration.site import site_for

APP = "city-safety-edge"


def tree_mb(path: Path) -> float:
    total = sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())
    return round(total / 2**20, 1)


def exposure(unit: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out
    return float(match.group(1))


def timed_install(root: Path, wheels: Path) -> float:
    (wheel,) = wheels.glob("city_safety_edge-*.whl")
    started = time.monotonic()
    subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--root",
            str(root),
            "--source",
            str(wheel),
            "--wheels",
            str(wheels),
        ],
        check=True,
        capture_output=True,
    )
    return round(time.monotonic() - started, 2)


async def start_to_ready(python: Path, work: Path, trials: int) -> list[float]:
    times: list[float] = []
    async with Simulator(
        tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=work / "rtu", rtu_devices=[1]
    ) as sim:
        site = site_for(sim, work, broker_url=f"mqtt://127.0.0.1:{free_port()}")
        config = work / "site.yaml"
        config.write_text(yaml.safe_dump(site, sort_keys=False))
        for trial in range(trials):
            path = work / f"notify-{trial}"
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(str(path))
                sock.setblocking(False)
                loop = asyncio.get_running_loop()
                started = time.monotonic()
                process = await asyncio.create_subprocess_exec(
                    str(python),
                    "-m",
                    "edge.cli",
                    "run",
                    "--config",
                    str(config),
                    env={"NOTIFY_SOCKET": str(path), "PATH": "/usr/bin:/bin"},
                    stderr=(work / f"gateway-{trial}.log").open("wb"),
                )
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
                    log = (work / f"gateway-{trial}.log").read_text()[-3000:]
                    raise RuntimeError(
                        f"no READY=1 within 30 s; the gateway said:\n{log}"
                    ) from None
                times.append((time.monotonic() - started) * 1000)
                assert data.startswith(b"READY=1"), data
                process.terminate()
                await process.wait()
    return times


def run(trials: int = 5) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(REPO)],
            check=True,
            capture_output=True,
        )
        root = make_root(work / "root")
        results["install_offline_s"] = timed_install(root, wheels)
        results["installed_tree_mb"] = tree_mb(root / "opt" / APP)
        results["upgrade_offline_s"] = timed_install(root, wheels)
        results["unit_exposure"] = exposure(UNITS / f"{APP}.service")
        results["firstboot_unit_exposure"] = exposure(UNITS / f"{APP}-firstboot.service")
        python = root / "opt" / APP / "current" / "venv" / "bin" / "python"
        times = asyncio.run(start_to_ready(python, work, trials))
        results["start_to_ready_ms_p50"] = round(statistics.median(times), 1)
        results["start_to_ready_ms_max"] = round(max(times), 1)
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the deploy figures.")
    parser.add_argument("--trials", type=int, default=5, help="starts timed to READY")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results.json")
    args = parser.parse_args()
    results = run(args.trials)
    merged = json.loads(args.out.read_text()) if args.out.exists() else {}
    merged.update(results)
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    for key, value in results.items():
        print(f"  {key:<28} {value}")


if __name__ == "__main__":
    main()
