"""The site file: loading, every kind of mistake reported with its line, the JSON Schema."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge.config
from edge.config import ConfigError, ConfigIssue, SiteConfig, load_site, parse_site
from edge.config.loader import check_config_main, report_config
from edge.config.schema import SCHEMA_PATH, render_schema, site_json_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"

MINIMAL = """\
gateway:
  id: gw-test
  site:
    name: Test block
buses:
  - id: lan
    kind: modbus-tcp
    host: 127.0.0.1
  - id: rs485
    kind: modbus-rtu
    port: /dev/ttyUSB0
devices:
  - id: dev-a
    model: efm-ref
    bus: lan
    address: 1
    location: {building: B1, floor: "1", room: R1, venue_type: shop}
  - id: dev-b
    model: efm-ref
    bus: rs485
    address: 1
    location: {building: B1, floor: "1", room: R2, venue_type: office}
rules:
  - id: leak
    kind: over-limit
    point: residual_current
    raise_at: 300
    clear_below: 270
outputs:
  buzzer: {pin: 17}
  led: {pin: 27}
uplink:
  brokers: [mqtt://127.0.0.1:1883]
buffer:
  path: var/outbox.sqlite
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle``."""
    hits = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} not found {occurrence} times"
    return hits[occurrence - 1]


def edited(old: str, new: str, text: str = MINIMAL, count: int = 1) -> str:
    assert text.count(old) >= count, f"{old!r} not in the text"
    return text.replace(old, new, count)


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def issues_of(path: Path, **kwargs: object) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_site(path, **kwargs)  # type: ignore[arg-type]
    return caught.value.issues


def only_issue(path: Path) -> ConfigIssue:
    issues = issues_of(path)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def issue_for(issues: list[ConfigIssue], field: str) -> ConfigIssue:
    matching = [issue for issue in issues if issue.field == field]
    assert matching, f"no issue for {field}; got:\n" + "\n".join(map(str, issues))
    return matching[0]


# --------------------------------------------------------------------------------------------
# Valid files
# --------------------------------------------------------------------------------------------


def test_example_site_loads() -> None:
    config = load_site(EXAMPLE)
    assert isinstance(config, SiteConfig)
    assert config.gateway.id == "gw-demo-0001"
    assert [bus.id for bus in config.buses] == ["lan", "rs485-1"]
    assert len(config.devices) == 3
    assert config.devices[0].poll_interval == pytest.approx(1.0)
    assert config.buffer.commit_interval == pytest.approx(2.0)  # the default


def test_check_config_summary_on_the_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the demo has made the serial port and the command keys the example names.
    (tmp_path / "var/demo/command-keys").mkdir(parents=True)
    # The serial port: a link to a real pseudo-terminal, as the demo's simulator makes it.
    controller, terminal = os.openpty()
    (tmp_path / "var/demo/rtu").symlink_to(os.ttyname(terminal))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    try:
        assert check_config_main(str(EXAMPLE), out) == 0
    finally:
        os.close(controller)
        os.close(terminal)
    assert out.getvalue() == "ok: gateway gw-demo-0001, 2 buses, 3 devices, 2 rules\n"


def test_minimal_site_takes_defaults(tmp_path: Path) -> None:
    config = load_site(write(tmp_path, MINIMAL))
    device = config.devices[0]
    assert device.poll_interval == pytest.approx(1.0)
    assert config.uplink.keepalive == pytest.approx(600.0)
    assert config.buses[0].kind == "modbus-tcp"
    assert config.buses[1].kind == "modbus-rtu"


def test_same_address_on_different_buses_is_fine(tmp_path: Path) -> None:
    config = load_site(write(tmp_path, MINIMAL))
    assert {(device.bus, device.address) for device in config.devices} == {
        ("lan", 1),
        ("rs485", 1),
    }


def test_parse_site_uses_the_given_name() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_site("gateway: [", "inline.yaml")
    assert str(caught.value).startswith("inline.yaml:")


def test_merge_keys_and_anchors(tmp_path: Path) -> None:
    text = edited(
        "  - id: dev-b\n",
        "  - id: dev-c\n"
        "    <<: &common {model: efm-ref, bus: lan}\n"
        "    address: 5\n"
        "    location: {building: B1, floor: '1', room: R3, venue_type: shop}\n"
        "  - id: dev-b\n",
    )
    config = load_site(write(tmp_path, text))
    dev_c = next(device for device in config.devices if device.id == "dev-c")
    assert (dev_c.model, dev_c.bus, dev_c.address) == ("efm-ref", "lan", 5)


def test_keys_are_kept_as_written(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare 'on' as true; as a key it must stay the word the installer typed.
    issue = only_issue(write(tmp_path, edited("buffer:\n", "buffer:\n  on: 1\n")))
    assert issue.field == "buffer.on"
    assert "unknown key 'on'" in issue.message


def test_known_models(tmp_path: Path) -> None:
    path = write(tmp_path, edited("model: efm-ref", "model: efm-rf"))
    assert load_site(path, known_models=None).devices[0].model == "efm-rf"
    issues = issues_of(path, known_models=["efm-ref", "acrel-arcm300"])
    issue = issue_for(issues, "devices[0].model")
    assert issue.line == line_of(MINIMAL, "model: efm-ref")
    assert "unknown device model 'efm-rf'; did you mean 'efm-ref'?" in issue.message
    assert "acrel-arcm300" in issue.message


# --------------------------------------------------------------------------------------------
# The JSON Schema
# --------------------------------------------------------------------------------------------


def test_committed_schema_is_current() -> None:
    committed = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
    assert committed == render_schema(), (
        "config/site.schema.json is stale: run `python -m edge.config.schema`"
    )


def test_schema_header_and_duration_defaults() -> None:
    schema = site_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert set(schema["required"]) == {"gateway", "buses", "devices", "outputs", "uplink", "buffer"}
    keepalive = schema["$defs"]["Uplink"]["properties"]["keepalive"]
    assert keepalive["default"] == "10m"
    assert re.match(keepalive["pattern"], keepalive["default"])
    assert json.loads(render_schema()) == schema


# --------------------------------------------------------------------------------------------
# Files that cannot be read as a site at all
# --------------------------------------------------------------------------------------------


def test_malformed_yaml(tmp_path: Path) -> None:
    text = edited("  site:\n", "   site:\n")  # one space too many
    path = write(tmp_path, text)
    issue = only_issue(path)
    assert issue.file == str(path)
    assert issue.line == line_of(text, "   site:")
    assert issue.column >= 1
    assert "YAML syntax error" in issue.message
    assert "check the indentation" in issue.message
    assert re.match(rf"^{re.escape(str(path))}:{issue.line}:{issue.column}: ", str(issue))


def test_unclosed_flow_list_points_at_its_line(tmp_path: Path) -> None:
    text = edited("[mqtt://127.0.0.1:1883]", "[mqtt://127.0.0.1:1883")
    issue = only_issue(write(tmp_path, text))
    assert issue.line >= line_of(text, "brokers:")
    assert "YAML syntax error" in issue.message


def test_tab_indentation(tmp_path: Path) -> None:
    text = edited("  id: gw-test\n", "\tid: gw-test\n")
    issue = only_issue(write(tmp_path, text))
    assert (issue.line, issue.column) == (line_of(text, "\tid:"), 1)
    assert "indent with spaces, not tabs" in issue.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n", "---\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    issue = only_issue(write(tmp_path, text))
    assert (issue.line, issue.column) == (1, 1)
    assert "empty" in issue.message
    assert "gateway" in issue.message


@pytest.mark.parametrize(("text", "found"), [("- a\n- b\n", "a list"), ("hello\n", "'hello'")])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    issue = only_issue(write(tmp_path, text))
    assert issue.line == 1
    assert "must be a mapping" in issue.message
    assert found in issue.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    issue = only_issue(path)
    assert issue.line == MINIMAL.count("\n") + 1
    assert "UTF-8" in issue.message


def test_unsafe_tags_are_refused(tmp_path: Path) -> None:
    text = edited("name: Test block", "name: !!python/object/apply:os.system ['true']")
    issue = issue_for(issues_of(write(tmp_path, text)), "gateway.site.name")
    assert issue.line == line_of(text, "name: !!python")


def test_a_tag_on_an_empty_value_is_an_issue_not_a_crash(tmp_path: Path) -> None:
    # PyYAML's int constructor raises IndexError on an empty !!int.
    text = edited("name: Test block", "name: !!int")
    issue = issue_for(issues_of(write(tmp_path, text)), "gateway.site.name")
    assert issue.line == line_of(text, "name: !!int")
    assert "cannot read ''" in issue.message


def test_recursive_alias(tmp_path: Path) -> None:
    text = MINIMAL + "extra: &loop [*loop]\n"
    issues = issues_of(write(tmp_path, text))
    assert any(issue.line == line_of(text, "extra:") for issue in issues)


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    issue = only_issue(write(tmp_path, "\n".join(lines) + "\n"))
    assert "expands to more than" in issue.message


def test_deep_nesting(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "a: " + "[" * 5000 + "\n"))
    assert issue.line == 1


# --------------------------------------------------------------------------------------------
# Mistakes in a well-formed file: each names file:line and the field
# --------------------------------------------------------------------------------------------


def test_unknown_top_level_key_with_suggestion(tmp_path: Path) -> None:
    text = edited("rules:\n", "rule:\n")
    path = write(tmp_path, text)
    issue = only_issue(path)
    assert issue.field == "rule"
    assert (issue.line, issue.column) == (line_of(text, "rule:"), 1)
    assert issue.message == "unknown key 'rule'; did you mean 'rules'?"
    assert str(issue) == f"{path}:{issue.line}:1: rule: unknown key 'rule'; did you mean 'rules'?"


def test_unknown_nested_key_with_suggestion(tmp_path: Path) -> None:
    text = edited("    address: 1\n", "    address: 1\n    poll_intervall: 2s\n")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "devices[0].poll_intervall"
    assert (issue.line, issue.column) == (line_of(text, "poll_intervall"), 5)
    assert "did you mean 'poll_interval'?" in issue.message


def test_unknown_key_in_a_discriminated_bus(tmp_path: Path) -> None:
    text = edited("    port: /dev/ttyUSB0\n", "    port: /dev/ttyUSB0\n    baud: 9600\n")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "buses[1].baud"  # no 'modbus-rtu' tag in the path
    assert issue.line == line_of(text, "baud:")
    assert "did you mean 'baudrate'?" in issue.message


def test_unknown_key_without_close_match_lists_the_allowed_ones(tmp_path: Path) -> None:
    text = edited("  path: var/outbox.sqlite\n", "  path: var/outbox.sqlite\n  zzz: 1\n")
    issue = only_issue(write(tmp_path, text))
    assert issue.message == (
        "unknown key 'zzz' (allowed here: commit_interval, sync_interval, max_size, "
        "min_free_disk, thin_window)"
    )


def test_a_sync_interval_within_one_commit_window_or_over_ten_minutes_is_refused(
    tmp_path: Path,
) -> None:
    path = "  path: var/outbox.sqlite\n"
    text = edited(path, path + "  sync_interval: 1s\n")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "buffer.sync_interval"
    assert issue.message == (
        "sync_interval (1s) is shorter than commit_interval (2s): every commit would be "
        "synced; say 0s for that, or at least the commit interval"
    )
    text = edited(path, path + "  sync_interval: 11m\n")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "buffer.sync_interval"
    assert "600" in issue.message or "10m" in issue.message, issue.message
    for good, seconds in (("0s", 0.0), ("2s", 2.0), ("10m", 600.0)):
        config = load_site(write(tmp_path, edited(path, path + f"  sync_interval: {good}\n")))
        assert config.buffer.sync_interval == pytest.approx(seconds)
    assert load_site(write(tmp_path, MINIMAL)).buffer.sync_interval == pytest.approx(30.0)


def test_wrong_type(tmp_path: Path) -> None:
    text = edited("    address: 1\n", '    address: "one"\n')
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "devices[0].address"
    assert issue.line == line_of(text, 'address: "one"')
    assert issue.message == "expected a whole number, found 'one'"


def test_number_where_text_is_expected_suggests_quotes(tmp_path: Path) -> None:
    text = edited('floor: "1", room: R1', "floor: 1, room: R1")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "devices[0].location.floor"
    assert issue.line == line_of(text, "floor: 1, room: R1")
    assert 'put it in quotes: "1"' in issue.message


def test_missing_required_key(tmp_path: Path) -> None:
    text = edited("    bus: rs485\n", "")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "devices[1].bus"
    assert issue.message == "missing required key 'bus'"
    assert issue.line == line_of(text, "id: dev-b")


def test_missing_section(tmp_path: Path) -> None:
    text = edited("buffer:\n  path: var/outbox.sqlite\n", "")
    issue = only_issue(write(tmp_path, text))
    assert (issue.field, issue.message) == ("buffer", "missing required key 'buffer'")


def test_unknown_and_missing_kind(tmp_path: Path) -> None:
    text = edited("kind: modbus-tcp", "kind: modbus-tc")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "buses[0].kind"
    assert issue.line == line_of(text, "kind: modbus-tc")
    assert "did you mean 'modbus-tcp'" in issue.message

    text = edited("    kind: over-limit\n", "")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "rules[0].kind"
    assert issue.message.startswith("missing required key 'kind' (one of 'over-limit', ")


def test_missing_bus_reference(tmp_path: Path) -> None:
    text = edited("bus: rs485", "bus: rs-485")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "devices[1].bus"
    assert issue.line == line_of(text, "bus: rs-485")
    assert "unknown bus 'rs-485'" in issue.message
    assert "(defined buses: lan, rs485)" in issue.message


def test_duplicate_device_ids_name_both_lines(tmp_path: Path) -> None:
    text = edited("id: dev-b", "id: dev-a")
    issue = only_issue(write(tmp_path, text))
    first, second = line_of(text, "id: dev-a", 1), line_of(text, "id: dev-a", 2)
    assert issue.field == "devices[1].id"
    assert issue.line == second
    assert f"first defined at line {first}" in issue.message
    assert "duplicate device id 'dev-a'" in issue.message


def test_duplicate_bus_and_rule_ids(tmp_path: Path) -> None:
    text = edited("id: rs485", "id: lan")
    text = edited("    bus: rs485\n    address: 1\n", "    bus: lan\n    address: 2\n", text)
    text = edited(
        "outputs:\n",
        "  - id: leak\n    kind: over-limit\n    point: temperature_1\n"
        "    raise_at: 70\n    clear_below: 65\noutputs:\n",
        text,
    )
    issues = issues_of(write(tmp_path, text))
    bus = issue_for(issues, "buses[1].id")
    assert bus.line == line_of(text, "id: lan", 2)
    assert f"first defined at line {line_of(text, 'id: lan')}" in bus.message
    rule = issue_for(issues, "rules[1].id")
    assert rule.line == line_of(text, "id: leak", 2)
    assert "duplicate rule id 'leak'" in rule.message
    assert len(issues) == 2, "\n".join(map(str, issues))


def test_address_used_twice_on_one_bus(tmp_path: Path) -> None:
    text = edited("bus: rs485", "bus: lan")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "devices[1].address"
    assert issue.line == line_of(text, "address: 1", 2)
    assert "Modbus address 1 on bus 'lan' is already used by device 'dev-a'" in issue.message
    assert f"(line {line_of(text, 'address: 1', 1)})" in issue.message


def test_rule_names_an_unknown_device(tmp_path: Path) -> None:
    text = edited(
        "    point: residual_current\n",
        "    point: residual_current\n    devices: [dev-a, dev-x]\n",
    )
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "rules[0].devices[1]"
    assert issue.line == line_of(text, "devices: [dev-a")
    assert "unknown device 'dev-x'" in issue.message


def test_duplicate_mapping_key(tmp_path: Path) -> None:
    text = edited("    address: 1\n", "    address: 1\n    address: 2\n")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "devices[0].address"
    assert issue.line == line_of(text, "address: 2")
    assert f"duplicate key 'address' (first at line {line_of(text, 'address: 1')})" in issue.message


@pytest.mark.parametrize("pin", [40, 1])
def test_invalid_pin(tmp_path: Path, pin: int) -> None:
    text = edited("buzzer: {pin: 17}", f"buzzer: {{pin: {pin}}}")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "outputs.buzzer.pin"
    assert issue.line == line_of(text, "buzzer:")
    assert str(pin) in issue.message


@pytest.mark.parametrize(
    ("value", "expected"), [("3", "needs a unit"), ('"3 parsecs"', "not a duration")]
)
def test_bad_duration(tmp_path: Path, value: str, expected: str) -> None:
    text = edited("    host: 127.0.0.1\n", f"    host: 127.0.0.1\n    timeout: {value}\n")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "buses[0].timeout"
    assert issue.line == line_of(text, "timeout:")
    assert expected in issue.message


def test_clear_below_above_raise_at(tmp_path: Path) -> None:
    text = edited("clear_below: 270", "clear_below: 330")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "rules[0].clear_below"
    assert issue.line == line_of(text, "clear_below: 330")
    assert "clear_below must not be above raise_at" in issue.message


def test_nan_threshold_is_refused(tmp_path: Path) -> None:
    text = edited("raise_at: 300", "raise_at: .nan")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "rules[0].raise_at"
    assert "finite" in issue.message


def test_buzzer_and_led_on_one_pin(tmp_path: Path) -> None:
    text = edited("led: {pin: 27}", "led: {pin: 17}")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "outputs.led"
    assert issue.line == line_of(text, "led: {pin: 17}")
    assert "share GPIO 17" in issue.message


BROKEN = """\
gateway:
  id: gw-test
  site:
    name: Test block
    nmae: typo
buses:
  - id: lan
    kind: modbus-tcp
    host: 127.0.0.1
    timeout: 3
devices:
  - id: dev-a
    model: efm-ref
    bus: lan
    address: one
    location: {building: B1, floor: "1", room: R1, venue_type: shop}
  - id: dev-a
    model: efm-ref
    bus: lna
    address: 2
    location: {building: B1, floor: "1", room: R2, venue_type: shop}
outputs:
  buzzer: {pin: 40}
uplink:
  brokers: [mqtt://127.0.0.1:1883]
buffer:
  path: var/outbox.sqlite
"""


def test_every_error_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    issues = issues_of(path)
    expected = {
        ("gateway.site.nmae", line_of(BROKEN, "nmae:")),
        ("buses[0].timeout", line_of(BROKEN, "timeout: 3")),
        ("devices[0].address", line_of(BROKEN, "address: one")),
        ("devices[1].id", line_of(BROKEN, "id: dev-a", 2)),
        ("devices[1].bus", line_of(BROKEN, "bus: lna")),
        ("outputs.buzzer.pin", line_of(BROKEN, "pin: 40")),
    }
    assert {(issue.field, issue.line) for issue in issues} == expected
    assert len(issues) == 6
    assert [issue.line for issue in issues] == sorted(issue.line for issue in issues)


def test_check_config_prints_every_error(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    out = io.StringIO()
    assert check_config_main(str(path), out) == 1
    lines = out.getvalue().splitlines()
    assert lines[-1] == "6 errors; nothing was started"
    assert len(lines) == 7
    for line in lines[:-1]:
        assert re.match(rf"^{re.escape(str(path))}:\d+:\d+: [\w.\[\]]+: .+$", line), line


def test_config_error_str(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    assert str(caught.value).splitlines() == [str(issue) for issue in caught.value.issues]


def test_missing_file_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    missing = tmp_path / "nowhere.yaml"
    assert check_config_main(str(missing), out) == 2
    assert out.getvalue() == f"error: cannot read {missing}: no such file\n"
    assert "Traceback" not in capsys.readouterr().err


def test_directory_returns_2(tmp_path: Path) -> None:
    out = io.StringIO()
    assert check_config_main(str(tmp_path), out) == 2
    assert "not a file" in out.getvalue()


def test_unreadable_file_returns_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    out = io.StringIO()
    assert check_config_main(str(path), out) == 2
    assert out.getvalue() == f"error: cannot read {path}: permission denied\n"


def test_an_unreadable_value_is_reported_once(tmp_path: Path) -> None:
    text = edited("name: Test block", "name: !custom Test block")
    issue = only_issue(write(tmp_path, text))
    assert issue.field == "gateway.site.name"
    assert issue.line == line_of(text, "!custom")
    assert "!custom" in issue.message


def test_package_exports() -> None:
    assert set(edge.config.__all__) == {
        "SiteConfig",
        "load_site",
        "parse_site",
        "ConfigError",
        "ConfigIssue",
        "check_config_main",
        "report_config",
    }


def test_report_config_returns_the_config(tmp_path: Path) -> None:
    out = io.StringIO()
    status, config = report_config(str(EXAMPLE), out, quiet=True)
    assert status == 0
    assert config is not None
    assert config.gateway.id == "gw-demo-0001"
    assert out.getvalue() == ""
    status, config = report_config(str(write(tmp_path, BROKEN)), out)
    assert (status, config) == (1, None)
    status, config = report_config(str(tmp_path / "absent.yaml"), out)
    assert (status, config) == (2, None)


def test_quiet_check_prints_only_errors(tmp_path: Path) -> None:
    out = io.StringIO()
    assert check_config_main(str(EXAMPLE), out, quiet=True) == 0
    assert out.getvalue() == ""
    assert check_config_main(str(write(tmp_path, BROKEN)), out, quiet=True) == 1
    assert out.getvalue().splitlines()[-1] == "6 errors; nothing was started"


# --------------------------------------------------------------------------------------------
# Whatever the text, the answer is a SiteConfig or a ConfigError
# --------------------------------------------------------------------------------------------

_TOKENS = [
    "\n",
    "  ",
    "    ",
    "- ",
    ": ",
    ":",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "#",
    "'",
    '"',
    "&a ",
    "*a",
    "<<: ",
    "!!str ",
    "!!binary ",
    "!x ",
    "? ",
    "---\n",
    "...\n",
    "|\n",
    ">\n",
    "~",
    "null",
    "true",
    "on",
    "yes",
    "1",
    "-1",
    "0x1f",
    "1.5",
    ".nan",
    ".inf",
    "2001-12-14",
    "2001-13-45",
    "500ms",
    "3 parsecs",
    "gateway",
    "id",
    "site",
    "name",
    "buses",
    "kind",
    "modbus-tcp",
    "modbus-rtu",
    "host",
    "port",
    "devices",
    "bus",
    "address",
    "model",
    "location",
    "rules",
    "over-limit",
    "raise_at",
    "clear_below",
    "outputs",
    "buzzer",
    "led",
    "pin",
    "uplink",
    "brokers",
    "mqtt://h:1",
    "buffer",
    "path",
    "\t",
    "\x00",
    "\ufeff",
    "%YAML 1.1\n",
]

_MINIMAL_LINES = MINIMAL.splitlines(keepends=True)


@st.composite
def _mutated_minimal(draw: st.DrawFn) -> str:
    lines = list(_MINIMAL_LINES)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        index = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = draw(st.sampled_from(["drop", "copy", "replace", "insert"]))
        if action == "drop":
            del lines[index]
        elif action == "copy":
            lines.insert(index, lines[index])
        else:
            token_text = "".join(draw(st.lists(st.sampled_from(_TOKENS), max_size=6)))
            if action == "replace":
                lines[index] = lines[index].split(":")[0] + ": " + token_text + "\n"
            else:
                lines.insert(index, token_text + "\n")
        if not lines:
            break
    return "".join(lines)


_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_config_error(text: str) -> None:
    error: ConfigError | None = None
    try:
        config = parse_site(text, "fuzz.yaml")
    except ConfigError as exc:
        error = exc
    if error is None:
        assert isinstance(config, SiteConfig)
        return
    assert error.issues
    last_line = text.count("\n") + text.count("\r") + 2
    for issue in error.issues:
        assert issue.file == "fuzz.yaml"
        assert 1 <= issue.line <= last_line
        assert issue.column >= 1
        assert issue.message
    assert len(str(error).splitlines()) >= len(error.issues)


@_SETTINGS
@given(st.text())
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    _parse_or_config_error(text)


@_SETTINGS
@given(st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join))
def test_yamlish_fragments_give_a_config_or_a_config_error(text: str) -> None:
    _parse_or_config_error(text)


@_SETTINGS
@given(_mutated_minimal())
def test_mutated_sites_give_a_config_or_a_config_error(text: str) -> None:
    _parse_or_config_error(text)


# --- limits added after review: values that validate but would misbehave at run time ---------


@pytest.mark.parametrize(
    ("path", "value", "field", "says"),
    [
        (("devices", 0, "poll_interval"), "0s", "devices[0].poll_interval", "greater than 0"),
        (("buses", 0, "timeout"), "0ms", "buses[0].timeout", "greater than 0"),
        (("devices", 0, "address"), True, "devices[0].address", "whole number"),
        (("outputs", "buzzer", "pin"), True, "outputs.buzzer.pin", "whole number"),
        (("uplink", "reconnect_max"), "100ms", "uplink.reconnect_max", "greater than or equal"),
    ],
    ids=["zero-poll", "zero-timeout", "bool-address", "bool-pin", "tiny-reconnect-cap"],
)
def test_values_that_would_misbehave_are_refused(
    path: tuple[str | int, ...], value: object, field: str, says: str
) -> None:
    site = yaml.safe_load(EXAMPLE.read_text())
    node = site
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as caught:
        parse_site(yaml.safe_dump(site, sort_keys=False), "site.yaml")
    issue = next(i for i in caught.value.issues if i.field == field)
    assert says in issue.message
    assert issue.line > 0


def test_two_buses_on_one_serial_port_are_refused() -> None:
    site = yaml.safe_load(EXAMPLE.read_text())
    rtu = next(b for b in site["buses"] if b["kind"] == "modbus-rtu")
    site["buses"].append({**rtu, "id": "rs485-2"})
    with pytest.raises(ConfigError) as caught:
        parse_site(yaml.safe_dump(site, sort_keys=False), "site.yaml")
    (issue,) = caught.value.issues
    assert issue.field == "buses[2].port"
    assert "already used by buses[1]" in issue.message
