"""Durability by class: what is synced to the card at once, what waits for ``sync_interval``,
and what a power cut may undo without a seq ever naming two records.

The fsync calls are watched with strace on a real file (a test that fails when an event is
reported stored before its sync, or when routine readings are synced at every commit). A power
cut is the one thing a test cannot do: it is modelled by the files as the last sync left them
and a kernel that booted again (the boot id, read from /proc, is the one thing faked).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import buffer.store
from buffer import Outbox

BODY = {"device": "efm-1", "point": "residual_current", "unit": "mA"}

_SYNC_WORKER = """
import asyncio, os, sys
from buffer import Outbox

def mark(text):
    os.write(2, f"MARK {text}\\n".encode())

async def main():
    # Readings wait an hour for their sync: only what must be synced at once is.
    outbox = await Outbox.open(sys.argv[1], commit_interval=0.01, sync_interval=3600)
    body = {"device": "efm-1", "point": "residual_current", "unit": "mA"}
    await outbox.append("event", {"kind": "gateway-started"})
    mark("readings")
    for n in range(5):
        for k in range(40):
            outbox.submit("telemetry", {**body, "ts": 1e9 + n * 40 + k, "value": float(k)})
        await outbox.flush()
    mark("event")
    await outbox.append("event", {"kind": "alarm-raised"})
    mark("window")
    outbox.submit("telemetry", {**body, "ts": 2e9, "value": 230.0}, at_once=True)
    await outbox.flush()
    mark("state")
    await outbox.state_put("alarms/active", ["leak"])
    mark("end")
    os._exit(0)  # no close: closing syncs

asyncio.run(main())
"""

_SYSCALL = re.compile(r"^\d+\s+(?P<call>\w+)\((?P<args>.*)")


def _wal_syncs_per_section(trace: str) -> dict[str, int]:
    """fsync/fdatasync calls on the outbox's WAL between the worker's marks."""
    wal_fds: set[str] = set()
    sections: dict[str, int] = {}
    section = "open"
    for line in trace.splitlines():
        match = _SYSCALL.match(line)
        if match is None:
            continue
        call, args = match["call"], match["args"]
        if call == "openat" and '-wal"' in args:
            fd = line.rsplit("=", 1)[-1].strip()
            if fd.isdigit():
                wal_fds.add(fd)
        elif call == "write" and args.startswith("2, ") and "MARK " in args:
            section = args.split("MARK ", 1)[1].split("\\n", 1)[0]
            sections.setdefault(section, 0)
        elif call in ("fsync", "fdatasync"):
            fd = args.split(")", 1)[0].split(" ", 1)[0].strip(",")
            if fd in wal_fds:
                sections[section] = sections.get(section, 0) + 1
    return sections


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
def test_an_alarm_its_window_and_rule_state_are_synced_before_reported_stored_readings_wait(
    tmp_path: Path,
) -> None:
    trace = tmp_path / "strace.txt"
    strace = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "signal=none",
        "-e",
        "trace=openat,write,fsync,fdatasync",
    ]
    done = subprocess.run(
        [
            *strace,
            "-o",
            str(trace),
            sys.executable,
            "-c",
            _SYNC_WORKER,
            str(tmp_path / "outbox.sqlite"),
        ],
        check=False,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    syncs = _wal_syncs_per_section(trace.read_text())
    assert set(syncs) >= {"readings", "event", "window", "state", "end"}, syncs
    # Five commits of readings, none synced: the card keeps them in the page cache.
    assert syncs["readings"] == 0, syncs
    # Each of these returned only after an fsync of the WAL (which covers the readings too).
    assert syncs["event"] >= 1, syncs
    assert syncs["window"] >= 1, syncs
    assert syncs["state"] >= 1, syncs


_KILLED_WORKER = """
import asyncio, json, os, shutil, signal, sys
from buffer import Outbox

