"""The SQLite outbox, on real database files."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from buffer import (
    SCHEMA_VERSION,
    CapacityPolicy,
    Outbox,
    OutboxError,
    OutboxUnavailable,
    Stream,
)
from buffer.store import seq_runs
from buffer.tail import TelemetryTail


def _rows(path: Path) -> list[tuple[int, str]]:
    """What another process would see in the file right now."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT seq, 'event' FROM events UNION ALL SELECT seq, 'telemetry' FROM telemetry"
        )
        return sorted((int(s), str(st)) for s, st in rows)


def _remove_database(path: Path) -> None:
    for leftover in path.parent.glob(path.name + "*"):  # with its -wal and -shm
        leftover.unlink()


def tel(i: int, **series: object) -> dict[str, object]:
    """A telemetry body: a reading ``i`` of one series (its value and its second)."""
    return {
        "device": "efm-1",
        "point": "residual_current",
        **series,
        "value": float(i),
        "ts": T0 + i,
    }


T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


async def _sql(outbox: Outbox, statement: str) -> None:
    """Run one statement on the outbox's own connection, on its own thread (test access)."""

    def run(conn: sqlite3.Connection) -> None:
        conn.execute(statement)

    await outbox._run(run, outbox._store.conn)


async def test_seqs_increase_across_streams_and_keep_order_within_a_stream(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as outbox:
        seqs = []
        for i in range(10):
            stream: Stream = "event" if i % 3 == 0 else "telemetry"
            body = {"i": i} if stream == "event" else tel(i)
            seqs.append(await outbox.append(stream, body))
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)

        events = await outbox.peek("event", 100)
        telemetry = await outbox.peek("telemetry", 100)
        assert [r.body["i"] for r in events] == [0, 3, 6, 9]
        assert [r.body["value"] for r in telemetry] == [1, 2, 4, 5, 7, 8]
        assert [r.seq for r in events] == sorted(r.seq for r in events)
        assert {r.stream for r in events} == {"event"}
        assert await outbox.depth() == {"event": 4, "telemetry": 6}
        assert len(await outbox.peek("telemetry", 2)) == 2


async def test_peek_reads_a_seq_range_and_last_seq_marks_what_is_committed(
    tmp_path: Path,
) -> None:
    async with await Outbox.open(tmp_path / "o.db") as outbox:
        assert outbox.last_seq == 0
        seqs = [await outbox.append("telemetry", tel(i)) for i in range(6)]
        event = await outbox.append("event", {"i": 99})
        assert outbox.last_seq == event
        # The backlog up to a mark, apart from what came after it.
        window = await outbox.peek("telemetry", 100, after=seqs[1], through=seqs[3])
        assert [r.seq for r in window] == seqs[2:4]
        assert await outbox.peek("event", 10, through=seqs[-1]) == []
        assert [r.seq for r in await outbox.peek("event", 10, through=event)] == [event]
        assert [r.seq for r in await outbox.peek("telemetry", 2, through=seqs[4])] == seqs[:2]
        # Readings at T0+0 .. T0+5: those from T0+3 on are the recent tail.
        assert await outbox.recent_since(T0 + 3) == seqs[2]
        assert await outbox.recent_since(T0 + 100) == seqs[-1]  # none that recent
        assert await outbox.recent_since(T0 - 1) == 0  # all of them
        await outbox.ack(seqs)
        assert outbox.last_seq == event  # deleting never lowers it
        assert await outbox.recent_since(T0 + 3) == 0


async def _peeks_agree(outbox: Outbox, limits: tuple[int, ...] = (1000,)) -> None:
    """Every look past every seq finds what the database holds: the looks the outbox answers
    without the database (nothing newer there, the tail of recent telemetry) included."""
    last = outbox.last_seq
    for stream in ("event", "telemetry"):
        for after in range(last + 2):
            for limit in limits:
                for through in (None, after + 1, after + 3, last):
                    held = await outbox._run(outbox._store.peek, stream, limit, after, through)
                    found = await outbox.peek(stream, limit, after=after, through=through)
                    # repr: -0.0 == 0.0, but a platform would see the sign.
                    assert repr(found) == repr(held), (stream, after, limit, through)
            if await outbox._run(outbox._store.peek, stream, 1, after, None):
                assert not outbox._store.none_after(stream, after), (stream, after)


