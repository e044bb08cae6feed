"""Schema upgrade from an old file, rule-state storage, and bad input at the outbox's door."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from buffer import SCHEMA_VERSION, Outbox, OutboxUnwritable, StateConflict

FIXTURE_V1 = Path(__file__).resolve().parents[1] / "fixtures" / "outbox-v1.sqlite"
T0 = 1_767_225_600.0


def reading(value: Any, **extra: Any) -> dict[str, Any]:
    return {
        "device": "efm-1",
        "point": "residual_current",
        "unit": "mA",
        "value": value,
        "ts": T0,
        **extra,
    }


# --- schema versions ---------------------------------------------------------------------------


async def test_a_version_1_file_is_upgraded_in_place_keeping_rows_seqs_and_epoch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    shutil.copy(FIXTURE_V1, path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        old_epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        old_rows = conn.execute("SELECT seq, stream, body FROM outbox ORDER BY seq").fetchall()
    async with await Outbox.open(path) as outbox:
        assert outbox.epoch == old_epoch
        events = await outbox.peek("event", 100)
        telemetry = await outbox.peek("telemetry", 100)
        assert await outbox.depth() == {"event": 1, "telemetry": 6}
        # The fixture's high-water mark is 11 (seq 11 was acked and deleted): not reused.
        new_seq = await outbox.append("event", {"kind": "gateway-started"})
    assert new_seq == 12
    assert [(r.seq, r.body["kind"]) for r in events] == [(8, "alarm-raised")]
    assert events[0].body["location"] == {"building": "b1"}
    assert [r.seq for r in telemetry] == [s for s, stream, _ in old_rows if stream == "telemetry"]
    assert telemetry[0].body == {
        "device": "efm-1",
        "point": "residual_current",
        "unit": "mA",
        "value": 12.0,
        "ts": 1767225602.0,
    }
    assert telemetry[-1].body["unit"] == "°C"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "outbox" not in tables
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


async def test_an_unreadable_version_1_row_is_carried_over_whole(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    shutil.copy(FIXTURE_V1, path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO outbox (stream, created, body) VALUES ('telemetry', 5.0, 'x{')")
    async with await Outbox.open(path) as outbox:
        last = (await outbox.peek("telemetry", 100))[-1]
    assert (last.seq, last.body) == (12, {"v1_body": "x{", "value": None, "ts": 5.0})


async def test_a_failed_migration_is_rolled_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    shutil.copy(FIXTURE_V1, path)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta")  # the migration needs the epoch and fails without it
    async with await Outbox.open(path) as outbox:
        assert outbox.reset is not None
        moved = outbox.reset.moved_to
    # The file that could not be migrated is kept exactly at version 1, every row in place.
    with sqlite3.connect(moved) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 7
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "outbox", "sqlite_sequence"}


# --- rule state --------------------------------------------------------------------------------


async def test_rule_state_is_durable_versioned_and_conditional(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    async with await Outbox.open(path) as outbox:
        assert await outbox.state_get("alarms/active") is None
        assert await outbox.state_put("alarms/active", [["rc", "efm-1"]]) == 1
        assert await outbox.state_put("alarms/active", [], schema=2) == 2
        assert await outbox.state_put("baseline/efm-1/rc", {"median": 12.5, "iqr": 1.5}) == 1
        assert await outbox.state_put("window/efm-1", {"since": T0}, expect=0) == 1
        with pytest.raises(StateConflict, match="revision 1"):
            await outbox.state_put("window/efm-1", {"since": T0 + 1}, expect=0)
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await outbox.state_put("bad", {"f": math.nan})
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            await outbox.state_put("bad", object())
    # After a restart: the same values, revisions and schemas.
    async with await Outbox.open(path) as outbox:
        entry = await outbox.state_get("alarms/active")
        assert entry is not None
        assert (entry.value, entry.revision, entry.schema) == ([], 2, 2)
        window = await outbox.state_get("window/efm-1")
        assert window is not None
        assert window.value == {"since": T0}
        assert [e.key for e in await outbox.state_items("baseline/")] == ["baseline/efm-1/rc"]
        assert await outbox.state_get("bad") is None
        assert await outbox.state_delete("window/efm-1", expect=1)
        assert not await outbox.state_delete("window/efm-1")
        # Rule state is not part of the stream: it is never sent and never counted.
        assert await outbox.depth() == {"event": 0, "telemetry": 0}


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "body", "error", "message"),
    [
        ("event", {"kind": "alarm-raised", "when": object()}, TypeError, "not JSON-serialisable"),
        ("event", {"kind": "x", "values": {1, 2}}, TypeError, "not JSON-serialisable"),
        ("event", ["not", "a", "mapping"], TypeError, "mapping"),
        ("telemetry", {"device": "efm-1", "value": 1.0}, ValueError, "needs 'ts' and 'value'"),
        ("telemetry", reading("12 mA"), ValueError, "'value' must be a number"),
        ("telemetry", reading(True), ValueError, "'value' must be a number"),
        ("telemetry", {**reading(1.0), "ts": "yesterday"}, ValueError, "'ts' must be a number"),
        ("telemetry", {**reading(1.0), "ts": math.inf}, ValueError, "'ts' must be finite"),
        ("telemetry", reading(1.0, device=object()), TypeError, "not JSON-serialisable"),
        ("telemetry", reading(1.0, tags=[object()]), TypeError, "not JSON-serialisable"),
        ("noise", {"kind": "x"}, ValueError, "unknown outbox stream"),
    ],
)
async def test_a_body_that_cannot_be_stored_is_refused_at_append_and_nothing_else_changes(
    tmp_path: Path, stream: Any, body: Any, error: type[Exception], message: str
) -> None:
    async with await Outbox.open(tmp_path / "o.db") as outbox:
        before = await outbox.append("telemetry", reading(1.0))
        outbox.submit("event", {"kind": "alarm-raised", "n": 1})
        with pytest.raises(error, match=message):
            outbox.submit(stream, body)
        with pytest.raises(error, match=message):
            await outbox.append(stream, body)
        after = await outbox.append("telemetry", reading(2.0))
        assert outbox.pending == 0
        events = await outbox.peek("event", 10)
        telemetry = await outbox.peek("telemetry", 10)
    assert [e.body["n"] for e in events] == [1]
    assert [r.body["value"] for r in telemetry] == [1.0, 2.0]
    assert after == before + 2, "a refused record must not use up a seq"


async def test_odd_but_storable_readings_round_trip(tmp_path: Path) -> None:
    async with await Outbox.open(tmp_path / "o.db") as outbox:
        await outbox.append("telemetry", reading(None))
        await outbox.append("telemetry", reading(math.nan))  # a sensor's NaN: stored as null
        await outbox.append("telemetry", reading(7))  # an int comes back as a float
        await outbox.append("telemetry", reading(-0.5, tags=["a", "b"], unit=None))
        await outbox.append("telemetry", {"ts": T0, "value": 1e300})
        rows = await outbox.peek("telemetry", 10)
    assert [r.body["value"] for r in rows] == [None, None, 7.0, -0.5, 1e300]
    assert rows[3].body == {
        "device": "efm-1",
        "point": "residual_current",
        "unit": None,
        "tags": ["a", "b"],
        "value": -0.5,
        "ts": T0,
    }
    assert rows[4].body == {"ts": T0, "value": 1e300}
    assert rows[0].created == T0


async def test_a_folder_that_is_a_file_is_a_clear_error_naming_path_and_fix(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the buffer's folder should be")
    with pytest.raises(OutboxUnwritable) as caught:
        await Outbox.open(blocker / "outbox.sqlite")
    text = str(caught.value)
    assert str(blocker / "outbox.sqlite") in text
    assert "buffer.path" in text
