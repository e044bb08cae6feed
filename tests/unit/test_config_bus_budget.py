"""RS-485 lines that cannot carry their polls are warned about, from the scheduler's own read
plan: the cycle time, by how much the intervals are missed, fast lanes that do not fit, and
answer timeouts as long as an interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus import known_models
from drivers.modbus.codec import read_chars
from drivers.modbus.line_budget import LinePoll, line_load, poll_seconds
from drivers.modbus.model import load_model, read_plan
from edge.config.loader import load_site_checked

HEAD = """gateway: {id: gw-1, site: {name: Block 3}}
buses:
  - id: rs485-1
    kind: modbus-rtu
    port: "socket://127.0.0.1:7000"
    baudrate: BAUD
    timeout: TIMEOUT
devices:
"""
TAIL = """rules: []
outputs: {pin_factory: mock, buzzer: {pin: 17}}
uplink: {brokers: ["mqtt://127.0.0.1:1883"]}
buffer: {path: outbox.sqlite}
# A short alarm window: a minute of 14 points every 50 ms is more than a device may hold.
storage: {alarm_window: {pre: 20s}}
"""
WHERE = '{building: B3, floor: "1", room: r, venue_type: shop}'


def site_warnings(
    tmp_path: Path,
    count: int,
    interval: str,
    *,
    baud: int = 9600,
    timeout: str = "30ms",
    fast: str | None = None,
) -> list[str]:
    devices = "".join(
        f"  - {{id: efm-{n}, model: efm-ref, bus: rs485-1, address: {n + 1}, "
        f"poll_interval: {interval}, {f'fast_interval: {fast}, ' if fast else ''}"
        f"location: {WHERE}}}\n"
        for n in range(count)
    )
    text = HEAD.replace("BAUD", str(baud)).replace("TIMEOUT", timeout) + devices + TAIL
    path = tmp_path / "site.yaml"
    path.write_text(text)
    _, found = load_site_checked(path, known_models=known_models())
    return [f"{w.field}: {w.message}" for w in found]


def test_one_poll_costs_what_the_scheduler_puts_on_the_wire() -> None:
    model = load_model("efm-ref")
    plan = read_plan(model)
    # Below 19200 baud every read is read_chars characters of 11 bits, silences included.
    expected = sum(read_chars(count) for _, count in plan) * 11 / 9600
    assert poll_seconds(model, 9600) == expected
    assert round(poll_seconds(model, 9600), 4) == 0.055  # docs/devices/efm-ref.md
    # Above 19200 baud the silences are a fixed 1.75 ms each.
    assert poll_seconds(model, 115200) == (48 - 7) * 11 / 115200 + 2 * 0.00175
    assert line_load([LinePoll("a", 0.055, 0.05)]) == pytest.approx(1.1)


def test_thirty_monitors_every_50ms_at_9600_baud_are_read_every_1_65s(tmp_path: Path) -> None:
    (warning,) = site_warnings(tmp_path, 30, "50ms")
    assert warning.startswith("buses[0]: the line needs at least 1.65s to poll its 30 devices")
    assert "ask for 3300% of the line" in warning
    assert "efm-0 every 1.65s instead of 50ms" in warning


def test_a_line_within_its_budget_says_nothing(tmp_path: Path) -> None:
    assert site_warnings(tmp_path, 30, "2s") == []
    # The same 30 monitors every 250ms fit at 115200 baud.
    assert site_warnings(tmp_path, 30, "250ms", baud=115200) == []


def test_fast_lanes_that_do_not_fit_beside_the_full_polls(tmp_path: Path) -> None:
    (warning,) = site_warnings(tmp_path, 10, "1s", fast="100ms")
    assert warning.startswith("devices[0].fast_interval: the fast lanes of bus 'rs485-1' do not")
    assert "(full polls 55%" in warning


def test_a_timeout_as_long_as_a_poll_interval(tmp_path: Path) -> None:
    found = site_warnings(tmp_path, 2, "300ms", timeout="300ms")
    assert found == [
        "buses[0].timeout: the bus waits up to 300ms for an answer, at least as long as the "
        "interval it serves (efm-0 poll interval 300ms, efm-1 poll interval 300ms): one silent "
        "device holds the line for a whole interval; shorten the timeout or lengthen the interval"
    ]
