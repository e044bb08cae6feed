"""Device model files and the pure Modbus codec: fixed vectors, round trips, clear errors."""

from __future__ import annotations

import ast
import itertools
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus import model as model_module
from drivers.modbus.model import (
    MODBUS_MAX_READ,
    DeviceModel,
    ModelError,
    Point,
    decode,
    encode,
    forget_models,
    known_models,
    load_model,
    load_model_file,
    read_plan,
)

EFM = load_model("efm-ref")

EFM_POINTS = [
    ("residual_current", 0, "u16", 1.0, "mA"),
    ("temperature_1", 1, "i16", 0.1, "°C"),
    ("temperature_2", 2, "i16", 0.1, "°C"),
    ("temperature_3", 3, "i16", 0.1, "°C"),
    ("temperature_4", 4, "i16", 0.1, "°C"),
    ("voltage_a", 5, "u16", 0.1, "V"),
    ("voltage_b", 6, "u16", 0.1, "V"),
    ("voltage_c", 7, "u16", 0.1, "V"),
    ("current_a", 8, "u16", 0.01, "A"),
    ("current_b", 9, "u16", 0.01, "A"),
    ("current_c", 10, "u16", 0.01, "A"),
    ("alarm_bits", 11, "u16", 1.0, ""),
    ("residual_setpoint", 12, "u16", 1.0, "mA"),
    ("temperature_setpoint", 13, "i16", 0.1, "°C"),
]

