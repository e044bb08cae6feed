"""``edge buffer stats|export|vacuum`` as a technician runs them: a real process, a real file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from buffer import CapacityPolicy, Outbox
from tests.integration.site import site_dict, write_site

pytestmark = pytest.mark.integration

EDGE = [sys.executable, "-m", "edge.cli", "buffer"]
T0 = 1_767_225_600.0


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=60, check=False)


async def fill(path: Path, readings: int) -> tuple[list[int], str]:
    """An outbox with an alarm, ``readings`` readings of two points, a thinning and a state key."""
    async with await Outbox.open(path) as outbox:
        seqs = [await outbox.append("event", {"kind": "alarm-raised", "device": "efm-1"})]
        for n in range(readings):
            point = "residual_current" if n % 2 else "temperature_1"
            body = {"device": "efm-1", "point": point, "value": n / 4, "ts": T0 + n}
            outbox.submit("telemetry", body)
        await outbox.flush()
        await outbox.state_put("alarms/active", [["rc", "efm-1"]])
        epoch = outbox.epoch
    return seqs, epoch


def test_stats_shows_depth_age_size_epoch_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    _, epoch = asyncio.run(fill(path, 5000))

    async def thin() -> None:  # a tight limit makes the policy thin once
        policy = CapacityPolicy(max_size=64 * 1024, thin_window=60.0)
        async with await Outbox.open(path, policy=policy, capacity_interval=0.01) as outbox:
            for _ in range(1000):
                if outbox.counters["thinned_rows"]:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError("the policy never thinned")

    asyncio.run(thin())
    result = edge("stats", "--path", str(path), "--json")
    assert result.returncode == 0, result.stderr
    figures: dict[str, Any] = json.loads(result.stdout)
    assert figures["epoch"] == epoch
    assert figures["depth"]["event"] >= 2  # the alarm and the thinning report
    assert 0 < figures["depth"]["telemetry"] < 5000
    assert figures["thinned_rows"] == 5000 - figures["depth"]["telemetry"]
    assert figures["dropped_rows"] == 0
    assert figures["oldest_age_s"]["telemetry"] > 0
    assert figures["points"] == 2
    assert figures["state_keys"] == 1
    assert figures["file_bytes"] > 0

    table = edge("stats", "--path", str(path))
    assert table.returncode == 0, table.stderr
    assert epoch in table.stdout
    assert "rows thinned" in table.stdout
    assert "telemetry waiting" in table.stdout


def test_export_json_lines_and_csv_with_a_progress_bar(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    seqs, _ = asyncio.run(fill(path, 30_000))
    out = tmp_path / "export.jsonl"
    result = edge("export", "--path", str(path), "--out", str(out), "--progress")
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr
    assert "30,001/30,001" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 30_001
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    assert lines[0] == {
        "seq": seqs[0],
        "stream": "event",
        "created": lines[0]["created"],
        "body": {"kind": "alarm-raised", "device": "efm-1"},
    }
    assert lines[-1]["body"] == {
        "device": "efm-1",
        "point": "residual_current",
        "value": 29_999 / 4,
        "ts": T0 + 29_999,
    }

    result = edge("export", "--path", str(path), "--format", "csv", "--stream", "telemetry")
    assert result.returncode == 0, result.stderr
    assert "%" not in result.stderr, "no bar unless asked for or on a terminal"
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 30_000
    assert {row["stream"] for row in rows} == {"telemetry"}
    assert json.loads(rows[1]["body"])["value"] == 0.25


def test_vacuum_gives_free_pages_back_and_keeps_the_records(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    asyncio.run(fill(path, 50_000))

    async def drain() -> None:
        async with await Outbox.open(path) as outbox:
            while rows := await outbox.peek("telemetry", 5000):
                await outbox.ack([r.seq for r in rows])

    asyncio.run(drain())
    size = path.stat().st_size
    result = edge("vacuum", "--path", str(path))
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size < size / 4
    assert " -> " in result.stdout
    stats = json.loads(edge("stats", "--path", str(path), "--json").stdout)
    assert stats["depth"] == {"event": 1, "telemetry": 0}


def test_the_file_comes_from_the_site_file(tmp_path: Path) -> None:
    site = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1883", tcp_port=502, rtu_link="x")
    config = write_site(tmp_path, site)
    asyncio.run(fill(Path(site["buffer"]["path"]), 10))
    result = edge("stats", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["depth"]["telemetry"] == 10


def test_bad_targets_are_clear_errors(tmp_path: Path) -> None:
    missing = edge("stats", "--path", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 1
    assert "nope.sqlite: no such outbox file" in missing.stderr
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 500)
    corrupt = edge("export", "--path", str(garbage))
    assert corrupt.returncode == 1
    assert "not a readable outbox database" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr
    neither = edge("stats")
    assert neither.returncode == 2
    assert "--config" in neither.stderr
