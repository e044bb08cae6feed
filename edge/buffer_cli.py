"""``edge buffer stats|export|vacuum``: look into the outbox of a gateway, running or not.

The outbox file is named by ``--config FILE`` (the site file's ``buffer.path``) or ``--path``.
``stats`` and ``export`` only read (WAL lets them run beside a running gateway); ``vacuum``
rebuilds the file and waits for the gateway's writer (better: stop the gateway first).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from buffer import OutboxError, Record
from buffer.store import connect_readonly, iter_records, live_counters, stats, vacuum
from drivers.modbus import known_models
from edge.config import report_config

__all__ = ["add_parser", "command"]

#: Below this many records an export draws no progress bar unless asked to.
PROGRESS_FROM = 10_000


def add_parser(commands: Any) -> None:
    """The ``edge buffer`` subcommand (``commands`` is argparse's subparsers object)."""
    buffer = commands.add_parser("buffer", help="inspect, export or compact the outbox")
    actions = buffer.add_subparsers(dest="buffer_command", required=True, metavar="ACTION")

    def target(parser: argparse.ArgumentParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", metavar="FILE", help="the site file (its buffer.path)")
        where.add_argument("--path", type=Path, metavar="FILE", help="the outbox file itself")

    show = actions.add_parser(
        "stats", help="depth per stream, oldest age, size, epoch, rows thinned and dropped"
    )
    target(show)
    show.add_argument("--json", action="store_true", help="one JSON object instead of a table")

    export = actions.add_parser("export", help="write every stored record, oldest first")
    target(export)
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--stream", choices=["event", "telemetry", "all"], default="all")
    export.add_argument("--out", type=Path, metavar="FILE", help="default: standard output")
    export.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on standard error (default: when it is a terminal and the export "
        f"has {PROGRESS_FROM:,} records or more)",
    )

    compact = actions.add_parser(
        "vacuum", help="give the file's free pages back to the disk (stop the gateway first)"
    )
    target(compact)


def command(args: argparse.Namespace) -> int:
    """Run ``edge buffer ACTION``; the exit status (0 ok, 1 failed, 2 bad site file)."""
    path = _outbox_path(args)
    if path is None:
        return 2
    try:
        if args.buffer_command == "stats":
            return _stats(path, as_json=args.json)
        if args.buffer_command == "export":
            return _export(path, args)
        if args.buffer_command == "vacuum":
            before, after = vacuum(path)
            print(f"{path}: {_bytes(before)} -> {_bytes(after)}")
            return 0
    except OutboxError as exc:
        print(f"edge buffer: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edge buffer: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.buffer_command)  # argparse refuses unknown actions


def _outbox_path(args: argparse.Namespace) -> Path | None:
    if args.path is not None:
        return Path(args.path)
    _, config = report_config(args.config, sys.stderr, known_models=known_models(), quiet=True)
    if config is None:
        return None
    return Path(config.buffer.path)


def _stats(path: Path, *, as_json: bool) -> int:
    figures = stats(path)
    if as_json:
        print(json.dumps(figures, indent=2))
        return 0
    depth, age = figures["depth"], figures["oldest_age_s"]
    rows = [
        ("file", figures["path"]),
        ("epoch", figures["epoch"]),
        ("schema version", figures["schema_version"]),
        ("events waiting", f"{depth['event']:,}  (oldest {_age(age['event'])})"),
        ("telemetry waiting", f"{depth['telemetry']:,}  (oldest {_age(age['telemetry'])})"),
        ("last seq", f"{figures['last_seq']:,}"),
        ("rows thinned", f"{figures['thinned_rows']:,}"),
        ("rows dropped", f"{figures['dropped_rows']:,}"),
        ("points", f"{figures['points']:,}"),
        ("rule state keys", f"{figures['state_keys']:,}"),
        (
            "size",
            f"{_bytes(figures['file_bytes'])} file + {_bytes(figures['wal_bytes'])} WAL; "
            f"{_bytes(figures['live_bytes'])} live, "
            f"{_bytes(figures['free_bytes_in_file'])} free in the file",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _export(path: Path, args: argparse.Namespace) -> int:
    conn = connect_readonly(path)
    try:
        stream = None if args.stream == "all" else args.stream
        counters = live_counters(conn)
        total = sum(counters[f"rows_{s}"] for s in ("event", "telemetry") if stream in (None, s))
        show = args.progress
        if show is None:
            show = sys.stderr.isatty() and total >= PROGRESS_FROM
        out: TextIO
        with _open_out(args.out) as out:
            bar = _Progress(total, sys.stderr) if show else None
            writer = _writer(args.format, out)
            count = 0
            for record in iter_records(conn, stream):
                writer(record)
                count += 1
                if bar is not None and count % 2000 == 0:
                    bar.show(count)
            if bar is not None:
                bar.done(count)
    finally:
        conn.close()
    if args.out is not None:
        print(f"{count:,} records written to {args.out}", file=sys.stderr)
    return 0


def _open_out(target: Path | None) -> Any:
    if target is None:
        # Not closed at the end: it is the process's standard output.
        return _Borrowed(sys.stdout)
    return open(target, "w", encoding="utf-8", newline="")


class _Borrowed:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> TextIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()


def _writer(form: str, out: TextIO) -> Any:
    if form == "jsonl":

        def write_line(record: Record) -> None:
            line = {
                "seq": record.seq,
                "stream": record.stream,
                "created": record.created,
                "body": record.body,
            }
            out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")

        return write_line
    table = csv.writer(out)
    table.writerow(["seq", "stream", "created", "body"])

    def write_row(record: Record) -> None:
        body = json.dumps(record.body, separators=(",", ":"), ensure_ascii=False)
        table.writerow([record.seq, record.stream, repr(record.created), body])

    return write_row


class _Progress:
    """A one-line bar on a terminal: ``[#####.....]  52%  520,000/1,000,000  48,000/s``."""

    WIDTH = 30

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = max(total, 1)
        self.out = out
        self.started = time.monotonic()

    def show(self, count: int) -> None:
        share = min(count / self.total, 1.0)
        filled = int(share * self.WIDTH)
        rate = count / max(time.monotonic() - self.started, 1e-6)
        self.out.write(
            f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%}  "
            f"{count:,}/{self.total:,}  {rate:,.0f}/s"
        )
        self.out.flush()

    def done(self, count: int) -> None:
        self.show(count)
        self.out.write("\n")
        self.out.flush()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.1f}s ago"


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
