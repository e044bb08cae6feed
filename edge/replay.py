"""``edge replay --config SITE READINGS``: recorded readings through the site's rules.

Engineers tune thresholds on real history before changing a site: the readings of a file run
through exactly the rules the gateway would run, on a virtual clock (the readings' own
timestamps), as fast as the machine allows, and every alarm transition that would have
happened is printed with its time.

Input, one reading per line or row, oldest first:

* JSON lines, either flat ``{"ts": ..., "device": ..., "point": ..., "value": ...}`` (``ts`` may
  also be called ``timestamp`` or ``time``; ``unit`` and ``quality`` are optional) or as
  ``edge buffer export`` writes them (``{"stream": "telemetry", "body": {...}}``; other streams
  are skipped);
* CSV with a header row naming the same columns, or ``edge buffer export --format csv``'s
  ``seq,stream,created,body``.

Timestamps are POSIX seconds or ISO 8601; an ISO time without an offset is in the site's time
zone.

Replay judges exactly as the field does. The gateway ticks its rules once a second whatever
the devices do, so a silent device raises ``device-offline`` in the silence, not when it
speaks again; the replay ticks the engine at every second of replayed time from the first
reading on (``first + k``), including through silences, before the readings of that second.
Over a long silence it skips the seconds at which :meth:`RuleEngine.next_due` proves a tick
does nothing (every time-only verdict is a deadline: a last reading plus ``silent_for``, the
end of a calendar day...), so days of silence cost one tick per verdict, not one per second.
The time a row arrives is the latest time seen so far: a row older than that (out of order)
is judged after the ticks up to that time, as a late reading would be in the field.

Readings of a device or point that is not in the site file are refused (the line is named):
judging them against rules that apply "to every device" would invent alarms the field never
raises. ``--unknown report`` skips and counts them instead.

``--plot FILE`` also draws every judged point over time with its thresholds and transitions
(:mod:`edge.replay_plot`), as SVG or a self-contained HTML page.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo

from drivers import Reading
from edge.config import SiteConfig, report_config
from edge.replay_plot import PlotRecorder, panels_of, render_html, render_svg
from edge.rules import RuleEngine, Transition

__all__ = [
    "ReadingsFile",
    "ReplayError",
    "ReplaySummary",
    "add_parser",
    "command",
    "read_readings",
    "replay",
]

#: The gateway ticks its rules once a second; the replay does the same in replayed time.
TICK = 1.0
#: From this many pending seconds on, the replay asks the engine for its next deadline rather
#: than ticking each second (a scan of every ticking judge costs about as much as a tick).
SKIP_FROM = 3

Unknown = Literal["refuse", "report"]


class ReplayError(ValueError):
    """A line of the readings file cannot be read; the message names the file and line."""


@dataclass
class ReplaySummary:
    readings: int = 0
    skipped: int = 0
    out_of_order: int = 0
    transitions: int = 0
    seconds: float = 0.0
    first_ts: float | None = None
    last_ts: float | None = None
    #: Engine ticks run (the seconds a silence was jumped over are not counted).
    ticks: int = 0
    #: Readings not judged because their device or point is not in the site file, by
    #: ``device/point`` (with ``--unknown report``).
    unknown: Counter[str] = field(default_factory=Counter)


def add_parser(commands: Any) -> None:
    replay_cmd = commands.add_parser(
        "replay",
        help="run recorded readings through a site's rules and print the alarms they cause",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    replay_cmd.add_argument("--config", required=True, metavar="SITE", help="the site YAML file")
    replay_cmd.add_argument("readings", metavar="READINGS", type=Path, help="JSON lines or CSV")
    replay_cmd.add_argument(
        "--format", choices=["auto", "jsonl", "csv"], default="auto", help="default: by content"
    )
    replay_cmd.add_argument(
        "--out", type=Path, metavar="FILE", help="write the transitions as JSON lines to FILE"
    )
    replay_cmd.add_argument("--jsonl", action="store_true", help="print JSON lines instead of text")
    replay_cmd.add_argument(
        "--unknown",
        choices=["refuse", "report"],
        default="refuse",
        help="readings of devices or points not in the site file: stop at the first (default), "
        "or skip and count them",
    )
    replay_cmd.add_argument(
        "--until",
        metavar="TIME",
        help="keep the clock running after the last reading until TIME (POSIX seconds or ISO "
        "8601), so silences at the end of the file are judged too",
    )
    replay_cmd.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="also draw every judged point, its thresholds and transitions, to FILE "
        "(.svg, or .html for a page around the drawing)",
    )


def command(args: argparse.Namespace) -> int:
    from drivers.modbus import known_models  # noqa: PLC0415 -- keeps `edge --help` light

    status, config = report_config(args.config, sys.stderr, known_models=known_models(), quiet=True)
    if config is None:
        return status
    if args.plot is not None:
        problem = _plot_target_problem(args.plot)
        if problem is not None:
            # Said before the replay runs: a long replay must not end unable to write its plot.
            print(f"error: --plot {args.plot}: {problem}", file=sys.stderr)
            return 2
    try:
        source = open(args.readings, encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        print(f"error: cannot read {args.readings}: {exc.strerror}", file=sys.stderr)
        return 2
    out: TextIO = sys.stdout
    target = None
    if args.out is not None:
        target = open(args.out, "w", encoding="utf-8")  # noqa: SIM115
        out = target
    as_json = args.jsonl or args.out is not None
    zone = ZoneInfo(config.gateway.timezone)
    engine = _engine(config)
    recorder = PlotRecorder() if args.plot is not None else None

    def emit(t: Transition) -> None:
        out.write(format_transition(t, zone, as_json=as_json) + "\n")
        if recorder is not None:
            recorder.transition(t)

    try:
        until = None if args.until is None else _timestamp(args.until, "--until", zone)
        with source:
            trace = ReadingsFile(source, str(args.readings), zone, args.format)
            readings = iter(trace) if recorder is None else recorder.watch(trace, engine)
            summary = replay(
                config,
                readings,
                emit,
                engine=engine,
                unknown=args.unknown,
                until=until,
                where=lambda: trace.where,
            )
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if target is not None:
            target.close()
    rate = summary.readings / summary.seconds if summary.seconds > 0 else math.inf
    print(
        f"{summary.readings:,} readings ({summary.skipped:,} other records skipped, "
        f"{summary.out_of_order:,} out of order), {summary.transitions:,} transitions, "
        f"{summary.seconds:.2f} s ({rate:,.0f} readings/s)",
        file=sys.stderr,
    )
    if summary.unknown:
        listed = ", ".join(f"{name} ({count:,})" for name, count in summary.unknown.most_common())
        print(
            f"{summary.unknown.total():,} readings not judged, not in the site file: {listed}",
            file=sys.stderr,
        )
    if recorder is not None:
        return _write_plot(args.plot, engine, recorder, zone, f"edge replay {args.readings}")
    return 0


def _plot_target_problem(path: Path) -> str | None:
    if path.suffix.lower() not in (".svg", ".html", ".htm"):
        return "the file name must end in .svg or .html"
    folder = path.parent
    if not folder.is_dir():
        return f"folder {str(folder)!r} does not exist"
    if path.is_dir():
        return "is a folder"
    return None


def _write_plot(
    path: Path, engine: RuleEngine, recorder: PlotRecorder, zone: ZoneInfo, title: str
) -> int:
    started = time.perf_counter()
    panels = panels_of(engine, recorder)
    drawing = render_svg(panels, zone, title)
    text = render_html(drawing, title) if path.suffix.lower() != ".svg" else drawing
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write --plot {path}: {exc.strerror}", file=sys.stderr)
        return 2
    plural = "" if len(panels) == 1 else "s"
    print(
        f"plot: {len(panels)} panel{plural}, {len(text.encode()):,} bytes, "
        f"drawn in {time.perf_counter() - started:.2f} s: {path}",
        file=sys.stderr,
    )
    return 0


def _engine(config: SiteConfig) -> RuleEngine:
    return RuleEngine(
        config.rules,
        devices=config.devices,
        derived=config.derived_points,
        timezone=config.gateway.timezone,
    )


def replay(
    config: SiteConfig,
    readings: Iterable[Reading | None],
    emit: Callable[[Transition], Any],
    *,
    engine: RuleEngine | None = None,
    unknown: Unknown = "refuse",
    until: float | None = None,
    where: Callable[[], str] | None = None,
) -> ReplaySummary:
    """Run ``readings`` (``None`` marks a skipped record) through the site's rules, calling
    ``emit`` with every transition in order, the engine ticked as the gateway ticks it.

    A reading of a device or point the site does not have raises :class:`ReplayError`
    (``where()`` names the line) or, with ``unknown="report"``, is counted in the summary.
    ``until``: keep ticking after the last reading up to that time.
    """
    judge = engine or _engine(config)
    summary = ReplaySummary()
    clock = _Clock(judge, summary, emit)
    scope = _Scope(judge)
    started = time.perf_counter()
    evaluate = judge.evaluate
    for reading in readings:
        if reading is None:
            summary.skipped += 1
            continue
        problem = scope.refuses(reading)
        if problem is not None:
            if unknown == "refuse":
                place = where() if where is not None else f"reading {summary.readings + 1}"
                raise ReplayError(
                    f"{place}: {problem}; replay judges only what the site file has "
                    "(--unknown report skips and counts such readings)"
                )
            summary.unknown[f"{reading.device_id}/{reading.point}"] += 1
            continue
        ts = reading.ts
        if summary.first_ts is None:
            summary.first_ts = ts
        if ts < clock.now:
            summary.out_of_order += 1
        else:
            clock.run_to(ts)
        transitions = evaluate(reading)
        if transitions:
            summary.transitions += len(transitions)
            for transition in transitions:
                emit(transition)
        summary.readings += 1
    if summary.first_ts is not None:
        summary.last_ts = clock.now
        if until is not None and until > clock.now:
            clock.run_to(until)
    summary.seconds = time.perf_counter() - started
    return summary


class _Clock:
    """The gateway's once-a-second tick in replayed time: ticks at ``origin + k`` seconds,
    ``origin`` being the first reading's time, up to the time of the latest reading.

    Seconds before the engine's :meth:`~RuleEngine.next_due` are jumped over: a tick there
    changes nothing, so the transitions are those of ticking every second. The jump lands
    one second early, so a deadline that rounding puts a hair past a second is still met at
    that second, as the field's tick would meet it.
    """

    def __init__(self, engine: RuleEngine, summary: ReplaySummary, emit: Callable[..., Any]):
        self.engine = engine
        self.summary = summary
        self.emit = emit
        self.origin: float | None = None
        #: Index of the next tick (at ``origin + index``) and the latest time seen.
        self.index = 0
        self.now = -math.inf

    def run_to(self, now: float) -> None:
        self.now = now
        if self.origin is None:
            self.origin = now
        origin, engine = self.origin, self.engine
        while True:
            at = origin + self.index
            if at > now:
                return
            if now - at >= SKIP_FROM:
                due = engine.next_due()
                if due > at:
                    last = math.floor(now - origin)
                    target = (
                        last + 1 if due == math.inf else min(last + 1, math.ceil(due - origin) - 1)
                    )
                    if target > self.index:
                        # Late readings are judged at the latest tick's time: say when it was.
                        engine.skip(origin + (target - 1))
                        self.index = target
                        continue
            transitions = engine.tick(at)
            self.summary.ticks += 1
            self.index += 1
            if transitions:
                self.summary.transitions += len(transitions)
                for transition in transitions:
                    self.emit(transition)


class _Scope:
    """What the site file has: its devices and, where the model has a point table, points."""

    def __init__(self, engine: RuleEngine) -> None:
        self.engine = engine
        self.points: dict[str, set[str] | None] = {}

    def refuses(self, reading: Reading) -> str | None:
        device = reading.device_id
        try:
            points = self.points[device]
        except KeyError:
            if not self.engine.knows_device(device):
                return f"device {device!r} is not in the site file"
            points = self.points[device] = self.engine.known_points(device)
        if points is not None and reading.point not in points:
            return f"device {device!r} has no point {reading.point!r} in the site file"
        return None


def format_transition(t: Transition, zone: ZoneInfo, *, as_json: bool) -> str:
    when = datetime.fromtimestamp(t.ts, zone).isoformat(timespec="milliseconds")
    if as_json:
        return json.dumps(
            {
                "time": when,
                "ts": t.ts,
                "transition": t.kind,
                "rule": t.rule_id,
                "rule_kind": t.rule_kind,
                "severity": t.severity,
                "device": t.device_id,
                "point": t.point,
                "value": t.value,
                "threshold": t.threshold,
                "reason": t.reason,
            },
            ensure_ascii=False,
            allow_nan=False,
        )
    value = "" if t.value is None else f" value={t.value:g}"
    threshold = "" if t.threshold is None else f" threshold={t.threshold:g}"
    device = f" {t.device_id}" + (f"/{t.point}" if t.point else "")
    return f"{when} {t.kind:<9} {t.severity:<8} {t.rule_id}{device}{value}{threshold}: {t.reason}"


# -- reading the file ---------------------------------------------------------------------------


class ReadingsFile:
    """The readings of a file, iterated once; :attr:`where` names the line last read."""

    def __init__(self, source: TextIO, name: str, zone: ZoneInfo, form: str = "auto") -> None:
        self.source = source
        self.name = name
        self.zone = zone
        self.form = form
        self.line = 0

    @property
    def where(self) -> str:
        return f"{self.name}:{self.line}"

    def __iter__(self) -> Iterator[Reading | None]:
        for number, reading in _numbered(self.source, self.name, self.zone, self.form):
            self.line = number
            yield reading


def read_readings(
    source: TextIO, name: str, zone: ZoneInfo, form: str = "auto"
) -> Iterator[Reading | None]:
    """The readings of ``source``, ``None`` for records that are not readings (events)."""
    for _, reading in _numbered(source, name, zone, form):
        yield reading


def _numbered(
    source: TextIO, name: str, zone: ZoneInfo, form: str
) -> Iterator[tuple[int, Reading | None]]:
    first = source.readline()
    if not first:
        return
    if form == "auto":
        form = "jsonl" if first.lstrip().startswith("{") else "csv"
    if form == "jsonl":
        yield from _jsonl(first, source, name, zone)
    else:
        yield from _csv(first, source, name, zone)


def _jsonl(
    first: str, source: TextIO, name: str, zone: ZoneInfo
) -> Iterator[tuple[int, Reading | None]]:
    number = 0
    for line in _chain(first, source):
        number += 1
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"{name}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise ReplayError(f"{name}:{number}: expected a JSON object")
        yield number, _record(item, name, number, zone)


def _chain(first: str, source: TextIO) -> Iterator[str]:
    yield first
    yield from source


def _csv(
    first: str, source: TextIO, name: str, zone: ZoneInfo
) -> Iterator[tuple[int, Reading | None]]:
    rows = csv.reader(_chain(first, source))
    header = [column.strip() for column in next(rows)]
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ReplayError(f"{name}:{number}: {len(row)} columns, the header has {len(header)}")
        item: dict[str, Any] = dict(zip(header, row, strict=True))
        if "body" in item:
            try:
                item["body"] = json.loads(item["body"])
            except json.JSONDecodeError as exc:
                raise ReplayError(f"{name}:{number}: body is not JSON ({exc.msg})") from None
        yield number, _record(item, name, number, zone)


def _record(item: dict[str, Any], name: str, number: int, zone: ZoneInfo) -> Reading | None:
    where = f"{name}:{number}"
    if "body" in item:
        if item.get("stream") not in (None, "telemetry"):
            return None
        body = item["body"]
        if not isinstance(body, dict):
            raise ReplayError(f"{where}: body must be an object")
        item = body
    if "point" not in item and "kind" in item:
        return None  # an event, not a reading
    ts_raw = next((item[k] for k in ("ts", "timestamp", "time") if k in item), None)
    if ts_raw is None:
        raise ReplayError(f"{where}: no timestamp (ts, timestamp or time)")
    for key in ("device", "point", "value"):
        if item.get(key) in (None, ""):
            raise ReplayError(f"{where}: no {key}")
    try:
        value = float(item["value"])
    except (TypeError, ValueError):
        raise ReplayError(f"{where}: value {item['value']!r} is not a number") from None
    quality = str(item.get("quality") or "good")
    if quality not in ("good", "bad"):
        raise ReplayError(f"{where}: quality must be good or bad, not {quality!r}")
    ts = _timestamp(ts_raw, where, zone)
    return Reading(
        str(item["device"]),
        str(item["point"]),
        value,
        str(item.get("unit") or ""),
        ts,
        0.0,
        "good" if quality == "good" else "bad",
    )


def _timestamp(raw: Any, where: str, zone: ZoneInfo) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        number = float(raw)
    else:
        text = str(raw).strip()
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ReplayError(
                    f"{where}: timestamp {text!r} is neither POSIX seconds nor ISO 8601"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=zone)
            number = parsed.timestamp()
    if not math.isfinite(number):
        raise ReplayError(f"{where}: timestamp {raw!r} is not finite")
    return number
