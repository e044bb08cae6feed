"""Rules in the site file: every kind is accepted as documented, every mistake is named with
its file, line and field by check-config."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus import known_models
from edge.config import ConfigError, ConfigIssue, load_site
from edge.config.model import OverLimitRule, SustainedRule

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
MARK = "\noutputs:"


def site_with(tmp_path: Path, rules: str, extra: str = "") -> tuple[Path, str]:
    """The example site with ``rules`` (YAML list items, indented 2) appended to its rules."""
    text = EXAMPLE.read_text().replace(MARK, rules.rstrip("\n") + "\n" + extra + MARK, 1)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path, text


def issues(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_site(path, known_models=known_models())
    return caught.value.issues


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def only(path: Path, text: str, needle: str) -> ConfigIssue:
    found = issues(path)
    assert len(found) == 1, found
    assert found[0].line == line_of(text, needle), found[0]
    assert found[0].file == str(path)
    return found[0]


def test_every_kind_is_accepted(tmp_path: Path) -> None:
    path, _ = site_with(
        tmp_path,
        """  - id: undervoltage
    kind: under-limit
    point: voltage_a
    raise_at: 198 V
    clear_above: 205 V
    debounce: {duration: 5s}
    severity: major
  - id: leak-jump
    kind: sudden-change
    point: residual_current
    change_percent: 50
    window: 1m
  - id: leak-odd
    kind: abnormal
    point: residual_current
    learning: 1d
  - id: hot-for-a-day
    kind: sustained
    point: temperature_1
    above: 55
    days: 1
  - id: detector-bits
    kind: alarm-bits
    point: alarm_bits
    bits: [residual_current, 1]
  - id: stuck
    kind: sensor-fault
    point: temperature_1
    stuck_for: 6h
  - id: offline
    kind: device-offline
    after: 30s
  - id: leak-and-heat
    kind: composite
    all: [residual-current-over-limit, {rule: cable-over-temperature, devices: [efm-shop-101]}]
""",
    )
    config = load_site(path, known_models=known_models())
    kinds = [rule.kind for rule in config.rules]
    assert kinds[2:] == [
        "under-limit",
        "sudden-change",
        "abnormal",
        "sustained",
        "alarm-bits",
        "sensor-fault",
        "device-offline",
        "composite",
    ]
    assert config.gateway.timezone == "UTC"


def test_tilt_rule_of_the_district_with_a_derived_displacement(tmp_path: Path) -> None:
    path, _ = site_with(
        tmp_path,
        """  - id: tilt-two-months
    kind: sustained
    point: displacement
    above: 4 mm
    aggregate: mean
    months: 2
""",
        extra="""derived_points:
  - name: displacement
    kind: displacement
    source: temperature_2
    unit: mm
    gauge_length: 1000
""",
    )
    config = load_site(path, known_models=known_models())
    rule = config.rules[-1]
    assert isinstance(rule, SustainedRule)
    assert (rule.above, rule.unit, rule.months) == (4.0, "mm", 2)


def test_a_displacement_without_a_gauge_length_for_one_of_its_devices(tmp_path: Path) -> None:
    # Else that device's source readings would reach the rules with no length to derive from.
    path, text = site_with(
        tmp_path,
        "",
        extra="""derived_points:
  - name: displacement
    kind: displacement
    source: temperature_2
    unit: mm
    devices: [efm-shop-101, efm-restaurant-102]
    gauge_lengths: {efm-shop-101: 1000}
""",
    )
    issue = only(path, text, "gauge_lengths: {efm-shop-101")
    assert issue.field == "derived_points[0].gauge_lengths"
    assert "device 'efm-restaurant-102' has no gauge length for 'displacement'" in issue.message
    listed = text.replace("{efm-shop-101: 1000}", "{efm-shop-101: 1000, efm-restaurant-102: 3000}")
    path.write_text(listed)
    config = load_site(path, known_models=known_models())
    assert config.derived_points[0].gauge_for("efm-restaurant-102") == 3000.0


def test_rule_refers_to_a_missing_device(tmp_path: Path) -> None:
    path, text = site_with(
        tmp_path,
        """  - id: ghost
    kind: over-limit
    point: residual_current
    devices: [efm-ghost]
    raise_at: 300
    clear_below: 270
