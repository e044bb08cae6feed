"""Thresholds with units and the point catalogue: a unit is converted or refused, never
dropped; a rule's point is checked on every device kind; the JSON Schema takes exactly the
threshold forms the loader takes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from drivers.catalog import GPIO_MODELS, SERIAL_MODELS, SERIAL_POINTS, device_points, points_of
from drivers.modbus import known_models
from drivers.types import Reading
from drivers.units import UnitError, convert
from edge.config import ConfigError, load_site
from edge.config.loader import report_config
from edge.config.model import OverLimitRule, SensorFaultRule, SustainedRule
from edge.config.schema import site_json_schema
from edge.config.thresholds import PATTERN as THRESHOLD_PATTERN
from edge.config.thresholds import THRESHOLD_KEYS, parse_quantity
from edge.replay import replay
from edge.rules import Transition

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ROOT / "config" / "example-site.yaml",
    *sorted((ROOT / "hil/scenarios/sites").glob("*.yaml")),
]

SITE = """gateway: {id: gw-1, site: {name: Block 3}}
buses:
  - {id: lan, kind: modbus-tcp, host: 127.0.0.1, port: 1502}
  - {id: uart, kind: serial, port: 'socket://127.0.0.1:7000'}
  - {id: pins, kind: gpio}
devices:
  - id: efm-1
    model: efm-ref
    bus: lan
    address: 1
    location: &here {building: B3, floor: "1", room: r, venue_type: shop}
  - {id: tilt-1, model: witmotion-uart, bus: uart, gauge_length: 1.0, location: *here}
  - {id: pir-1, model: pir, bus: pins, pin: 5, location: *here}
rules:
RULES
outputs: {pin_factory: mock, buzzer: {pin: 17}}
uplink: {brokers: ["mqtt://127.0.0.1:1883"]}
buffer: {path: outbox.sqlite}
"""


def write(tmp_path: Path, rules: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.replace("RULES", rules.rstrip("\n")))
    return path


def refused(tmp_path: Path, rules: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_site(write(tmp_path, rules), known_models=known_models())
    return [f"{issue.field}: {issue.message}" for issue in caught.value.issues]


# --- the point catalogue -----------------------------------------------------------------------


def test_a_misspelt_point_is_refused_on_a_site_with_a_pir(tmp_path: Path) -> None:
    (issue,) = refused(
        tmp_path,
        "  - {id: rc, kind: over-limit, point: residual_curent, raise_at: 300, clear_below: 270}",
    )
    assert issue.startswith("rules[0].point: no device this rule judges has a point")
    assert "did you mean 'residual_current'?" in issue


def test_every_point_of_a_serial_or_gpio_sensor_is_checked(tmp_path: Path) -> None:
    (issue,) = refused(
        tmp_path,
        "  - {id: still, kind: alarm-bits, point: presense, devices: [pir-1]}",
    )
    assert "device 'pir-1' (model pir) has no point 'presense'; did you mean 'presence'?" in issue
    (issue,) = refused(
        tmp_path,
        "  - {id: t, kind: sustained, point: pitch_displacement, above: 4 mm, duration: 1h,"
        " devices: [efm-1, tilt-1]}",
    )
    # A devices entry naming a device without the point, with the points it has.
    assert issue.startswith("rules[0].point: device 'efm-1' (model efm-ref) has no point")
    assert "its points: alarm_bits, current_a" in issue


def test_the_catalogue_knows_every_model_and_the_gauged_displacement() -> None:
    # A UART or GPIO sensor added later cannot be left out of the catalogue.
    assert set(SERIAL_POINTS) == {*SERIAL_MODELS, *GPIO_MODELS}
    for model in [*known_models(), *SERIAL_POINTS]:
        points = points_of(model)
        assert points, model
    names = [p.name for p in device_points("witmotion-uart", gauged=True) or ()]
    assert names == ["roll", "roll_displacement", "pitch", "pitch_displacement", "yaw"]
    residual = {p.name: p for p in points_of("efm-ref") or ()}["residual_current"]
    assert (residual.unit, residual.plausible) == ("mA", (30.0, 1000.0))


# --- units -------------------------------------------------------------------------------------


def test_units_of_the_same_dimension_are_converted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  - {id: rc, kind: over-limit, point: residual_current, raise_at: 0.5 A,
     clear_below: 270mA, escalate: {at: 0.9 A}, overrides: {efm-1: {raise_at: 0.4 A}}}
  - {id: tilt, kind: sustained, point: pitch_displacement, above: 0.4 cm, duration: 1h}
  - {id: volts, kind: under-limit, point: voltage_a, raise_at: 0.198 kV, clear_above: 205}
  - {id: stuck, kind: sensor-fault, point: voltage_a, stuck_tolerance: 500 mV, stuck_for: 1h}
  - {id: tilt-cm, kind: sustained, point: pitch_displacement, unit: cm, above: 0.5, duration: 1h}
""",
    )
    config = load_site(path, known_models=known_models())
    rc, tilt, volts, stuck, tilt_cm = config.rules
    assert isinstance(rc, OverLimitRule)
    assert (rc.raise_at, rc.clear_below, rc.unit) == (500.0, 270.0, "mA")
    assert rc.escalate is not None
    assert rc.escalate.at == 900.0
    over = rc.for_device("efm-1")
    assert (over.raise_at, over.unit) == (400.0, "mA")
    assert isinstance(tilt, SustainedRule)
    assert (tilt.above, tilt.unit) == (4.0, "mm")
    assert volts.raise_at == 198.0  # type: ignore[union-attr]
    assert isinstance(stuck, SensorFaultRule)
    assert stuck.stuck_tolerance == 0.5
    assert isinstance(tilt_cm, SustainedRule)
    assert (tilt_cm.above, tilt_cm.unit) == (5.0, "mm")


