"""The validating process of the running gateway (edge/config/compile.py, compiled.py): a
bad site file reads exactly as ``edge check-config`` says it, and a child that dies, hangs,
floods or talks nonsense is a clear error, never a hang."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from drivers.modbus import known_models
from edge.config import compiled, loader
from edge.config.issues import ConfigError
from edge.fault import salvage

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"


def _broken(tmp_path: Path) -> Path:
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["devices"][0]["gauge_lenght"] = 3  # a typo: a suggestion
    site["rules"][0]["raise_at"] = "300 parsecs"  # a unit that is none
    site["uplink"]["keepalive"] = 30  # a bare number for a duration
    site["buses"][0]["port"] = 70000
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
    return path


def test_a_bad_site_file_gets_the_same_issues_as_check_config(tmp_path: Path) -> None:
    path = _broken(tmp_path)
    with pytest.raises(ConfigError) as expected:
        loader.load_site(path, known_models=known_models())
    with pytest.raises(ConfigError) as got:
        compiled.load_site(path, known_models=known_models())
    assert got.value.issues == expected.value.issues
    assert str(got.value) == str(expected.value)
    assert "did you mean 'gauge_length'" in str(got.value)
    text = path.read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as parsed:
        compiled.parse_site(text, "pushed.yaml", known_models=None)
    with pytest.raises(ConfigError) as parsed_here:
        loader.parse_site(text, "pushed.yaml", known_models=None)
    assert parsed.value.issues == parsed_here.value.issues


def test_the_child_never_imports_code_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service runs in the outbox's folder, which it can write: a package named like the
    # gateway's there must not be what the validating process runs.
    marker = tmp_path / "imported-from-the-working-directory"
    rogue = tmp_path / "edge" / "config"
    rogue.mkdir(parents=True)
    for init in (tmp_path / "edge" / "__init__.py", rogue / "__init__.py"):
        init.write_text("", encoding="utf-8")
    (rogue / "compile.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nprint('{{}}')\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    config = compiled.load_site(EXAMPLE, known_models=known_models())
    assert not marker.exists()
    assert config.gateway.id


def test_a_missing_or_unreadable_file_is_the_same_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as expected:
        loader.load_site(tmp_path / "none.yaml")
    with pytest.raises(FileNotFoundError) as got:
        compiled.load_site(tmp_path / "none.yaml")
    assert got.value.strerror == expected.value.strerror
    assert got.value.filename == expected.value.filename
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        compiled.load_site(folder)


def test_garbage_of_any_kind_is_issues_not_a_crash(tmp_path: Path) -> None:
    for text in ("", "- a list\n", "gateway: [", "\x00\x01 binary", "uplink: {brokers: 5}\n"):
        with pytest.raises(ConfigError) as expected:
            loader.parse_site(text, "g.yaml")
        with pytest.raises(ConfigError) as got:
            compiled.parse_site(text, "g.yaml")
        assert got.value.issues == expected.value.issues, text


def _run(code: str, **limits: float) -> ConfigError:
    with pytest.raises(ConfigError) as failed:
        compiled.ask(
            {"op": "load", "path": "x"},
            filename="site.yaml",
            command=(sys.executable, "-c", code),
            **limits,  # type: ignore[arg-type]
        )
    assert [issue.file for issue in failed.value.issues] == ["site.yaml"]
    return failed.value


def test_a_killed_child_is_a_clear_error() -> None:
    error = _run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert "not validated: the validating process" in str(error)
    assert "killed by signal 9" in str(error)


def test_a_child_that_fails_says_why() -> None:
    error = _run("import sys; sys.stderr.write('MemoryError: out of memory'); sys.exit(3)")
    assert "exited with status 3: MemoryError: out of memory" in str(error)


def test_a_hung_child_is_stopped_at_the_timeout() -> None:
    # It reads nothing and never answers (a request bigger than the pipe must not block us).
    error = _run("import time; time.sleep(600)", timeout=1.0)
    assert "gave no answer after" in str(error)


def test_a_flood_of_output_is_cut_at_the_limit() -> None:
    error = _run(
        "import sys\nwhile True: sys.stdout.write('x' * 65536)", max_answer=2**20, timeout=60
    )
    assert f"answered with more than {2**20} bytes" in str(error)


def test_an_answer_that_is_not_json_or_not_a_config_is_refused() -> None:
    assert "answered with no JSON" in str(_run("print('hello')"))
    with pytest.raises(ConfigError, match="answered in a form not understood"):
        compiled._config({"classes": [{"name": "X"}], "config": {}}, "site.yaml")
    with pytest.raises(ConfigError, match="not a known behaviour"):
        compiled._config(
            {
                "classes": [{"name": "X", "mixins": ["os"], "fields": {}}],
                "config": {},
                "warnings": [],
            },
            "site.yaml",
        )


def test_a_request_larger_than_a_pipe_reaches_the_child(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8") + "".join(f"# {i:06d}\n" for i in range(40_000))
    assert len(text) > 256 * 1024
    config = compiled.parse_site(text, "big.yaml", known_models=known_models())
    assert config.gateway.id == loader.parse_site(text, "big.yaml").gateway.id


def test_fault_mode_salvages_the_same_sections_through_the_child(tmp_path: Path) -> None:
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["devices"] = "not a list"
    site["outputs"]["buzzer"]["pin"] = 99
    found = salvage(yaml.safe_dump(site))
    assert found.gateway is not None
    assert found.gateway.id == site["gateway"]["id"]
    assert found.uplink is not None
    assert found.buffer is not None
    assert found.outputs is None  # its pin is out of range
    assert salvage("[not: a site") == salvage(None)
