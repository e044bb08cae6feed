"""The benchmark runner: a suite that fails or cannot run costs its own figures, never the
others'; the results are written all the same and the exit status says a suite failed."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.benchmarks.__main__ import Suite, main, unit_of


def _module(name: str, run: Any, keys: tuple[str, ...], tiny: dict[str, Any]) -> ModuleType:
    module = ModuleType(name)
    module.run = run  # type: ignore[attr-defined]
    module.KEYS = keys  # type: ignore[attr-defined]
    module.TINY = tiny  # type: ignore[attr-defined]
    return module


def _measures(size: int = 1000) -> float:
    return size / 2


def _broken(size: int = 1000) -> dict[str, float]:
    raise RuntimeError(f"the rig did not start ({size})")


async def _async_measures(trials: int = 20) -> dict[str, float]:
    return {"async_trials_s": float(trials)}


GOOD = _module(
    "good", lambda size=1000: {"good_per_s": _measures(size)}, ("good_per_s",), {"size": 10}
)
BROKEN = _module("broken", _broken, ("broken_ms",), {"size": 1})
ASYNC = _module("async", _async_measures, ("async_trials_s",), {"trials": 2})
SHORT = _module("short", lambda: {"short_a": 1.0}, ("short_a", "short_b"), {})
TABLE = (
    Suite("good", GOOD),
    Suite("broken", BROKEN),
    Suite("absent", GOOD, needs=[lambda: "needs a thing this machine lacks"]),
    Suite("async", ASYNC),
    Suite("short", SHORT),
)


def test_a_failing_or_skipped_suite_keeps_the_others_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    status = main(["--out", str(out)], TABLE)
    results = json.loads(out.read_text())
    assert status == 1
    assert results["good_per_s"] == 500.0
    assert results["async_trials_s"] == 20.0  # a coroutine suite, run with its defaults
    assert results["short_a"] == 1.0
    assert results["skipped"] == {"absent": "needs a thing this machine lacks"}
    assert set(results["failed"]) == {"broken", "short"}
    assert "the rig did not start" in results["failed"]["broken"]
    assert "short_b" in results["failed"]["short"]
    assert "broken_ms" not in results
    assert isinstance(results["machine"], str)


def test_tiny_mode_and_parameters_reach_the_suites(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    status = main(
        ["--tiny", "--only", "good", "--only", "async", "--param", "async.trials=3", "--out",
         str(out)],
        TABLE,
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert status == 0
    assert results["good_per_s"] == 5.0  # TINY: size 10
    assert results["async_trials_s"] == 3.0  # --param wins over TINY
    assert "failed" not in results
    assert "skipped" not in results


def test_only_replaces_the_figures_of_the_suites_it_runs(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"good_per_s": 1.0, "broken_ms": 7.0, "machine": "old"}))
    status = main(["--only", "broken", "--out", str(out)], TABLE)
    results = json.loads(out.read_text())
    assert status == 1
    assert results["good_per_s"] == 1.0  # not run now: kept
    assert "broken_ms" not in results  # failed now: its old figure is not passed off as new
    assert set(results["failed"]) == {"broken"}
    main(["--only", "good", "--out", str(out)], TABLE)
    assert set(json.loads(out.read_text())["failed"]) == {"broken"}


@pytest.mark.parametrize(
    "text",
    ["uplink.backlog", "uplink=3", ".backlog=3", "uplink.=3"],
)
def test_a_malformed_param_is_refused_with_the_expected_form(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--param", text], TABLE)
    assert "SUITE.NAME=VALUE" in capsys.readouterr().err


def test_a_misspelt_param_is_refused_before_any_suite_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    with pytest.raises(SystemExit):
        main(["--param", "async.trails=3", "--out", str(out)], TABLE)
    assert "suite async has no parameter ['trails']; it takes ['trials']" in capsys.readouterr().err
    assert not out.exists()


def test_a_param_for_an_unknown_suite_names_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--param", "nosuch.size=3"], TABLE)
    assert "'good'" in capsys.readouterr().err


def test_units_are_read_from_the_keys() -> None:
    assert unit_of("uplink_drain_readings_per_s") == "/s"
    assert unit_of("buffer_disk_bytes_per_reading_1k_per_s") == "bytes"
    assert unit_of("e2e_change_to_buzzer_ms_p99") == "ms"
    assert unit_of("wire_encode_us_per_reading") == "µs"
    assert unit_of("rules_active") == ""


def test_ctrl_c_stops_the_run_but_keeps_what_was_measured(tmp_path: Path) -> None:
    def interrupted() -> dict[str, float]:
        raise KeyboardInterrupt

    table = (
        Suite("good", GOOD),
        Suite("stopped", _module("stopped", interrupted, ("stopped_s",), {})),
        Suite("async", ASYNC),
    )
    out = tmp_path / "results.json"
    assert main(["--out", str(out)], table) == 1
    results = json.loads(out.read_text())
    assert results["good_per_s"] == 500.0
    assert "interrupted" in results["failed"]["stopped"]
    assert "async_trials_s" not in results  # not started after Ctrl-C
