"""What a command may change is bounded by the site file: set-threshold within the point's range
and a factor of the file's value; uplink, outputs, command policy and fire/critical rules only
with the engineering key."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus import load_model
from edge.command_bounds import (
    PointRange,
    engineering_reasons,
    reportable_range,
    threshold_refusal,
)
from edge.config import SiteConfig, parse_site

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
DEVICES = ["efm-shop-101", "efm-restaurant-102", "efm-workshop-201"]


def site() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def load(data: dict[str, Any]) -> SiteConfig:
    return parse_site(yaml.safe_dump(data, sort_keys=False), "site.yaml")


def efm_range(device: str, point: str) -> PointRange | None:
    spec = load_model("efm-ref").point(point)
    return reportable_range(spec.type, spec.scale)


def refusal(
    config: SiteConfig,
    value: Any,
    *,
    field: str | None = None,
    rule: str = "residual-current-over-limit",
    devices: list[str] = DEVICES,
    ranges: Callable[[str, str], PointRange | None] = efm_range,
) -> str | None:
    return threshold_refusal(config, rule, field, value, devices, point_range=ranges)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (1e308, "within a factor 4 of the site file's 300, so 75 to 1200"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (-300, "75 to 1200"),  # a negative current limit would raise at once, for ever
        (74.9, "75 to 1200"),
        (1200.1, "commands.threshold_factor"),
    ],
)
def test_set_threshold_beyond_the_factor_is_refused_naming_the_bound(
    value: float, needle: str
) -> None:
    reason = refusal(load(site()), value)
    assert reason is not None
    assert needle in reason


@pytest.mark.parametrize("value", [75, 250, 300, 1200])
def test_set_threshold_within_the_bounds_is_allowed(value: float) -> None:
    assert refusal(load(site()), value) is None


def test_set_threshold_beyond_what_the_point_can_report_is_refused() -> None:
    data = site()
    data["rules"][0]["raise_at"] = 1000
    data["rules"][0]["clear_below"] = 900
    data["commands"] = {"threshold_factor": 100}
    config = load(data)
    assert refusal(config, 60_000) is None
    reason = refusal(config, 70_000)
    assert reason is not None
    assert "reports only 0 to 65535" in reason
    # The same value on a point whose range is unknown is bounded by the factor alone.
    assert refusal(config, 70_000, ranges=lambda d, p: None) is None


def test_the_factor_is_taken_from_each_devices_own_value() -> None:
    data = site()
    data["rules"][0]["overrides"] = {"efm-workshop-201": {"raise_at": 500, "clear_below": 450}}
    config = load(data)
    # 1600 is within 4x of 500 (the workshop's own) but not of 300 (the others').
    assert refusal(config, 1600, devices=["efm-workshop-201"]) is None
    reason = refusal(config, 1600)
    assert reason is not None
    assert "device 'efm-shop-101'" in reason


def test_a_rule_or_field_the_engine_refuses_is_left_to_the_engine() -> None:
    config = load(site())
    assert refusal(config, 1e308, rule="no-such-rule") is None
    assert refusal(config, 1e308, field="change") is None  # not a field of over-limit


def test_reportable_ranges_follow_the_register_type_and_scale() -> None:
    assert reportable_range("u16", 1.0) == (0, 65535)
    assert reportable_range("i16", 0.1) == pytest.approx((-3276.8, 3276.7))
    assert reportable_range("i16", -1.0) == (-32767, 32768)
    assert reportable_range("text", 1.0) is None


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_set("uplink.brokers", ["mqtt://198.51.100.7:1883"]), "uplink.brokers changed"),
        (_set("uplink.topic_prefix", "elsewhere/v1"), "uplink.topic_prefix changed"),
        (_set("uplink.username", "someone"), "uplink.username changed"),
        (_set("uplink.client_id", "other"), "uplink.client_id changed"),
        (_set("commands.insecure_unsigned_commands", True), "commands changed"),
        (_set("commands.keys", "/tmp/keys"), "commands changed"),
        (_set("commands.threshold_factor", 100), "commands changed"),
        (_set("outputs.buzzer.pin", 5), "outputs changed"),
        (_set("outputs.patterns.critical", "off"), "outputs changed"),
        (_set("rules.0.raise_at", 5000), "rule residual-current-over-limit (critical) changed"),
        (_set("rules.0.severity", "minor"), "rule residual-current-over-limit (critical) changed"),
        (lambda d: d["rules"].pop(1), "rule cable-over-temperature (critical) removed"),
        (lambda d: d["devices"].pop(2), "device efm-workshop-201 removed"),
        (_set("devices.0.poll_interval", "1h"), "device efm-shop-101 changed"),
        (_set("buses.0.port", 1502), "bus lan changed"),
    ],
)
def test_a_push_that_changes_what_guards_the_site_needs_the_engineering_key(
    change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    old = site()
    new = copy.deepcopy(old)
    change(new)
    reasons = engineering_reasons(load(old), load(new))
    assert any(reason in r for r in reasons), reasons


def test_credentials_and_tls_files_need_the_engineering_key() -> None:
    old = site()
    old["uplink"]["brokers"] = ["mqtts://broker.example:8883"]
    new = copy.deepcopy(old)
    new["uplink"].update(
        {"username": "u", "password": "s3cret-pw", "ca_file": "/x/ca.pem", "cert_file": "/x/c.pem"}
    )
    new["uplink"]["key_file"] = "/x/c.key"
    reasons = engineering_reasons(load(old), load(new))
    for name in ("username", "password", "ca_file", "cert_file", "key_file"):
        assert f"uplink.{name} changed" in reasons
    assert not any("s3cret" in r for r in reasons)  # the password itself is never shown


def test_a_push_within_operations_authority_needs_no_engineering_key() -> None:
    old = site()
    new = copy.deepcopy(old)
    new["uplink"]["batch_size"] = 50
    new["buffer"]["commit_interval"] = "100ms"
    new["rules"].append(
        {"id": "hot-cable", "kind": "over-limit", "point": "temperature_1", "raise_at": 60,
         "clear_below": 55, "severity": "major"}
    )  # fmt: skip
    assert engineering_reasons(load(old), load(new)) == []
    # ... and a major rule may then be changed or removed by it too.
    newer = copy.deepcopy(new)
    newer["rules"].pop()
    assert engineering_reasons(load(new), load(newer)) == []


def test_the_rules_a_fire_composite_combines_are_guarded() -> None:
    old = site()
    old["rules"].append(
        {"id": "warm", "kind": "over-limit", "point": "temperature_1", "raise_at": 50,
         "clear_below": 45, "severity": "minor"}
    )  # fmt: skip
    old["rules"].append(
        {"id": "fire-risk", "kind": "composite", "all": ["warm", "residual-current-over-limit"]}
    )
    new = copy.deepcopy(old)
    new["rules"][2]["raise_at"] = 500
    new["rules"][2]["clear_below"] = 450
    assert "rule warm (minor) changed" in engineering_reasons(load(old), load(new))
