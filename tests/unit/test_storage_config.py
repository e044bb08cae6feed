"""Storage policies in the site file and the device models: the defaults each model ships,
overrides per device, ``storage.policy: all``, and every bad input refused by check-config
with its line and field."""

from __future__ import annotations

import pytest

from drivers.modbus import known_models
from edge import contract
from edge.config import ConfigError, SiteConfig, parse_site
from edge.config.storage import FIXED_DEFAULTS, PointStorage, resolve_policies, storage_of
from edge.storage_policy import Policy
from tests.unit.test_config import MINIMAL

SENSORS = """\
  - id: uart-tilt
    kind: serial
    port: /dev/ttyS1
  - id: uart-radar
    kind: serial
    port: /dev/ttyS2
  - id: header
    kind: gpio
    pin_factory: mock
"""
SENSOR_DEVICES = """\
  - id: tilt-1
    model: witmotion-uart
    bus: uart-tilt
    gauge_length: 2
    location: {building: B1, floor: "1", room: R3, venue_type: shop}
  - id: radar-1
    model: hlk-ld2410
    bus: uart-radar
    location: {building: B1, floor: "1", room: R3, venue_type: shop}
  - id: pir-1
    model: pir
    bus: header
    pin: 5
    location: {building: B1, floor: "1", room: R3, venue_type: shop}
"""


def _site(devices_extra: str = "", tail: str = "") -> str:
    text = MINIMAL.replace("devices:\n", SENSORS + "devices:\n" + SENSOR_DEVICES, 1)
    text = text.replace(
        '    location: {building: B1, floor: "1", room: R1, venue_type: shop}\n',
        '    location: {building: B1, floor: "1", room: R1, venue_type: shop}\n' + devices_extra,
        1,
    )
    return text + tail


def _load(text: str) -> SiteConfig:
    return parse_site(text, "site.yaml", known_models=known_models())


