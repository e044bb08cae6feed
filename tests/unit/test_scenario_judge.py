"""How the runner judges: buzzer states against bounds, field matching, nothing lost, reports."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hil.receiver import Receiver
from hil.scenario import parse_scenario, run_scenario
from hil.scenario.model import Expectation
from hil.scenario.report import figures, junit, text_report
from hil.scenario.rig import Arrival
from hil.scenario.runner import LiveRun, Outcome, ScenarioResult, _judge_state, _matches

LIBRARY = Path(__file__).resolve().parents[2] / "hil" / "scenarios"


def buzzer(state: str, within: float) -> Expectation:
    return Expectation("buzzer", 7, state=state, after="leak", within=within)


def test_a_buzzer_state_is_judged_against_its_bound_with_the_time_measured() -> None:
    changes = [(100.0, True), (105.0, False)]
    on = _judge_state(buzzer("on", 1.0), changes, 99.6)
    assert on.passed
    assert on.measured == pytest.approx(0.4)
    late = _judge_state(buzzer("on", 0.2), changes, 99.6)
    assert not late.passed
    assert late.measured == pytest.approx(0.4)
    assert late.detail == "on 400 ms after leak"
    already = _judge_state(buzzer("on", 0.1), changes, 101.0)
    assert (already.passed, already.measured) == (True, 0.0)
    never = _judge_state(buzzer("on", 10.0), changes, 106.0)
    assert (never.passed, never.detail) == (False, "never on after leak")
    off = _judge_state(buzzer("off", 10.0), changes, 101.0)
    assert off.passed
    assert off.measured == pytest.approx(4.0)


def test_fields_match_by_value_with_dotted_names_and_numbers_with_a_tolerance() -> None:
    event = {"kind": "alarm-raised", "value": 350.0, "occupancy": {"state": "vacant"}, "seq": 3}
    assert _matches(event, {"kind": "alarm-raised", "value": 350, "occupancy.state": "vacant"})
    assert not _matches(event, {"occupancy.state": "occupied"})
    assert not _matches(event, {"value": 350.1})
    assert not _matches(event, {"missing": 1})
    assert not _matches({"value": True}, {"value": 1})  # a flag is not a number
    assert _matches({"priority": 1}, {"priority": 1.0})


def outbox(path: Path, last_seq: int, pending: list[int]) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)")
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("epoch", "e-1"), ("last_seq", last_seq)])
        db.execute("CREATE TABLE telemetry (seq INTEGER PRIMARY KEY, point, ts, value)")
        db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, created, body)")
        db.executemany("INSERT INTO telemetry VALUES (?, 1, 0, 0)", [(s,) for s in pending])
    db.close()


def platform(path: Path, readings: list[int], dropped: tuple[int, int] | None = None) -> None:
    Receiver(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO messages VALUES ('m-1', 'gw', 'telemetry', 'e-1', 't', 0, '{}')")
        db.executemany(
            "INSERT INTO readings (gateway_id, epoch, seq, device, point, value, unit, ts,"
            " historical) VALUES ('gw', 'e-1', ?, 'd', 'p', 1, '', '', 0)",
            [(s,) for s in readings],
        )
        if dropped is not None:
            body = json.dumps({"seq_first": dropped[0], "seq_last": dropped[1]})
            db.execute(
                "INSERT INTO events VALUES ('gw', 'e-1', 11, 'buffer-dropped', '', 0, ?)", (body,)
            )
    db.close()


def nothing_lost(tmp_path: Path) -> Outcome:
    scenario = parse_scenario(
        (LIBRARY / "kill-during-burst.yaml").read_text(), LIBRARY / "kill-during-burst.yaml"
    )
    run = LiveRun(scenario, tmp_path, print, None)
    try:
        return run.judge(Expectation("nothing_lost", 1))
    finally:
        run.receiver.close()


def test_nothing_lost_names_a_committed_seq_neither_delivered_nor_kept(tmp_path: Path) -> None:
    outbox(tmp_path / "outbox.sqlite", last_seq=10, pending=[9, 10])
    platform(tmp_path / "platform.sqlite", readings=[1, 2, 3, 4, 6, 7, 8])
    verdict = nothing_lost(tmp_path)
    assert not verdict.passed
    assert verdict.detail == "seqs missing at the platform: {'gw/e-1': [5]}"


def test_nothing_lost_counts_what_is_still_in_the_outbox_and_announced_drops(
    tmp_path: Path,
) -> None:
    outbox(tmp_path / "outbox.sqlite", last_seq=12, pending=[11, 12])
    platform(tmp_path / "platform.sqlite", readings=[1, 2, 3, 4, 7, 8, 9, 10], dropped=(5, 6))
    verdict = nothing_lost(tmp_path)
    assert verdict.passed, verdict.detail
    assert "all 12 committed seqs accounted for" in verdict.detail


def test_nothing_lost_catches_a_tail_the_platform_never_got(tmp_path: Path) -> None:
    # The receiver sees no gap (1-8 arrived), but the outbox committed up to 10 and keeps none.
    outbox(tmp_path / "outbox.sqlite", last_seq=10, pending=[])
    platform(tmp_path / "platform.sqlite", readings=list(range(1, 9)))
    verdict = nothing_lost(tmp_path)
    assert not verdict.passed
    assert verdict.detail == "2 committed seq(s) lost: 9, 10"


def test_reports_name_the_failing_expectation_with_its_line_and_figures() -> None:
    path = LIBRARY / "residual-current.yaml"
    scenario = parse_scenario(path.read_text(), path)
    passed, failed = scenario.expectations[1], scenario.expectations[3]
    result = ScenarioResult(
        scenario,
        "failed",
        [Outcome(passed, True, "on 43 ms after leak", 0.043), Outcome(failed, False, "late", 3.5)],
        seconds=8.0,
    )
    text = text_report([result], 8.0)
    assert "FAILED  residual-current (8.0 s)" in text
    assert f"FAIL {failed.describe()}: late [residual-current.yaml:{failed.line}]" in text
    suite = ET.fromstring(junit([result], 8.0))
    assert suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert f"residual-current.yaml:{failed.line}: late" in (failure.text or "")
    measured = figures([result], 8.0)["scenarios"]["residual-current"]["measured"]
    assert [(m["measured_ms"], m["bound_ms"], m["passed"]) for m in measured] == [
        (43.0, 1000.0, True),
        (3500.0, 3000.0, False),
    ]


def test_first_means_first_sent_after_the_step_not_a_late_delivery(tmp_path: Path) -> None:
    path = LIBRARY / "broker-outage.yaml"
    run = LiveRun(parse_scenario(path.read_text(), path), tmp_path, print, None)
    first = next(e for e in run.scenario.expectations if e.first)
    run.step_times = {"start": 1000.0, "return": 1004.0, "end": 1010.0}

    def arrive(at: float, stream: str, sent: float, **fields: object) -> Arrival:
        stamp = datetime.fromtimestamp(sent, UTC).isoformat().replace("+00:00", "Z")
        topic = f"district/v1/gw-hil-0001/{stream}"
        return Arrival(at, topic, {"sent_at": stamp, **fields})

    alarm = {
        "kind": "alarm-raised",
        "rule": "residual-current-over-limit",
        "device": "efm-shop-101",
    }
    try:
        # Telemetry the broker kept from before the outage arrives first: that is no reorder.
        run.receiver.arrivals = [
            arrive(1004.1, "telemetry", 1000.9),
            arrive(1004.2, "events", 1004.15, **alarm),
            arrive(1004.3, "telemetry", 1004.25),
        ]
        verdict = run.judge(first)
        assert verdict.passed, verdict.detail
        assert verdict.measured == pytest.approx(0.2)
        # Telemetry sent after the return, before the alarm: the alarm was not first.
        run.receiver.arrivals.insert(1, arrive(1004.15, "telemetry", 1004.12))
        verdict = run.judge(first)
        assert not verdict.passed
        assert verdict.detail == "arrived after 0.20 s but telemetry came first"
    finally:
        run.receiver.close()


async def test_a_fault_of_the_runner_is_an_error_of_that_scenario_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def broken(self: LiveRun) -> ScenarioResult:
        raise KeyError("gateway_id")

    monkeypatch.setattr(LiveRun, "_run", broken)
    path = LIBRARY / "overcurrent.yaml"
    result = await run_scenario(parse_scenario(path.read_text(), path), tmp_path / "run")
    assert result.status == "error"
    assert result.reason.startswith("KeyError: 'gateway_id' (at test_scenario_judge.py:")
    assert result.workdir == tmp_path / "run"
