"""``edge run`` after a power cut in the middle of a push-config: a real process."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml

from edge.atomic import digest_of
from edge.reload import write_site as write_pushed
from hil.simulator import Simulator
from tests.fixtures.broker import Collector, Mosquitto, free_port
from tests.integration.site import simulated_site, site_for, write_site
from tests.integration.test_cli import EDGE, read_until
from tests.integration.test_commands import ack_for, command, send, until

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
            pending={"config_hash": digest_of(text.encode()), "command_id": "push-cut"},
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
    assert back[0]["config_hash"] == digest_of(original)
    started = [b for b in bodies if b["kind"] == "gateway-started"]
    assert started[0]["config_hash"] == digest_of(original)


#: Where a push is cut by SIGKILL: right after the command is sent, right after its ack, once
#: the new gateway is online (confirming), once config-applied arrived, once the push marker
#: is gone (confirmed); then random moments.
KILL_POINTS = ["sent", "acked", "online", "applied", "confirmed"]
RANDOM_KILLS = 3


async def test_sigkill_at_any_moment_of_a_push_leaves_the_old_or_the_new_config_in_force(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    chance = random.Random(12)
    points: list[str | float] = [*KILL_POINTS]
    points += [round(chance.uniform(0.0, 6.0), 2) for _ in range(RANDOM_KILLS)]
    async with simulated_site(tmp_path, mosquitto) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=mosquitto.url)
        path = write_site(tmp_path, site)
        logs = tmp_path / "logs"
        logs.mkdir()
        process = await _start(path, logs / "start.log")
        try:
            await _online_with(platform, digest_of(path.read_bytes()))
            for number, point in enumerate(points):
                before = path.read_bytes()
                pushed = yaml.safe_load(before)
                pushed["devices"][1]["id"] = f"efm-kitchen-{200 + number}"
                cid = f"push-kill-{number}"
                text = yaml.safe_dump(pushed, sort_keys=False)
                new_hash = digest_of(text.encode())
                # A renamed device that a guarded rule judges: the engineering key's to push.
                push = command(cid, "push-config", {"site_yaml": text}, key="engineering")
                await send(mosquitto, push)
                await _reach(platform, point, cid, new_hash, path)
                process.kill()  # the power cut
                await process.wait()
                on_disk = path.read_bytes()
                assert on_disk in (before, text.encode()), f"{point}: neither config on disk"
                process = await _start(path, logs / f"after-{number}.log")
                # The gateway comes up on one of the two, and says which.
                in_force = await _online_with(platform, digest_of(before), new_hash)
                assert digest_of(path.read_bytes()) == in_force, point
                if in_force == new_hash:
                    await _last_word(platform, cid, "config-applied")
                elif on_disk == text.encode():
                    # Written, not confirmed: undone at the start, and reported.
                    await _last_word(platform, cid, "config-rolled-back")
                assert not path.with_name("site.yaml.pending").exists()
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 15) == 0


async def _start(path: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(*EDGE, "run", "--config", str(path), stderr=out)


async def _online_with(platform: Collector, *hashes: str) -> str:
    """Wait for a gateway online with one of ``hashes`` since now; return its hash."""
    seen = len(platform.on("/status"))

    def online(c: Collector) -> bool:
        return any(
            s["state"] == "online" and s["config_hash"] in hashes for s in c.on("/status")[seen:]
        )

    await platform.wait_for(online, 30)
    found = [s for s in platform.on("/status")[seen:] if s["state"] == "online"]
    return str(found[-1]["config_hash"])


async def _reach(
    platform: Collector, point: str | float, cid: str, new_hash: str, path: Path
) -> None:
    if isinstance(point, float):
        await asyncio.sleep(point)  # a random moment of the push (not a timing claim)
    elif point == "acked":
        await ack_for(platform, cid)
    elif point == "online":
        await _online_with(platform, new_hash)
    elif point == "applied":
        await platform.wait_for(
            lambda c: any(
                e["kind"] == "config-applied" and e["command_id"] == cid for e in c.on("/events")
            ),
            30,
        )
    elif point == "confirmed":
        await _reach(platform, "applied", cid, new_hash, path)
        await until(
            lambda: not path.with_name("site.yaml.pending").exists(), 30, "the push confirmed"
        )


async def _last_word(platform: Collector, cid: str, wanted: str) -> None:
    """Wait until the last config event about push ``cid`` is ``wanted``."""

    def about(c: Collector) -> list[str]:
        return [
            e["kind"]
            for e in c.on("/events")
            if e.get("command_id") == cid and e["kind"].startswith("config-")
        ]

    await platform.wait_for(lambda c: about(c)[-1:] == [wanted], 30)