def test_check_config_prints_each_conversion_as_a_note(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "  - {id: tilt, kind: sustained, point: pitch_displacement, above: 0.4 cm, duration: 1h}",
    )
    out = __import__("io").StringIO()
    status, _ = report_config(str(path), out, known_models=known_models(), strict=True)
    assert status == 0  # a note is never an error, even with --strict
    line = out.getvalue().splitlines()[0]
    row = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "0.4 cm" in text)
    assert line.startswith(f"{path}:{row}:60: ")
    assert line.endswith(": note: rules[0].above: 0.4 cm -> 4 mm")


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        ("0.4 mmm", "unknown unit 'mmm'; the point is in 'mm' (units of the same kind: m, cm"),
        ("4 mm mm", "'4 mm mm' is not a threshold: write a number and at most one unit"),
        ("4 mA", "'mA' is a unit of current, but the point is in 'mm'"),
        ("\uff13 mm", "has digits or signs that are not ASCII"),
        ("nan mm", "'nan mm' is not a threshold"),
        ("-4 cm", "greater than 0; found -40.0 (written -4 cm -> -40 mm)"),
    ],
)
def test_a_unit_that_cannot_be_converted_is_refused(
    tmp_path: Path, threshold: str, expected: str
) -> None:
    field = "change" if threshold.startswith("-") else "above"
    rule = (
        f"  - {{id: t, kind: sudden-change, point: pitch_displacement, change: {threshold},"
        " window: 1m}"
        if field == "change"
        else f"  - {{id: t, kind: sustained, point: pitch_displacement, above: {threshold},"
        " duration: 1h}"
    )
    found = refused(tmp_path, rule)
    assert len(found) == 1, found
    assert found[0].startswith(f"rules[0].{field}: ")
    assert expected in found[0], found[0]


def test_fahrenheit_is_refused_and_never_scaled(tmp_path: Path) -> None:
    (issue,) = refused(
        tmp_path,
        "  - {id: hot, kind: over-limit, point: temperature_1, raise_at: 160 degF,"
        " clear_below: 60}",
    )
    assert issue == "rules[0].raise_at: temperatures are in degrees Celsius (°C); convert the value"
    with pytest.raises(UnitError):
        convert(1.0, "°F", "°C")


