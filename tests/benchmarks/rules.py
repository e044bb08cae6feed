"""Rule evaluation cost and reading -> buzzer latency, in-process.

``rule_eval_us_per_reading``: a site of 40 reference monitors (14 points each) and 200 rules
of every point kind, each rule judging every device that has its point, so one reading meets
about 14 rules (the figure is per reading, not per rule). 200 000 synthetic readings (one
poll of every device per simulated second, values wandering around their typical level,
occasionally over a limit), evaluated with the engine ticked once per simulated second as the
gateway does. The figure is the evaluating thread's CPU time (``time.thread_time``), so that
other work on the machine does not count; the wall-clock figure is printed next to it.

``replay_readings_per_s``: ``edge replay``'s engine loop (``edge.replay.replay`` on readings
already parsed) over a trace with silences, ticked as the field ticks: 10 reference monitors
polled every 10 s (14 points each), each silent for 15 minutes once in a while, and the whole
site silent for two days in the middle; rules of the time-judged kinds (device-offline,
sensor-fault, calendar days) next to limit, change and abnormal rules.

``replay_plot_s_1m_readings``: what ``edge replay --plot`` adds, for 1 000 000 readings (a
month of 4 reference monitors, residual current and a temperature every 20 s, with a few leak
spikes over the limit): recording every reading into the downsampled series, then drawing the
SVG with the replay's transitions; ``replay_plot_bytes_1m_readings`` is the SVG's size.

``reading_to_buzzer_ms_p99``: the same site in a :class:`Gateway` on gpiozero's MockFactory;
each trial hands a reading over the limit to ``Gateway.on_sample`` (the drivers' sink) and
stops the clock when the call returns with the buzzer pin on. This is an upper bound of
reading -> pin: the call also queues the reading and the alarm event for the buffer after the
pin was driven. Between trials a low reading clears the alarm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from gpiozero.pins.mock import MockFactory
from pydantic import TypeAdapter

from drivers import Reading
from drivers.modbus import load_model
from edge.config import SiteConfig
from edge.config.model import Rule
from edge.gateway import Gateway
from edge.log import LogfmtFormatter
from edge.rules import RuleEngine

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
DEVICES = 40
RULES = 200


def _rules(points: list[str]) -> list[dict[str, Any]]:
    """200 rules, round-robin over kinds and points."""
    rules: list[dict[str, Any]] = []
    kinds = ["over-limit", "under-limit", "sudden-change", "abnormal", "sustained", "sensor-fault"]
    index = 0
    while len(rules) < RULES:
        point = points[index % len(points)]
        kind = kinds[(index // len(points)) % len(kinds)]
        rule: dict[str, Any] = {"id": f"r{index}-{kind}", "kind": kind, "point": point}
        if kind == "over-limit":
            rule |= {"raise_at": 1e6, "clear_below": 9e5, "debounce": {"readings": 2}}
        elif kind == "under-limit":
            rule |= {"raise_at": -1e6, "clear_above": -9e5}
        elif kind == "sudden-change":
            rule |= {"change": 1e5, "window": "30s"}
        elif kind == "abnormal":
            # One baseline per hour of the day, learned during the warm-up below.
            rule |= {
                "learning": "1d",
                "baseline": "2d",
                "max_samples": 960,
                "min_samples": 5,
                "seasonal": "daily",
            }
        elif kind == "sustained":
            rule |= {"above": 1e6, "days": 2}
        else:
            rule |= {"stuck_for": "1d"}
        rules.append(rule)
        index += 1
    # The alarm the latency trials raise.
    rules[0] = {
        "id": "residual-current-over-limit",
        "kind": "over-limit",
        "point": "residual_current",
        "raise_at": 300,
        "clear_below": 270,
    }
    return rules


def site(workdir: Path) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    location = data["devices"][0]["location"]
    data["devices"] = [
        {
            "id": f"efm-{n}",
            "model": "efm-ref",
            "bus": "lan",
            "address": n,
            "location": location,
        }
        for n in range(1, DEVICES + 1)
    ]
    points = [p.name for p in load_model("efm-ref").points]
    data["rules"] = _rules(points)
    data["buffer"]["path"] = str(workdir / "outbox.sqlite")
    return SiteConfig.model_validate(data)


def _readings(count: int, seed: int = 7) -> list[Reading]:
    model = load_model("efm-ref")
    rng = random.Random(seed)
    t0 = 1_735_689_600.0
    out: list[Reading] = []
    second = 0
    while len(out) < count:
        ts = t0 + second
        for n in range(1, DEVICES + 1):
            for point in model.points:
                wobble = rng.gauss(0, 0.02) * (abs(point.typical) or 1.0)
                out.append(
                    Reading(f"efm-{n}", point.name, point.typical + wobble, point.unit, ts, 0.0)
                )
        second += 1
    return out[:count]


def rule_eval(config: SiteConfig, count: int) -> dict[str, float]:
    engine = RuleEngine(
        config.rules,
        devices=config.devices,
        derived=config.derived_points,
        timezone=config.gateway.timezone,
    )
    # Warm-up, not timed: 160 polls spread over the 27 hours before the timed run (one every
    # ~10 minutes), so that the abnormal rules' daily baselines have learned every hour of the
    # day (6 readings each, min_samples 5) and judge every reading of the timed run.
    for index, reading in enumerate(_readings(DEVICES * 14 * 160)):
        poll = index // (DEVICES * 14)
        earlier = reading.ts - 27 * 3600 + poll * 600 - (reading.ts - 1_735_689_600.0)
        engine.evaluate(dataclasses.replace(reading, ts=earlier))
    readings = _readings(count)
    judgements = sum(
        len(engine._routes[(r.device_id, r.point)].judges) for r in readings[: DEVICES * 14]
    ) / (DEVICES * 14)
    evaluate, tick = engine.evaluate, engine.tick
    next_tick = -math.inf
    # The thread's CPU time, not the wall clock: on a machine shared with other work the wall
    # clock also counts the time the loop waited for a core (measured at a load average of 5
    # on 2 cores: 33-39 µs by the wall clock for 13-16 µs of CPU).
    started, wall = time.thread_time(), time.perf_counter()
    for reading in readings:
        if reading.ts >= next_tick:
            tick(reading.ts)
            next_tick = reading.ts + 1.0
        evaluate(reading)
    elapsed, wall = time.thread_time() - started, time.perf_counter() - wall
    print(
        f"  rules: {elapsed / count * 1e6:.2f} µs of CPU per reading "
        f"({wall / count * 1e6:.2f} µs by the wall clock)"
    )
    return {
        "rule_eval_us_per_reading": round(elapsed / count * 1e6, 2),
        "rule_eval_rules_per_reading": round(judgements, 1),
        "rules_active": float(len(config.rules)),
    }


REPLAY_DEVICES = 10
REPLAY_POLL = 10.0


def replay_site(config: SiteConfig) -> SiteConfig:
    rules: list[dict[str, Any]] = [
        {
            "id": "leak",
            "kind": "over-limit",
            "point": "residual_current",
            "raise_at": 300,
            "clear_below": 270,
            "debounce": {"readings": 2},
        },
        {
            "id": "jump",
            "kind": "sudden-change",
            "point": "temperature_1",
            "change": 15,
            "window": "2m",
        },
        {
            "id": "odd-voltage",
            "kind": "abnormal",
            "point": "voltage_a",
            "baseline": "2d",
            "learning": "1d",
            "max_samples": 2000,
            "seasonal": "daily",
        },
        {"id": "warm-days", "kind": "sustained", "point": "temperature_1", "above": 60, "days": 2},
        {
            "id": "voltage-missing",
            "kind": "sensor-fault",
            "point": "voltage_a",
            "missing_for": "2m",
            "stuck_for": "1d",
        },
        {"id": "silent", "kind": "device-offline", "silent_for": "5m"},
    ]
    checked = [TypeAdapter(Rule).validate_python(rule) for rule in rules]
    return config.model_copy(update={"devices": config.devices[:REPLAY_DEVICES], "rules": checked})


def _silent_trace(count: int, devices: int = REPLAY_DEVICES, seed: int = 11) -> list[Reading]:
    """Polls of every device, skipping each device's 15-minute silences and two days of the
    whole site's silence half-way."""
    model = load_model("efm-ref")
    rng = random.Random(seed)
    t0 = 1_735_689_600.0
    out: list[Reading] = []
    poll = 0
    while len(out) < count:
        ts = t0 + poll * REPLAY_POLL
        if len(out) >= count // 2:
            ts += 2 * 86_400.0
        for n in range(1, devices + 1):
            # Device n is silent for 15 minutes of every 4 hours, at its own time.
            if (ts + n * 1_000.0) % 14_400.0 < 900.0:
                continue
            for point in model.points:
                wobble = rng.gauss(0, 0.02) * (abs(point.typical) or 1.0)
                out.append(
                    Reading(f"efm-{n}", point.name, point.typical + wobble, point.unit, ts, 0.0)
                )
        poll += 1
    return out[:count]


