"""``edge replay --plot FILE``: every judged point over time, its thresholds and transitions.

An engineer tuning a threshold on months of history wants to *see* why each alarm fired: the
readings, the limit lines, the hysteresis band between raising and clearing, and a mark at
every transition. This module is pure: readings and transitions in (:class:`PlotRecorder`),
SVG text out (:func:`render_svg`); the replay command does the file I/O.

Months of one-second readings cannot each become a vertex: every series is downsampled as it
streams in, to at most :data:`COLUMNS` time columns, each keeping its lowest and highest
reading (and when they came), so a file stays within a few MB and no extreme disappears. A
column's width doubles (neighbours merged) whenever the series outgrows it, so memory is
bounded too and the trace is read once.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo

from drivers import Reading
from edge.config.model import (
    AbnormalRule,
    OverLimitRule,
    SuddenChangeRule,
    SustainedRule,
    UnderLimitRule,
)
from edge.rules import RuleEngine, Transition

__all__ = [
    "COLUMNS",
    "Guide",
    "Panel",
    "PlotRecorder",
    "Series",
    "panels_of",
    "render_html",
    "render_svg",
]

#: Most time columns kept per series: at least twice the plot's pixel width, so a column is
#: never wider than a pixel once the series spans the plot.
COLUMNS = 2048
#: The drawing's geometry, in SVG user units (pixels).
WIDTH = 1000
LEFT = 70
RIGHT = 20
PANEL_HEIGHT = 200
PANEL_GAP = 60
TOP = 50
#: Largest magnitude the value axis spans; beyond it a reading is drawn off the panel.
BOUND = 1e300
#: A series breaks (no line drawn) over a silence longer than this many typical intervals.
GAP_INTERVALS = 10

COLOURS = {
    "raised": "#d62728",
    "escalated": "#7b0000",
    "cleared": "#2ca02c",
}
OTHER_COLOUR = "#7f7f7f"


class Series:
    """The readings of one device and point, downsampled while they stream in.

    Column ``k`` holds the readings from ``origin + k * width`` on; each keeps its minimum and
    maximum with their times, its first and last reading's time, how many readings it had and
    how many of them had no usable value (NaN, infinite, bad quality).
    """

    __slots__ = (
        "count",
        "faults",
        "first",
        "hi",
        "hi_ts",
        "last",
        "lo",
        "lo_ts",
        "n",
        "origin",
        "readings",
        "unit",
        "width",
    )

    def __init__(self, origin: float, unit: str = "") -> None:
        self.origin = origin
        self.width = 1.0
        self.unit = unit
        self.readings = 0
        # Unboxed arrays: a site's hundreds of series stay a few hundred kB each at most.
        self.lo = array("d", [math.inf]) * COLUMNS
        self.hi = array("d", [-math.inf]) * COLUMNS
        self.lo_ts = array("d", [0.0]) * COLUMNS
        self.hi_ts = array("d", [0.0]) * COLUMNS
        self.first = array("d", [math.inf]) * COLUMNS
        self.last = array("d", [-math.inf]) * COLUMNS
        self.n = array("q", [0]) * COLUMNS
        self.faults = array("q", [0]) * COLUMNS
        self.count = 0

    def add(self, ts: float, value: float, good: bool = True) -> None:
        self.readings += 1
        # A reading older than the series' first (out of order) goes to the first column.
        index = max(0, int((ts - self.origin) / self.width))
        if index >= COLUMNS:
            index //= self._widen(index)
        if self.n[index] == 0:
            self.count += 1
        self.n[index] += 1
        self.first[index] = min(self.first[index], ts)
        self.last[index] = max(self.last[index], ts)
        if not good or not math.isfinite(value):
            self.faults[index] += 1
            return
        if value < self.lo[index]:
            self.lo[index] = value
            self.lo_ts[index] = ts
        if value > self.hi[index]:
            self.hi[index] = value
            self.hi_ts[index] = ts

    def _widen(self, index: int) -> int:
        """Make columns wide enough for column ``index``; returns by what factor."""
        factor = 1
        while index // factor >= COLUMNS:
            factor *= 2
        self.width *= factor
        lo, hi, lo_ts, hi_ts = self.lo, self.hi, self.lo_ts, self.hi_ts
        first, last, n, faults = self.first, self.last, self.n, self.faults
        merged = Series(self.origin, self.unit)
        for k in range(COLUMNS):
            if not n[k]:
                continue
            j = k // factor
            if not merged.n[j]:
                merged.count += 1
            merged.n[j] += n[k]
            merged.faults[j] += faults[k]
            merged.first[j] = min(merged.first[j], first[k])
            merged.last[j] = max(merged.last[j], last[k])
            if lo[k] < merged.lo[j]:
                merged.lo[j], merged.lo_ts[j] = lo[k], lo_ts[k]
            if hi[k] > merged.hi[j]:
                merged.hi[j], merged.hi_ts[j] = hi[k], hi_ts[k]
        self.lo, self.hi, self.lo_ts, self.hi_ts = merged.lo, merged.hi, merged.lo_ts, merged.hi_ts
        self.first, self.last, self.n, self.faults = (
            merged.first,
            merged.last,
            merged.n,
            merged.faults,
        )
        self.count = merged.count
        return factor

    def columns(self) -> list[int]:
        """Indexes of the columns that had a reading, in time order."""
        return [k for k in range(COLUMNS) if self.n[k]]

    def span(self) -> tuple[float, float] | None:
        used = self.columns()
        if not used:
            return None
        return self.first[used[0]], self.last[used[-1]]

    def value_range(self) -> tuple[float, float] | None:
        lows = [v for v in self.lo if v != math.inf]
        if not lows:
            return None
        return min(lows), max(v for v in self.hi if v != -math.inf)


class PlotRecorder:
    """Collects what the replay saw: every reading (downsampled) and every transition."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = {}
        self.transitions: list[Transition] = []
        #: Per (device, point, rule): the abnormal baseline's median, and median -/+ limit.
        self.baselines: dict[tuple[str, str, str], Baseline] = {}

    def reading(self, reading: Reading) -> None:
        key = (reading.device_id, reading.point)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(reading.ts, reading.unit)
        series.add(reading.ts, reading.value, reading.quality == "good")

    def transition(self, transition: Transition) -> None:
        self.transitions.append(transition)

    def watch(
        self, readings: Iterable[Reading | None], engine: RuleEngine | None = None
    ) -> Iterator[Reading | None]:
        """``readings``, passed on unchanged, each recorded once it has been judged, with the
        derived points' readings ``engine`` computed from it."""
        for reading in readings:
            yield reading
            # Resumed when the next reading is asked for: this one has been judged.
            if reading is not None:
                self.reading(reading)
                if engine is not None:
                    self.baseline(engine, reading)
                    for derived in engine.derived_readings(reading):
                        self.reading(derived)
                        self.baseline(engine, derived)

    def baseline(self, engine: RuleEngine, reading: Reading) -> None:
        """Note the baseline each ``abnormal`` rule judged ``reading`` by (once learned)."""
        for rule_id, median, limit in engine.baselines(reading):
            key = (reading.device_id, reading.point, rule_id)
            found = self.baselines.get(key)
            if found is None:
                found = self.baselines[key] = Baseline(rule_id, reading.ts)
            found.add(reading.ts, median, limit)