RAW_RANGES = {"u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF)}


def wide_model(*points: Point, max_read: int = MODBUS_MAX_READ) -> DeviceModel:
    return DeviceModel("test-wide", "test", "holding", points, max_read=max_read)


# --- the shipped models -----------------------------------------------------------------------


def test_efm_ref_register_map_is_the_documented_one() -> None:
    assert "efm-ref" in known_models()
    assert [(p.name, p.address, p.type, p.scale, p.unit) for p in EFM.points] == EFM_POINTS
    assert EFM.registers == "holding"
    assert EFM.function_code == 3
    bits = dict(EFM.point("alarm_bits").bits)
    assert bits == {
        0: "residual_current",
        1: "over_temperature",
        2: "overcurrent",
        3: "overvoltage",
        4: "undervoltage",
        5: "phase_loss",
    }
    assert {p.name for p in EFM.points if p.access == "rw"} == {
        "residual_setpoint",
        "temperature_setpoint",
    }


def test_efm_ref_live_points_come_in_one_read() -> None:
    assert read_plan(EFM) == [(0, 14)]


@pytest.mark.parametrize("name", known_models())
def test_every_shipped_model_loads_and_its_typical_values_round_trip(name: str) -> None:
    model = load_model(name)
    assert model.name == name
    typical = {p.name: p.typical for p in model.points}
    registers = encode(model, typical)
    decoded: dict[str, float] = {}
    for start, count in read_plan(model):
        # Registers a read spans between points (max_gap) read as 0.
        span = [registers.get(a, 0) for a in range(start, start + count)]
        decoded |= decode(model, start, span)
    # float32 holds about 7 significant digits: 0.01 comes back as 0.0099999998.
    assert decoded == pytest.approx(typical, rel=1e-6)


def test_acrel_model_reads_its_sparse_map_in_five_blocks() -> None:
    acrel = load_model("acrel-asj10l-ld1a")
    assert read_plan(acrel) == [(0x00, 1), (0x08, 2), (0x10, 1), (0x1B, 1), (0x1E, 1)]


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown device model 'nope'.*efm-ref"):
        load_model("nope")
    with pytest.raises(ModelError, match="not a model name"):
        load_model("../drivers/models/efm-ref")


def test_the_codec_module_does_not_import_asyncio() -> None:
    tree = ast.parse(Path(model_module.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "drivers" in imported  # the walk sees imports at all
    assert "asyncio" not in imported


# --- decode / encode: fixed vectors -------------------------------------------------------------


def test_decode_fixed_vectors() -> None:
    assert decode(EFM, 0, [350, 0xFF38]) == {"residual_current": 350.0, "temperature_1": -20.0}
    assert decode(EFM, 1, [0x7FFF, 0x8000, 0, 0xFFFF]) == {
        "temperature_1": 3276.7,
        "temperature_2": -3276.8,
        "temperature_3": 0.0,
        "temperature_4": -0.1,
    }
    assert decode(EFM, 5, [2285, 2291, 2278, 320, 285, 410]) == {
        "voltage_a": 228.5,
        "voltage_b": 229.1,
        "voltage_c": 227.8,
        "current_a": 3.2,
        "current_b": 2.85,
        "current_c": 4.1,
    }
    values = decode(EFM, 0, [0] * 14)
    assert all(isinstance(v, float) for v in values.values())


def test_decode_rounds_to_the_scale_not_to_binary_noise() -> None:
    # 3 * 0.1 is 0.30000000000000004 in binary floating point.
    assert decode(EFM, 1, [3]) == {"temperature_1": 0.3}
    assert decode(EFM, 8, [7]) == {"current_a": 0.07}


def test_decode_leaves_out_points_not_wholly_read() -> None:
    assert decode(EFM, 12, [300]) == {"residual_setpoint": 300.0}
    assert decode(EFM, 14, [1, 2, 3]) == {}
    u32 = wide_model(Point("energy", 10, "u32"))
    assert decode(u32, 10, [1]) == {}
    assert decode(u32, 11, [1, 2]) == {}


@pytest.mark.parametrize("bad", [-1, 0x10000, 1.5, True])
def test_decode_rejects_registers_that_are_not_u16(bad: object) -> None:
    with pytest.raises(ValueError, match="register 3 holds"):
        decode(EFM, 2, [0, bad])  # type: ignore[list-item]


def test_encode_fixed_vectors() -> None:
    assert encode(EFM, {"temperature_1": -20.0}) == {1: 0xFF38}
    assert encode(EFM, {"residual_current": 350, "current_a": 3.2, "voltage_c": 227.8}) == {
        0: 350,
        8: 320,
        7: 2278,
    }
    assert encode(EFM, {}) == {}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"residual_current": 70000}, r"residual_current=70000 mA is out of range for u16"),
        ({"residual_current": -1}, "out of range"),
        ({"temperature_1": 3276.8}, r"out of range for i16 x 0.1 \(-3276.8..3276.7\)"),
        ({"temperature_1": float("nan")}, "cannot be held"),
        ({"nope": 1.0}, "model efm-ref has no point 'nope'"),
        ({"residual_current": "1"}, "needs a number"),
    ],
)
def test_encode_rejects_what_the_register_cannot_hold(
    values: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode(EFM, values)


def test_32_bit_types_and_word_orders() -> None:
    model = wide_model(
        Point("u_big", 0, "u32"),
        Point("u_little", 2, "u32", word_order="little"),
        Point("i_big", 4, "i32"),
        Point("f_big", 6, "f32"),
        Point("f_little", 8, "f32", word_order="little", scale=0.5),
    )
    registers = encode(
        model,
        {"u_big": 0x12345678, "u_little": 0x12345678, "i_big": -2, "f_big": 1.0, "f_little": 2.0},
    )
    assert registers == {
        0: 0x1234,
        1: 0x5678,
        2: 0x5678,
        3: 0x1234,
        4: 0xFFFF,
        5: 0xFFFE,
        6: 0x3F80,
        7: 0x0000,
        8: 0x0000,  # 2.0 / scale 0.5 = 4.0 = 0x40800000, low word first
        9: 0x4080,
    }
    assert decode(model, 0, [registers[a] for a in range(10)]) == {
        "u_big": float(0x12345678),
        "u_little": float(0x12345678),
        "i_big": -2.0,
        "f_big": 1.0,
        "f_little": 2.0,
    }


# --- round trips ------------------------------------------------------------------------------


@st.composite
def efm_values(draw: st.DrawFn) -> dict[str, float]:
    """In-range values of every efm-ref point, on the grid its scale allows."""
    values: dict[str, float] = {}
    for point in EFM.points:
        lowest, highest = RAW_RANGES[point.type]
        raw = draw(st.integers(lowest, highest))
        values[point.name] = round(raw * point.scale, point.decimals)
    return values


@given(efm_values())
def test_encode_then_decode_gives_the_values_back(values: dict[str, float]) -> None:
    registers = encode(EFM, values)
    assert sorted(registers) == list(range(14))
    assert all(0 <= r <= 0xFFFF for r in registers.values())
    assert decode(EFM, 0, [registers[a] for a in range(14)]) == values


@given(st.lists(st.integers(0, 0xFFFF), min_size=14, max_size=14))
def test_any_register_contents_decode_and_encode_back(registers: list[int]) -> None:
    values = decode(EFM, 0, registers)
    assert len(values) == 14
    assert encode(EFM, values) == dict(enumerate(registers))


@given(
    st.integers(0, 0xFFFF_FFFF),
    st.integers(-0x8000_0000, 0x7FFF_FFFF),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from(["big", "little"]),
)
def test_32_bit_round_trip(unsigned: int, signed: int, number: float, order: str) -> None:
    model = wide_model(
        Point("u", 0, "u32", word_order=order),  # type: ignore[arg-type]
        Point("i", 2, "i32", word_order=order),  # type: ignore[arg-type]
        Point("f", 4, "f32", word_order=order),  # type: ignore[arg-type]
    )
    values = {"u": float(unsigned), "i": float(signed), "f": number}
    registers = encode(model, values)
    assert decode(model, 0, [registers[a] for a in range(6)]) == values
    high, low = (registers[4], registers[5]) if order == "big" else (registers[5], registers[4])
    assert struct.unpack(">f", struct.pack(">HH", high, low))[0] == number


# --- read plans -------------------------------------------------------------------------------


def test_read_plan_splits_at_gaps_and_at_the_read_limit() -> None:
    contiguous = wide_model(*(Point(f"p{i}", i, "u16") for i in range(200)))
    assert read_plan(contiguous) == [(0, 125), (125, 75)]
    gappy = wide_model(Point("a", 0, "u16"), Point("b", 1, "u32"), Point("c", 10, "u16"))
    assert read_plan(gappy, max_gap=0) == [(0, 3), (10, 1)]


def test_read_plan_reads_through_gaps_cheaper_than_a_request() -> None:
    # 9 unmapped registers cost 18 characters, a second request 20: read through.
    near = wide_model(Point("a", 0, "u16"), Point("b", 10, "u16"), Point("c", 30, "u16"))
    assert read_plan(near) == [(0, 11), (30, 1)]
    assert read_plan(near, max_gap=19) == [(0, 31)]
    # ... but never past the read limit.
    far = wide_model(Point("a", 0, "u16"), Point("b", 120, "u32"), max_read=125)
    assert read_plan(far, max_gap=124) == [(0, 122)]
    assert read_plan(far, max_gap=124)[0][1] <= 125
    limit = wide_model(Point("a", 0, "u16"), Point("b", 124, "u32"))
    assert read_plan(limit, max_gap=124) == [(0, 1), (124, 2)]


def test_read_plan_of_a_subset_for_the_fast_lane() -> None:
    model = wide_model(
        Point("alarm", 0, "u16", critical=True), Point("v", 1, "u16"), Point("t", 40, "u16")
    )
    critical = [point for point in model.points if point.critical]
    assert read_plan(model, critical) == [(0, 1)]
    assert read_plan(model, []) == []


def test_read_plan_never_splits_a_point() -> None:
    model = wide_model(Point("a", 0, "u16"), Point("b", 1, "u16"), Point("c", 2, "f32"), max_read=3)
    assert read_plan(model) == [(0, 2), (2, 2)]


def test_read_plan_orders_by_address_whatever_the_file_order() -> None:
    model = wide_model(Point("late", 20, "u16"), Point("early", 3, "i16"), Point("mid", 4, "u16"))
    assert read_plan(model) == [(3, 2), (20, 1)]


# --- malformed model files --------------------------------------------------------------------

GOOD = """\
name: test-good
title: A test model
registers: holding
points:
  - name: residual_current
    address: 0
    type: u16
    unit: mA
  - name: temperature_1
    address: 1
    type: i16
    scale: 0.1
    unit: °C
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_well_formed_file_loads_from_any_path(tmp_path: Path) -> None:
    model = load_model_file(write(tmp_path, GOOD))
    assert model.name == "test-good"
    assert [p.name for p in model.points] == ["residual_current", "temperature_1"]
    assert model.point("temperature_1").scale == 0.1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("type: i16", "type: i17"), r"model.yaml:9: point 'temperature_1': unknown type 'i17'"),
        (("address: 1", "address: 0"), r"'residual_current' \(register 0\) and 'temperature_1'"),
        (("registers: holding", "registers: holding\nmax_read: 200"), r"max_read 200 must be"),
        (("registers: holding", "registers: coils"), "registers must be one of holding, input"),
        (
            ("    scale: 0.1", "    scael: 0.1"),
            r"model.yaml:9: point 'temperature_1': unknown field",
        ),
        (("    address: 1\n", ""), r"model.yaml:9: point 'temperature_1': address is missing"),
        (("address: 1", "address: one"), "address must be an integer"),
        (("scale: 0.1", "scale: 0"), "scale must be a finite non-zero number"),
        (("name: temperature_1", "name: residual_current"), "'residual_current' is used twice"),
        (("unit: mA", "unit: mA\n    word_order: little"), "word_order only applies to 32-bit"),
        (("unit: mA", "unit: mA\n    bits: {16: x}"), r"bit 16 is not in 0\.\.15"),
        (("scale: 0.1", "scale: 0.1\n    typical: 5000"), "typical value: .* out of range"),
        (("type: u16", "type: [u16"), r"model.yaml:\d+: not valid YAML"),
        (("points:", "pointz:"), "unknown field pointz"),
        (("registers: holding", "registers: holding\nmax_gap: 125"), r"max_gap 125 must be"),
        (("registers: holding", "registers: holding\nmax_gap: -1"), r"max_gap -1 must be"),
        (("unit: mA", "unit: mA\n    critical: yes please"), "critical must be true or false"),
        # The shared YAML loader: a duplicate key is refused at its line, not silently dropped.
        (
            ("    scale: 0.1", "    scale: 0.1\n    scale: 1"),
            r"model.yaml:13: points\[1\]\.scale: duplicate key 'scale' \(first at line 12\)",
        ),
        (("unit: mA", "unit: mA\n    bits: {0x1: x}"), r"bits key must be a bit number 0\.\.15"),
        (("type: u16", "type: !!int"), r"model.yaml:7: points\[0\]\.type: cannot read"),
    ],
)
def test_a_malformed_file_gives_a_clear_error(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(ModelError, match=message):
        load_model_file(write(tmp_path, GOOD.replace(old, new, 1)))


def test_a_missing_file_or_a_non_mapping_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_model_file(tmp_path / "absent.yaml")
    with pytest.raises(ModelError, match="a model file is a mapping"):
        load_model_file(write(tmp_path, "- just\n- a list\n"))


def test_site_local_model_files_are_found_after_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site-meter.yaml").write_text(
        "name: site-meter\npoints:\n  - {name: energy, address: 0, type: u32, unit: kWh}\n",
        encoding="utf-8",
    )
    (tmp_path / "efm-ref.yaml").write_text("name: efm-ref\npoints: []\n", encoding="utf-8")
    (tmp_path / "wrong-name.yaml").write_text(
        "name: other\npoints:\n  - {name: a, address: 0, type: u16}\n", encoding="utf-8"
    )
    monkeypatch.setenv("EDGE_MODEL_PATH", f"{tmp_path / 'missing'}{os.pathsep}{tmp_path}")
    forget_models()
    try:
        assert {"site-meter", "efm-ref", "acrel-asj10l-ld1a"} <= set(known_models())
        assert load_model("site-meter").point("energy").unit == "kWh"
        # A local file never replaces a shipped model.
        assert len(load_model("efm-ref").points) == 14
        with pytest.raises(ModelError, match=r"file is called wrong-name\.yaml"):
            load_model("wrong-name")
    finally:
        forget_models()


@st.composite
def sparse_models(draw: st.DrawFn) -> DeviceModel:
    """Models of up to 40 non-overlapping points anywhere in the first 400 registers."""
    points: list[Point] = []
    address = draw(st.integers(0, 20))
    for index in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["u16", "u32"]))
        points.append(Point(f"p{index}", address, kind))  # type: ignore[arg-type]
        address += (2 if kind == "u32" else 1) + draw(st.integers(0, 15))
    max_read = draw(st.integers(2, 125))
    return wide_model(*points, max_read=max_read)


def fewest_reads(model: DeviceModel, gap: int) -> int:
    """The optimum by dynamic programming: a read covers consecutive points whose span fits
    ``max_read`` and whose gaps fit ``gap``; best[i] is the fewest reads for the first i."""
    spans = sorted((p.address, p.end) for p in model.points)
    best = [0] + [len(spans)] * len(spans)
    for last in range(1, len(spans) + 1):
        for first in range(last, 0, -1):
            group = spans[first - 1 : last]
            if group[-1][1] - group[0][0] > model.max_read:
                break
            if any(b[0] - a[1] > gap for a, b in itertools.pairwise(group)):
                break
            best[last] = min(best[last], best[first - 1] + 1)
    return best[-1]


@given(sparse_models(), st.integers(0, 30))
def test_read_plans_are_the_fewest_reads_within_the_limits(model: DeviceModel, gap: int) -> None:
    plan = read_plan(model, max_gap=gap)
    assert all(1 <= count <= model.max_read for _, count in plan)
    # Every point lies wholly inside exactly one read: none is split, none read twice.
    for point in model.points:
        holders = [s for s, c in plan if s <= point.address and point.end <= s + c]
        assert len(holders) == 1
    # Reads are ordered and disjoint, start and end on points, and span no gap too long.
    for (a, a_count), (b, _) in itertools.pairwise(plan):
        assert a + a_count <= b
    spans = sorted((p.address, p.end) for p in model.points)
    for start, count in plan:
        inside = [(s, e) for s, e in spans if start <= s and e <= start + count]
        assert inside[0][0] == start
        assert inside[-1][1] == start + count
        for (_, end), (next_start, _) in itertools.pairwise(inside):
            assert next_start - end <= gap
    assert len(plan) == fewest_reads(model, gap)