def replay_rate(config: SiteConfig, count: int) -> dict[str, float]:
    from edge.replay import replay  # noqa: PLC0415 -- only this figure needs it

    site_config = replay_site(config)
    readings = _silent_trace(count)
    transitions: list[Any] = []
    summary = replay(site_config, iter(readings), transitions.append)
    span = (readings[-1].ts - readings[0].ts) / 86_400.0
    # The same kind of trace through the 200 rules of the rule_eval site (40 devices).
    crowded = replay(config, iter(_silent_trace(count, DEVICES)), transitions.append)
    return {
        "replay_readings_per_s": round(summary.readings / summary.seconds),
        "replay_200_rules_readings_per_s": round(crowded.readings / crowded.seconds),
        "replay_trace_days": round(span, 2),
        "replay_ticks": float(summary.ticks),
        "replay_transitions": float(summary.transitions),
    }


PLOT_DEVICES = 4
PLOT_POLL = 20.0


def replay_plot(config: SiteConfig, count: int) -> dict[str, float]:
    """What ``--plot`` adds to a replay: ``count`` readings recorded (downsampled) as they
    stream by, then drawn with the transitions the replay found."""
    from edge.replay import replay  # noqa: PLC0415 -- only this figure needs it
    from edge.replay_plot import PlotRecorder, panels_of, render_svg  # noqa: PLC0415

    site_config = replay_site(config)
    rng = random.Random(5)
    points = ("residual_current", "temperature_1")
    readings: list[Reading] = []
    t0 = 1_735_689_600.0
    poll = 0
    while len(readings) < count:
        ts = t0 + poll * PLOT_POLL
        for n in range(1, PLOT_DEVICES + 1):
            leak = 150.0 + rng.gauss(0, 10) + (200.0 if rng.random() < 0.0005 else 0.0)
            readings.append(Reading(f"efm-{n}", points[0], leak, "mA", ts, 0.0))
            readings.append(Reading(f"efm-{n}", points[1], 35.0 + rng.gauss(0, 1), "C", ts, 0.0))
        poll += 1
    readings = readings[:count]
    engine = RuleEngine(site_config.rules, devices=site_config.devices, timezone="UTC")
    recorder = PlotRecorder()
    replay(site_config, iter(readings), recorder.transition, engine=engine)
    started = time.perf_counter()
    for reading in readings:
        recorder.reading(reading)
    drawing = render_svg(panels_of(engine, recorder), ZoneInfo("UTC"))
    elapsed = time.perf_counter() - started
    return {
        "replay_plot_s_1m_readings": round(elapsed, 3),
        "replay_plot_bytes_1m_readings": float(len(drawing.encode())),
        "replay_plot_trace_days": round((readings[-1].ts - t0) / 86_400.0, 1),
        "replay_plot_transitions": float(len(recorder.transitions)),
    }


