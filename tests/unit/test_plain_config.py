"""The running gateway's plain site config (edge/config/plain.py) against the site model.

The plain config is built from what ``python -m edge.config.compile`` hands over; it must be
the model's config field by field, for every site the project ships or tests with, and its
rules must hash exactly as the model's (edge/rules/engine.py ``_rule_hash``): the stored
alarm states are keyed by those hashes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from drivers import Reading
from drivers.modbus import known_models
from edge.config import compiled, loader, model
from edge.config.compile import describe, tree_of
from edge.config.issues import ConfigError
from edge.config.plain import Plain, build_classes, from_tree
from edge.rules.engine import LATER_OPTIONS, RuleEngine, _rule_hash
from edge.rules.tuning import storm_tightened, with_threshold
from tests.benchmarks.drivers import _site as reference_site
from tests.integration.site import site_dict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"
SCENARIO_SITES = sorted((ROOT / "hil" / "scenarios" / "sites").glob("*.yaml"))
#: Rules and a rule state written by the gateway while it held the site model in process.
BEFORE = ROOT / "tests" / "fixtures" / "rule_state_before_plain_config.json"

CLASSES = build_classes(describe())


def plain_of(value: BaseModel) -> Any:
    return from_tree(tree_of(value), CLASSES)


def same(plain: Any, modelled: Any, where: str = "config") -> Iterator[str]:
    """Every difference between ``plain`` and ``modelled``, by place."""
    if isinstance(modelled, BaseModel):
        if type(plain).__name__ != type(modelled).__name__:
            yield f"{where}: {type(plain).__name__} for {type(modelled).__name__}"
            return
        if list(plain.model_fields) != list(type(modelled).model_fields):
            yield f"{where}: fields {list(plain.model_fields)}"
            return
        if plain.model_dump_json() != modelled.model_dump_json():
            yield f"{where}: JSON {plain.model_dump_json()}"
        for name in type(modelled).model_fields:
            yield from same(getattr(plain, name), getattr(modelled, name), f"{where}.{name}")
    elif isinstance(modelled, list):
        if not isinstance(plain, list) or len(plain) != len(modelled):
            yield f"{where}: {plain!r}"
            return
        for index, (a, b) in enumerate(zip(plain, modelled, strict=True)):
            yield from same(a, b, f"{where}[{index}]")
    elif isinstance(modelled, dict):
        if not isinstance(plain, dict) or list(plain) != list(modelled):
            yield f"{where}: {plain!r}"
            return
        for key in modelled:
            yield from same(plain[key], modelled[key], f"{where}.{key}")
    elif type(plain) is not type(modelled) or repr(plain) != repr(modelled):
        yield f"{where}: {plain!r} ({type(plain).__name__}) for {modelled!r}"


def _sites(tmp_path: Path) -> list[Path]:
    reference = tmp_path / "reference"
    reference.mkdir()
    fixture = site_dict(tmp_path, broker_url="mqtt://127.0.0.1:1883", tcp_port=502, rtu_link="x")
    fixture_path = tmp_path / "fixture.yaml"
    fixture_path.write_text(yaml.safe_dump(fixture, sort_keys=False), encoding="utf-8")
    return [
        EXAMPLE,
        # The 1,000 readings/s site of the drivers benchmark: 50 monitors of 20 points.
        reference_site(
            reference, 1502, "mqtt://127.0.0.1:1883", devices=50, interval=1.0, policy=None
        ),
        fixture_path,
        *SCENARIO_SITES,
    ]


def _issues(load: Any, path: Path) -> list[Any] | None:
    try:
        load(path, known_models=known_models())
    except ConfigError as exc:
        return exc.issues
    return None


def _tuned(rule: Any, field: str, value: float) -> Any:
    """The tuned rule, or the words it was refused with."""
    try:
        return with_threshold(rule, field, value)
    except ValueError as exc:
        return str(exc)


def test_the_plain_config_is_the_models_field_by_field_on_every_shipped_site(
    tmp_path: Path,
) -> None:
    models = known_models()
    for path in _sites(tmp_path):
        refused = _issues(loader.load_site_checked, path)
        if refused is not None:
            # A broken site (a scenario's): the same issues, word for word, line for line.
            assert _issues(compiled.load_site_checked, path) == refused
            continue
        modelled, warned = loader.load_site_checked(path, known_models=models)
        plain, warnings = compiled.load_site_checked(path, known_models=models)
        assert not isinstance(plain, BaseModel)
        assert list(same(plain, modelled)) == [], path
        assert warnings == warned, path
        # What the run path asks of the config besides its fields.
        # Every point with its own policy, in the same order (handed over as shared policies).
        policies = list(plain.storage_policies().items())
        assert policies == list(modelled.storage_policies().items()), path
        assert [repr(p) for _, p in policies] == [
            repr(p) for p in modelled.storage_policies().values()
        ], path
        for rule, plain_rule in zip(modelled.rules, plain.rules, strict=True):
            assert _rule_hash(plain_rule) == _rule_hash(rule), (path, rule.id)
            if isinstance(rule, model.CompositeRule):
                assert list(same(plain_rule.terms(), rule.terms())) == []
            if not hasattr(rule, "for_device"):
                continue
            for device in modelled.devices:
                mine, theirs = plain_rule.for_device(device.id), rule.for_device(device.id)
                assert list(same(mine, theirs)) == [], (path, rule.id, device.id)
                assert _rule_hash(mine) == _rule_hash(theirs)
        for point, plain_point in zip(modelled.derived_points, plain.derived_points, strict=True):
            for device in modelled.devices:
                assert plain_point.gauge_for(device.id) == point.gauge_for(device.id)


def test_a_plain_object_is_frozen_slotted_and_copies_like_a_model() -> None:
    config = loader.load_site(EXAMPLE, known_models=known_models())
    plain = plain_of(config)
    rule = plain.rules[0]
    with pytest.raises(AttributeError):
        rule.raise_at = 1.0
    with pytest.raises(AttributeError):
        rule.__dict__  # noqa: B018 (slots: no instance dict)
    assert rule == config.rules[0]
    assert config.rules[0] == rule
    assert rule != plain.rules[1]
    moved = rule.model_copy(update={"raise_at": 999.0})
    assert moved.raise_at == 999.0
    assert rule.raise_at == getattr(config.rules[0], "raise_at")  # noqa: B009
    assert moved.model_dump() == config.rules[0].model_copy(update={"raise_at": 999.0}).model_dump()
    assert plain.devices[0].location.model_dump() == config.devices[0].location.model_dump()
    assert hash(rule) == hash(plain_of(config.rules[0]))
    with pytest.raises(TypeError, match="no field"):
        type(rule)(nonsense=1)


def test_threshold_tuning_refuses_and_takes_the_same_values_in_both_forms() -> None:
    config = loader.load_site(EXAMPLE, known_models=known_models())
    refusals = 0
    for rule in config.rules:
        if rule.kind not in ("over-limit", "under-limit", "abnormal"):
            continue
        plain = plain_of(rule)
        fields = ["raise_at", "clear_below", "escalate_at"]
        if rule.kind == "abnormal":
            fields = ["sensitivity", "min_deviation"]
        for field in fields:
            for value in (-5.0, 0.0, 0.5, 100.0, 150.0, 1e16):
                expected, got = _tuned(rule, field, value), _tuned(plain, field, value)
                if isinstance(expected, str):
                    refusals += 1
                    assert got == expected  # refused in the same words
                else:
                    assert isinstance(got, Plain)
                    assert list(same(got, expected)) == []
        if rule.kind == "over-limit":
            tightened = storm_tightened(plain, 0.5)
            assert list(same(tightened, storm_tightened(rule, 0.5))) == []
    assert refusals > 0


def test_rule_state_saved_before_the_plain_config_resumes_with_it(tmp_path: Path) -> None:
    saved = json.loads(BEFORE.read_text(encoding="utf-8"))
    path = tmp_path / "site.yaml"
    path.write_text(saved["site"], encoding="utf-8")
    config = compiled.load_site(path, known_models=known_models())
    assert not isinstance(config, BaseModel)
    for rule in config.rules:
        assert _rule_hash(rule) == saved["hashes"][rule.id], rule.id
        for device in config.devices:
            if hasattr(rule, "for_device"):
                digest = _rule_hash(rule.for_device(device.id))
                assert digest == saved["hashes"][f"{rule.id}/{device.id}"]
    engine = RuleEngine(config.rules, devices=config.devices, derived=config.derived_points)
    values = {key: (schema, value) for key, (schema, value) in saved["state"].items()}
    assert engine.load_state(values) == []  # nothing dropped as "rule changed"
    assert [list(alarm) for alarm in engine.active_alarms()] == saved["active"]
    # The judges take their stored windows over: the raised alarm stays raised, unrepeated.
    later = 1_760_000_010.0
    again = engine.evaluate(Reading("efm-shop-101", "residual_current", 350.0, "mA", later, 10.0))
    assert [t for t in again if t.kind == "raised"] == []
    assert ("tiny", "efm-shop-101") in engine.active_alarms()


# -- the fingerprints, byte for byte, on random rules -------------------------------------------

SPECIAL = [1e-07, 1e16, -0.0, 100.0, 1.234e-05, 5e-324, 0.1, 1e22, -2.5e-5, 123456789.125]
numbers = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(10**6), 10**6).map(float),
)
words = st.text(max_size=12)
durations = st.sampled_from(["500ms", "2s", "90s", "5m", "1h", "2d"])
ids = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
common = {
    "id": ids,
    "point": st.sampled_from(["residual_current", "temperature_1", "é-point"]),
    "unit": st.none() | words,
    "severity": st.sampled_from(["fire", "critical", "major", "minor"]),
    "latch": st.booleans(),
    "devices": st.none() | st.lists(ids, max_size=3),
}


#: Every kind of rule the site model has, from the model itself (a new kind is drawn too).
RULE_KINDS = [
    get_args(kind.model_fields["kind"].annotation)[0] for kind in get_args(get_args(model.Rule)[0])
]


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(RULE_KINDS))
    rule: dict[str, Any] = {"kind": kind, "id": draw(ids)}
    if kind not in ("device-offline", "composite"):
        rule.update({key: draw(value) for key, value in common.items()})
    if kind in ("over-limit", "under-limit"):
        limit, gap = draw(numbers), abs(draw(numbers))
        other = limit - gap if kind == "over-limit" else limit + gap
        assume(math.isfinite(other))
        rule["raise_at"] = limit
        rule["clear_below" if kind == "over-limit" else "clear_above"] = other
        if draw(st.booleans()):
            step = abs(draw(numbers)) or 1.0
            at = limit + step if kind == "over-limit" else limit - step
            assume(math.isfinite(at) and at != limit)
            rule["escalate"] = {"at": at, "severity": draw(common["severity"])}
        rule["compare"] = draw(
            st.sampled_from(
                ["at-least", "more-than"] if kind == "over-limit" else ["at-most", "less-than"]
            )
        )
        if draw(st.booleans()):
            rule["debounce"] = draw(
                st.sampled_from([{"readings": 3}, {"duration": "10s"}, {"readings": 1}])
            )
        if draw(st.booleans()):
            rule["overrides"] = {draw(ids): {"severity": draw(common["severity"])}}
    elif kind == "sudden-change":
        size = abs(draw(numbers))
        assume(size > 0)
        rule["change" if draw(st.booleans()) else "change_percent"] = size
        rule["window"] = draw(durations)
    elif kind == "abnormal":
        rule["sensitivity"] = draw(st.floats(min_value=1e-9, max_value=100))
        rule["min_deviation"] = abs(draw(numbers))
        rule["clear_ratio"] = draw(st.floats(min_value=1e-9, max_value=1))
    elif kind == "sustained":
        rule["above" if draw(st.booleans()) else "below"] = draw(numbers)
        rule.update(draw(st.sampled_from([{"hours": 3}, {"days": 2}, {"for": "7d"}])))
    elif kind == "alarm-bits":
        rule["bits"] = draw(st.none() | st.lists(st.integers(0, 15), max_size=4))
    elif kind == "sensor-fault":
        rule["stuck_for"] = draw(durations)
        rule["stuck_tolerance"] = abs(draw(numbers))
    elif kind == "device-offline":
        rule["after"] = draw(durations)
    else:
        rule["any"] = draw(st.lists(ids, min_size=1, max_size=3))
    return rule


RULE = TypeAdapter(model.Rule)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(rules(), st.lists(st.sampled_from(LATER_OPTIONS), max_size=3))
def test_a_plain_rule_hashes_byte_for_byte_as_the_model(
    written: dict[str, Any], excluded: list[str]
) -> None:
    try:
        rule = RULE.validate_python(written)
    except ValidationError:
        reject()
    plain = plain_of(rule)
    assert _rule_hash(plain) == _rule_hash(rule)
    left_out = set(excluded)
    assert plain.model_dump_json(exclude=left_out) == rule.model_dump_json(exclude=left_out)
    assert plain.model_dump() == rule.model_dump()