""",
    )
    issue = only(path, text, "devices: [efm-ghost]")
    assert issue.field.endswith(".devices[0]")
    assert "unknown device 'efm-ghost'" in issue.message


def test_point_unknown_for_the_devices_model(tmp_path: Path) -> None:
    path, text = site_with(
        tmp_path,
        """  - id: typo
    kind: over-limit
    point: residual_curent
    raise_at: 300
    clear_below: 270
""",
    )
    issue = only(path, text, "point: residual_curent")
    assert issue.field == "rules[2].point"
    assert "'residual_curent'" in issue.message


def test_threshold_in_another_unit_is_converted_before_it_is_judged(tmp_path: Path) -> None:
    path, text = site_with(
        tmp_path,
        """  - id: amps
    kind: over-limit
    point: residual_current
    raise_at: 0.3 A
    clear_below: 0.31 A
""",
    )
    # Both converted to mA (300, 310) and then compared: the hysteresis runs the wrong way.
    issue = only(path, text, "clear_below: 0.31 A")
    assert issue.field == "rules[2].clear_below"
    assert "must not be above raise_at" in issue.message
    path.write_text(text.replace("0.31 A", "270 mA"))
    rule = load_site(path, known_models=known_models()).rules[-1]
    assert isinstance(rule, OverLimitRule)
    assert (rule.raise_at, rule.clear_below, rule.unit) == (300.0, 270.0, "mA")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("raise_at: yes", "expected a number, found true"),
        ("raise_at: three hundred", "'three hundred' is not a threshold: write a number"),
        ("raise_at: .inf", "finite"),
    ],
)
def test_threshold_of_the_wrong_type(tmp_path: Path, line: str, expected: str) -> None:
    path, text = site_with(
        tmp_path,
        f"""  - id: odd
    kind: over-limit
    point: residual_current
    {line}
    clear_below: 270
""",
    )
    found = issues(path)
    assert len(found) == 1, found
    assert found[0].line in (line_of(text, line), line_of(text, "  - id: odd"))
    assert expected in found[0].message


@pytest.mark.parametrize(
    ("body", "needle", "expected"),
    [
        (
            "kind: sudden-change\n    point: temperature_1\n    change: 10\n    window: 0s",
            "window: 0s",
            "must be longer than 0s",
        ),
        (
            "kind: sudden-change\n    point: temperature_1\n    change: 10\n    window: 400d",
            "window: 400d",
            "at most 1d (got 400d)",
        ),
        (
            "kind: sudden-change\n    point: temperature_1\n    change: 10\n    window: 10",
            "window: 10",
            "needs a unit",
        ),
        (
            "kind: sustained\n    point: temperature_1\n    above: 4\n    months: 0",
            "months: 0",
            "greater than or equal to 1",
        ),
        (
            "kind: sustained\n    point: temperature_1\n    above: 4\n    months: 2\n    days: 3",
            "days: 3",
            "exactly one of duration, hours, days, months or for",
        ),
        (
            "kind: sustained\n    point: temperature_1\n    above: 4\n    for: 36h",
            "for: 36h",
            "a rolling window is whole days, e.g. 60d (got 36h)",
        ),
        (
            "kind: abnormal\n    point: temperature_1\n    seasonal: daily\n    learning: 12h",
            "learning: 12h",
            "learning must be at least 1d (got 12h)",
        ),
        (
            "kind: abnormal\n    point: temperature_1\n    seasonal: daily\n    max_samples: 500",
            "max_samples: 500",
            "max_samples / 24 = 20 readings for each hour of the day, fewer than min_samples 30: "
            "raise max_samples to at least 720",
        ),
        (
            "kind: over-limit\n    point: temperature_1\n    raise_at: 70\n    clear_below: 65\n"
            "    debounce: {readings: 0}",
            "debounce:",
            "greater than or equal to 1",
        ),
        (
            "kind: abnormal\n    point: temperature_1\n    baseline: 1d\n    learning: 2d",
            "learning: 2d",
            "learning must not be longer than baseline",
        ),
    ],
)
def test_impossible_windows(tmp_path: Path, body: str, needle: str, expected: str) -> None:
    path, text = site_with(tmp_path, f"  - id: window\n    {body}\n")
    found = issues(path)
    assert len(found) == 1, found
    assert found[0].line == line_of(text, needle)
    assert expected in found[0].message


def test_composite_refers_to_missing_rules_and_rings(tmp_path: Path) -> None:
    path, text = site_with(
        tmp_path,
        """  - id: loop-a
    kind: composite
    all: [loop-b, nowhere]
  - id: loop-b
    kind: composite
    any: [loop-a]
