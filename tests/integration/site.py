"""Site files for integration tests: the example site, re-pointed at this test's ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from edge import contract
from edge.config import SiteConfig, parse_site
from hil.simulator import Simulator
from tests.fixtures.broker import Collector, Mosquitto, collect
from tests.fixtures.command_keys import install

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"


def site_dict(
    tmp_path: Path, *, broker_url: str, tcp_port: int, rtu_link: Path | str
) -> dict[str, Any]:
    """The example site with this test's broker, Modbus TCP port, pty and buffer file, and the
    test platform's command keys installed."""
    site: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for bus in site["buses"]:
        if bus["kind"] == "modbus-tcp":
            bus["port"] = tcp_port
        else:
            bus["port"] = str(rtu_link)
    site["uplink"]["brokers"] = [broker_url]
    site["uplink"]["batch_interval"] = "200ms"
    site["uplink"]["reconnect_max"] = "1s"
    site["buffer"]["path"] = str(tmp_path / "outbox.sqlite")
    # These tests follow readings (seqs, values, backlogs): every reading is stored. What the
    # example site's storage policies keep is tested in test_storage_site.py.
    site["storage"] = {**site.get("storage", {}), "policy": "all"}
    site["control"] = {"socket": str(tmp_path / "control.sock")}
    site["commands"] = {"keys": str(install(tmp_path / "command-keys"))}
    return site


def site_for(
    sim: Simulator, tmp_path: Path, *, broker_url: str, poll_interval: str | None = "200ms"
) -> dict[str, Any]:
    """The example site pointed at ``sim``; devices polled every ``poll_interval``."""
    assert sim.rtu_link is not None, "the example site has an RTU bus"
    site = site_dict(tmp_path, broker_url=broker_url, tcp_port=sim.tcp_port, rtu_link=sim.rtu_link)
    if poll_interval is not None:
        for device in site["devices"]:
            device["poll_interval"] = poll_interval
    return site


def write_site(tmp_path: Path, site: dict[str, Any]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def load(site: dict[str, Any]) -> SiteConfig:
    return parse_site(yaml.safe_dump(site, sort_keys=False), "site.yaml")


@asynccontextmanager
async def simulated_site(
    tmp_path: Path, mosquitto: Mosquitto
) -> AsyncIterator[tuple[Simulator, Collector]]:
    """The example site's monitors (two on Modbus TCP, one on RTU over a pty) and a platform
    subscribed to every gateway topic on ``mosquitto``, for the length of the block."""
    async with (
        Simulator(
            tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
        ) as sim,
        collect(mosquitto, contract.fleet_filter("district/v1")) as platform,
    ):
        yield sim, platform
