"""Compact telemetry, aliases, metadata, health and deflate, against edge.contract's own decoder
and the JSON Schemas.

The round trip is checked against the readable form: whatever a batch holds, decoding its
compact message gives exactly the readings the ``edge.telemetry/1`` message lists.
"""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.catalog import catalog
from drivers.ld2410.codec import TargetFrame
from drivers.ld2410.driver import Ld2410Radar
from drivers.pir import PirSensor
from drivers.types import DeviceStatus, Reading
from drivers.witmotion.codec import AngleFrame
from drivers.witmotion.driver import WitMotionSensor
from edge import contract
from edge.config.loader import parse_site
from edge.config.model import SiteConfig
from edge.contract import Aliases, ContractError
from edge.schemas import validate_message
from tests.benchmarks import wire

GW = "gw-1"
EPOCH = "0b6c1f7e-3c1a-4d55-9a59-2f4f1c8e7d10"
T = 1_714_550_400.125


@dataclass(frozen=True)
class Row:
    seq: int
    body: dict[str, Any]


def site(devices: list[dict[str, Any]], **extra: Any) -> SiteConfig:
    location = {"building": "B3", "floor": "1", "room": "102", "venue_type": "restaurant"}
    data = {
        "gateway": {"id": GW, "site": {"name": "Block 3", "district": "Luohu"}},
        "buses": [
            {"id": "rs485-1", "kind": "modbus-rtu", "port": "/dev/ttyUSB0"},
            {"id": "tilt-port", "kind": "serial", "port": "/dev/ttyUSB1"},
            {"id": "radar-port", "kind": "serial", "port": "/dev/ttyUSB2"},
            {"id": "header", "kind": "gpio"},
        ],
        "devices": [{"location": location, **d} for d in devices],
        "outputs": {"pin_factory": "mock", "buzzer": {"pin": 17}},
        "uplink": {"brokers": ["mqtt://127.0.0.1:1883"]},
        "buffer": {"path": "outbox.sqlite"},
        **extra,
    }
    return parse_site(yaml.safe_dump(data), "site.yaml", known_models=catalog())


DEVICES: list[dict[str, Any]] = [
    {"id": "efm-2", "model": "efm-ref", "bus": "rs485-1", "address": 2},
    {"id": "efm-1", "model": "efm-ref", "bus": "rs485-1", "address": 1},
    {"id": "tilt-1", "model": "witmotion-uart", "bus": "tilt-port", "gauge_length": 3.0},
    {"id": "radar-1", "model": "hlk-ld2410", "bus": "radar-port"},
    {"id": "pir-1", "model": "pir", "bus": "header", "pin": 5},
    {"id": "tilt-485", "model": "witmotion-wt901c485", "bus": "rs485-1", "address": 80,
     "gauge_length": 1.0},
]  # fmt: skip


@pytest.fixture(scope="module")
def config() -> SiteConfig:
    return site(
        DEVICES,
        derived_points=[{"name": "rc_amps", "kind": "linear", "source": "residual_current",
                         "models": ["efm-ref"], "scale": 0.001, "unit": "A"}],
    )  # fmt: skip


def points_of(aliases: Aliases, device: str) -> list[tuple[str, str]]:
    return [(point, unit) for d, point, unit in aliases if d == device]


# --- aliases ----------------------------------------------------------------------------------