async def test_a_look_for_newer_rows_finds_each_row_whoever_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as outbox:
        assert outbox._store.none_after("event", 0)  # an empty file: nothing to look at
        await outbox.append("event", {"n": 0})
        for i in range(3):
            await outbox.append("telemetry", tel(i))
        for odd in (math.nan, -0.0, math.inf, None):
            await outbox.append("telemetry", {**tel(9), "value": odd})
        await _peeks_agree(outbox)
        event = await outbox.append("event", {"n": 1})
        await outbox.ack([2, 4])  # telemetry at the front and in the middle
        assert not outbox._store.none_after("event", event - 1)
        assert outbox._store.none_after("event", event)
        assert outbox._store.none_after("telemetry", 0, through=0)
        await _peeks_agree(outbox)
    async with await Outbox.open(path) as outbox:  # what an earlier run wrote
        assert not outbox._store.none_after("event", event - 1)
        await _peeks_agree(outbox)
        # The capacity policy writes its report event itself.
        report = await outbox._run(
            outbox._store.make_room, CapacityPolicy(max_size=2**20), "max_size"
        )
        assert report is not None
        found = await outbox.peek("event", 10, after=event)
        assert [r.body["kind"] for r in found] == ["buffer-thinned"]
        await _peeks_agree(outbox)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_looks_at_recent_telemetry_agree_with_the_file_through_commits_and_acks(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    async with await Outbox.open(tmp_path / "o.db", commit_interval=0.0) as outbox:
        outbox._tail = TelemetryTail(outbox.last_seq, limit=7)  # cut often
        for step in range(12):
            for i in range(rng.randint(0, 9)):
                if rng.random() < 0.2:
                    outbox.submit("event", {"step": step, "i": i})
                else:
                    outbox.submit("telemetry", tel(step * 10 + i, unit=rng.choice(["mA", "V"])))
            await outbox.flush()
            rows = await outbox.peek("telemetry", 1000)
            # The uplink acknowledges oldest first, now and then out of order.
            chosen = [r.seq for r in rows if rng.random() < 0.6]
            rng.shuffle(chosen)
            await outbox.ack(chosen)
            await _peeks_agree(outbox, limits=(1, 3, 1000))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_an_ack_deletes_exactly_the_rows_it_names(tmp_path: Path, seed: int) -> None:
    # Acks are deleted by runs of consecutive seqs: a run must never reach a row not named,
    # whichever stream it is in, and duplicates or unknown seqs must not be counted.
    rng = random.Random(seed)
    async with await Outbox.open(tmp_path / "o.db", commit_interval=0.0) as outbox:
        for i in range(300):
            if rng.random() < 0.15:
                outbox.submit("event", {"i": i})
            else:
                outbox.submit("telemetry", tel(i))
        await outbox.flush()
        stored = {r.seq for s in ("event", "telemetry") for r in await outbox.peek(s, 1000)}
        assert len(stored) == 300
        chosen = sorted(stored)[rng.randrange(40) :: rng.choice([1, 1, 2, 3])]
        chosen = [seq for seq in chosen if rng.random() < 0.8]
        named = chosen + rng.sample(chosen, min(5, len(chosen))) + [10**6, -3, 0]
        rng.shuffle(named)
        await outbox.ack(named)
        left = {r.seq for s in ("event", "telemetry") for r in await outbox.peek(s, 1000)}
        assert left == stored - set(chosen)
        # The counters count each row deleted once.
        depth = await outbox.depth()
        assert depth["event"] + depth["telemetry"] == len(left)
    with contextlib.closing(sqlite3.connect(tmp_path / "o.db")) as conn:
        in_file = {
            seq for (seq,) in conn.execute("SELECT seq FROM telemetry UNION SELECT seq FROM events")
        }
    assert in_file == left


async def test_series_read_back_at_open_are_the_same_fields_sharing_their_strings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    bodies = [
        tel(i, device=f"efm-{i % 5}", point=f"p{i % 7}", unit="V", extra={"n": [i % 5]})
        for i in range(70)
    ]
    async with await Outbox.open(path, commit_interval=0.0) as outbox:
        for body in bodies:
            outbox.submit("telemetry", body)
        await outbox.flush()
        before = [r.body for r in await outbox.peek("telemetry", 100)]
    async with await Outbox.open(path) as outbox:
        after = [r.body for r in await outbox.peek("telemetry", 100)]
        series = list(outbox._store.series.values())
        # A reading of a known series gets its old point id, not a new one.
        outbox.submit("telemetry", bodies[3])
        await outbox.flush()
        assert len(outbox._store.series) == len(series)
    assert after == before == bodies
    assert len(series) == 35
    devices = {id(fields["device"]) for fields in series}
    assert len(devices) == 5  # one string per device id, not one per point
    assert len({id(name) for fields in series for name in fields}) == 4


async def test_each_series_comes_back_with_its_own_fields(tmp_path: Path) -> None:
    # Series are found by their fields' names and values in one flat tuple: names and values
    # that trade places, a field more or less, another order of the same fields or a value
    # that cannot be hashed must each keep their own fields.
    series: list[dict[str, object]] = [
        {"device": "a", "point": "b"},
        {"device": "b", "point": "a"},
        {"a": "device", "b": "point"},
        {"device": "a"},
        {"device": "a", "point": "b", "unit": "V"},
        {"device": "a", "point": "b", "unit": ["V"]},
        {"point": "b", "device": "a"},  # the same series as the first
        {"device": "ab", "point": ""},
        {"x": "a", "y": "b"},
        {"device": "a", "point": "b", "n": 1.5},
    ]
    async with await Outbox.open(tmp_path / "o.db", commit_interval=0.0) as outbox:
        for round_ in range(2):
            for i, fields in enumerate(series):
                outbox.submit("telemetry", {**fields, "value": float(i), "ts": T0 + round_})
        await outbox.flush()
        rows = await outbox.peek("telemetry", 100)
        assert len(outbox._store.series) == len(series) - 1
    for row in rows:
        fields = series[int(row.body["value"])]
        assert {k: v for k, v in row.body.items() if k not in ("value", "ts")} == fields


async def test_series_whose_values_are_equal_but_of_another_type_keep_their_own_fields(
    tmp_path: Path,
) -> None:
    # 1, 1.0 and True are equal (and hash alike) in Python but are three series in the file,
    # as are 0.0 and -0.0, and the names 1 and True; a NaN equals nothing, not even itself.
    # Every reading must come back with its own fields, after a reopen too, and every point
    # a row names must have its row in points.
    series: list[dict[Any, object]] = [
        {"device": "a", "n": 1},
        {"device": "a", "n": 1.0},
        {"device": "a", "n": True},
        {"device": "a", "n": 0.0},
        {"device": "a", "n": -0.0},
        {"device": "a", "n": False},
        {"device": "a", "n": 0},
        {1: "x"},
        {True: "x"},
        {"1": "x"},  # the same series as {1: "x"}: names are text in the file
        {"device": "a", "n": math.nan},
        {"device": "a", "n": None},
        {"device": "a", "n": "1"},
    ]
    for opening in range(2):  # and after a reopen, each found again with its own id
        async with await Outbox.open(tmp_path / "o.db", commit_interval=0.0) as outbox:
            for round_ in range(3):
                for i, fields in enumerate(series):
                    body = {**fields, "value": float(i), "ts": T0 + 3 * opening + round_}
                    outbox.submit("telemetry", body)
            await outbox.flush()
            rows = await outbox.peek("telemetry", 100)
            assert len(outbox._store.series) == len(series) - 1
            # Found again by their text, not by a key per reading.
            assert len(outbox._point_by_fields) <= len(series)
    assert len(rows) == 6 * len(series)
    with contextlib.closing(sqlite3.connect(tmp_path / "o.db")) as conn:
        orphans = "SELECT count(*) FROM telemetry WHERE point NOT IN (SELECT id FROM points)"
        assert conn.execute(orphans).fetchone() == (0,)
    for row in rows:
        fields = {k: v for k, v in row.body.items() if k not in ("value", "ts")}
        expected = series[int(row.body["value"])]
        assert json.dumps(fields, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_seq_runs_are_the_seqs_named_in_consecutive_stretches() -> None:
    assert seq_runs([]) == []
    assert seq_runs([5]) == [(5, 5)]
    assert seq_runs([7, 3, 4, 5, 9, 8, 4]) == [(3, 5), (7, 9)]
    assert seq_runs([1, 3, 5]) == [(1, 1), (3, 3), (5, 5)]
    rng = random.Random(7)
    for _ in range(200):
        seqs = [rng.randrange(60) for _ in range(rng.randrange(40))]
        runs = seq_runs(seqs)
        covered = [seq for first, last in runs for seq in range(first, last + 1)]
        assert covered == sorted(set(seqs))
        # Runs are apart: two that touched would be one.
        assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))