class Baseline:
    """An ``abnormal`` rule's learned baseline over time, downsampled like the readings: its
    median, and the band (median -/+ limit) beyond which a reading raises."""

    __slots__ = ("high", "low", "median", "rule_id")

    def __init__(self, rule_id: str, origin: float) -> None:
        self.rule_id = rule_id
        self.median = Series(origin)
        self.low = Series(origin)
        self.high = Series(origin)

    def add(self, ts: float, median: float, limit: float) -> None:
        self.median.add(ts, median)
        self.low.add(ts, median - limit)
        self.high.add(ts, median + limit)


@dataclass(frozen=True)
class Guide:
    """A horizontal line: a threshold of a rule on one device."""

    rule_id: str
    #: The rule's field it draws: raise_at, clear_below, clear_above, escalate.at, above, below.
    field: str
    value: float
    #: ``raise`` (solid), ``clear`` (dashed), ``escalate`` (solid, dark).
    role: str


@dataclass
class Panel:
    """One judged point of one device."""

    device: str
    point: str
    unit: str = ""
    series: Series | None = None
    guides: list[Guide] = field(default_factory=list)
    #: Hysteresis bands: (rule id, low, high), between raising and clearing.
    bands: list[tuple[str, float, float]] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    #: Learned baselines of abnormal rules on this point.
    baselines: list[Baseline] = field(default_factory=list)
    #: What the panel cannot draw, said in words (rules without a level to draw).
    notes: list[str] = field(default_factory=list)