def test_aliases_cover_every_point_in_device_order_and_are_stable(config: SiteConfig) -> None:
    aliases = Aliases.of_site(config)
    devices = list(dict.fromkeys(d for d, _, _ in aliases))
    assert devices == sorted(d["id"] for d in DEVICES)
    efm = points_of(aliases, "efm-1")
    assert efm[:2] == [("residual_current", "mA"), ("temperature_1", "°C")]
    # One poll of a device is one run of consecutive aliases, in the order the poll reads.
    first = aliases.alias("efm-1", "residual_current")
    assert first is not None
    assert [aliases.alias("efm-1", p) for p, _ in efm] == list(range(first, first + len(efm)))
    assert aliases.units[first] == "mA"
    assert aliases.entry(first) == ("efm-1", "residual_current", "mA")
    # A gauge length adds the displacement after each tilt axis, Modbus or UART alike.
    for tilt in ("tilt-485", "tilt-1"):
        names = [p for p, _ in points_of(aliases, tilt)]
        assert names.index("roll_displacement") == names.index("roll") + 1
        assert names.index("pitch_displacement") == names.index("pitch") + 1
    # Derived points are judged, never sent: no alias.
    assert aliases.alias("efm-1", "rc_amps") is None
    assert aliases.alias("efm-1", "nonsense") is None
    assert aliases.alias("ghost", "residual_current") is None
    # The same site file, the same table; any change to the points, another id.
    again = Aliases.of_site(site(list(reversed(DEVICES))))
    assert again == aliases
    assert again.table_id == aliases.table_id
    fewer = Aliases.of_site(site(DEVICES[1:]))
    assert fewer.table_id != aliases.table_id
    ungauged = [{k: v for k, v in d.items() if k != "gauge_length"} for d in DEVICES]
    assert Aliases.of_site(site(ungauged)).table_id != aliases.table_id


def test_fixed_points_are_what_the_serial_and_gpio_drivers_report(config: SiteConfig) -> None:
    aliases = Aliases.of_site(config)
    seen: list[Reading | DeviceStatus] = []
    tilt = WitMotionSensor("tilt-1", "socket://127.0.0.1:9", seen.append, gauge_length=3.0)
    tilt.on_frame(AngleFrame(roll=100, pitch=-200, yaw=300), T, 1000.0)
    radar = Ld2410Radar("radar-1", "socket://127.0.0.1:9", seen.append)
    radar.on_frame(TargetFrame(3, 120, 40, 80, 60, 150), T, 1000.0)
    pir = PirSensor("pir-1", 5, seen.append, pin_factory=MockFactory())
    pir._emit(1.0)
    for device in ("tilt-1", "radar-1", "pir-1"):
        reported = [
            (r.point, r.unit) for r in seen if isinstance(r, Reading) and r.device_id == device
        ]
        assert reported == points_of(aliases, device), device


def test_a_table_gives_back_every_entry_whole_in_alias_order() -> None:
    # The table is held as its index's keys and a tuple of units: each entry, the iteration,
    # equality and the id must still be those of the (device, point, unit) list it was given.
    entries = [("d", "a", "mA"), ("d", "b", "°C"), ("e", "a", "")]
    table = Aliases(entries)
    assert list(table) == entries
    assert [table.entry(alias) for alias in range(len(table))] == entries
    assert table.table_id == "7a13c273120d"  # sha256 of the entries' JSON, as published
    assert table == Aliases(list(entries))
    assert hash(table) == hash(Aliases(list(entries)))
    assert table != Aliases([*entries[:2], ("e", "a", "V")])
    assert table != Aliases([entries[1], entries[0], entries[2]])
    with pytest.raises(IndexError):
        table.entry(3)
    with pytest.raises(IndexError):
        table.entry(-1)


def test_a_table_refuses_a_point_listed_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        Aliases([("efm-1", "rc", "mA"), ("efm-1", "rc", "A")])


# --- metadata and health ----------------------------------------------------------------------


def test_metadata_places_every_device_and_rebuilds_the_table(config: SiteConfig) -> None:
    aliases = Aliases.of_site(config)
    payload = contract.metadata_message(GW, EPOCH, config, aliases, clock_synced=True, sent_at=T)
    message = json.loads(payload)
    assert validate_message(message) == "metadata"
    assert message["aliases_id"] == aliases.table_id
    assert message["site"]["name"] == "Block 3"
    by_id = {d["id"]: d for d in message["devices"]}
    assert by_id["tilt-1"]["bus_kind"] == "serial"
    assert by_id["efm-1"]["location"]["venue_type"] == "restaurant"
    assert by_id["efm-1"]["points"][0] == {"point": "residual_current", "unit": "mA", "alias": 0}
    assert Aliases.from_metadata(message) == aliases
    # A table that does not hash to its id is refused, not trusted.
    by_id["efm-1"]["points"][0]["unit"] = "A"
    with pytest.raises(ContractError, match="does not match"):
        Aliases.from_metadata(message)
    by_id["efm-1"]["points"][0]["alias"] = 1
    with pytest.raises(ContractError, match="twice"):
        Aliases.from_metadata(message)