async def test_submitted_records_keep_submit_order(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db", max_batch=7) as outbox:
        for i in range(50):
            outbox.submit("telemetry", tel(i))
        await outbox.flush()
        records = await outbox.peek("telemetry", 100)
        assert [r.body["value"] for r in records] == list(range(50))
        assert [r.seq for r in records] == sorted(r.seq for r in records)
        assert outbox.pending == 0


async def test_seq_is_not_reused_after_ack_all_or_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as outbox:
        first = [await outbox.append("event", {"n": n}) for n in range(3)]
        await outbox.ack(first)
        assert await outbox.depth() == {"event": 0, "telemetry": 0}
        after_ack = await outbox.append("telemetry", tel(3))
        assert after_ack > max(first)
        await outbox.ack([after_ack])
    async with await Outbox.open(path) as outbox:
        after_reopen = await outbox.append("event", {"n": 4})
        assert after_reopen > after_ack


async def test_epoch_is_stable_across_reopen_and_new_for_a_new_file(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "a.db") as outbox:
        epoch = outbox.epoch
    async with await Outbox.open(tmp_path / "a.db") as outbox:
        assert outbox.epoch == epoch
    async with await Outbox.open(tmp_path / "b.db") as other:
        assert other.epoch != epoch
    # A recreated database is a new epoch too.
    _remove_database(tmp_path / "a.db")
    async with await Outbox.open(tmp_path / "a.db") as outbox:
        assert outbox.epoch != epoch


async def test_append_returns_only_after_commit(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path, commit_interval=0.2) as outbox:
        seq = await outbox.append("event", {"kind": "alarm-raised"})
        # A second connection (as another process would) sees the row at once.
        assert _rows(path) == [(seq, "event")]


async def test_submit_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path, commit_interval=0.2) as outbox:
        outbox.submit("telemetry", tel(1))
        assert outbox.pending == 1
        assert _rows(path) == []  # still inside the commit window
        await outbox.flush()
        assert len(_rows(path)) == 1