def _guides(rule: object, panel: Panel) -> None:
    if isinstance(rule, OverLimitRule | UnderLimitRule):
        clear_field = "clear_below" if isinstance(rule, OverLimitRule) else "clear_above"
        clear = rule.clear_below if isinstance(rule, OverLimitRule) else rule.clear_above
        panel.guides.append(Guide(rule.id, "raise_at", rule.raise_at, "raise"))
        panel.guides.append(Guide(rule.id, clear_field, clear, "clear"))
        if clear != rule.raise_at:
            panel.bands.append((rule.id, min(clear, rule.raise_at), max(clear, rule.raise_at)))
        if rule.escalate is not None:
            panel.guides.append(Guide(rule.id, "escalate.at", rule.escalate.at, "escalate"))
    elif isinstance(rule, SustainedRule):
        name, level = ("above", rule.above) if rule.above is not None else ("below", rule.below)
        if level is not None:
            panel.guides.append(Guide(rule.id, name, level, "raise"))
    elif isinstance(rule, SuddenChangeRule):
        size = f"{rule.change:g}" if rule.change is not None else f"{rule.change_percent:g}%"
        panel.notes.append(f"{rule.id}: sudden-change by {size} (no level to draw)")
    elif isinstance(rule, AbnormalRule):
        panel.notes.append(
            f"{rule.id}: abnormal; its learned baseline median (dotted) and the band beyond "
            "which a reading raises (shaded), from the end of learning on"
        )
    else:
        kind = getattr(rule, "kind", type(rule).__name__)
        panel.notes.append(f"{getattr(rule, 'id', '?')}: {kind} (no level to draw)")


def panels_of(engine: RuleEngine, recorder: PlotRecorder) -> list[Panel]:
    """A panel for every device and point a rule judges and the replay saw readings or
    transitions of, with the thresholds the engine judges that device by (overrides
    included); grouped by device, in the order the rules name the points."""
    judged: dict[tuple[str, str], Panel] = {}
    for rule in engine.rules:
        point = getattr(rule, "point", None)
        if point is None:
            continue
        for device in engine.devices_of(rule):
            key = (device, point)
            panel = judged.get(key)
            if panel is None:
                panel = judged[key] = Panel(device, point)
            tuned = engine.thresholds(rule.id, device)
            if tuned is not None:
                _guides(tuned, panel)
    for key, series in recorder.series.items():
        if key in judged:
            judged[key].series = series
            judged[key].unit = series.unit
    for (device, point, _), baseline in recorder.baselines.items():
        if (device, point) in judged:
            judged[device, point].baselines.append(baseline)
    by_device: dict[str, list[Panel]] = {}
    for panel in judged.values():
        by_device.setdefault(panel.device, []).append(panel)
    everywhere = list(judged.values())
    for transition in recorder.transitions:
        # A transition without a point (device-offline) marks every panel of its device; a
        # composite's carries the reading that completed it, so marks that reading's panel.
        device = transition.device_id
        for panel in by_device.get(device, []) if device else everywhere:
            if transition.point in ("", panel.point):
                panel.transitions.append(transition)
    devices = list(dict.fromkeys(device for device, _ in judged))
    drawn = [p for p in judged.values() if p.series is not None or p.transitions]
    return sorted(drawn, key=lambda p: devices.index(p.device))


# -- drawing -----------------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _nice_step(span: float, count: int) -> float:
    raw = span / max(count, 1)
    magnitude = float(10.0 ** math.floor(math.log10(raw)))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _time_label(ts: float, span: float, zone: ZoneInfo) -> str:
    when = datetime.fromtimestamp(ts, zone)
    if span > 3 * 86_400:
        return when.strftime("%Y-%m-%d")
    if span > 86_400:
        return when.strftime("%m-%d %H:%M")
    if span > 600:
        return when.strftime("%H:%M")
    return when.strftime("%H:%M:%S")


def _gap_limit(series: Series, used: Sequence[int]) -> float:
    first, last = series.first[used[0]], series.last[used[-1]]
    typical = (last - first) / max(series.readings - 1, 1)
    return max(2 * series.width, GAP_INTERVALS * typical)