""",
    )
    found = {issue.field: issue for issue in issues(path)}
    assert "unknown rule 'nowhere'" in found["rules[2].all[1]"].message
    assert "ring: loop-a -> loop-b -> loop-a" in found["rules[2].id"].message
    assert found["rules[2].all[1]"].line == line_of(text, "all: [loop-b, nowhere]")


def test_unknown_alarm_bit_and_override_of_an_unknown_device(tmp_path: Path) -> None:
    path, _ = site_with(
        tmp_path,
        """  - id: bits
    kind: alarm-bits
    point: alarm_bits
    bits: [smoke]
  - id: tuned
    kind: over-limit
    point: residual_current
    raise_at: 300
    clear_below: 270
    overrides: {efm-ghost: {raise_at: 400}}
""",
    )
    found = {issue.field: issue.message for issue in issues(path)}
    assert "has no bit 'smoke'" in found["rules[2].bits[0]"]
    assert "unknown device 'efm-ghost'" in found["rules[3].overrides.efm-ghost"]


def test_override_is_validated_like_the_rule(tmp_path: Path) -> None:
    path, _ = site_with(
        tmp_path,
        """  - id: tuned
    kind: over-limit
    point: residual_current
    raise_at: 300
    clear_below: 270
    overrides: {efm-shop-101: {raise_at: 250}, efm-restaurant-102: {point: voltage_a}}
""",
    )
    (issue,) = issues(path)
    assert "cannot be overridden" in issue.message or "must not be above" in issue.message
    rule = OverLimitRule(
        id="r",
        kind="over-limit",
        point="p",
        raise_at=300,
        clear_below=270,
        overrides={"a": {"raise_at": 400}},
    )
    assert rule.for_device("a").raise_at == 400
    assert rule.for_device("b").raise_at == 300


def test_unknown_time_zone(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("  site:\n", "  timezone: Mars/Olympus\n  site:\n", 1)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    (issue,) = issues(path)
    assert issue.field == "gateway.timezone"
    assert "unknown time zone 'Mars/Olympus'" in issue.message


def test_displacement_reported_by_a_tilt_driver_can_be_judged(tmp_path: Path) -> None:
    """A tilt sensor with a gauge length reports <axis>_displacement in mm (drivers/tilt.py)."""
    tilt = """  - id: tilt-stair-3f
    model: witmotion-wt901c485
    bus: lan
    address: 80
    gauge_length: 3
    location: {building: Block 3, floor: "3", room: Stairwell, venue_type: residential}
"""
    rule = """  - id: tilt-two-months
    kind: sustained
    point: pitch_displacement
    above: 4 mm
    months: 2
    devices: [tilt-stair-3f]
"""
    path, text = site_with(tmp_path, rule)
    text = text.replace("\nrules:\n", "\n" + tilt + "\nrules:\n", 1)
    path.write_text(text)
    config = load_site(path, known_models=known_models())
    assert config.rules[-1].kind == "sustained"

    path.write_text(text.replace("point: pitch_displacement", "point: yaw_displacement"))
    (issue,) = issues(path)
    assert "has no point 'yaw_displacement'" in issue.message
    # Another length unit is converted, never dropped: 4 cm is compared as 40 mm.
    path.write_text(text.replace("above: 4 mm", "above: 4 cm"))
    rule_read = load_site(path, known_models=known_models()).rules[-1]
    assert isinstance(rule_read, SustainedRule)
    assert (rule_read.above, rule_read.unit) == (40.0, "mm")
    path.write_text(text.replace("above: 4 mm", "above: 4 mA"))
    (issue,) = issues(path)
    assert "'mA' is a unit of current, but the point is in 'mm'" in issue.message