def test_metadata_refuses_aliases_of_another_site(config: SiteConfig) -> None:
    other = Aliases([("ghost", "residual_current", "mA")])
    with pytest.raises(ValueError, match="ghost"):
        contract.metadata_message(GW, EPOCH, config, other, clock_synced=True)


HEALTH: dict[str, Any] = {
    "uptime_s": 3600.5,
    "buffer_rows": 12,
    "buffer_streams": {"telemetry": 11, "event": 1},
    "oldest_unsent_age_s": 2.5,
    "bus_errors": {"rs485-1": 3},
    "buses": {
        "rs485-1": {
            "kind": "modbus",
            "requests": 90,
            "answers": 85,
            "timeouts": 2,
            "errors": 3,
            "overruns": 0,
            "offline_devices": ["efm-2"],
        },
        "header": {"kind": "gpio", "devices": 1},
        "tilt-port": {"kind": "serial"},
    },
    "pending_in_memory": 0,
    "active_alarms": 1,
    "buzzer": "on",
    "storm": None,
    "threshold_overrides": [],
    "uplink": {"published": 120, "acked": 118, "reconnects": 1},
}


def test_health_message_validates_and_names_a_missing_field() -> None:
    message = json.loads(contract.health_message(GW, EPOCH, HEALTH, clock_synced=True))
    assert validate_message(message) == "health"
    assert message["buses"]["rs485-1"]["offline_devices"] == ["efm-2"]
    with pytest.raises(ContractError, match="buffer_rows"):
        contract.health_message(
            GW, EPOCH, {k: v for k, v in HEALTH.items() if k != "buffer_rows"}, clock_synced=True
        )
    with pytest.raises(ContractError, match="timeouts"):
        contract.health_message(
            GW, EPOCH, {**HEALTH, "buses": {"rs485-1": {"timeouts": -1}}}, clock_synced=True
        )
    # The envelope is the builder's: a health field cannot replace it.
    forged = json.loads(
        contract.health_message(GW, EPOCH, {**HEALTH, "gateway_id": "x"}, clock_synced=True)
    )
    assert forged["gateway_id"] == GW


# --- compact telemetry ------------------------------------------------------------------------


TABLE = Aliases(
    [
        ("efm-1", "residual_current", "mA"),
        ("efm-1", "temperature_1", "°C"),
        ("efm-1", "voltage_a", "V"),
        ("efm-2", "residual_current", "mA"),
        ("efm-2", "temperature_1", "°C"),
        ("efm-2", "voltage_a", "V"),
    ]
)


def both(rows: list[Row], aliases: Aliases = TABLE) -> tuple[dict[str, Any], dict[str, Any]]:
    compact = contract.telemetry_message(
        GW, EPOCH, rows, clock_synced=True, historical=False, aliases=aliases, sent_at=T
    )
    readable = contract.telemetry_message(
        GW, EPOCH, rows, clock_synced=True, historical=False, sent_at=T
    )
    return json.loads(compact), json.loads(readable)


def poll(seq: int, device: str, ts: float, *values: float) -> list[Row]:
    names = [("residual_current", "mA"), ("temperature_1", "°C"), ("voltage_a", "V")]
    return [
        Row(seq + i, {"device": device, "point": p, "value": v, "unit": u, "ts": ts})
        for i, ((p, u), v) in enumerate(zip(names, values, strict=False))
    ]