async def test_an_event_is_committed_at_once_with_the_readings_before_it(tmp_path: Path) -> None:
    """Readings may wait out the commit window; an alarm never does, and the readings
    submitted before it are committed with it, so the order holds on disk and on the wire."""
    path = tmp_path / "o.db"
    async with await Outbox.open(path, commit_interval=3600) as outbox:
        committed: list[frozenset[Stream]] = []
        outbox.add_commit_listener(committed.append)
        for i in range(3):
            outbox.submit("telemetry", tel(i))
        # Readings alone wait: the writer has run, and nothing is on disk.
        for _ in range(20):
            await asyncio.sleep(0)
        assert _rows(path) == []
        assert outbox.pending == 3
        # The window is an hour: the deadline below is only there to fail instead of hang.
        seq = await asyncio.wait_for(outbox.append("event", {"kind": "alarm-raised"}), 60)
        outbox.submit("telemetry", tel(3))
        assert _rows(path) == [(1, "telemetry"), (2, "telemetry"), (3, "telemetry"), (4, "event")]
        assert seq == 4
        assert committed == [frozenset({"telemetry", "event"})]
        # What came after the event waits for its own window again.
        for _ in range(20):
            await asyncio.sleep(0)
        assert outbox.pending == 1
    assert len(_rows(path)) == 5  # close commits the rest


