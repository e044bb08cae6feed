"""How long ``edge check-config`` takes on a large site: what an installer waits at every save.

- ``check_config_s_100_devices``: the whole process, ``python -m edge.cli check-config FILE``
  (interpreter start, imports, YAML, the model, cross-checks, units, the point catalogue,
  every warning check), on a site of 100 devices (60 electrical fire monitors on three
  RS-485 lines and Modbus TCP, 20 WitMotion tilt sensors with gauge lengths, 10 LD2410 radars,
  10 PIRs) and 300 rules written with units; median of ``trials`` runs;
- ``check_config_ms_100_devices_in_process``: the same file through
  :func:`edge.config.loader.report_config` in this process (no interpreter start), median.

``python -m tests.benchmarks --only site_check`` runs it.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from drivers.modbus import known_models
from edge.config.loader import report_config

ROOT = Path(__file__).resolve().parents[2]

KEYS = ("check_config_s_100_devices", "check_config_ms_100_devices_in_process")
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"trials": 1, "devices": 10, "rules": 30}

_WHERE = '{building: B3, floor: "1", room: r, venue_type: shop}'


def site_text(devices: int = 100, rules: int = 300) -> str:
    """A valid site of ``devices`` devices of every kind and ``rules`` rules."""
    monitors = devices * 6 // 10
    tilts = devices * 2 // 10
    radars = devices // 10
    pirs = devices - monitors - tilts - radars
    lines = [
        "gateway: {id: gw-bench-0001, site: {name: Bench block}}",
        "buses:",
        "  - {id: lan, kind: modbus-tcp, host: 127.0.0.1, port: 1502, timeout: 200ms}",
    ]
    lines += [
        f"  - {{id: rs485-{n}, kind: modbus-rtu, port: 'socket://127.0.0.1:{7000 + n}', "
        "baudrate: 19200, timeout: 100ms}"
        for n in range(3)
    ]
    lines += [
        f"  - {{id: uart-{n}, kind: serial, port: 'socket://127.0.0.1:{8000 + n}'}}"
        for n in range(tilts + radars)
    ]
    lines += ["  - {id: pins, kind: gpio}", "devices:"]
    for n in range(monitors):
        bus = "lan" if n % 4 == 3 else f"rs485-{n % 4}"  # a quarter on TCP
        lines.append(
            f"  - {{id: efm-{n}, model: efm-ref, bus: {bus}, address: {n // 4 + 1}, "
            f"poll_interval: 5s, location: {_WHERE}}}"
        )
    for n in range(tilts):
        lines.append(
            f"  - {{id: tilt-{n}, model: witmotion-uart, bus: uart-{n}, gauge_length: 3, "
            f"location: {_WHERE}}}"
        )
    for n in range(radars):
        lines.append(
            f"  - {{id: radar-{n}, model: hlk-ld2410, bus: uart-{tilts + n}, location: {_WHERE}}}"
        )
    for n in range(pirs):
        lines.append(
            f"  - {{id: pir-{n}, model: pir, bus: pins, pin: {n + 2}, location: {_WHERE}}}"
        )
    lines.append("rules:")
    kinds = (
        "{kind: over-limit, point: residual_current, raise_at: 0.3 A, clear_below: 270 mA, "
        "devices: [efm-DEV]}",
        "{kind: sustained, point: pitch_displacement, above: 0.4 cm, months: 2, "
        "devices: [tilt-TILT]}",
        "{kind: under-limit, point: voltage_a, raise_at: 198 V, clear_above: 0.205 kV, "
        "devices: [efm-DEV]}",
    )
    for n in range(rules):
        rule = kinds[n % len(kinds)]
        rule = rule.replace("DEV", str(n % monitors)).replace("TILT", str(n % max(tilts, 1)))
        lines.append(f"  - {{id: rule-{n}, {rule[1:]}")
    lines += [
        "outputs: {pin_factory: mock, buzzer: {pin: 17}}",
        'uplink: {brokers: ["mqtt://127.0.0.1:1883"]}',
        "buffer: {path: outbox.sqlite}",
    ]
    return "\n".join(lines) + "\n"


def run(trials: int = 5, devices: int = 100, rules: int = 300) -> dict[str, float]:
    """The figures (see the module docstring)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "site.yaml"
        path.write_text(site_text(devices, rules), encoding="utf-8")
        whole: list[float] = []
        for _ in range(trials):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "edge.cli", "check-config", str(path)],
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
            )
            whole.append(time.perf_counter() - started)
            if done.returncode != 0 or "ok: gateway gw-bench-0001" not in done.stdout:
                raise RuntimeError(f"check-config refused the bench site:\n{done.stdout}")
        inside: list[float] = []
        models = known_models()
        for _ in range(trials):
            started = time.perf_counter()
            status, _ = report_config(str(path), io.StringIO(), known_models=models)
            inside.append(time.perf_counter() - started)
            assert status == 0
    results = {
        "check_config_s_100_devices": round(statistics.median(whole), 3),
        "check_config_ms_100_devices_in_process": round(statistics.median(inside) * 1000, 1),
    }
    print(f"site_check: {devices} devices, {rules} rules, median of {trials}")
    for key, value in results.items():
        print(f"  {key:<40} {value}")
    return results