class _Axis:
    def __init__(self, t0: float, t1: float, y0: float, y1: float, top: float) -> None:
        self.t0, self.t1, self.y0, self.y1, self.top = t0, t1, y0, y1, top

    def x(self, ts: float) -> float:
        return LEFT + (ts - self.t0) / (self.t1 - self.t0) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return self.top + PANEL_HEIGHT - (value - self.y0) / (self.y1 - self.y0) * PANEL_HEIGHT


def _time_range(panels: Sequence[Panel]) -> tuple[float, float]:
    times: list[float] = []
    for panel in panels:
        span = panel.series.span() if panel.series is not None else None
        if span is not None:
            times.extend(span)
        times.extend(t.ts for t in panel.transitions)
    t0, t1 = min(times), max(times)
    if t1 - t0 < 1.0:
        # A single reading (or all at one second): a minute around it.
        t0, t1 = t0 - 30.0, t1 + 30.0
    return t0, t1


def _value_range(panel: Panel) -> tuple[float, float]:
    values = [g.value for g in panel.guides]
    values.extend(t.value for t in panel.transitions if t.value is not None)
    values = [v for v in values if math.isfinite(v)]
    for series in [panel.series, *(b.low for b in panel.baselines)]:
        found = None if series is None else series.value_range()
        if found is not None:
            values.extend(found)
    for baseline in panel.baselines:
        found = baseline.high.value_range()
        if found is not None:
            values.extend(found)
    if not values:
        return 0.0, 1.0
    # Clamped so that the span and its padding stay finite for absurd values (1e308).
    low, high = max(min(values), -BOUND), min(max(values), BOUND)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    return low - pad, high + pad


def _series_svg(series: Series, axis: _Axis) -> list[str]:
    used = series.columns()
    drawable = [k for k in used if series.lo[k] != math.inf]
    out: list[str] = []
    if drawable:
        limit = _gap_limit(series, used)
        runs: list[list[int]] = [[drawable[0]]]
        for k in drawable[1:]:
            if series.first[k] - series.last[runs[-1][-1]] > limit:
                runs.append([])
            runs[-1].append(k)
        path: list[str] = []
        for run in runs:
            if len(run) == 1 and series.lo[run[0]] == series.hi[run[0]]:
                k = run[0]
                out.append(
                    f'<circle class="reading" cx="{_num(axis.x(series.lo_ts[k]))}" '
                    f'cy="{_num(axis.y(series.lo[k]))}" r="2.5" fill="#1f77b4"/>'
                )
                continue
            command = "M"
            for k in run:
                ends = [(series.lo_ts[k], series.lo[k]), (series.hi_ts[k], series.hi[k])]
                ends.sort()
                for ts, value in ends:
                    path.append(f"{command}{_num(axis.x(ts))},{_num(axis.y(value))}")
                    command = "L"
        if path:
            out.append(
                f'<path class="readings" d="{" ".join(path)}" fill="none" stroke="#1f77b4" '
                'stroke-width="1" stroke-linejoin="round"/>'
            )
    bottom = axis.top + PANEL_HEIGHT
    for k in used:
        if series.faults[k]:
            x = _num(axis.x(series.first[k]))
            out.append(
                f'<line class="fault" x1="{x}" x2="{x}" y1="{_num(bottom - 6)}" '
                f'y2="{_num(bottom)}" stroke="#ff7f0e" stroke-width="2">'
                f"<title>{series.faults[k]} readings without a value (NaN or bad quality)"
                "</title></line>"
            )
    return out


def _baseline_svg(baseline: Baseline, axis: _Axis) -> list[str]:
    """The band (shaded, from each column's widest limits) and the median (dotted, through
    each column's middle), broken where the baseline has no column."""
    used = [k for k in baseline.median.columns() if baseline.median.lo[k] != math.inf]
    if not used:
        return []
    low, high, median = baseline.low, baseline.high, baseline.median
    rule = escape(baseline.rule_id)
    upper = [f"{_num(axis.x(median.first[k]))},{_num(axis.y(high.hi[k]))}" for k in used]
    upper += [f"{_num(axis.x(median.last[used[-1]]))},{_num(axis.y(high.hi[used[-1]]))}"]
    lower = [f"{_num(axis.x(median.last[used[-1]]))},{_num(axis.y(low.lo[used[-1]]))}"]
    lower += [f"{_num(axis.x(median.first[k]))},{_num(axis.y(low.lo[k]))}" for k in reversed(used)]
    path = " ".join(
        f"{'M' if n == 0 else 'L'}{_num(axis.x((median.first[k] + median.last[k]) / 2))},"
        f"{_num(axis.y((median.lo[k] + median.hi[k]) / 2))}"
        for n, k in enumerate(used)
    )
    return [
        f'<polygon class="baseline-band" data-rule="{rule}" points="{" ".join(upper + lower)}" '
        'fill="#9467bd" fill-opacity="0.12" stroke="none"/>',
        f'<path class="baseline" data-rule="{rule}" d="{path}" fill="none" stroke="#9467bd" '
        f'stroke-width="1" stroke-dasharray="2 3"><title>{rule} baseline median</title></path>',
    ]


