"""``make bench``: run every benchmark, print each figure with its unit, write bench-results.json.

Benchmarks never fail the build for being slow; they measure. bench-results.json is one flat
object, one key per figure (numbers only), plus ``machine``. Keys are stable across releases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
from pathlib import Path

import psutil

from tests.benchmarks import buffer, commands, drivers, e2e, rules, storage, uplink, wire

ROOT = Path(__file__).resolve().parents[2]
#: A unit named inside a key (``..._ms_p99``), then by how a key ends (``..._per_s``).
UNITS_INSIDE = {"_us_": "µs", "_ms_": "ms"}
UNITS_AT_END = {"_per_s": "/s", "_ms": "ms", "_s": "s", "_mb": "MiB", "_pct": "% of one core"}


def machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.machine()} {os.cpu_count()} cores {memory:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def unit_of(key: str) -> str:
    inside = next((unit for marker, unit in UNITS_INSIDE.items() if marker in key), None)
    if inside is not None:
        return inside
    return next((unit for end, unit in UNITS_AT_END.items() if key.endswith(end)), "")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the gateway's benchmarks.")
    parser.add_argument("--trials", type=int, default=20, help="alarm trials for the e2e figures")
    parser.add_argument("--footprint-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument(
        "--only",
        choices=["e2e", "drivers", "buffer", "rules", "uplink", "wire", "commands", "storage"],
        action="append",
        help="run these suites alone",
    )
    parser.add_argument("--buffer-readings", type=int, default=2_000_000, metavar="N")
    parser.add_argument("--buffer-backlog", type=int, default=10_000_000, metavar="N")
    parser.add_argument("--buffer-kills", type=int, default=100, metavar="N")
    parser.add_argument("--uplink-backlog", type=int, default=1_000_000, metavar="N")
    args = parser.parse_args()
    suites = set(
        args.only or ["e2e", "drivers", "buffer", "rules", "uplink", "wire", "commands", "storage"]
    )

    results: dict[str, float | str] = {}
    if args.only and args.out.exists():
        # One suite alone updates its own keys and keeps the others' last figures.
        results.update(json.loads(args.out.read_text()))
    if "e2e" in suites:
        results.update(asyncio.run(e2e.run(args.trials, args.footprint_seconds)))
    if "drivers" in suites:
        results.update(asyncio.run(drivers.run()))
    if "buffer" in suites:
        results.update(
            buffer.run(
                readings=args.buffer_readings, backlog=args.buffer_backlog, kills=args.buffer_kills
            )
        )
    if "rules" in suites:
        results.update(rules.run())
    if "uplink" in suites:
        results.update(uplink.run(backlog=args.uplink_backlog))
    if "wire" in suites:
        results.update(wire.measure())
    if "commands" in suites:
        results.update(commands.run())
    if "storage" in suites:
        results.update(storage.run())
    results["machine"] = machine()

    print("\nfigures:")
    for key, value in results.items():
        print(f"  {key:<34} {value} {unit_of(key) if key != 'machine' else ''}".rstrip())
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out.name}")


if __name__ == "__main__":
    main()
