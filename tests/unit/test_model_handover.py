"""Device models handed over by the validating process: the same objects as read from their
files, and the same errors as ``edge check-config`` gives for a bad one."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.catalog import points_of
from drivers.modbus import model as model_module
from drivers.modbus.model import (
    DeviceModel,
    ModelError,
    Point,
    forget_models,
    hand_over,
    load_model,
    load_model_file,
    model_data,
    model_from_data,
)
from edge.config import compiled, loader
from edge.config.issues import ConfigError
from tests.benchmarks.drivers import BENCH_MODEL, _bench_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example-site.yaml"
SHIPPED = sorted((ROOT / "drivers" / "models").glob("*.yaml"))


def _forget() -> None:
    forget_models()
    points_of.cache_clear()  # the points of each model, kept by name


@pytest.fixture(autouse=True)
def _fresh_models() -> Iterator[None]:
    _forget()
    yield
    _forget()


def _every_field(value: object) -> Any:
    """``value`` with every field of a model or point, those left out of ``==`` too, and each
    value's type: what a comparison of two models must see."""
    if isinstance(value, DeviceModel | Point):
        return {
            f.name: _every_field(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "_by_name"
        } | ({"_by_name": sorted(value._by_name)} if isinstance(value, DeviceModel) else {})
    if isinstance(value, tuple | list):
        return (type(value).__name__, [_every_field(item) for item in value])
    if isinstance(value, dict):
        return {key: _every_field(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def _through_json(model: DeviceModel) -> DeviceModel:
    """As the running gateway gets it: data, JSON text over a pipe, data again."""
    return model_from_data(json.loads(json.dumps(model_data(model), separators=(",", ":"))))


def _model_files(tmp_path: Path) -> list[Path]:
    return [*SHIPPED, _bench_model(tmp_path / "models") / f"{BENCH_MODEL}.yaml"]


def test_every_model_is_the_same_from_its_file_and_from_its_data(tmp_path: Path) -> None:
    files = _model_files(tmp_path)
    assert len(files) >= 5
    for path in files:
        read = load_model_file(path)
        built = _through_json(read)
        assert built == read, path.name
        assert _every_field(built) == _every_field(read), path.name
        assert [p.storage for p in built.points] == [p.storage for p in read.points]
        assert [p.decimals for p in built.points] == [p.decimals for p in read.points]


def test_odd_but_valid_values_survive_the_handover() -> None:
    text = (
        "name: odd\n"
        "registers: input\n"
        "max_read: 3\n"
        "max_gap: 0\n"
        "word_order: little\n"
        "points:\n"
        "  - {name: a, address: 0, type: f32, scale: 1.0e-7, typical: .nan,\n"
        "     plausible: [-.inf, 5], critical: true, access: rw}\n"
        "  - {name: b, address: 2, type: u16, bits: {'15': hot, '0': cold}, scale: 3,\n"
        "     storage: {policy: on-change, bands: [1, 2.5, {x: null}], 'on': yes}}\n"
        "  - {name: c, address: 3, type: i32, word_order: big, storage: all, unit: '°C'}\n"
    )
    read = model_module.parse_model(text, "odd.yaml")
    built = _through_json(read)
    assert _every_field(built) == _every_field(read)
    assert built.point("b").bits == ((0, "cold"), (15, "hot"))
    assert built.point("b").storage == (
        ("policy", "on-change"),
        ("bands", [1, 2.5, {"x": None}]),
        ("on", True),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["points"][0].update(address=70000), "address 70000 is outside"),
        (lambda d: d["points"][0].update(type="u64"), "unknown type 'u64'"),
        (lambda d: d["points"][1].update(address=0), "overlap"),
        (lambda d: d.update(max_read=0), "max_read 0 must be 1..125"),
        (lambda d: d["points"][0].update(bits=[[16, "x"]]), "bit 16 is not in 0..15"),
        (lambda d: d["points"][0].pop("scale"), "'scale'"),
        (lambda d: d.update(points="none"), "string indices must be integers"),
    ],
)
def test_data_that_is_not_a_model_is_refused(change: Any, message: str) -> None:
    data = json.loads(json.dumps(model_data(load_model_file(SHIPPED[0]))))
    change(data)
    with pytest.raises((ValueError, KeyError, TypeError), match=message):
        model_from_data(data)


def test_a_storage_value_json_cannot_carry_is_named() -> None:
    text = (
        "name: dated\n"
        "points:\n"
        "  - {name: a, address: 0, type: u16, storage: {policy: all, since: 2026-01-01}}\n"
    )
    with pytest.raises(ModelError, match="point 'a': storage holds a value"):
        model_data(model_module.parse_model(text, "dated.yaml"))


def _site_with(tmp_path: Path, model: str) -> Path:
    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for device in site["devices"]:
        if device["model"] == "efm-ref":
            device["model"] = model
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
    return path


def test_the_validating_process_hands_over_the_models_the_site_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _bench_model(tmp_path / "models")
    monkeypatch.setenv("EDGE_MODEL_PATH", str(folder))
    site = _site_with(tmp_path, BENCH_MODEL)
    config = compiled.load_site(site, known_models=model_module.known_models())
    used = {d.model for d in config.devices if d.model in model_module.known_models()}
    assert BENCH_MODEL in used
    for name in used:
        handed = load_model(name)
        assert _every_field(handed) == _every_field(load_model_file(_file_of(name, folder)))
    # Given by the hand-over: no model file was read in this process.
    assert model_module._load_model_file.cache_info().currsize == 0


def _file_of(name: str, folder: Path) -> Path:
    shipped = ROOT / "drivers" / "models" / f"{name}.yaml"
    return shipped if shipped.exists() else folder / f"{name}.yaml"


def test_the_newest_hand_over_of_a_name_wins() -> None:
    first = load_model_file(SHIPPED[0])
    changed = dataclasses.replace(first, title="changed")
    hand_over([first])
    hand_over([changed])
    assert load_model(first.name).title == "changed"


#: Model files that are wrong in each of the ways a model file can be.
BAD_MODELS: dict[str, str | bytes] = {
    "syntax": "name: bad\npoints: [\n",
    "unknown-field": "name: bad\npoints:\n  - {name: a, address: 0, type: u16, colour: red}\n",
    "overlap": (
        "name: bad\npoints:\n  - {name: a, address: 0, type: u32}\n"
        "  - {name: b, address: 1, type: u16}\n"
    ),
    "no-points": "name: bad\npoints: []\n",
    "wrong-name": "name: other\npoints:\n  - {name: a, address: 0, type: u16}\n",
    "duplicate-key": "name: bad\nname: bad\npoints:\n  - {name: a, address: 0, type: u16}\n",
    "bad-storage": (
        "name: bad\npoints:\n  - {name: a, address: 0, type: u16, "
        "storage: {policy: deadband, band: -1}}\n"
    ),
    "dated-storage": (
        "name: bad\npoints:\n  - {name: a, address: 0, type: u16, "
        "storage: {policy: all, since: 2026-01-01}}\n"
    ),
    "not-utf8": b"name: bad\npoints:\n  - {name: \xff, address: 0, type: u16}\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_a_bad_model_file_gets_the_same_issues_as_check_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    content = BAD_MODELS[kind]
    path = folder / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    monkeypatch.setenv("EDGE_MODEL_PATH", str(folder))
    site = _site_with(tmp_path, "bad")
    known = model_module.known_models()
    with pytest.raises(ConfigError) as expected:
        loader.load_site(site, known_models=known)
    _forget()
    with pytest.raises(ConfigError) as got:
        compiled.load_site(site, known_models=known)
    assert str(got.value) == str(expected.value)
    assert got.value.issues == expected.value.issues
