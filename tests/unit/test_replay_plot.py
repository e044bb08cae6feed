"""``edge replay --plot``: the drawing read back as XML, as a viewer would place each mark."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from edge.replay_plot import COLUMNS, Panel, Series, render_svg
from tests.fixtures.cli import Done

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
SVG = "{http://www.w3.org/2000/svg}"


def site(tmp_path: Path, *extra_rules: dict[str, Any]) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["rules"].extend(extra_rules)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trace(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "readings.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def row(ts: float, point: str, value: float, device: str = "efm-shop-101") -> dict[str, Any]:
    return {"ts": ts, "device": device, "point": point, "value": value}


def panels(svg: ET.Element) -> dict[tuple[str, str], ET.Element]:
    return {
        (g.get("data-device", ""), g.get("data-point", "")): g
        for g in svg.iter(f"{SVG}g")
        if g.get("class") == "panel"
    }


def x_of(svg: ET.Element, ts: float) -> float:
    t0, t1 = float(svg.get("data-t0", "")), float(svg.get("data-t1", ""))
    left, right = float(svg.get("data-left", "")), float(svg.get("data-right", ""))
    return left + (ts - t0) / (t1 - t0) * (right - left)


def y_of(panel: ET.Element, value: float) -> float:
    top, height = float(panel.get("data-top", "")), float(panel.get("data-height", ""))
    low, high = float(panel.get("data-ymin", "")), float(panel.get("data-ymax", ""))
    return top + height - (value - low) / (high - low) * height


def of_class(element: ET.Element, name: str, tag: str = "*") -> list[ET.Element]:
    return [e for e in element.iter(f"{SVG}{tag}" if tag != "*" else tag) if e.get("class") == name]


def test_plot_marks_every_transition_at_its_time_and_thresholds_at_their_values(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    rows = []
    for second in range(0, 7200, 10):
        # Residual current swings through 300 mA (raise) and 270 mA (clear) twice.
        rows.append(row(T0 + second, "residual_current", 200 + 150 * math.sin(second / 600)))
        rows.append(row(T0 + second, "temperature_1", 40 + second / 1000))
    rows.append(row(T0 + 10, "residual_current", 120, device="efm-restaurant-102"))
    out, plot = tmp_path / "transitions.jsonl", tmp_path / "plot.svg"
    done = edge(
        "replay", "--config", str(site(tmp_path)), str(trace(tmp_path, rows)),
        "--out", str(out), "--plot", str(plot),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    transitions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [t["transition"] for t in transitions] == ["raised", "cleared", "raised", "cleared"]
    svg = ET.parse(plot).getroot()
    drawn = panels(svg)
    # One panel per judged device and point the trace has.
    assert set(drawn) == {
        ("efm-shop-101", "residual_current"),
        ("efm-shop-101", "temperature_1"),
        ("efm-restaurant-102", "residual_current"),
    }
    current = drawn["efm-shop-101", "residual_current"]
    marks = of_class(current, "transition", "g")
    assert [(m.get("data-kind"), float(m.get("data-ts", ""))) for m in marks] == [
        (t["transition"], t["ts"]) for t in transitions
    ]
    for mark, transition in zip(marks, transitions, strict=True):
        line = mark.find(f"{SVG}line")
        assert line is not None
        assert float(line.get("x1", "")) == pytest.approx(x_of(svg, transition["ts"]), abs=0.01)
        title = mark.find(f"{SVG}title")
        assert title is not None
        assert transition["rule"] in (title.text or "")
    assert of_class(drawn["efm-shop-101", "temperature_1"], "transition", "g") == []
    for key, levels in {
        ("efm-shop-101", "residual_current"): {"raise_at": 300.0, "clear_below": 270.0},
        ("efm-shop-101", "temperature_1"): {"raise_at": 70.0, "clear_below": 65.0},
    }.items():
        lines = of_class(drawn[key], "threshold", "line")
        assert {ln.get("data-field"): float(ln.get("data-value", "")) for ln in lines} == levels
        for line in lines:
            y = y_of(drawn[key], float(line.get("data-value", "")))
            assert float(line.get("y1", "")) == pytest.approx(y, abs=0.01)
        (band,) = of_class(drawn[key], "hysteresis", "rect")
        low, high = sorted(levels.values())
        assert float(band.get("y", "")) == pytest.approx(y_of(drawn[key], high), abs=0.01)
        height = y_of(drawn[key], low) - y_of(drawn[key], high)
        assert float(band.get("height", "")) == pytest.approx(height, abs=0.02)
    assert "1 panels" not in done.stderr
    assert "3 panels" in done.stderr


def test_html_plot_is_one_page_holding_the_drawing(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    rows = [row(T0 + s, "residual_current", 100 + s) for s in range(0, 600, 5)]
    plot = tmp_path / "plot.html"
    done = edge(
        "replay", "--config", str(site(tmp_path)), str(trace(tmp_path, rows)), "--plot", str(plot)
    )
    assert done.returncode == 0, done.stderr
    page = plot.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert "http://" not in page.replace(SVG[1:-1], "")
    svg = ET.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])
    (panel,) = panels(svg).values()
    assert len(of_class(panel, "transition", "g")) == 1  # 300 reached at 200 s


def test_a_months_long_trace_is_bounded_and_keeps_every_extreme() -> None:
    series = Series(T0)
    spike_at, dip_at = T0 + 123_457, T0 + 401_003
    for second in range(500_000):
        ts = T0 + second
        value = 999.0 if ts == spike_at else -999.0 if ts == dip_at else 10.0 + second % 7
        series.add(ts, value)
    used = series.columns()
    assert COLUMNS // 2 <= len(used) <= COLUMNS
    assert series.readings == 500_000
    assert sum(series.n) == 500_000
    assert max(series.hi) == 999.0
    assert series.hi_ts[series.hi.index(999.0)] == spike_at
    assert min(series.lo) == -999.0
    assert series.lo_ts[series.lo.index(-999.0)] == dip_at
    panel = Panel("efm-shop-101", "residual_current", series=series)
    svg = ET.fromstring(render_svg([panel], ZoneInfo("UTC")))
    (path,) = of_class(svg, "readings", "path")
    vertices = path.get("d", "").split()
    assert len(vertices) <= 2 * COLUMNS
    ys = [float(v[1:].split(",")[1]) for v in vertices]
    (drawn,) = panels(svg).values()
    assert min(ys) == pytest.approx(y_of(drawn, 999.0), abs=0.01)
    assert max(ys) == pytest.approx(y_of(drawn, -999.0), abs=0.01)


def test_gaps_of_days_break_the_line_and_nan_is_marked_not_drawn(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    rows = [row(T0 + s, "temperature_1", 30.0 + s / 100) for s in range(0, 600, 2)]
    rows.append({**row(T0 + 600, "temperature_1", 0.0), "value": "nan"})
    rows += [row(T0 + 4 * 86_400 + s, "temperature_1", 50.0) for s in range(0, 600, 2)]
    plot = tmp_path / "plot.svg"
    done = edge(
        "replay", "--config", str(site(tmp_path)), str(trace(tmp_path, rows)), "--plot", str(plot)
    )
    assert done.returncode == 0, done.stderr
    svg = ET.parse(plot).getroot()
    (panel,) = panels(svg).values()
    (path,) = of_class(panel, "readings", "path")
    d = path.get("d", "")
    assert "nan" not in d.lower()
    assert d.count("M") == 2
    (fault,) = of_class(panel, "fault", "line")
    assert float(fault.get("x1", "")) == pytest.approx(x_of(svg, T0 + 600), abs=1.0)


def test_a_single_reading_is_a_dot_and_a_point_without_thresholds_says_so(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    rules = [
        {
            "id": "voltage-jump",
            "kind": "sudden-change",
            "point": "voltage_a",
            "change": 20,
            "window": "10s",
        },
        {"id": "odd-current", "kind": "abnormal", "point": "current_a", "sensitivity": 4.0},
    ]
    rows = [row(T0, "voltage_a", 230.0), row(T0, "current_a", 3.0)]
    plot = tmp_path / "plot.svg"
    done = edge(
        "replay",
        "--config", str(site(tmp_path, *rules)), str(trace(tmp_path, rows)),
        "--plot", str(plot),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    svg = ET.parse(plot).getroot()
    drawn = panels(svg)
    assert set(drawn) == {("efm-shop-101", "voltage_a"), ("efm-shop-101", "current_a")}
    voltage = drawn["efm-shop-101", "voltage_a"]
    assert of_class(voltage, "threshold", "line") == []
    (dot,) = of_class(voltage, "reading", "circle")
    assert float(dot.get("cx", "")) == pytest.approx(x_of(svg, T0), abs=0.01)
    assert float(dot.get("cy", "")) == pytest.approx(y_of(voltage, 230.0), abs=0.01)
    notes = [n.text or "" for n in of_class(voltage, "note", "text")]
    assert any("sudden-change by 20" in n for n in notes)
    notes = [n.text or "" for n in of_class(drawn["efm-shop-101", "current_a"], "note", "text")]
    assert any("baseline" in n for n in notes)
    # One reading: the baseline is still learning, so none is drawn.
    assert of_class(drawn["efm-shop-101", "current_a"], "baseline", "path") == []


def test_an_abnormal_rules_learned_baseline_is_drawn_with_its_band(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    rule = {
        "id": "odd-current",
        "kind": "abnormal",
        "point": "current_a",
        "sensitivity": 4.0,
        "baseline": "1d",
        "learning": "1h",
        "min_samples": 5,
        "max_samples": 1000,
    }
    # Three hours at 3 A with a little noise, once a minute; then a step to 6 A.
    rows = [row(T0 + 60 * n, "current_a", 2.9 + 0.1 * (n % 3)) for n in range(180)]
    rows.append(row(T0 + 60 * 180, "current_a", 6.0))
    plot = tmp_path / "plot.svg"
    done = edge(
        "replay",
        "--config", str(site(tmp_path, rule)), str(trace(tmp_path, rows)),
        "--plot", str(plot),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "odd-current" in done.stdout  # the step raised it
    svg = ET.parse(plot).getroot()
    panel = panels(svg)["efm-shop-101", "current_a"]
    (median,) = of_class(panel, "baseline", "path")
    (band,) = of_class(panel, "baseline-band", "polygon")
    assert median.get("data-rule") == band.get("data-rule") == "odd-current"
    points = [p.lstrip("ML").split(",") for p in (median.get("d") or "").split()]
    xs = [float(x) for x, _ in points]
    # Drawn from the end of learning (1 h) on, at the median of 3 A.
    assert min(xs) >= x_of(svg, T0 + 3600) - 1
    noise = 0.5  # pixels
    for _, y in points:
        assert float(y) == pytest.approx(y_of(panel, 3.0), abs=noise)
    corners = [float(c.split(",")[1]) for c in (band.get("points") or "").split()]
    # The band straddles the median, and the 6 A step is outside it.
    assert min(corners) < y_of(panel, 3.0) < max(corners)
    assert y_of(panel, 6.0) < min(corners)


def test_an_empty_trace_still_gives_a_drawing_that_says_so(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    plot = tmp_path / "plot.svg"
    done = edge(
        "replay", "--config", str(site(tmp_path)), str(trace(tmp_path, [])), "--plot", str(plot)
    )
    assert done.returncode == 0, done.stderr
    svg = ET.parse(plot).getroot()
    assert panels(svg) == {}
    assert any("no readings" in (n.text or "") for n in of_class(svg, "note", "text"))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("missing/plot.svg", "does not exist"),
        ("plot.png", "must end in .svg or .html"),
    ],
)
def test_a_plot_that_cannot_be_written_is_refused_before_the_replay(
    tmp_path: Path, edge: Callable[..., Done], name: str, problem: str
) -> None:
    rows = [row(T0, "residual_current", 400.0)]
    plot = tmp_path / name
    done = edge(
        "replay", "--config", str(site(tmp_path)), str(trace(tmp_path, rows)), "--plot", str(plot)
    )
    assert done.returncode == 2
    assert problem in done.stderr
    assert f"--plot {plot}" in done.stderr
    assert done.stdout == ""  # refused before judging anything
    assert not plot.exists()


def test_a_device_offline_transition_marks_every_panel_of_its_device(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    offline = {"id": "silent", "kind": "device-offline", "silent_for": "5m", "severity": "major"}
    rows = [
        row(T0 + s, p, 10.0) for s in range(0, 60, 5) for p in ("residual_current", "temperature_1")
    ]
    plot, out = tmp_path / "plot.svg", tmp_path / "out.jsonl"
    done = edge(
        "replay",
        "--config", str(site(tmp_path, offline)), str(trace(tmp_path, rows)),
        "--until", str(T0 + 1200), "--out", str(out), "--plot", str(plot),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    raised = [json.loads(line) for line in out.read_text().splitlines()]
    shop = [t for t in raised if t["device"] == "efm-shop-101"]
    assert [t["rule"] for t in shop] == ["silent"]
    drawn = panels(ET.parse(plot).getroot())
    for point in ("residual_current", "temperature_1"):
        marks = of_class(drawn["efm-shop-101", point], "transition", "g")
        assert [(m.get("data-rule"), float(m.get("data-ts", ""))) for m in marks] == [
            ("silent", shop[0]["ts"])
        ]


def test_each_rule_kind_draws_its_own_levels_with_overrides_per_device(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    rules = [
        {
            "id": "brownout",
            "kind": "under-limit",
            "point": "voltage_a",
            "raise_at": 200,
            "clear_above": 210,
            "escalate": {"at": 180},
            "severity": "major",
        },
        {
            "id": "warm-day",
            "kind": "sustained",
            "point": "temperature_2",
            "above": 50,
            "days": 1,
            "severity": "minor",
        },
    ]
    data = yaml.safe_load(site(tmp_path, *rules).read_text())
    data["rules"][0]["overrides"] = {"efm-restaurant-102": {"raise_at": 400, "clear_below": 350}}
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    rows = []
    for device in ("efm-shop-101", "efm-restaurant-102"):
        rows += [row(T0 + s, "voltage_a", 220.0 - s / 10, device) for s in range(0, 600, 10)]
        rows += [row(T0 + s, "temperature_2", 40.0, device) for s in range(0, 600, 10)]
        rows += [row(T0 + s, "residual_current", 100.0, device) for s in range(0, 600, 10)]
    plot = tmp_path / "plot.svg"
    done = edge("replay", "--config", str(config), str(trace(tmp_path, rows)), "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    drawn = panels(ET.parse(plot).getroot())

    def levels(device: str, point: str) -> dict[str, float]:
        lines = of_class(drawn[device, point], "threshold", "line")
        return {
            f"{ln.get('data-rule')} {ln.get('data-field')}": float(ln.get("data-value", ""))
            for ln in lines
        }

    assert levels("efm-shop-101", "voltage_a") == {
        "brownout raise_at": 200.0,
        "brownout clear_above": 210.0,
        "brownout escalate.at": 180.0,
    }
    assert levels("efm-shop-101", "temperature_2") == {"warm-day above": 50.0}
    assert levels("efm-shop-101", "residual_current") == {
        "residual-current-over-limit raise_at": 300.0,
        "residual-current-over-limit clear_below": 270.0,
    }
    # The restaurant's override is what the engine judges it by, so what is drawn.
    assert levels("efm-restaurant-102", "residual_current") == {
        "residual-current-over-limit raise_at": 400.0,
        "residual-current-over-limit clear_below": 350.0,
    }
    (band,) = of_class(drawn["efm-shop-101", "voltage_a"], "hysteresis", "rect")
    assert (float(band.get("data-low", "")), float(band.get("data-high", ""))) == (200.0, 210.0)
    marks = of_class(drawn["efm-shop-101", "voltage_a"], "transition", "g")
    # 200 V reached at 200 s, 180 V at 400 s.
    assert [m.get("data-kind") for m in marks] == ["raised", "escalated"]


def test_a_derived_point_is_drawn_from_the_values_the_engine_judged(
    tmp_path: Path, edge: Callable[..., Done]
) -> None:
    data = yaml.safe_load(
        site(
            tmp_path,
            {"id": "tilt", "kind": "sustained", "point": "displacement", "above": 4, "days": 1},
        ).read_text()
    )
    data["derived_points"] = [
        {
            "name": "displacement",
            "kind": "displacement",
            "source": "temperature_2",
            "unit": "mm",
            "gauge_length": 1000,
        }
    ]
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    rows = [row(T0 + s, "temperature_2", 0.26 if s < 300 else 0.1) for s in range(0, 600, 10)]
    plot = tmp_path / "plot.svg"
    done = edge("replay", "--config", str(config), str(trace(tmp_path, rows)), "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    panel = panels(ET.parse(plot).getroot())["efm-shop-101", "displacement"]
    (line,) = of_class(panel, "threshold", "line")
    assert float(line.get("data-value", "")) == 4.0
    (path,) = of_class(panel, "readings", "path")
    ys = {round(float(v[1:].split(",")[1]), 2) for v in path.get("d", "").split()}
    high, low = (1000 * math.tan(math.radians(a)) for a in (0.26, 0.1))  # 4.54 mm, 1.75 mm
    assert ys == {round(y_of(panel, high), 2), round(y_of(panel, low), 2)}


@pytest.mark.parametrize(
    "values",
    [
        [1e17, 1e17 + 16],  # a spread below the values' precision
        [-1e308, 1e308],
        [math.nan, math.inf, -math.inf],
        [0.0, 0.0],
    ],
)
def test_absurd_values_still_give_a_finite_drawing(values: list[float]) -> None:
    series = Series(T0)
    for n, value in enumerate(values):
        series.add(T0 + n, value)
    svg = render_svg([Panel("efm-shop-101", "residual_current", series=series)], ZoneInfo("UTC"))
    root = ET.fromstring(svg)
    for element in root.iter():
        for name in ("x", "y", "x1", "y1", "cx", "cy", "height"):
            if name in element.attrib and not element.attrib[name].endswith("%"):
                assert math.isfinite(float(element.attrib[name])), (element.tag, name)
    for path in of_class(root, "readings", "path"):
        for vertex in path.get("d", "").split():
            assert all(math.isfinite(float(c)) for c in vertex[1:].split(",")), vertex
    for tick in root.iter(f"{SVG}text"):
        if tick.get("font-size") == "10" and tick.get("text-anchor") == "end":
            assert "nan" not in (tick.text or "")
            assert "inf" not in (tick.text or "")
