"""A stalled journal against the alarm path, in-process.

The gateway (example site, gpiozero's MockFactory, a real SQLite outbox) logs through the log
queue as ``edge run`` does; its output is a pipe, the gateway's stderr.

``alarm_to_buzzer_ms_p99`` / ``alarm_to_buzzer_ms_stderr_blocked_p99``: each trial hands a
reading over the limit to ``Gateway.on_sample`` (the drivers' sink) and stops the clock when
the call returns with the buzzer pin on; a low reading then clears the alarm. Measured twice
the same way: with the pipe read at once by a thread (free stderr), and with the pipe full
and never read (journald stalled) for every trial.

``log_queue_dropped``: a stall of ``--stall-seconds`` (60 by default) while 1,000 readings/s
arrive, each one with a routine log line (the worst case: a chatty driver or debug logging),
and an alarm raised and cleared every 5 s. Then the journal reads again. Asserted and printed:
every alarm's lines (``alarm-raised``, ``alarm-cleared``, ``buzzer on``, ``buzzer off``)
reached the journal after the stall, and ``N log lines dropped`` says how many did not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from gpiozero.pins.mock import MockFactory

from buffer import Outbox
from drivers import Reading
from edge.config import SiteConfig
from edge.gateway import Gateway
from edge.log import fields, parse_logfmt, start_log_queue
from edge.log_queue import LogPipeline

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example-site.yaml"
ALARM_DEVICE = "efm-shop-101"
QUIET_DEVICES = ("efm-restaurant-102", "efm-workshop-201")
ALARM_LINES = ("alarm-raised", "alarm-cleared", "buzzer on", "buzzer off")


def site(workdir: Path) -> SiteConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["buffer"]["path"] = str(workdir / "outbox.sqlite")
    return SiteConfig.model_validate(data)


def full_pipe() -> tuple[int, int]:
    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"x" * 4096)
    fcntl.fcntl(write, fcntl.F_SETFL, flags)
    return read, write


class Journal:
    """The reading end of the gateway's stderr: reads while ``reading`` is set."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.reading = threading.Event()
        self._thread = threading.Thread(target=self._read, name="journal", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            self.reading.wait()
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.data.extend(chunk)

    def lines(self) -> list[dict[str, str]]:
        text = bytes(self.data).decode(errors="replace").lstrip("x")
        return [parse_logfmt(line) for line in text.splitlines()]

    def wait_for(self, needle: bytes, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while needle not in self.data:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never reached the journal")
            time.sleep(0.05)

    def close(self) -> None:
        self.reading.set()
        self._thread.join(5)


@contextlib.contextmanager
def logging_to(stalled: bool) -> Iterator[tuple[LogPipeline, Journal]]:
    """The log queue writing to a pipe: read from the start, or full and not read."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    read, write = full_pipe() if stalled else os.pipe()
    journal = Journal(read)
    if not stalled:
        journal.reading.set()
    pipeline = start_log_queue("info", output=write, capture=False)
    try:
        yield pipeline, journal
    finally:
        journal.reading.set()  # let the writer finish
        pipeline.stop(timeout=10)
        journal.close()
        os.close(read)
        root.handlers[:], level = saved
        root.setLevel(level)


def reading(device: str, value: float, ts: float) -> Reading:
    return Reading(device, "residual_current", value, "mA", ts, time.monotonic())


def alarm_to_buzzer(config: SiteConfig, trials: int, *, stalled: bool) -> list[float]:
    pins = MockFactory()
    gateway = Gateway(config, pin_factory=pins)
    buzzer = pins.pin(config.outputs.buzzer.pin)
    latencies: list[float] = []
    ts = time.time()
    try:
        with logging_to(stalled):
            for trial in range(trials):
                ts += 1.0
                high = reading(ALARM_DEVICE, 350.0, ts)
                started = time.perf_counter()
                gateway.on_sample(high)
                elapsed = time.perf_counter() - started
                if not buzzer.state:
                    raise AssertionError(f"trial {trial}: the buzzer did not sound")
                latencies.append(elapsed * 1000)
                gateway.on_sample(reading(ALARM_DEVICE, 100.0, ts + 0.5))
                if buzzer.state:
                    raise AssertionError(f"trial {trial}: the buzzer did not stop")
    finally:
        gateway.annunciator.close()
        pins.reset()
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def stall(config: SiteConfig, workdir: Path, seconds: float) -> dict[str, float]:
    pins = MockFactory()
    gateway = Gateway(config, pin_factory=pins)
    buzzer = pins.pin(config.outputs.buzzer.pin)
    chatty = logging.getLogger("drivers.chatty")
    outbox = await Outbox.open(workdir / "stall.sqlite")
    gateway.outbox = outbox
    raised = cleared = 0
    worst_ms = 0.0
    try:
        with logging_to(stalled=True) as (pipeline, journal):
            loop = asyncio.get_running_loop()
            start = loop.time()
            tick = 0
            ticks = int(seconds * 100)  # 10 readings every 10 ms
            while tick < ticks:
                await asyncio.sleep(max(0.0, start + tick * 0.01 - loop.time()))
                now = time.time()
                for n in range(10):
                    device = QUIET_DEVICES[n % 2]
                    gateway.on_sample(reading(device, 120.0, now))
                    chatty.info("frame", extra=fields(device=device, n=tick * 10 + n))
                if tick % 500 == 0:  # every 5 s: an alarm ...
                    began = time.perf_counter()
                    gateway.on_sample(reading(ALARM_DEVICE, 350.0, now))
                    worst_ms = max(worst_ms, (time.perf_counter() - began) * 1000)
                    if not buzzer.state:
                        raise AssertionError("the buzzer did not sound during the stall")
                    raised += 1
                elif tick % 500 == 200:  # ... cleared 2 s later
                    gateway.on_sample(reading(ALARM_DEVICE, 100.0, now))
                    cleared += 1
                tick += 1
            elapsed = loop.time() - start
            dropped_during = pipeline.dropped
            journal.reading.set()  # the journal is back
            logging.getLogger("bench").warning("stall over")  # queued after everything else
            await asyncio.to_thread(journal.wait_for, b'msg="stall over"', 60)
            if dropped_during:
                await asyncio.to_thread(journal.wait_for, b"log lines dropped", 60)
            lines = journal.lines()
            dropped = pipeline.dropped
    finally:
        await outbox.close()
        gateway.annunciator.close()
        pins.reset()
    seen = dict.fromkeys(ALARM_LINES, 0)
    for line in lines:
        message = line.get("msg", "")
        if message in seen and line.get("device", ALARM_DEVICE) == ALARM_DEVICE:
            seen[message] += 1
    expected = {
        "alarm-raised": raised,
        "alarm-cleared": cleared,
        "buzzer on": raised,
        "buzzer off": cleared,
    }
    if seen != expected:
        raise AssertionError(f"alarm lines lost in the stall: journal has {seen}, sent {expected}")
    reported = sum(
        int(line.get("dropped", 0)) for line in lines if line.get("msg", "").endswith("dropped")
    )
    if reported != dropped:
        raise AssertionError(f"the journal says {reported} lines dropped, the queue {dropped}")
    print(
        f"logs: {seconds:g} s stall, {raised} alarms raised and {cleared} cleared; "
        f"every one of their {sum(seen.values())} lines reached the journal after it",
        flush=True,
    )
    return {
        "log_queue_dropped": float(dropped),
        "log_queue_dropped_during_stall": float(dropped_during),
        "log_queue_alarm_lines_after_stall": float(sum(seen.values())),
        "log_stall_readings_per_s": round(ticks * 10 / elapsed, 1),
        "alarm_to_buzzer_ms_during_stall_max": round(worst_ms, 4),
    }


KEYS = (
    "alarm_to_buzzer_ms_p50",
    "alarm_to_buzzer_ms_p99",
    "alarm_to_buzzer_ms_stderr_blocked_p50",
    "alarm_to_buzzer_ms_stderr_blocked_p99",
    "log_queue_dropped",
    "log_queue_dropped_during_stall",
    "log_queue_alarm_lines_after_stall",
    "log_stall_readings_per_s",
    "alarm_to_buzzer_ms_during_stall_max",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"trials": 50, "stall_seconds": 2.0}


def run(trials: int = 2_000, stall_seconds: float = 60.0) -> dict[str, float]:
    """Every figure of this suite; prints them as it goes."""
    with tempfile.TemporaryDirectory() as workdir:
        config = site(Path(workdir))
        free = alarm_to_buzzer(config, trials, stalled=False)
        blocked = alarm_to_buzzer(config, trials, stalled=True)
        latency = {
            "alarm_to_buzzer_ms_p50": round(statistics.median(free), 4),
            "alarm_to_buzzer_ms_p99": round(p99(free), 4),
            "alarm_to_buzzer_ms_stderr_blocked_p50": round(statistics.median(blocked), 4),
            "alarm_to_buzzer_ms_stderr_blocked_p99": round(p99(blocked), 4),
        }
        print(f"logs: {latency}", flush=True)
        stalled = asyncio.run(stall(config, Path(workdir), stall_seconds))
        print(f"logs: {stalled}", flush=True)
    return {**latency, **stalled}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The alarm path against a stalled journal.")
    parser.add_argument("--trials", type=int, default=2_000)
    parser.add_argument("--stall-seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(run(args.trials, args.stall_seconds), indent=2))