def test_one_poll_is_one_group_and_decodes_to_the_readable_form() -> None:
    rows = poll(7, "efm-1", T, 35.0, 41.7, 230.4) + poll(11, "efm-2", T + 0.012, 36.0, 40.1, 229.9)
    rows.append(Row(14, {"device": "efm-1", "point": "old_point", "value": -1.5, "unit": "mA",
                         "ts": T}))  # fmt: skip
    compact, readable = both(rows)
    assert validate_message(compact) == "telemetry"
    assert compact["schema"] == "edge.telemetry/2"
    assert compact["groups"] == [[0, 0, 35, 41.7, 230.4], [12, 3, 36, 40.1, 229.9]]
    assert compact["skip"] == [[10, 10]]
    assert compact["fallback"] == [
        [14, "efm-1", "old_point", -1.5, "mA", "2024-05-01T08:00:00.125Z"]
    ]
    assert (compact["seq_first"], compact["seq_last"], compact["t0"]) == (7, 14, 1714550400125)
    assert compact["message_id"] == readable["message_id"] == f"{EPOCH}:7-14"
    assert contract.decode_telemetry(compact, TABLE) == readable["readings"]
    assert contract.decode_telemetry(readable) == readable["readings"]


def test_a_unit_the_table_does_not_have_and_bad_numbers_go_as_fallback_rows() -> None:
    rows = poll(1, "efm-1", T, 35.0, math.nan, math.inf)
    rows.append(Row(4, {"device": "efm-1", "point": "voltage_a", "value": 0.2304, "unit": "kV",
                        "ts": T}))  # fmt: skip
    rows.append(Row(5, {"device": "efm-2", "point": "voltage_a", "value": 1.0, "unit": "V",
                        "ts": math.nan}))  # fmt: skip
    compact, readable = both(rows)
    assert compact["groups"] == [[0, 0, 35, None, None]]
    assert [r[0] for r in compact["fallback"]] == [4, 5]
    assert compact["fallback"][1][5] is None
    assert contract.decode_telemetry(compact, TABLE) == readable["readings"]
    assert validate_message(compact) == "telemetry"


def test_the_encoder_refuses_records_out_of_seq_order_or_none() -> None:
    with pytest.raises(ValueError, match="ascending"):
        contract.telemetry_message(
            GW, EPOCH, poll(5, "efm-1", T, 1.0)[::-1] + poll(3, "efm-1", T, 1.0),
            clock_synced=True, historical=False, aliases=TABLE,
        )  # fmt: skip
    with pytest.raises(ValueError, match="at least one"):
        contract.telemetry_message(
            GW, EPOCH, [], clock_synced=True, historical=False, aliases=TABLE
        )


DEVICE_IDS = ["efm-1", "efm-2", "ghost"]
POINT_NAMES = [("residual_current", "mA"), ("temperature_1", "°C"), ("voltage_a", "V")]
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda v: round(v, 2)),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
)
times = st.one_of(
    st.sampled_from([T, T + 0.012, T + 1.0, T - 3600.0]),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.sampled_from([None, math.nan, math.inf, 1e20, -1e20, "yesterday"]),
)


@st.composite
def batches(draw: st.DrawFn) -> list[Row]:
    rows: list[Row] = []
    seq = draw(st.integers(min_value=1, max_value=2**40))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        device = draw(st.sampled_from(DEVICE_IDS))
        ts = draw(times)
        start = draw(st.integers(min_value=0, max_value=2))
        count = draw(st.integers(min_value=1, max_value=3 - start))
        for name, table_unit in POINT_NAMES[start : start + count]:
            unit, point = table_unit, name
            if draw(st.integers(min_value=0, max_value=9)) == 0:
                unit = draw(st.sampled_from(["kV", "", "mA"]))
            if draw(st.integers(min_value=0, max_value=19)) == 0:
                point = draw(st.sampled_from(["unknown", "", "temperature_9"]))
            body = {"device": device, "point": point, "value": draw(values), "unit": unit, "ts": ts}
            rows.append(Row(seq, body))
            seq += draw(st.sampled_from([1, 1, 1, 1, 2, 5, 1000]))
    return rows


