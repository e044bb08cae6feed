"""The fleet playbook: syntax, and a real rolling run with connection=local on scratch roots.

Three gateways in two sites, each with its own system root. The first is installed and
healthy; the second's RS-485 adapter is missing, so it fails its health check
(``edge doctor``); the rollout must stop there and never touch the third. Then an upgrade
of the first that fails its health check is rolled back: release and site file.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hil.simulator import Simulator
from tests.deploy.conftest import REPO, make_root
from tests.fixtures.broker import Mosquitto

# Real playbook runs against gateways on Mosquitto: minutes, not seconds.
pytestmark = pytest.mark.integration

ANSIBLE = REPO / "deploy" / "ansible"
PLAYBOOK = ANSIBLE / "site.yml"
APP = "city-safety-edge"


def playbook_command() -> str:
    return str(Path(sys.executable).parent / "ansible-playbook")


def ansible_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "ansible-home"
    home.mkdir(exist_ok=True)
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        # The .venv's python runs the modules; it has no ansible_facts to gather anyway.
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }


async def playbook(tmp_path: Path, inventory: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        playbook_command(),
        "-i",
        str(inventory),
        str(PLAYBOOK),
        *args,
        env=ansible_env(tmp_path),
        cwd=str(ANSIBLE),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_syntax_check_of_the_example_inventory(tmp_path: Path) -> None:
    code, out = await playbook(tmp_path, ANSIBLE / "inventory.example.yml", "--syntax-check")
    assert code == 0, out


def location(room: str) -> dict[str, str]:
    return {"building": "Block 3", "floor": "1", "room": room, "venue_type": "shop"}


async def test_rolling_run_stops_at_the_first_unhealthy_gateway(
    tmp_path: Path, mosquitto: Mosquitto, wheelhouse: Path, project_wheel: Path
) -> None:
    roots = {name: make_root(tmp_path / name) for name in ("gw1", "gw2", "gw3")}
    async with Simulator(tcp=("127.0.0.1", 0), tcp_devices=[1]) as sim:

        def host(name: str, bus: dict[str, Any]) -> dict[str, Any]:
            return {
                "edge_root": str(roots[name]),
                "edge_site_host": {
                    "gateway": {"id": f"gw-test-{name}", "site": {"name": "Test block"}},
                    "buses": [bus],
                    "devices": [
                        {
                            "id": f"efm-{name}",
                            "model": "efm-ref",
                            "bus": bus["id"],
                            "address": 1,
                            "location": location(f"Shop {name}"),
                        }
                    ],
                    "buffer": {"path": f"{roots[name]}/var/lib/{APP}/outbox.sqlite"},
                },
            }

        lan = {"id": "lan", "kind": "modbus-tcp", "host": "127.0.0.1", "port": sim.tcp_port}
        missing = {"id": "rs485-1", "kind": "modbus-rtu", "port": str(tmp_path / "ttyUSB0")}
        inventory: dict[str, Any] = {
            "all": {
                "vars": {
                    "ansible_connection": "local",
                    "edge_become": False,
                    "edge_package": str(project_wheel),
                    "edge_wheelhouse_on_host": str(wheelhouse),
                    "edge_health_retries": 1,
                    "edge_health_delay": 0,
                    "edge_health_timeout": 2,
                    "edge_site_common": {
                        "uplink": {"brokers": [mosquitto.url]},
                        "outputs": {"pin_factory": "mock", "buzzer": {"pin": 17}},
                    },
                },
                "children": {
                    "site_a": {"hosts": {"gw1": host("gw1", lan), "gw2": host("gw2", missing)}},
                    "site_b": {"hosts": {"gw3": host("gw3", lan)}},
                },
            }
        }
        path = tmp_path / "inventory.yml"
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))

        code, out = await playbook(tmp_path, path)

        # Then an upgrade of gw1 whose new site file passes check-config but not the health
        # check (its adapter is not plugged in): release and site file must be rolled back.
        current = roots["gw1"] / "opt" / APP / "current"
        release_before = current.readlink()
        site_before = (roots["gw1"] / "etc" / APP / "site.yaml").read_bytes()
        gw1 = inventory["all"]["children"]["site_a"]["hosts"]["gw1"]
        gw1["edge_force_install"] = True
        gw1["edge_site_host"]["buses"] = [missing]
        gw1["edge_site_host"]["devices"][0]["bus"] = missing["id"]
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        upgrade_code, upgrade = await playbook(tmp_path, path, "--limit", "gw1")

    assert code != 0, out
    assert "gw2 failed its health check; the rollout stops here" in out
    assert "[serial rs485-1]" in out
    assert "does not exist" in out
    # gw1 went first and is in service with its merged, private site file.
    etc = roots["gw1"] / "etc" / APP
    written = yaml.safe_load((etc / "site.yaml").read_text())
    assert written["gateway"]["id"] == "gw-test-gw1"
    assert written["uplink"]["brokers"] == [mosquitto.url], "site vars merged in"
    assert (etc / "site.yaml").stat().st_mode & 0o777 == 0o600
    assert (roots["gw1"] / "opt" / APP / "current").is_symlink()
    recap = {line.split()[0]: line for line in out.splitlines() if line.startswith("gw")}
    assert "failed=0" in recap["gw1"]
    assert "failed=1" in recap["gw2"]
    assert "gw3" not in recap or "ok=0" in recap["gw3"], recap
    assert not (roots["gw3"] / "opt").exists(), "the rollout must stop before gw3"
    assert not (roots["gw3"] / "etc" / APP).exists()

    assert upgrade_code != 0, upgrade
    assert "gw1 failed its health check; the rollout stops here" in upgrade
    assert "TASK [edge_gateway : Install or upgrade]" in upgrade
    assert current.readlink() == release_before, "the release that ran before is back"
    assert (roots["gw1"] / "etc" / APP / "site.yaml").read_bytes() == site_before
    assert len(list((roots["gw1"] / "opt" / APP / "releases").iterdir())) == 2
