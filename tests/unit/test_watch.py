"""``edge watch``'s frame: what an installer reads over SSH."""

from __future__ import annotations

from typing import Any

from edge.watch import render

GOOD = {"value": 120.0, "unit": "mA", "age_s": 0.4, "quality": "good"}


def status(**device: Any) -> dict[str, Any]:
    return {
        "gateway": "gw-1",
        "site": {"name": "Block 3"},
        "version": "0.1.0",
        "uptime_s": 12.0,
        "uplink": "online",
        "buzzer": "off",
        "devices": [
            {
                "id": "efm-1",
                "status": "online",
                "reason": "",
                "points": {
                    "residual_current": {
                        "value": 120.0,
                        "unit": "mA",
                        "age_s": 0.4,
                        "quality": "good",
                    }
                },
                **device,
            }
        ],
        "alarms": [],
        "buses": {"lan": {"kind": "modbus", "requests": 9, "timeouts": 1}},
    }


def test_a_frame_shows_value_unit_age_and_bus_counters() -> None:
    frame = render(status())
    line = next(line for line in frame.splitlines() if line.startswith("efm-1"))
    assert line.split() == ["efm-1", "online", "residual_current", "120", "mA", "0.4s"]
    assert "lan          modbus  requests=9 timeouts=1" in frame
    assert "ALARMS (0)\n  none" in frame


def test_an_old_or_bad_reading_and_an_offline_device_say_so() -> None:
    old = {"residual_current": {"value": 7.5, "unit": "mA", "age_s": 42.0, "quality": "bad"}}
    frame = render(status(status="offline", reason="no answer", points=old))
    assert "7.50 mA      42.0s stale bad" in frame
    assert "last answers above; now: no answer" in frame
    frame = render(status(status="waiting", points={}))
    assert "efm-1                  waiting  (no reading yet)" in frame