def _refused(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as caught:
        _load(text)
    return [(i.line, i.field, i.message) for i in caught.value.issues]


def _line(text: str, fragment: str) -> int:
    return text[: text.index(fragment)].count("\n") + 1


def test_every_model_ships_defaults_that_check() -> None:
    config = _load(_site())
    policies = resolve_policies(config)
    kinds = {(d, p): policy.kind for (d, p), policy in policies.items()}
    assert kinds[("dev-a", "residual_current")] == "swinging-door"
    assert kinds[("dev-a", "alarm_bits")] == "on-change"
    assert kinds[("tilt-1", "roll")] == "swinging-door"
    assert kinds[("tilt-1", "roll_displacement")] == "swinging-door"
    assert kinds[("radar-1", "presence")] == "on-change"
    assert kinds[("pir-1", "presence")] == "on-change"
    # Every point every device reports has a policy chosen by its model (none left to "all").
    aliased = {(d, p) for d, p, _ in contract.Aliases.of_site(config)}
    assert aliased == set(policies)
    assert all(policy.kind != "all" for policy in policies.values())
    for model, points in FIXED_DEFAULTS.items():
        for point, spec in points.items():
            assert PointStorage.model_validate(spec).policy_for().kind != "all", (model, point)


@pytest.mark.parametrize("model", known_models())
def test_shipped_model_files_give_every_point_a_checked_default(model: str) -> None:
    from drivers.modbus.model import load_model  # noqa: PLC0415

    for point in load_model(model).points:
        assert point.storage is not None, f"{model}: {point.name} has no storage default"
        raw = dict(point.storage) if isinstance(point.storage, tuple) else point.storage
        spec = PointStorage.model_validate(raw)
        if point.bits:
            assert spec.policy == "on-change", f"{model}: {point.name} is a state"


def test_all_is_one_line_away() -> None:
    config = _load(_site(tail="storage: {policy: all}\n"))
    assert {p.kind for p in resolve_policies(config).values()} == {"all"}


def test_device_overrides_replace_the_model_default() -> None:
    extra = (
        "    storage:\n"
        "      residual_current: {policy: deadband, band: 10, max_interval: 5m}\n"
        "      voltage_a: all\n"
    )
    config = _load(_site(extra))
    policies = resolve_policies(config)
    assert policies[("dev-a", "residual_current")] == Policy("deadband", 10.0, 0.0, 300.0, 0.0)
    assert policies[("dev-a", "voltage_a")].kind == "all"
    assert policies[("dev-b", "residual_current")].kind == "swinging-door"  # not overridden


def test_a_model_heartbeat_shorter_than_a_slow_poll_is_raised_to_the_poll() -> None:
    text = _site().replace("    address: 1\n", "    address: 1\n    poll_interval: 1h\n", 1)
    policies = resolve_policies(_load(text))
    assert policies[("dev-a", "residual_current")].max_interval == 3600.0


def test_metadata_carries_each_points_policy_and_the_alarm_window() -> None:
    config = _load(_site(tail="storage:\n  alarm_window: {pre: 30s, post: 2m}\n"))
    storage = storage_of(config)
    aliases = contract.Aliases.of_site(config)
    message = contract.decode_payload(
        contract.metadata_message(
            "gw", "e", config, aliases, clock_synced=True, sent_at=0.0, storage=storage
        )
    )
    from edge.schemas import validate_message  # noqa: PLC0415

    assert validate_message(message) == "metadata"
    assert message["alarm_window"] == {"pre_s": 30.0, "post_s": 120.0}
    points = {d["id"]: {p["point"]: p for p in d["points"]} for d in message["devices"]}
    assert points["dev-a"]["residual_current"]["storage"] == {
        "policy": "swinging-door",
        "reconstruction": "linear",
        "band": 5.0,
        "band_percent": 0.0,
        "max_interval_s": 900.0,
        "min_interval_s": 0.0,
    }
    assert points["pir-1"]["presence"]["storage"]["reconstruction"] == "step"


BAD = [
    ("residual_current: {policy: deadband, band: -1}", "band", "greater than or equal to 0"),
    ("residual_current: {policy: deadband, band: .nan}", "band", "finite"),
    ("residual_current: {policy: deadband, band: .inf}", "band", "finite"),
    ("residual_current: {policy: deadband, band: true}", "band", "number"),
    ("residual_current: {policy: deadband}", "residual_current", "needs band"),
    ("residual_current: {policy: swinging-door, band: 0}", "band", "use on-change"),
    ("residual_current: {policy: on-change, band: 3}", "band", "only apply"),
    ("residual_current: {policy: deadband, band_percent: 150}", "band_percent", "100"),
    ("residual_current: {policy: deadband, band: 70000}", "band", "larger than the whole range"),
    ("residual_current: {policy: deadband, band: 5, max_interval: 500ms}", "max_interval", "poll"),
    ("residual_current: {policy: deadband, band: 5, max_interval: 2d}", "max_interval", "1d"),
    ("residual_current: {policy: deadband, band: 5, max_interval: 60}", "max_interval", "unit"),
    (
        "residual_current: {policy: deadband, band: 5, min_interval: 20m}",
        "min_interval",
        "shorter than the heartbeat",
    ),
    ("alarm_bits: {policy: swinging-door, band: 1}", "policy", "a state"),
    ("residual_curent: on-change", "residual_curent", "no point 'residual_curent'"),
    ("residual_current: sometimes", "policy", "'all', 'on-change'"),
    ("residual_current: all", None, None),  # accepted
]


@pytest.mark.parametrize(("override", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_overrides_are_refused_naming_the_field(
    override: str, field: str | None, words: str | None
) -> None:
    text = _site(f"    storage:\n      {override}\n")
    if field is None or words is None:
        _load(text)
        return
    issues = _refused(text)
    assert len(issues) == 1, issues
    line, where, message = issues[0]
    assert where.startswith("devices[3].storage."), where
    assert where.endswith(field), where
    assert words in message, message
    assert line == _line(text, override.split(":", maxsplit=1)[0] + ":"), (line, issues)


def test_swinging_door_on_a_radars_state_is_refused() -> None:
    text = _site().replace(
        "    bus: uart-radar\n",
        "    bus: uart-radar\n    storage:\n      target_state: {policy: swinging-door, band: 1}\n",
    )
    ((_, where, message),) = _refused(text)
    assert where == "devices[1].storage.target_state.policy"
    assert "a state" in message


@pytest.mark.parametrize(
    ("window", "words"),
    [
        ("{pre: 11m}", "at most 10m"),
        ("{post: 2h}", "at most 1h"),
        ("{pre: -1s}", "not a duration"),
    ],
)
def test_alarm_windows_are_bounded(window: str, words: str) -> None:
    text = _site(tail=f"storage:\n  alarm_window: {window}\n")
    ((line, where, message),) = _refused(text)
    assert where.startswith("storage.alarm_window")
    assert words in message
    assert line == _line(text, "alarm_window")


def test_a_pre_window_that_would_not_fit_in_memory_is_refused() -> None:
    text = _site(tail="storage:\n  alarm_window: {pre: 10m}\n").replace(
        "    address: 1\n", "    address: 1\n    poll_interval: 100ms\n", 1
    )
    issues = _refused(text)
    assert issues
    line, where, message = issues[0]
    assert line == _line(text, "alarm_window")
    assert where == "storage.alarm_window.pre"
    assert "dev-a" in message
    assert "12000 readings" in message


def test_a_broken_default_in_a_local_model_file_names_the_model(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path  # noqa: PLC0415

    from drivers.modbus.model import forget_models  # noqa: PLC0415

    folder = Path(str(tmp_path))
    (folder / "leaky.yaml").write_text(
        "name: leaky\npoints:\n  - name: level\n    address: 0\n    type: u16\n"
        "    storage: {policy: swinging-door, band: 0}\n"
    )
    monkeypatch.setenv("EDGE_MODEL_PATH", str(folder))
    forget_models()
    try:
        text = MINIMAL.replace("model: efm-ref", "model: leaky", 1).replace(
            "rules:\n  - id: leak", "rules:\n  - id: leak\n    devices: [dev-b]", 1
        )
        ((_, where, message),) = _refused(text)
    finally:
        forget_models()
    assert where == "devices[0].model"
    assert "model leaky (point level): storage" in message
    assert "use on-change" in message


def test_storage_mistakes_are_named_even_when_another_part_of_the_file_is_wrong() -> None:
    """One run of check-config names every mistake: a storage problem of a device that
    validates is reported beside another device's type error and a bad alarm window."""
    text = _site(
        "    storage:\n      residual_current: {policy: deadband, band: -1}\n",
        tail="storage:\n  alarm_window: {pre: 20m}\n",
    ).replace(
        "    bus: uart-radar\n",
        "    bus: uart-radar\n    storage:\n      target_state: {policy: swinging-door, band: 1}\n",
    )
    issues = _refused(text)
    fields = sorted(where for _, where, _ in issues)
    assert fields == [
        "devices[1].storage.target_state.policy",
        "devices[3].storage.residual_current.band",
        "storage.alarm_window.pre",
    ], issues


@pytest.mark.parametrize(
    "policy", ["{policy: swinging-door, band: 1}", "{policy: deadband, band: 1}"]
)
def test_a_band_on_a_boolean_point_is_refused(policy: str) -> None:
    """A PIR's presence is 0 or 1: a band of 1 would never store a change, a line between two
    stored states would invent values between them."""
    text = _site().replace(
        "    pin: 5\n", f"    pin: 5\n    storage:\n      presence: {policy}\n", 1
    )
    ((_, where, message),) = _refused(text)
    assert where == "devices[2].storage.presence.policy"
    assert "a state" in message, message
    assert "use on-change" in message, message