@given(batches())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_batch_round_trips_to_exactly_the_readable_readings(rows: list[Row]) -> None:
    compact, readable = both(rows)
    decoded = contract.decode_telemetry(compact, TABLE)
    assert decoded == readable["readings"]
    for got, want in zip(decoded, readable["readings"], strict=True):
        # Equal numbers, and ints stay ints: 35.0 may travel as 35, never 35 as a rounded float.
        if isinstance(want["value"], int):
            assert type(got["value"]) is int
        if isinstance(want["value"], float) and math.copysign(1, want["value"]) < 0:
            assert math.copysign(1, got["value"]) < 0
    if all(isinstance(r.body["ts"], float | int) and 0 <= r.body["ts"] < 1e10 for r in rows):
        assert validate_message(compact) == "telemetry"
    payload = contract.compress(json.dumps(compact).encode())
    assert contract.decode_payload(payload) == compact


def test_compact_is_many_times_smaller_than_readable() -> None:
    rows: list[Row] = []
    for second in range(5):
        for device in ("efm-1", "efm-2"):
            seq = len(rows) + 1
            rows += poll(seq, device, T + second, 35.0 + second, 41.7, 230.4)
    compact = contract.telemetry_message(
        GW, EPOCH, rows, clock_synced=True, historical=False, aliases=TABLE
    )
    readable = contract.telemetry_message(GW, EPOCH, rows, clock_synced=True, historical=False)
    assert len(compact) * 2 < len(readable)


# --- decoding bad input -----------------------------------------------------------------------


def good() -> dict[str, Any]:
    rows = poll(1, "efm-1", T, 35.0, 41.7, 230.4) + poll(5, "efm-2", T + 0.012, 36.0, 40.0, 231.0)
    message = both(rows)[0]
    assert message["groups"] == [[0, 0, 35, 41.7, 230.4], [12, 3, 36, 40, 231]]
    assert message["skip"] == [[4, 4]]
    return message


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"aliases_id": "0123456789ab"}, "aliases_id"),
        ({"groups": [[0, 0, 35, 41.7, 230.4], [0, 3, 36, 40.0]]}, "carried"),
        ({"groups": [[0, 0, 35, 41.7, 230.4], [0, 4, 36, 40.0, 231.0]]}, "outside the table"),
        ({"groups": [[0, 0, 35, 41.7, 230.4], [0, 3, 36, "40", 231.0]]}, "not a number"),
        ({"groups": [[0, 0, 35, 41.7, 230.4], [0.5, 3, 36, 40.0, 231.0]]}, "integers"),
        ({"groups": [[0, 0, 35, 41.7, 230.4], [10**20, 3, 36, 40.0, 231.0]]}, "time out of range"),
        ({"skip": [[4, 4], [3, 3]]}, "skip"),
        ({"skip": [[4, 6]]}, "carried"),
        ({"skip": [[0, 4]]}, "inside"),
        ({"skip": "4"}, "skip"),
        ({"fallback": [[4, "efm-1", "x", 1.0, "mA", None]], "skip": [[4, 4]]}, "also skipped"),
        ({"fallback": [[9, "efm-1", "x", 1.0, "mA", None]]}, "outside"),
        ({"fallback": [[4, "efm-1", "x", "1", "mA", None]], "skip": []}, "not a number"),
        ({"fallback": [[4, "efm-1"]]}, "fallback row"),
        ({"seq_first": 9}, "out of order"),
        ({"t0": "now"}, "t0"),
        ({"schema": "edge.event/1"}, "not a telemetry"),
    ],
)
def test_a_malformed_compact_message_is_refused_saying_why(
    change: dict[str, Any], needle: str
) -> None:
    message = {**good(), **change}
    with pytest.raises(ContractError, match=needle):
        contract.decode_telemetry(message, TABLE)


