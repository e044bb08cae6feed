"""``edge run`` after a power cut in the middle of a push-config: a real process."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml

from edge.gateway import config_hash
from edge.reload import write_site as write_pushed
from hil.simulator import Simulator
from tests.fixtures.broker import free_port
from tests.integration.site import site_for, write_site
from tests.integration.test_cli import EDGE, read_until

pytestmark = pytest.mark.integration


async def test_a_push_cut_short_before_it_settled_is_undone_when_the_gateway_starts(
    tmp_path: Path,
) -> None:
    async with Simulator(
        tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=tmp_path / "rtu", rtu_devices=[1]
    ) as sim:
        site = site_for(sim, tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}")
        path = write_site(tmp_path, site)
        original = path.read_bytes()
        pushed = copy.deepcopy(site)
        pushed["devices"][1]["id"] = "efm-kitchen-102"
        text = yaml.safe_dump(pushed, sort_keys=False)
        # What a gateway leaves when the power goes between the write and the settle time.
        write_pushed(
            path,
            text,
            pending={"config_hash": config_hash(text.encode()), "command_id": "push-cut"},
        )
        process = await asyncio.create_subprocess_exec(
            *EDGE, "run", "--config", str(path), stderr=asyncio.subprocess.PIPE
        )
        assert process.stderr is not None
        try:
            lines = await read_until(process.stderr, "outbox open", 15)
        finally:
            process.send_signal(signal.SIGTERM)
            rest = (await asyncio.wait_for(process.stderr.read(), 10)).decode()
            assert await process.wait() == 0, rest

    assert any("pushed config rolled back at start" in line for line in lines)
    assert path.read_bytes() == original
    assert not path.with_name("site.yaml.pending").exists()
    with sqlite3.connect(tmp_path / "outbox.sqlite") as conn:
        bodies = [json.loads(row[0]) for row in conn.execute("SELECT body FROM events")]
    back = [b for b in bodies if b["kind"] == "config-rolled-back"]
    assert len(back) == 1
    assert back[0]["command_id"] == "push-cut"
    assert back[0]["config_hash"] == config_hash(original)
    started = [b for b in bodies if b["kind"] == "gateway-started"]
    assert started[0]["config_hash"] == config_hash(original)