def _panel_svg(panel: Panel, axis: _Axis, zone: ZoneInfo) -> list[str]:
    top, right = axis.top, WIDTH - RIGHT
    out = [
        f'<g class="panel" data-device="{escape(panel.device)}" '
        f'data-point="{escape(panel.point)}" data-top="{_num(top)}" '
        f'data-height="{PANEL_HEIGHT}" data-ymin="{axis.y0!r}" data-ymax="{axis.y1!r}">',
        f'<text x="{LEFT}" y="{_num(top - 8)}" font-weight="bold">'
        f"{escape(panel.device)} / {escape(panel.point)}"
        f"{' (' + escape(panel.unit) + ')' if panel.unit else ''}</text>",
        f'<rect x="{LEFT}" y="{_num(top)}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{PANEL_HEIGHT}" fill="#fff" stroke="#999"/>',
    ]
    step = _nice_step(axis.y1 - axis.y0, 5)
    first = math.ceil(axis.y0 / step) * step
    # Counted, not summed: a step below the values' precision must not loop forever.
    for k in range(12):
        value = first + k * step
        if value > axis.y1:
            break
        y = _num(axis.y(value))
        out.append(
            f'<line x1="{LEFT}" x2="{right}" y1="{y}" y2="{y}" stroke="#eee"/>'
            f'<text x="{LEFT - 4}" y="{y}" text-anchor="end" dominant-baseline="middle" '
            f'font-size="10">{value:g}</text>'
        )
    for rule_id, low, high in panel.bands:
        y_high, y_low = axis.y(high), axis.y(low)
        out.append(
            f'<rect class="hysteresis" data-rule="{escape(rule_id)}" data-low="{low!r}" '
            f'data-high="{high!r}" x="{LEFT}" y="{_num(y_high)}" '
            f'width="{WIDTH - LEFT - RIGHT}" height="{_num(y_low - y_high)}" '
            'fill="#d62728" fill-opacity="0.08"/>'
        )
    for baseline in panel.baselines:
        out.extend(_baseline_svg(baseline, axis))
    if panel.series is not None:
        out.extend(_series_svg(panel.series, axis))
    for guide in panel.guides:
        y = _num(axis.y(guide.value))
        colour = {"raise": "#d62728", "clear": "#2ca02c", "escalate": "#7b0000"}[guide.role]
        dash = ' stroke-dasharray="6 4"' if guide.role == "clear" else ""
        # Labels outside the hysteresis band, so the two of a rule never overlap.
        lower_edge = any(r == guide.rule_id and low == guide.value for r, low, _ in panel.bands)
        shift = 11 if lower_edge else -3
        label = f"{guide.rule_id} {guide.field} {guide.value:g}"
        out.append(
            f'<line class="threshold" data-rule="{escape(guide.rule_id)}" '
            f'data-field="{guide.field}" data-value="{guide.value!r}" x1="{LEFT}" '
            f'x2="{right}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="1.2"{dash}>'
            f"<title>{escape(label)}</title></line>"
            f'<text x="{right - 2}" y="{_num(float(y) + shift)}" text-anchor="end" font-size="10" '
            f'fill="{colour}">{escape(label)}</text>'
        )
    for t in panel.transitions:
        out.append(_transition_svg(t, axis, zone))
    for number, note in enumerate(panel.notes):
        out.append(
            f'<text class="note" x="{LEFT + 4}" y="{_num(top + 14 + 13 * number)}" '
            f'font-size="10" fill="#555">{escape(note)}</text>'
        )
    if panel.series is None:
        out.append(
            f'<text class="note" x="{(LEFT + right) / 2}" y="{_num(top + PANEL_HEIGHT / 2)}" '
            'text-anchor="middle" fill="#555">no readings of this point in the trace</text>'
        )
    out.append("</g>")
    return out