def test_a_compact_message_without_its_table_is_refused() -> None:
    with pytest.raises(ContractError, match="no metadata"):
        contract.decode_telemetry(good(), None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@given(st.sampled_from(sorted(good())), json_values)
@settings(max_examples=300, deadline=None)
def test_any_field_replaced_by_anything_decodes_or_is_refused(key: str, value: Any) -> None:
    message = {**good(), key: value}
    try:
        rows = contract.decode_telemetry(message, TABLE)
    except ContractError:
        return
    assert all(set(r) == {"seq", "device", "point", "value", "unit", "ts"} for r in rows)


@given(st.integers(min_value=0, max_value=1), st.integers(min_value=0, max_value=7), json_values)
@settings(max_examples=300, deadline=None)
def test_any_group_element_replaced_by_anything_decodes_or_is_refused(
    group: int, position: int, value: Any
) -> None:
    message = good()
    cells = message["groups"][group]
    cells[position % len(cells)] = value
    with contextlib.suppress(ContractError):
        contract.decode_telemetry(message, TABLE)


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_any_bytes_decode_to_an_object_or_are_refused(payload: bytes) -> None:
    for candidate in (payload, b"{" + payload, b"\x78" + payload, zlib.compress(payload)):
        with contextlib.suppress(ContractError):
            assert isinstance(contract.decode_payload(candidate), dict)


@given(st.integers(min_value=0, max_value=10_000))
@settings(max_examples=100, deadline=None)
def test_a_truncated_stream_is_refused(cut: int) -> None:
    deflated = contract.compress(json.dumps(good()).encode())
    cut %= len(deflated)
    with pytest.raises(ContractError):
        contract.decode_payload(deflated[:cut])


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "empty"),
        (b"[1, 2]", "neither a JSON object"),
        (b" {}", "0x20"),
        (b"\x1f\x8b\x08\x00", "0x1f"),  # gzip is not the contract's deflate
        (b'{"a": NaN}', "not JSON"),
        (b"{" * 100_000, "not JSON"),
        (b'{"a":' + b"[" * 100_000, "not JSON"),  # deep enough to exhaust the recursion
        (b'{"a": 1', "not JSON"),
        (b'{"a": "\xff"}', "not JSON"),
        (zlib.compress(b"[1, 2]"), "does not hold a JSON object"),
        (zlib.compress(b"{}") + b"junk", "after the zlib stream"),
        (b"\x78\x9c" + b"\x00" * 10, "zlib"),
    ],
)
def test_bad_payloads_are_refused_naming_the_problem(payload: bytes, needle: str) -> None:
    with pytest.raises(ContractError, match=needle):
        contract.decode_payload(payload)


def test_a_deflate_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"{" + b" " * (contract.MAX_INFLATED + 1) + b"}", 9)
    assert len(bomb) < contract.MAX_INFLATED // 500
    with pytest.raises(ContractError, match="inflates to over"):
        contract.decode_payload(bomb)
    small = zlib.compress(b'{"a":"' + b"x" * 2000 + b'"}')
    assert contract.decode_payload(small, max_inflated=4096)["a"] == "x" * 2000
    with pytest.raises(ContractError, match="over 1000 bytes"):
        contract.decode_payload(small, max_inflated=1000)


def test_plain_payloads_stay_readable_json() -> None:
    message = good()
    assert contract.decode_payload(json.dumps(message).encode()) == message
    assert contract.compress(b"{}")[0] == 0x78


def test_the_reference_site_meets_the_wire_targets_at_the_default_batch() -> None:
    # Byte counts, not timings: the benchmark's site is seeded, so these are exact.
    figures = wire.measure(readings_per_device=20, devices=50, seconds=5)
    assert figures["wire_batch_size"] == 1000
    assert figures["wire_bytes_per_reading_plain"] <= 14
    assert figures["wire_bytes_per_reading_compressed"] <= 6
    assert figures["wire_bytes_per_reading_v1"] > 100


@given(st.sampled_from(["id", "points", "alias", "point", "unit"]), json_values)
@settings(max_examples=200, deadline=None)
def test_metadata_with_any_field_replaced_gives_a_table_or_is_refused(
    field: str, value: Any
) -> None:
    message: dict[str, Any] = {
        "aliases_id": TABLE.table_id,
        "devices": [
            {"id": d, "points": [{"point": p, "unit": u, "alias": a}]}
            for a, (d, p, u) in enumerate(TABLE)
        ],
    }
    target = message["devices"][1]
    if field in ("id", "points"):
        target[field] = value
    else:
        target["points"][0][field] = value
    try:
        table = Aliases.from_metadata(message)
    except ContractError:
        return
    assert table.table_id == TABLE.table_id
