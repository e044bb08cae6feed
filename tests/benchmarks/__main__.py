"""``make bench``: run every benchmark, print each figure with its unit, write bench-results.json.

Benchmarks never fail the build for being slow; they measure. bench-results.json is one flat
object, one key per figure (numbers only), plus ``machine`` and, when a suite could not run or
failed, ``skipped`` / ``failed`` (suite -> reason). Keys are stable across releases.

Every suite runs to the end whatever another one does: a suite whose program is missing (no
Mosquitto) is skipped with the reason, a suite that fails is reported with its error, and the
figures of the others are written all the same; the exit status is 1 when a suite failed.

A suite is a module of this package with three things, and one line in :data:`SUITES`:

- ``run(**params)``: measures and returns ``{key: number}`` (a coroutine function is run
  with ``asyncio.run``); its keyword defaults are the benchmark's sizes;
- ``KEYS``: the keys ``run`` returns, so a figure that goes missing is a failure, not a gap;
- ``TINY``: the ``params`` of a run of a second or two that still goes through every step,
  what ``--tiny`` uses (tests/integration/test_benchmarks.py runs every suite that way, so a
  broken benchmark fails the tests).

``--only SUITE`` runs some suites and keeps the other suites' figures of the last run;
``--param SUITE.NAME=VALUE`` sets one of a suite's ``run`` parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import psutil

from tests.benchmarks import (
    buffer,
    commands,
    commission,
    drivers,
    e2e,
    link,
    log_stall,
    modbus_client,
    peer,
    refusal,
    rules,
    site_check,
    storage,
    uplink,
    wire,
)
from tests.benchmarks import calls as alarm_calls
from tests.fixtures.broker import mosquitto_binary

ROOT = Path(__file__).resolve().parents[2]
#: A unit named inside a key (``..._ms_p99``), then by how a key ends (``..._per_s``).
UNITS_INSIDE = {"_bytes_per_reading": "bytes", "_us_": "µs", "_ms_": "ms"}
UNITS_AT_END = {
    "_per_s": "/s",
    "_us": "µs",
    "_ms": "ms",
    "_s": "s",
    "_mb": "MiB",
    "_pct": "% of one core",
}


def _mosquitto() -> str | None:
    """None when Mosquitto is there, else why a suite that needs it cannot run."""
    binary = mosquitto_binary()
    if binary is None:
        return (
            "needs Mosquitto, which is not installed (Debian/Ubuntu: apt-get install "
            "mosquitto; or point $MOSQUITTO at the binary)"
        )
    # The suites start it by name (hil.broker.LocalBroker): found outside PATH (Debian puts it
    # in /usr/sbin), its folder goes on PATH so they measure Mosquitto, not the embedded broker.
    folder = str(Path(binary).parent)
    if folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([folder, os.environ.get("PATH", "")])
    return None


#: A check of what a suite needs: None when it is there, else the reason to skip the suite.
Need = Callable[[], str | None]
MOSQUITTO: Final[Need] = _mosquitto
#: The peer gateway, installed into build/ the first time (needs the package index then).
PEER: Final[Need] = peer.peer_ready


@dataclass(frozen=True)
class Suite:
    """One benchmark module (``run``, ``KEYS``, ``TINY``; see the module docstring)."""

    name: str
    module: ModuleType
    needs: Sequence[Need] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.module.KEYS)

    @property
    def tiny(self) -> Mapping[str, Any]:
        return dict(self.module.TINY)

    @property
    def parameters(self) -> list[str]:
        """The names ``run`` takes."""
        return list(inspect.signature(self.module.run).parameters)

    def measure(self, params: Mapping[str, Any]) -> dict[str, float]:
        result = self.module.run(**params)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return dict(result)


#: Every suite, in the order ``make bench`` runs them. Adding a suite is one line here.
SUITES: Final = (
    Suite("e2e", e2e, needs=[MOSQUITTO]),
    Suite("drivers", drivers, needs=[MOSQUITTO]),
    Suite("modbus_client", modbus_client),
    Suite("buffer", buffer),
    Suite("rules", rules),
    Suite("uplink", uplink, needs=[MOSQUITTO]),
    Suite("wire", wire),
    Suite("commands", commands, needs=[MOSQUITTO]),
    Suite("logs", log_stall),
    Suite("refusal", refusal, needs=[MOSQUITTO]),
    Suite("storage", storage),
    Suite("link", link, needs=[MOSQUITTO]),
    Suite("commission", commission, needs=[MOSQUITTO]),
    Suite("calls", alarm_calls),
    Suite("site_check", site_check),
    Suite("peer", peer, needs=[MOSQUITTO, PEER]),
)

#: The options of earlier releases, each one parameter of one suite.
SHORTHANDS: Final = {
    "trials": ("e2e", "trials", int, "alarm trials of the e2e figures"),
    "footprint_seconds": ("e2e", "footprint_seconds", float, "e2e footprint sampling time"),
    "buffer_readings": ("buffer", "readings", int, "readings ingested and drained"),
    "buffer_backlog": ("buffer", "backlog", int, "readings in the startup backlog"),
    "buffer_kills": ("buffer", "kills", int, "SIGKILLs of the crash harness"),
    "uplink_backlog": ("uplink", "backlog", int, "readings in the drained backlog"),
    "stall_seconds": ("logs", "stall_seconds", float, "seconds the journal stalls"),
}


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


def _param(text: str) -> tuple[str, str, Any]:
    """``SUITE.NAME=VALUE`` -> (suite, name, value); the value as JSON when it is JSON."""
    target, sep, raw = text.partition("=")
    suite, dot, name = target.partition(".")
    if not sep or not dot or not suite or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SUITE.NAME=VALUE")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return suite, name, value


@dataclass
class Outcome:
    """What a run of the suites gave."""

    figures: dict[str, Any]
    skipped: dict[str, str]
    failed: dict[str, str]
    seconds: dict[str, float]


def run_suites(
    suites: Sequence[Suite],
    *,
    tiny: bool = False,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Outcome:
    """Run ``suites`` one after the other, each to its end whatever the others do."""
    outcome = Outcome({}, {}, {}, {})
    for suite in suites:
        missing = [reason for need in suite.needs if (reason := need()) is not None]
        if missing:
            outcome.skipped[suite.name] = "; ".join(missing)
            print(f"\n== {suite.name}: skipped, {outcome.skipped[suite.name]}", flush=True)
            continue
        chosen = {**(suite.tiny if tiny else {}), **(params or {}).get(suite.name, {})}
        shown = ", ".join(f"{k}={v}" for k, v in chosen.items())
        print(f"\n== {suite.name}" + (f" ({shown})" if shown else ""), flush=True)
        began = time.monotonic()
        try:
            figures = suite.measure(chosen)
        except KeyboardInterrupt:
            # Ctrl-C: no further suite, but what was measured is still written.
            outcome.failed[suite.name] = "interrupted (Ctrl-C); the suites after it did not run"
            print(f"== {suite.name}: {outcome.failed[suite.name]}", flush=True)
            break
        except BaseException as exc:
            # One suite's failure must not stop the rest. BaseException: the test fixtures the
            # suites share stop with pytest's Failed, which is no Exception.
            traceback.print_exc()
            outcome.failed[suite.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"== {suite.name}: FAILED, {outcome.failed[suite.name]}", flush=True)
            continue
        finally:
            outcome.seconds[suite.name] = round(time.monotonic() - began, 1)
        absent = [key for key in suite.keys if key not in figures]
        strange = sorted(k for k, v in figures.items() if not _is_number(v))
        outcome.figures.update({k: v for k, v in figures.items() if _is_number(v)})
        if absent or strange:
            outcome.failed[suite.name] = (
                f"figures missing: {absent}" if absent else f"not numbers: {strange}"
            )
            print(f"== {suite.name}: FAILED, {outcome.failed[suite.name]}", flush=True)
        extra = sorted(figures.keys() - set(suite.keys))
        if extra:
            print(f"== {suite.name}: keys not in its KEYS: {extra}", flush=True)
    return outcome


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def main(argv: Sequence[str] | None = None, suites: Sequence[Suite] = SUITES) -> int:
    names = [suite.name for suite in suites]
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks", description="Run the gateway's benchmarks."
    )
    parser.add_argument("--only", choices=names, action="append", help="run these suites alone")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="every suite at toy sizes, a second or two each: proves the benchmarks run, "
        "its figures mean nothing",
    )
    parser.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="SUITE.NAME=VALUE",
        help="one parameter of a suite's run(), e.g. uplink.backlog=200000",
    )
    for option, (suite_name, _, kind, what) in SHORTHANDS.items():
        parser.add_argument(
            f"--{option.replace('_', '-')}", type=kind, metavar="N", help=f"{what} ({suite_name})"
        )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args(argv)

    params: dict[str, dict[str, Any]] = {}
    for option, (suite_name, name, _, _) in SHORTHANDS.items():
        if getattr(args, option) is not None:
            params.setdefault(suite_name, {})[name] = getattr(args, option)
    for suite_name, name, value in args.param:
        if suite_name not in names:
            parser.error(f"--param {suite_name}.{name}: no suite {suite_name!r}; one of {names}")
        params.setdefault(suite_name, {})[name] = value
    for suite in suites:
        # A misspelt parameter is refused now, not after the suites before it have run.
        accepted = suite.parameters
        unknown = sorted(set(params.get(suite.name, {})) - set(accepted))
        if unknown:
            parser.error(f"suite {suite.name} has no parameter {unknown}; it takes {accepted}")
    chosen = [suite for suite in suites if not args.only or suite.name in args.only]

    began = time.monotonic()
    outcome = run_suites(chosen, tiny=args.tiny, params=params)
    results = _merged(args.out, chosen, outcome) if args.only else dict(outcome.figures)
    if not args.only:
        results.update({"skipped": outcome.skipped, "failed": outcome.failed})
    for key in ("skipped", "failed"):
        if not results.get(key):
            results.pop(key, None)
    results["machine"] = machine()
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print("\nfigures:")
    for key, value in outcome.figures.items():
        print(f"  {key:<40} {value} {unit_of(key)}".rstrip())
    print("\nsuites:")
    for suite in chosen:
        state = (
            f"skipped: {outcome.skipped[suite.name]}"
            if suite.name in outcome.skipped
            else f"FAILED: {outcome.failed[suite.name]}"
            if suite.name in outcome.failed
            else "ok"
        )
        took = outcome.seconds.get(suite.name)
        print(f"  {suite.name:<10} {f'{took:.0f} s' if took is not None else '':>6}  {state}")
    print(f"written to {args.out} after {time.monotonic() - began:.0f} s")
    return 1 if outcome.failed else 0


def _merged(out: Path, ran: Sequence[Suite], outcome: Outcome) -> dict[str, Any]:
    """The last results with the suites that ran now replaced: their old figures go (a suite
    that fails or is skipped now has none), the other suites' stay."""
    try:
        results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    except ValueError:
        results = {}
    for suite in ran:
        for key in suite.keys:
            results.pop(key, None)
        for key in ("skipped", "failed"):
            if isinstance(results.get(key), dict):
                results[key].pop(suite.name, None)
    results.update(outcome.figures)
    for key, found in (("skipped", outcome.skipped), ("failed", outcome.failed)):
        if found:
            results[key] = {**(results.get(key) or {}), **found}
    return results


if __name__ == "__main__":
    sys.exit(main())