async def test_a_reading_submitted_at_once_closes_the_window_like_an_event(
    tmp_path: Path,
) -> None:
    """A reading around an alarm (``at_once``) is on disk at once, with the readings before
    it; ordinary readings after it wait for the window again."""
    path = tmp_path / "o.db"
    async with await Outbox.open(path, commit_interval=3600) as outbox:
        committed = asyncio.Event()
        outbox.add_commit_listener(lambda streams: committed.set())
        for i in range(2):
            outbox.submit("telemetry", tel(i))
        for _ in range(20):
            await asyncio.sleep(0)
        assert _rows(path) == []
        outbox.submit("telemetry", tel(2), at_once=True)
        # The window is an hour: the deadline is only there to fail instead of hang.
        await asyncio.wait_for(committed.wait(), 60)
        assert _rows(path) == [(1, "telemetry"), (2, "telemetry"), (3, "telemetry")]
        committed.clear()
        outbox.submit("telemetry", tel(3))
        for _ in range(20):
            await asyncio.sleep(0)
        assert outbox.pending == 1
        assert not committed.is_set()
    assert len(_rows(path)) == 4  # close commits the rest


async def test_many_submits_are_group_committed(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db", commit_interval=0.05, max_batch=500) as outbox:
        statements: list[str] = []

        def trace(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(statements.append)

        await outbox._run(trace, outbox._store.conn)
        for i in range(1200):
            outbox.submit("telemetry", tel(i))
        await outbox.flush()

        commits = [s for s in statements if s.strip().upper() == "COMMIT"]
        inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO TELEMETRY")]
        assert len(inserts) == 1200
        # One transaction per batch: 1200 records in at least 3 (max_batch) and far fewer than
        # 1200 commits. Submitted without awaiting, they all fit 3 batches.
        assert 3 <= len(commits) <= 4, len(commits)
        # ... and no batch is larger than max_batch.
        sizes, current = [], 0
        for s in statements:
            if s.lstrip().upper().startswith("INSERT INTO TELEMETRY"):
                current += 1
            elif s.strip().upper() == "COMMIT":
                sizes.append(current)
                current = 0
        assert max(sizes) <= 500
        assert sum(sizes) == 1200


async def test_records_trickling_in_share_a_commit_window(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db", commit_interval=0.1) as outbox:
        statements: list[str] = []

        def trace(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(statements.append)

        await outbox._run(trace, outbox._store.conn)
        # 40 records, one every 5 ms (as a poll loop produces them): about 0.2 s of records,
        # so about two 0.1 s windows, not 40 commits.
        for i in range(40):
            outbox.submit("telemetry", tel(i))
            await asyncio.sleep(0.005)
        await outbox.flush()
        commits = [s for s in statements if s.strip().upper() == "COMMIT"]
        assert 1 <= len(commits) <= 6, len(commits)
        assert len(await outbox.peek("telemetry", 100)) == 40


async def test_commit_listener_hears_each_commit(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as outbox:
        heard: list[frozenset[str]] = []
        remove = outbox.add_commit_listener(heard.append)
        await outbox.append("event", {})
        outbox.submit("telemetry", tel(0))
        await outbox.flush()
        assert heard == [frozenset({"event"}), frozenset({"telemetry"})]
        remove()
        await outbox.append("event", {})
        assert len(heard) == 2


async def test_journal_mode_is_wal_and_sync_full_and_schema_versioned(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as outbox:
        settings: dict[str, object] = {}

        def read(conn: sqlite3.Connection) -> None:
            settings["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
            settings["synchronous"] = conn.execute("PRAGMA synchronous").fetchone()[0]

        await outbox._run(read, outbox._store.conn)
    assert settings == {"journal_mode": "wal", "synchronous": 2}  # 2 == FULL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_creates_the_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "edge" / "outbox.db"
    async with await Outbox.open(path) as outbox:
        await outbox.append("event", {})
    assert path.is_file()


async def _assert_moved_aside_and_restarted(path: Path, original: bytes, reason: str) -> None:
    async with await Outbox.open(path) as outbox:
        assert outbox.reset is not None
        assert reason in outbox.reset.reason
        moved = outbox.reset.moved_to
        # Kept, byte for byte, next to the new file, with the time in its name.
        assert moved.parent == path.parent
        assert moved.name.startswith(path.name + ".corrupt-20")
        assert moved.read_bytes() == original
        # The new file starts a new epoch, and its first event says what happened.
        (first,) = await outbox.peek("event", 10)
        assert first.seq == 1
        assert first.body["kind"] == "buffer-reset"
        assert first.body["moved_to"] == moved.name
        assert reason in first.body["reason"]
        # ... and it is an ordinary, working outbox.
        assert await outbox.append("telemetry", tel(1)) == 2
        epoch = outbox.epoch
    async with await Outbox.open(path) as again:
        assert again.reset is None
        assert again.epoch == epoch


async def test_garbage_file_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    original = b"this is not a database, it is a shopping list\n" * 200
    path.write_bytes(original)
    await _assert_moved_aside_and_restarted(path, original, "not a readable outbox")


async def test_damaged_pages_are_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as outbox:
        old_epoch = outbox.epoch
        for i in range(400):
            outbox.submit("telemetry", tel(i, device=f"efm-{i}-" + "x" * 200))
        await outbox.flush()
    # Checkpointed into the main file on close; now scribble over the middle of it.
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[3 * 4096 : 6 * 4096] = b"\xa5" * (3 * 4096)
    path.write_bytes(bytes(data))
    await _assert_moved_aside_and_restarted(path, bytes(data), "")
    async with await Outbox.open(path) as outbox:
        assert outbox.epoch != old_epoch


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(OutboxError, match="newer"):
        await Outbox.open(path)


# How the unwritable disk is simulated: tests run as root, and root writes through chmod, so a
# read-only file or folder would not stop it. Instead the outbox's own connection is told to
# refuse writes at the SQLite layer - `PRAGMA query_only` (SQLite then fails every write with
# "attempt to write a readonly database") and `PRAGMA max_page_count` (it fails a growing
# write with SQLITE_FULL, "database or disk is full", as a full SD card does). These are real
# errors from the real engine on the real file, raised exactly where disk errors surface; what
# is not exercised is the operating system refusing the write (EROFS, EIO).


@pytest.mark.parametrize(
    ("refuse", "allow"),
    [
        ("PRAGMA query_only = ON", "PRAGMA query_only = OFF"),
        ("PRAGMA max_page_count = ?", "PRAGMA max_page_count = 1073741823"),
    ],
    ids=["read-only", "disk-full"],
)
async def test_unwritable_disk_keeps_records_until_writable_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, refuse: str, allow: str
) -> None:
    read_only = "query_only" in refuse
    path = tmp_path / "o.db"
    async with await Outbox.open(path, commit_interval=0.01) as outbox:
        await outbox.append("event", {"n": 0})
        if not read_only:
            # Shrinking below the current size is ignored; pin it to the current size.
            def pages(conn: sqlite3.Connection) -> int:
                return int(conn.execute("PRAGMA page_count").fetchone()[0])

            refuse = f"PRAGMA max_page_count = {await outbox._run(pages, outbox._store.conn)}"
        await _sql(outbox, refuse)

        with caplog.at_level(logging.WARNING, logger="buffer.outbox"):
            for n in range(1, 301):
                outbox.submit("event", {"n": n, "pad": "y" * 100})  # must not raise
            appended = asyncio.create_task(outbox.append("telemetry", tel(301)))
            await asyncio.sleep(0.4)
            assert not appended.done()
            assert outbox.pending == 301
            assert any("commit of" in r.getMessage() for r in caplog.records)
            # Reading still works while writing does not.
            assert await outbox.depth() == {"event": 1, "telemetry": 0}
            if read_only:
                # Deleting does not work either, and says so. (On a full disk it may: a delete
                # does not grow the database.)
                with pytest.raises(OutboxUnavailable):
                    await outbox.ack([1])

        await _sql(outbox, allow)
        seq = await asyncio.wait_for(appended, 10)
        await outbox.flush()
        assert outbox.pending == 0
        records = await outbox.peek("event", 1000)
        assert [r.body["n"] for r in records] == list(range(301))
        assert seq > records[-1].seq
    assert len(_rows(path)) == 302


async def test_close_commits_what_was_submitted(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    outbox = await Outbox.open(path, commit_interval=10)
    for i in range(5):
        outbox.submit("telemetry", tel(i))
    await outbox.close()
    assert len(_rows(path)) == 5
    outbox.submit("telemetry", tel(99))  # logged and dropped, never raised
    assert len(_rows(path)) == 5


async def test_a_large_file_is_checked_in_the_background_and_moved_aside_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as outbox:
        for i in range(30_000):
            outbox.submit("telemetry", tel(i))
        await outbox.flush()
    data = bytearray(path.read_bytes())
    pages = len(data) // 4096
    middle = pages // 2  # a telemetry leaf: opening reads neither it nor its neighbours
    data[middle * 4096 : (middle + 1) * 4096] = b"\xa5" * 4096
    path.write_bytes(bytes(data))

    # check_limit=0: every file counts as large. It opens at once; the check runs behind.
    with caplog.at_level(logging.ERROR, logger="buffer.outbox"):
        async with await Outbox.open(path, check_limit=0) as outbox:
            assert outbox.reset is None
            for _ in range(500):
                if outbox.damaged:
                    break
                await asyncio.sleep(0.02)
            assert outbox.damaged, "the background check found nothing"
            # The gateway keeps running on it meanwhile: new records still go in.
            await outbox.append("event", {"kind": "alarm-raised"})
    assert any("moved aside at the next start" in r.getMessage() for r in caplog.records)
    async with await Outbox.open(path) as outbox:
        assert outbox.reset is not None
        assert "integrity check found damage" in outbox.reset.reason
        (first,) = await outbox.peek("event", 10)
        assert first.body["kind"] == "buffer-reset"
    assert not path.with_name("o.db.damaged").exists()


async def test_a_healthy_large_file_passes_the_background_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    async with await Outbox.open(path) as outbox:
        for i in range(2000):
            outbox.submit("telemetry", tel(i))
    with caplog.at_level(logging.INFO, logger="buffer.outbox"):
        async with await Outbox.open(path, check_limit=0) as outbox:
            for _ in range(500):
                if any("integrity check ok" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the background check never reported")
            assert outbox.damaged is None
    async with await Outbox.open(path) as outbox:
        assert outbox.reset is None


async def test_readings_inside_the_commit_window_do_not_wake_the_writer(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db", commit_interval=60.0, max_batch=100) as outbox:
        woken: list[int] = []
        wakeup = outbox._wakeup
        real_set = wakeup.set

        def counted_set() -> None:
            woken.append(outbox.pending)
            real_set()

        wakeup.set = counted_set  # type: ignore[method-assign]
        for i in range(50):
            outbox.submit("telemetry", tel(i))
        await asyncio.sleep(0)
        assert woken == [1]  # the first reading opens the window; the next 49 wait in it
        outbox.submit("event", {"kind": "alarm-raised", "ts": T0})
        assert woken == [1, 51]  # an event closes the window at once
        await outbox.flush()
        for i in range(50, 150):
            outbox.submit("telemetry", tel(i))
        assert woken == [1, 51, 1, 100]  # a full batch ends the window too
        await outbox.flush()
        assert [r.body["value"] for r in await outbox.peek("telemetry", 200)] == list(range(150))