def _transition_svg(t: Transition, axis: _Axis, zone: ZoneInfo) -> str:
    colour = COLOURS.get(t.kind, OTHER_COLOUR)
    x = _num(axis.x(t.ts))
    when = datetime.fromtimestamp(t.ts, zone).isoformat(timespec="milliseconds")
    value = "" if t.value is None else f" value={t.value:g}"
    threshold = "" if t.threshold is None else f" threshold={t.threshold:g}"
    tip = f"{when} {t.kind} {t.severity} {t.rule_id}{value}{threshold}: {t.reason}"
    dot = ""
    if t.value is not None and math.isfinite(t.value):
        dot = (
            f'<circle cx="{x}" cy="{_num(axis.y(t.value))}" r="3.5" fill="{colour}" stroke="#fff"/>'
        )
    return (
        f'<g class="transition" data-kind="{t.kind}" data-rule="{escape(t.rule_id)}" '
        f'data-ts="{t.ts!r}"><title>{escape(tip)}</title>'
        f'<line x1="{x}" x2="{x}" y1="{_num(axis.top)}" y2="{_num(axis.top + PANEL_HEIGHT)}" '
        f'stroke="{colour}" stroke-width="1" stroke-dasharray="3 2"/>{dot}</g>'
    )


def render_svg(panels: Sequence[Panel], zone: ZoneInfo, title: str = "edge replay") -> str:
    """The panels one above the other on one time axis, as an SVG document."""
    if not panels:
        height = TOP + 60
        return "\n".join(
            [
                _svg_open(height, None),
                f'<text x="{LEFT}" y="24" font-weight="bold">{escape(title)}</text>',
                f'<text class="note" x="{LEFT}" y="{TOP + 10}">no readings or transitions of a '
                "judged point in the trace</text>",
                "</svg>",
            ]
        )
    t0, t1 = _time_range(panels)
    height = TOP + len(panels) * (PANEL_HEIGHT + PANEL_GAP)
    out = [
        _svg_open(height, (t0, t1)),
        f'<text x="{LEFT}" y="24" font-weight="bold">{escape(title)}</text>',
        f'<text x="{WIDTH - RIGHT}" y="24" text-anchor="end" font-size="11">'
        '<tspan fill="#d62728">| raised</tspan>  <tspan fill="#7b0000">| escalated</tspan>  '
        '<tspan fill="#2ca02c">| cleared</tspan>  <tspan fill="#7f7f7f">| other</tspan>  '
        '<tspan fill="#ff7f0e">| no value</tspan></text>',
    ]
    for number, panel in enumerate(panels):
        top = TOP + 20 + number * (PANEL_HEIGHT + PANEL_GAP)
        y0, y1 = _value_range(panel)
        axis = _Axis(t0, t1, y0, y1, top)
        out.extend(_panel_svg(panel, axis, zone))
        bottom = top + PANEL_HEIGHT
        for tick in range(6):
            ts = t0 + (t1 - t0) * tick / 5
            x = _num(axis.x(ts))
            anchor = "start" if tick == 0 else "end" if tick == 5 else "middle"
            out.append(
                f'<text x="{x}" y="{_num(bottom + 14)}" text-anchor="{anchor}" font-size="10">'
                f"{_time_label(ts, t1 - t0, zone)}</text>"
            )
    out.append("</svg>")
    return "\n".join(out)


def _svg_open(height: float, times: tuple[float, float] | None) -> str:
    span = "" if times is None else f' data-t0="{times[0]!r}" data-t1="{times[1]!r}"'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{_num(height)}" '
        f'viewBox="0 0 {WIDTH} {_num(height)}" font-family="sans-serif" font-size="12" '
        f'data-left="{LEFT}" data-right="{WIDTH - RIGHT}"{span}>'
        f'<rect width="100%" height="100%" fill="#fafafa"/>'
    )


def render_html(svg: str, title: str = "edge replay") -> str:
    """A self-contained page around ``svg`` (hover a mark for its transition)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{escape(title)}</title></head>\n<body style="margin:0">\n{svg}\n</body></html>\n'
    )
