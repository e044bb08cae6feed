"""``edge replay``: recorded readings through a site's rules on a virtual clock."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.fixtures.cli import Done

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z


def tilt_site(tmp_path: Path) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["gateway"]["timezone"] = "Asia/Shanghai"
    data["derived_points"] = [
        {
            "name": "displacement",
            "kind": "displacement",
            "source": "temperature_2",
            "unit": "mm",
            "gauge_length": 1000,
        }
    ]
    data["rules"].append(
        {
            "id": "tilt-two-months",
            "kind": "sustained",
            "point": "displacement",
            "above": 4,
            "months": 2,
            "severity": "major",
        }
    )
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_replay_of_a_buffer_export_prints_every_transition_with_its_time(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    lines = []
    # Shanghai is UTC+8: local midnight of 1 Jan is 16:00 UTC on 31 Dec.
    start = T0 - 8 * 3600
    for hour in range(24 * 60):  # 60 days of hourly tilt readings, 0.26 deg = 4.54 mm
        ts = start + hour * 3600
        body = {"device": "efm-shop-101", "point": "temperature_2", "value": 0.26, "ts": ts}
        lines.append(json.dumps({"seq": hour, "stream": "telemetry", "created": ts, "body": body}))
    lines.insert(5, json.dumps({"seq": 0, "stream": "event", "body": {"kind": "gateway-started"}}))
    spike = {"ts": start + 3, "device": "efm-shop-101", "point": "residual_current", "value": 400}
    lines.insert(7, json.dumps(spike))
    readings = tmp_path / "readings.jsonl"
    readings.write_text("\n".join(lines) + "\n")
    out = tmp_path / "alarms.jsonl"

    # The last reading is at 23:00 on 29 Feb: the clock runs on to the end of the day.
    until = str(start + 60 * 86400)
    site = str(tilt_site(tmp_path))
    done = edge("replay", "--config", site, str(readings), "--out", str(out), "--until", until)
    assert done.returncode == 0, done.stderr
    transitions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(t["transition"], t["rule"], t["time"]) for t in transitions] == [
        ("raised", "residual-current-over-limit", "2025-01-01T00:00:03.000+08:00"),
        ("raised", "tilt-two-months", "2025-03-01T00:00:00.000+08:00"),
    ]
    assert "1 other records skipped, 1 out of order" in done.stderr
    assert "2 transitions" in done.stderr


def test_replay_reads_csv_with_iso_times(tmp_path: Path, edge: Callable[..., Done]) -> None:
    readings = tmp_path / "readings.csv"
    with readings.open("w", newline="") as file:
        table = csv.writer(file)
        table.writerow(["timestamp", "device", "point", "value", "quality"])
        table.writerow(["2025-01-01T00:00:00Z", "efm-shop-101", "residual_current", "120", ""])
        table.writerow(["2025-01-01T00:00:01Z", "efm-shop-101", "residual_current", "900", "bad"])
        table.writerow(["2025-01-01T00:00:02Z", "efm-shop-101", "residual_current", "310", "good"])
        table.writerow(["2025-01-01T00:00:03Z", "efm-shop-101", "residual_current", "100", "good"])
    done = edge("replay", "--config", str(EXAMPLE), str(readings))
    assert done.returncode == 0, done.stderr
    text = done.stdout.splitlines()
    assert len(text) == 2
    assert text[0].startswith("2025-01-01T00:00:02.000+00:00 raised")
    assert "value=310 threshold=300" in text[0]
    assert text[1].startswith("2025-01-01T00:00:03.000+00:00 cleared")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"ts": 1, "device": "a", "point": "b"}\n', "readings.txt:1: no value"),
        ('{"ts": "yesterday", "device": "a", "point": "b", "value": 1}\n', "neither POSIX"),
        (
            '{"ts": 1, "device": "efm-shop-101", "point": "voltage_a", "value": 1}\nnot json\n',
            "readings.txt:2: not JSON",
        ),
        ("ts,device,point,value\n1,a,b\n", "readings.txt:2: 3 columns, the header has 4"),
        ("ts,device,point,value\n1,a,b,hot\n", "value 'hot' is not a number"),
    ],
)
def test_bad_readings_are_named_with_their_line(
    tmp_path: Path, content: str, expected: str, edge: Callable[..., Done]
) -> None:
    readings = tmp_path / "readings.txt"
    readings.write_text(content)
    done = edge("replay", "--config", str(EXAMPLE), str(readings))
    assert done.returncode == 1
    assert expected in done.stderr


def test_unknown_devices_stop_the_replay_at_their_line_or_are_counted(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    readings = tmp_path / "readings.jsonl"
    rows = [
        {"ts": T0, "device": "efm-shop-101", "point": "residual_current", "value": 120},
        {"ts": T0 + 1, "device": "efm-ghost", "point": "residual_current", "value": 900},
        {"ts": T0 + 2, "device": "efm-ghost", "point": "residual_current", "value": 900},
        {"ts": T0 + 3, "device": "efm-shop-101", "point": "residual_curent", "value": 900},
    ]
    readings.write_text("".join(json.dumps(row) + "\n" for row in rows))
    refused = edge("replay", "--config", str(EXAMPLE), str(readings))
    assert refused.returncode == 1
    assert "readings.jsonl:2: device 'efm-ghost' is not in the site file" in refused.stderr
    assert refused.stdout == ""
    reported = edge("replay", "--config", str(EXAMPLE), str(readings), "--unknown", "report")
    assert reported.returncode == 0, reported.stderr
    assert reported.stdout == ""  # nothing judged, nothing raised
    assert (
        "3 readings not judged, not in the site file: efm-ghost/residual_current (2), "
        "efm-shop-101/residual_curent (1)" in reported.stderr
    )


def test_the_clock_runs_on_until_the_time_asked(tmp_path: Path, edge: Callable[..., Done]) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["rules"].append({"id": "silent", "kind": "device-offline", "silent_for": "10m"})
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data, allow_unicode=True))
    readings = tmp_path / "readings.csv"
    readings.write_text(
        "ts,device,point,value\n"
        + "".join(f"{T0 + s},{d},voltage_a,220\n" for s in range(3) for d in DEVICES)
    )
    short = edge("replay", "--config", str(site), str(readings), "--jsonl")
    assert short.returncode == 0, short.stderr
    assert short.stdout == ""  # the file ends 2 s after it starts
    longer = edge(
        "replay", "--config", str(site), str(readings), "--jsonl", "--until", "2025-01-01T01:00Z"
    )
    found = [json.loads(line) for line in longer.stdout.splitlines()]
    assert [(t["transition"], t["device"], t["ts"] - T0) for t in found] == [
        ("raised", d, 602.0) for d in DEVICES
    ]
    bad = edge("replay", "--config", str(site), str(readings), "--until", "soon")
    assert bad.returncode == 1
    assert "--until: timestamp 'soon' is neither POSIX seconds nor ISO 8601" in bad.stderr


DEVICES = ("efm-shop-101", "efm-restaurant-102", "efm-workshop-201")