def test_negative_thresholds_with_units_convert_where_negative_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "  - {id: lean, kind: under-limit, point: pitch, raise_at: -0.5 °, clear_above: -0.4deg}",
    )
    (rule,) = load_site(path, known_models=known_models()).rules
    assert (rule.raise_at, rule.clear_above, rule.unit) == (-0.5, -0.4, "°")  # type: ignore[union-attr]


# --- the schema takes what the loader takes ----------------------------------------------------


def _threshold_schema_validator() -> Draft202012Validator:
    schema = site_json_schema()
    node = schema["$defs"]["OverLimitRule"]["properties"]["raise_at"]
    return Draft202012Validator(node)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_schema_accepts_every_example_site(example: Path) -> None:
    data = yaml.safe_load(example.read_text())
    errors = list(Draft202012Validator(site_json_schema()).iter_errors(data))
    try:
        load_site(example, known_models=known_models())
    except ConfigError:
        pytest.skip("a site that is broken on purpose")
    assert errors == [], [e.message for e in errors]


def test_the_schema_accepts_a_threshold_with_its_unit() -> None:
    schema = site_json_schema()
    data = yaml.safe_load((ROOT / "config" / "example-site.yaml").read_text())
    data["rules"][0]["raise_at"] = "300 mA"
    data["rules"][0]["clear_below"] = "0.27 A"
    assert list(Draft202012Validator(schema).iter_errors(data)) == []


_UNITS = st.sampled_from(["", "mA", "A", " mA", "cm", "°C", "µA", "mA A", "\uff13", "x y"])
_NUMBERS = st.one_of(
    st.integers(-10_000, 10_000).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.sampled_from(
        ["nan", "inf", "\uff13\uff10\uff10", "1e3", ".5", "5.", "+3", "--3", "3,5", ""]
    ),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(number=_NUMBERS, space=st.sampled_from(["", " ", "  "]), unit=_UNITS)
def test_the_schema_and_the_loader_agree_on_threshold_strings(
    number: str, space: str, unit: str
) -> None:
    text = f"{number}{space}{unit}"
    try:
        value, _ = parse_quantity(text)
        loader_takes = math.isfinite(value)
    except ValueError:
        loader_takes = False
    schema_takes = _threshold_schema_validator().is_valid(text)
    assert schema_takes == loader_takes, (text, json.dumps(text))


def test_every_threshold_field_of_the_schema_takes_a_unit() -> None:
    schema = site_json_schema()
    seen = 0
    for name, definition in schema["$defs"].items():
        for key, node in definition.get("properties", {}).items():
            if key in THRESHOLD_KEYS or (name == "Escalation" and key == "at"):
                options = node.get("anyOf", [])
                flat = [o for option in options for o in option.get("anyOf", [option])]
                assert any(o.get("pattern") == THRESHOLD_PATTERN for o in flat), (name, key)
                seen += 1
    assert seen >= 10


def test_the_rules_judge_the_converted_threshold(tmp_path: Path) -> None:
    """0.5 A on a point in mA alarms at 500 mA, not at 0.5 mA: the unit is never dropped."""
    path = write(
        tmp_path,
        "  - {id: rc, kind: over-limit, point: residual_current, raise_at: 0.5 A,"
        " clear_below: 0.45 A}",
    )
    config = load_site(path, known_models=known_models())
    found: list[Transition] = []
    values = [120.0, 400.0, 499.0, 900.0, 300.0]
    readings = [
        Reading("efm-1", "residual_current", v, "mA", 1_700_000_000.0 + n, float(n))
        for n, v in enumerate(values)
    ]
    replay(config, readings, found.append)
    assert [(t.kind, t.value) for t in found] == [
        ("raised", 900.0),
        ("cleared", 300.0),
    ]