async def main():
    path = sys.argv[1]
    outbox = await Outbox.open(path, commit_interval=0.01, sync_interval=3600)
    body = {"device": "efm-1", "point": "residual_current", "unit": "mA"}
    await outbox.append("event", {"kind": "gateway-started"})
    # The card as the last sync left it: what a power cut from here on may leave.
    for suffix in ("", "-wal"):
        shutil.copyfile(path + suffix, path + ".synced" + suffix)
    for n in range(300):
        outbox.submit("telemetry", {**body, "ts": 1e9 + n, "value": float(n)})
    await outbox.flush()
    report = {"last_seq": outbox.last_seq, "synced_seq": outbox.synced_seq}
    with open(sys.argv[2], "w") as out:
        json.dump(report, out)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def _killed_with_unsynced_readings(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A worker that committed 300 readings unsynced and was killed; the outbox and, beside it
    (``.synced``), the files as they were at its last sync."""
    path, report = tmp_path / "outbox.sqlite", tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER, str(path), str(report)], check=False, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    seqs = json.loads(report.read_text())
    # The readings were committed and not synced: the case a power cut can undo.
    assert seqs["synced_seq"] < seqs["last_seq"], seqs
    return path, seqs


def _rows(path: Path) -> tuple[list[dict[str, object]], int]:
    with sqlite3.connect(path) as conn:
        events = [json.loads(body) for (body,) in conn.execute("SELECT body FROM events")]
        (readings,) = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    return events, int(readings)


async def test_a_kill_without_a_reboot_loses_and_skips_nothing(tmp_path: Path) -> None:
    """kill -9: the page cache kept every commit, so the next seq follows the last one."""
    path, seqs = _killed_with_unsynced_readings(tmp_path)
    async with await Outbox.open(path) as outbox:
        seq = await outbox.append("event", {"kind": "gateway-started"})
    assert seq == seqs["last_seq"] + 1
    events, readings = _rows(path)
    assert readings == 300
    assert [e["kind"] for e in events] == ["gateway-started", "gateway-started"]


async def test_after_a_power_cut_no_seq_the_lost_commits_used_names_another_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files as the last sync left them, opened after a reboot: the uplink may have sent
    the readings the cut undid, so their seqs are skipped, and an event names them."""
    path, seqs = _killed_with_unsynced_readings(tmp_path)
    card = tmp_path / "card" / "outbox.sqlite"
    card.parent.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}.synced{suffix}", f"{card}{suffix}")
    monkeypatch.setattr(buffer.store, "boot_id", lambda: "a-later-boot")
    async with await Outbox.open(card) as outbox:
        seq = await outbox.append("event", {"kind": "gateway-started"})
        lost = [
            r.body for r in await outbox.peek("event", 10) if r.body["kind"] != "gateway-started"
        ]
    assert seq > seqs["last_seq"]
    assert len(lost) == 1, lost
    assert lost[0]["kind"] == "buffer-dropped"
    assert lost[0]["reason"] == "power-loss"
    assert lost[0]["seq_first"] == seqs["synced_seq"] + 1
    assert lost[0]["seq_last"] >= seqs["last_seq"]
    assert lost[0]["seq_last"] < seq
    _, readings = _rows(card)
    assert readings == 0  # what the cut undid (in this model: everything unsynced)


async def test_a_reboot_after_a_clean_close_skips_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(path, commit_interval=0.01, sync_interval=3600) as outbox:
        await outbox.append("event", {"kind": "gateway-started"})
        for n in range(50):
            outbox.submit("telemetry", {**BODY, "ts": 1e9 + n, "value": float(n)})
        await outbox.flush()
        last = outbox.last_seq
    monkeypatch.setattr(buffer.store, "boot_id", lambda: "a-later-boot")
    async with await Outbox.open(path) as outbox:
        assert await outbox.append("event", {"kind": "gateway-started"}) == last + 1
    events, readings = _rows(path)
    assert readings == 50
    assert all(e["kind"] == "gateway-started" for e in events), events


async def test_an_idle_writer_syncs_once_the_interval_has_passed(tmp_path: Path) -> None:
    now = [0.0]
    async with await Outbox.open(
        tmp_path / "outbox.sqlite", commit_interval=0.01, sync_interval=0.5, clock=lambda: now[0]
    ) as outbox:
        await outbox.append("event", {"kind": "gateway-started"})
        for n in range(20):
            outbox.submit("telemetry", {**BODY, "ts": 1e9 + n, "value": float(n)})
        await outbox.flush()
        assert outbox.synced_seq < outbox.last_seq  # the outbox's clock has not moved
        now[0] = 1.0  # past the interval; nothing more is submitted
        deadline = time.monotonic() + 30  # a condition, not a timing claim
        while outbox.synced_seq < outbox.last_seq:
            assert time.monotonic() < deadline, "the committed readings were never synced"
            await asyncio.sleep(0.05)


async def test_a_sync_interval_that_is_no_number_of_seconds_is_refused(tmp_path: Path) -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sync_interval"):
            await Outbox.open(tmp_path / "outbox.sqlite", sync_interval=bad)


async def test_a_file_from_before_the_reservation_gets_it_on_open(tmp_path: Path) -> None:
    """A version 2 file written before ``seq_reserved`` existed: the key is added on open and
    then kept ahead of the seqs handed out unsynced."""
    path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(path) as outbox:
        await outbox.append("event", {"kind": "gateway-started"})
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key IN ('seq_reserved', 'boot_id')")
    async with await Outbox.open(path, commit_interval=0.01, sync_interval=3600) as outbox:
        for n in range(10):
            outbox.submit("telemetry", {**BODY, "ts": 1e9 + n, "value": float(n)})
        await outbox.flush()
        last = outbox.last_seq
        with sqlite3.connect(path) as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert int(meta["seq_reserved"]) >= last
    assert meta["boot_id"] == (buffer.store.boot_id() or "")
