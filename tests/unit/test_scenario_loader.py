"""The scenario loader refuses every wrong file before anything starts, naming file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from hil.scenario.loader import MAX_DURATION

LIBRARY = Path(__file__).resolve().parents[2] / "hil" / "scenarios"
#: A path inside the library, so ``site: sites/block.yaml`` resolves as in the real files.
HERE = LIBRARY / "under-test.yaml"

GOOD = """\
name: leak
proves: a leak sounds the buzzer
site: sites/block.yaml
devices:
  - {id: efm-shop-101, values: {residual_current: 120}}
steps:
  - {at: 1s, label: leak, set: {device: efm-shop-101, point: residual_current, value: 350}}
expect:
  - {buzzer: on, after: leak, within: 1s}
  - {event: {kind: alarm-raised}, after: leak, within: 3s}
"""


def issues_of(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(textwrap.dedent(text), HERE)
    return caught.value.issues


def test_a_good_scenario_loads_with_its_steps_and_expectations() -> None:
    scenario = parse_scenario(GOOD, HERE)
    assert scenario.name == "leak"
    assert [(s.at, s.action, s.label) for s in scenario.steps] == [(1.0, "set", "leak")]
    assert [e.kind for e in scenario.expectations] == ["buzzer", "event"]
    assert scenario.expectations[0].within == 1.0
    # Every device of the site is simulated, the listed one with its starting value.
    assert {d.id for d in scenario.devices} == {
        "efm-shop-101",
        "efm-restaurant-102",
        "efm-workshop-201",
    }
    shop = next(d for d in scenario.devices if d.id == "efm-shop-101")
    assert (shop.sim, shop.values) == ("modbus-tcp", {"residual_current": 120.0})
    workshop = next(d for d in scenario.devices if d.id == "efm-workshop-201")
    assert workshop.sim == "rtu-line"
    # The default duration leaves 5 s after the last step.
    assert scenario.duration == 6.0


@pytest.mark.parametrize("path", sorted(LIBRARY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_library_scenario_loads_and_says_what_it_proves(path: Path) -> None:
    scenario = load_scenario(path)
    assert len(scenario.proves) > 30
    assert scenario.expectations


def test_an_unknown_step_is_refused_at_its_line_with_a_suggestion() -> None:
    text = GOOD.replace("set: {device", "sett: {device")
    assert issues_of(text) == [
        f"{HERE}:7: steps[0].sett: unknown step (did you mean 'set'?)",
    ]


def test_a_device_the_site_lacks_is_refused_at_its_line() -> None:
    text = GOOD.replace("  - {id: efm-shop-101, values", "  - {id: efm-shop-999, values")
    issues = issues_of(text)
    assert issues[0].startswith(f"{HERE}:5: devices[0].id: the site has no device 'efm-shop-999'")


def test_a_step_on_a_device_nobody_simulates_is_refused() -> None:
    text = GOOD.replace("set: {device: efm-shop-101", "set: {device: smoke-1")
    assert issues_of(text) == [
        f"{HERE}:7: steps[0].set.device: no simulated device 'smoke-1'",
    ]


def test_a_point_the_model_lacks_and_a_fault_the_simulator_lacks_are_refused() -> None:
    text = GOOD.replace("point: residual_current, value: 350}}", "point: leakage, value: 350}}")
    text += "  - {at: 2s, fault: {device: efm-shop-101, kind: crc}}\n".join(["", ""])
    text = text.replace(
        "expect:",
        "  - {at: 2s, fault: {device: efm-shop-101, kind: crc}}\nexpect:",
    )
    issues = issues_of(text)
    assert f"{HERE}:7: steps[0].set.point: model efm-ref has no point 'leakage'" in issues
    assert any(
        i.startswith(f"{HERE}:8: steps[1].fault.kind: the modbus-tcp simulator's faults are")
        for i in issues
    ), issues


def test_malformed_expectations_are_refused_each_at_its_line() -> None:
    text = GOOD.replace(
        "  - {event: {kind: alarm-raised}, after: leak, within: 3s}\n",
        "  - {event: {kind: alarm-raised}, after: lek, within: 3s}\n"
        "  - {buzzer: loud, within: 1s}\n"
        "  - {buzzer: on}\n"
        "  - {buzer: on, within: 1s}\n"
        "  - {count: {kind: alarm-raised}}\n"
        "  - {transition: {kind: raised}}\n",
    )
    issues = issues_of(text)
    assert issues == [
        f"{HERE}:10: expect[1].after: no step labelled 'lek' (did you mean 'leak'?)",
        f"{HERE}:11: expect[2].buzzer: on or off, not 'loud'",
        f"{HERE}:12: expect[3].within: missing: a duration like 2s or 500ms",
        f"{HERE}:13: expect[4]: an expectation has exactly one of buzzer, led, event, reading, "
        "no_event, no_buzzer, count, no_gaps, nothing_lost, transition, no_transition, found 0 "
        "(did you mean 'buzzer'?)",
        f"{HERE}:14: expect[5]: a count needs equals, at_least or at_most",
        f"{HERE}:15: expect[6].transition: transition is for replay scenarios",
    ]


def test_every_mistake_is_reported_at_once_in_line_order() -> None:
    text = """\
    name: ""
    proves: x
    site: sites/block.yaml
    steps:
      - {at: soon, set: {device: efm-shop-101, point: residual_current, value: high}}
      - {at: 2s, broker: sideways}
    expect: []
    colour: red
    """
    issues = issues_of(text)
    assert [i.split(": ", 2)[0] for i in issues] == [
        f"{HERE}:1",
        f"{HERE}:5",
        f"{HERE}:5",
        f"{HERE}:6",
        f"{HERE}:7",
        f"{HERE}:8",
    ], issues
    assert f"{HERE}:8: colour: unknown key" in issues


def test_an_inline_site_is_checked_with_the_scenario_lines() -> None:
    text = """\
    name: inline
    proves: an inline site is checked
    site:
      gateway: {id: gw-1, site: {name: x, district: y, address: z, latitude: 1, longitude: 2}}
      buses:
        - {id: lan, kind: modbus-tcp, host: 127.0.0.1, port: 502}
      devices:
        - id: efm-1
          model: efm-ref
          bus: lan
          address: 300
          location: {building: b, floor: "1", room: r, venue_type: shop}
      outputs: {buzzer: {pin: 17}}
      uplink: {brokers: ["mqtt://127.0.0.1:1883"]}
      buffer: {path: outbox.sqlite}
    expect:
      - {no_gaps: true}
    """
    issues = issues_of(text)
    assert len(issues) == 1
    assert issues[0].startswith(f"{HERE}:11: site.devices[0].address: "), issues


def test_a_site_file_that_is_wrong_is_reported_with_its_own_file_and_line(
    tmp_path: Path,
) -> None:
    site = yaml.safe_load((LIBRARY / "sites" / "block.yaml").read_text())
    site["devices"][0]["bus"] = "nowhere"
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    scenario = tmp_path / "s.yaml"
    scenario.write_text(GOOD.replace("sites/block.yaml", "site.yaml"))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(scenario)
    assert any(
        i.startswith(f"{scenario}:3: site: the site file is not valid: {tmp_path / 'site.yaml'}:")
        and "nowhere" in i
        for i in caught.value.issues
    ), caught.value.issues


def test_yaml_syntax_errors_and_unreadable_files_name_the_line(tmp_path: Path) -> None:
    assert issues_of("name: [unclosed\nproves: x\n")[0].startswith(f"{HERE}:2: YAML:")
    assert issues_of("") == [f"{HERE}:1: the file is empty"]
    assert issues_of("- a list\n") == [
        f"{HERE}:1: a scenario is a mapping of name, proves, mode, site, devices, steps, "
        "expect, duration, seed, readings, phones"
    ]
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ScenarioError, match=r"missing.yaml:1: cannot read the file"):
        load_scenario(missing)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(binary)


def test_a_duration_shorter_than_the_timeline_or_too_long_for_ci_is_refused() -> None:
    assert issues_of(GOOD + "duration: 500ms\n") == [
        f"{HERE}:11: duration: must be longer than the last step's time (1 s)"
    ]
    assert issues_of(GOOD + "duration: 2h\n") == [
        f"{HERE}:11: duration: at most {MAX_DURATION:g} s: scenarios are for CI"
    ]


def test_replay_scenarios_take_readings_and_transition_expectations() -> None:
    text = """\
    name: drift
    proves: drift alarms
    mode: replay
    site: sites/tilt-stair.yaml
    readings:
      - {device: tilt-stair-3f, point: pitch_displacement, start: 2025-01-01, every: 1h,
         for: 10d, value: {ramp: {from: 1, to: 2}}}
      - {device: tilt-9, point: pitch, start: yesterday, every: 1h, for: 1d, value: 1}
    steps:
      - {at: 1s, broker: down}
    expect:
      - {transition: {kind: raised}}
      - {buzzer: on, within: 1s}
    """
    issues = issues_of(text)
    assert issues == [
        f"{HERE}:8: readings[1].device: the site has no device 'tilt-9'",
        f"{HERE}:9: steps: replay scenarios take readings, not steps",
        f"{HERE}:13: expect[1].buzzer: buzzer is for live scenarios",
    ]


def test_aliases_cannot_blow_the_loader_up() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]\n"
    issues = issues_of(bomb)
    assert "too large or too deep" in issues[0]


# A fuzz of the loader: whatever the text, the answer is a Scenario or a ScenarioError.

_words = st.sampled_from(
    [
        "name",
        "proves",
        "site",
        "sites/block.yaml",
        "steps",
        "expect",
        "at",
        "1s",
        "set",
        "device",
        "efm-shop-101",
        "point",
        "residual_current",
        "value",
        "350",
        "buzzer",
        "on",
        "within",
        "after",
        "label",
        "leak",
        "mode",
        "replay",
        "readings",
        "fault",
        "kind",
        "silent",
        "gateway",
        "kill",
        "-1",
        "nan",
        "1e400",
        "~",
        "true",
        "",
    ]
)
_values: st.SearchStrategy[object] = st.recursive(
    st.one_of(_words, st.integers(-5, 1000), st.floats(allow_nan=True), st.booleans(), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_words, inner, max_size=5)
    ),
    max_leaves=25,
)


def _check(text: str) -> None:
    issues: list[str] = []
    try:
        result = parse_scenario(text, HERE)
    except ScenarioError as exc:
        issues = exc.issues
        assert issues
    else:
        assert isinstance(result, Scenario)
    assert all(issue.startswith(f"{HERE}:") for issue in issues), issues
    # Every refusal is in the loader's words, never pydantic's.
    assert not any("Input should" in i or "validation error" in i for i in issues), issues


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.dictionaries(_words, _values, max_size=6),
    keep=st.lists(st.sampled_from(["name", "proves", "site", "steps", "expect"]), max_size=5),
)
def test_fuzz_structures_give_a_scenario_or_a_scenario_error(
    base: dict[str, object], keep: list[str]
) -> None:
    good = yaml.safe_load(GOOD)
    document = {**{k: good[k] for k in keep}, **base}
    _check(yaml.safe_dump(document))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#\n 1s%@,")), max_size=80))
def test_fuzz_text_gives_a_scenario_error(text: str) -> None:
    _check(text)


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, len(GOOD)), junk=st.text(max_size=6))
def test_fuzz_damaged_good_files_give_a_scenario_or_a_scenario_error(cut: int, junk: str) -> None:
    _check(GOOD[:cut] + junk + GOOD[cut:])


def test_a_value_the_simulator_cannot_serve_is_refused_at_its_line() -> None:
    text = GOOD.replace("{residual_current: 120}", "{residual_current: -5}").replace(
        "value: 350}}", "value: 70000}}"
    )
    text = text.replace(
        "expect:",
        "  - {at: 2s, ramp: {device: efm-shop-101, point: voltage_a, from: 230, to: 1000000.0, "
        "over: 1s}}\nexpect:",
    )
    issues = issues_of(text)
    assert [i.split(": the simulator")[0] for i in issues] == [
        f"{HERE}:5: devices[0].values.residual_current",
        f"{HERE}:7: steps[0].set",
        f"{HERE}:8: steps[1].ramp",
    ]
    assert "cannot serve 70000: residual_current=70000.0 mA is out of range" in issues[1]


def test_phones_script_only_numbers_the_site_calls_with_known_behaviours() -> None:
    smoke = (LIBRARY / "smoke-call.yaml").read_text()
    scenario = parse_scenario(smoke, HERE)
    assert scenario.phones == {"+8613800000011": "no-answer", "+8613800000012": "answer"}
    wrong = smoke.replace('"+8613800000012": answer', '"+8613800000012": hangs-up').replace(
        '"+8613800000011"', '"+8613800000099"'
    )
    assert issues_of(wrong) == [
        f"{HERE}:11: phones.+8613800000099: not a number the site's sms.calls calls "
        "(quote it: '+86...')",
        f"{HERE}:12: phones.+8613800000012: one of answer, busy, no-carrier, no-answer, "
        "error, silent, not 'hangs-up'",
    ]
    assert issues_of(GOOD + "phones: {'+8613800000011': answer}\n")[0].startswith(
        f"{HERE}:11: phones.+8613800000011: not a number"
    )


def test_a_label_reference_that_is_a_list_or_a_mapping_is_refused_at_its_line() -> None:
    # Once a TypeError (unhashable) out of the loader.
    text = GOOD.replace("{buzzer: on, after: leak,", "{buzzer: on, after: [leak],")
    assert issues_of(text) == [
        f"{HERE}:9: expect[0].after: a step label (a word like 'leak-on'), not ['leak']"
    ]
    assert issues_of(GOOD.replace("after: leak, within: 3s", "after: {}, within: 3s")) == [
        f"{HERE}:10: expect[1].after: a step label (a word like 'leak-on'), not {{}}"
    ]


def test_a_step_that_could_never_run_is_refused_not_dropped() -> None:
    # A toggle every 0 s once vanished from the timeline without a word.
    toggle = (
        "  - {at: 2s, toggle: {device: efm-shop-101, point: residual_current, values: [1, 2], "
        "every: 0s, for: 1s}}\nexpect:"
    )
    assert issues_of(GOOD.replace("expect:", toggle)) == [
        f"{HERE}:8: steps[1].toggle.every: must be longer than 0 s"
    ]
    silent = "  - {at: 2s, silent: ~}\nexpect:"
    assert issues_of(GOOD.replace("expect:", silent)) == [
        f"{HERE}:8: steps[1].silent: must name a simulated device, not None"
    ]


def test_a_readings_device_that_is_not_a_name_is_refused_at_its_line() -> None:
    text = """\
    name: drift
    proves: drift alarms
    mode: replay
    site: sites/tilt-stair.yaml
    readings:
      - {device: [tilt-stair-3f], point: pitch, start: 2025-01-01, every: 1h, for: 1d, value: 1}
    expect:
      - {no_transition: {kind: raised}}
    """
    assert issues_of(text) == [
        f"{HERE}:6: readings[0].device: the site has no device ['tilt-stair-3f']"
    ]
