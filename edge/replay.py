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
zone. The engine is ticked once a second of replayed time (as the gateway ticks it), so
calendar buckets, missing readings and silent devices are judged as in the field.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from drivers import Reading
from edge.config import SiteConfig, report_config
from edge.rules import RuleEngine, Transition

__all__ = ["ReplayError", "ReplaySummary", "add_parser", "command", "read_readings", "replay"]

#: The gateway ticks its rules once a second; the replay does the same in replayed time.
TICK = 1.0


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


def command(args: argparse.Namespace) -> int:
    from drivers.modbus import known_models  # noqa: PLC0415 -- keeps `edge --help` light

    status, config = report_config(args.config, sys.stderr, known_models=known_models(), quiet=True)
    if config is None:
        return status
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
    try:
        with source:
            summary = replay(
                config,
                read_readings(source, str(args.readings), zone, args.format),
                lambda t: out.write(format_transition(t, zone, as_json=as_json) + "\n"),
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
    return 0


def replay(
    config: SiteConfig,
    readings: Iterator[Reading | None],
    emit: Any,
    *,
    engine: RuleEngine | None = None,
) -> ReplaySummary:
    """Run ``readings`` (``None`` marks a skipped record) through the site's rules, calling
    ``emit`` with every transition in order."""
    judge = engine or RuleEngine(
        config.rules,
        devices=config.devices,
        derived=config.derived_points,
        timezone=config.gateway.timezone,
    )
    summary = ReplaySummary()
    started = time.perf_counter()
    next_tick = -math.inf
    clock = -math.inf
    for reading in readings:
        if reading is None:
            summary.skipped += 1
            continue
        ts = reading.ts
        if summary.first_ts is None:
            summary.first_ts = ts
        if ts < clock:
            summary.out_of_order += 1
        else:
            clock = ts
        if ts >= next_tick:
            for transition in judge.tick(ts):
                summary.transitions += 1
                emit(transition)
            next_tick = ts + TICK
        for transition in judge.evaluate(reading):
            summary.transitions += 1
            emit(transition)
        summary.readings += 1
    if summary.first_ts is not None:
        summary.last_ts = clock
    summary.seconds = time.perf_counter() - started
    return summary


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


def read_readings(
    source: TextIO, name: str, zone: ZoneInfo, form: str = "auto"
) -> Iterator[Reading | None]:
    """The readings of ``source``, ``None`` for records that are not readings (events)."""
    first = source.readline()
    if not first:
        return
    if form == "auto":
        form = "jsonl" if first.lstrip().startswith("{") else "csv"
    if form == "jsonl":
        yield from _jsonl(first, source, name, zone)
    else:
        yield from _csv(first, source, name, zone)


def _jsonl(first: str, source: TextIO, name: str, zone: ZoneInfo) -> Iterator[Reading | None]:
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
        yield _record(item, name, number, zone)


def _chain(first: str, source: TextIO) -> Iterator[str]:
    yield first
    yield from source


def _csv(first: str, source: TextIO, name: str, zone: ZoneInfo) -> Iterator[Reading | None]:
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
        yield _record(item, name, number, zone)


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