def reading_to_buzzer(config: SiteConfig, trials: int) -> dict[str, float]:
    # The gateway logs every alarm as in the field (logfmt on a stream); here the stream is
    # /dev/null rather than journald's pipe, so the formatting cost is in the figure.
    sink = open(os.devnull, "w")  # noqa: SIM115 -- closed in the finally below
    handler = logging.StreamHandler(sink)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [handler]
    pins = MockFactory()
    gateway = Gateway(config, pin_factory=pins)
    buzzer = pins.pin(config.outputs.buzzer.pin)
    latencies: list[float] = []
    ts = time.time()
    try:
        for trial in range(trials):
            ts += 1.0
            high = Reading("efm-1", "residual_current", 350.0, "mA", ts, time.monotonic())
            started = time.perf_counter()
            gateway.on_sample(high)
            elapsed = time.perf_counter() - started
            if not buzzer.state:
                raise AssertionError(f"trial {trial}: the buzzer did not sound")
            latencies.append(elapsed * 1000)
            gateway.on_sample(Reading("efm-1", "residual_current", 100.0, "mA", ts + 0.5, 0.0))
            if buzzer.state:
                raise AssertionError(f"trial {trial}: the buzzer did not stop")
    finally:
        gateway.annunciator.close()
        pins.reset()
        root.handlers = saved
        sink.close()
    ordered = sorted(latencies)
    return {
        "reading_to_buzzer_ms_p50": round(statistics.median(ordered), 4),
        "reading_to_buzzer_ms_p99": round(
            ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4
        ),
        "reading_to_buzzer_ms_max": round(ordered[-1], 4),
    }


KEYS = (
    "rule_eval_us_per_reading",
    "rule_eval_rules_per_reading",
    "rules_active",
    "replay_readings_per_s",
    "replay_200_rules_readings_per_s",
    "replay_trace_days",
    "replay_ticks",
    "replay_transitions",
    "replay_plot_s_1m_readings",
    "replay_plot_bytes_1m_readings",
    "replay_plot_trace_days",
    "replay_plot_transitions",
    "reading_to_buzzer_ms_p50",
    "reading_to_buzzer_ms_p99",
    "reading_to_buzzer_ms_max",
)
#: A run of a second that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"readings": 2_000, "trials": 20, "plot_readings": 2_000}


def run(
    readings: int = 200_000, trials: int = 2_000, plot_readings: int = 1_000_000
) -> dict[str, float]:
    """Rule evaluation, replay and reading -> buzzer figures; prints them as it goes."""
    with tempfile.TemporaryDirectory() as workdir:
        config = site(Path(workdir))
        results = rule_eval(config, readings)
        print(f"rules: {results}", flush=True)
        replayed = replay_rate(config, readings)
        print(f"rules: {replayed}", flush=True)
        results |= replayed
        plotted = replay_plot(config, plot_readings)
        print(f"rules: {plotted}", flush=True)
        results |= plotted
        latency = reading_to_buzzer(config, trials)
        print(f"rules: {latency}", flush=True)
    return {**results, **latency}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Rule evaluation and reading -> buzzer figures.")
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--trials", type=int, default=2_000)
    parser.add_argument("--plot-readings", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    figures = run(args.readings, args.trials, args.plot_readings)
    print(json.dumps(figures, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
