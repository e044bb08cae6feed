"""What a push-config costs on the demo site: the ack, the restart, the buzzer's silence.

``push_ack_ms``: from publishing a push-config (the demo site with one device renamed) to its
ack on the platform's subscription: the site is checked as ``edge check-config`` does and the
file written (fsync, rename). ``push_applied_s``: to the ``config-applied`` event: the old
gateway shuts down in order, the new one starts, restores the rule state, runs the settle
time (3 s) without a crash and reaches the platform (its own status echoed back by the broker),
then sends the event. ``push_confirm_s``: to the push being confirmed: ``config-applied`` got
its PUBACK and the push marker is gone (the file is the one to keep, and kept as the last good
config); a second push is taken only from then on. ``push_buzzer_gap_ms``: an alarm (severity
fire: the buzzer is steady on) is sounding through the push; the longest time its pin was off
between the push and ``config-applied``, from gpiozero's MockPin history. Medians over
``trials`` pushes, each renaming the device back and forth; the broker is Mosquitto (or the
embedded one).

``command_verify_us``: what checking a command's signature costs the gateway, per command:
the canonical form of a ``set-threshold`` and its Ed25519 verification (edge/signing.py's
``verify``), median over 2000 commands; ``command_verify_push_us`` the same for a push-config
carrying the whole demo site (the canonical form grows with the params).

``python -m tests.benchmarks.commands [--trials N]`` prints the figures and adds them to
bench-results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import yaml
from gpiozero.pins.mock import MockFactory

from drivers.modbus import known_models
from edge import contract
from edge.atomic import digest_of
from edge.config import load_site
from edge.contract import decode_payload, iso_utc
from edge.signing import verify
from edge.site_runner import SiteRunner, reached_platform
from hil.broker import LocalBroker
from hil.simulator import Simulator
from tests.fixtures.broker import free_port
from tests.fixtures.command_keys import key_ring, sign
from tests.integration.site import site_for

ROOT = Path(__file__).resolve().parents[2]
BUZZER = 17


def _off_longest(states: list[Any], since: int) -> float:
    """The longest off period in a MockPin's history from entry ``since`` on (seconds).

    Each entry is (seconds since the previous change, new state)."""
    longest = 0.0
    for previous, entry in zip(states[since:], states[since + 1 :], strict=False):
        if previous.state is False and entry.state is True:
            longest = max(longest, entry.timestamp)
    return longest


async def _until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {seconds:g} s")
        await asyncio.sleep(0.01)


def _has(seen: dict[str, float], key: str) -> Callable[[], bool]:
    return lambda: key in seen


def _confirmed(runner: SiteRunner, count: int) -> Callable[[], bool]:
    return lambda: runner.applied >= count


async def _push(
    client: aiomqtt.Client, topics: contract.Topics, site: dict[str, Any], cid: str
) -> None:
    command = {
        "schema": "edge.command/1",
        "command_id": cid,
        "command": "push-config",
        "issued_at": iso_utc(time.time()),
        "params": {"site": site},
    }
    # Renaming a device a critical rule judges needs the engineering key.
    signed = sign(command, site["gateway"]["id"], "engineering")
    await client.publish(topics.commands, json.dumps(signed), qos=1)


def _verify_us(command: dict[str, Any], gateway_id: str, count: int) -> float:
    """Median microseconds of one signature check of ``command`` as it arrives."""
    signed = sign(command, gateway_id)
    ring = key_ring()
    timings = []
    for _ in range(count):
        started = time.perf_counter_ns()
        verify(signed, gateway_id, ring)
        timings.append(time.perf_counter_ns() - started)
    return statistics.median(timings) / 1000


def verify_figures(count: int = 2000) -> dict[str, float]:
    """``command_verify_us`` and ``command_verify_push_us`` (see the module docstring)."""
    site: dict[str, Any] = yaml.safe_load((ROOT / "config" / "example-site.yaml").read_text())
    gateway_id = site["gateway"]["id"]

    def command(name: str, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "schema": "edge.command/1",
            "command_id": f"bench-{uuid.uuid4()}",
            "command": name,
            "issued_at": iso_utc(time.time()),
            "params": params,
        }

    threshold = command("set-threshold", {"rule": site["rules"][0]["id"], "threshold": 250})
    return {
        "command_verify_us": round(_verify_us(threshold, gateway_id, count), 1),
        "command_verify_push_us": round(
            _verify_us(command("push-config", {"site": site}), gateway_id, count // 4), 1
        ),
    }


async def _trials(workdir: Path, trials: int) -> dict[str, float]:
    broker = LocalBroker("127.0.0.1", free_port())
    broker.start()
    pins = MockFactory()
    try:
        async with Simulator(
            tcp=("127.0.0.1", 0), tcp_devices=[1, 2], rtu_link=workdir / "rtu", rtu_devices=[1]
        ) as sim:
            site = site_for(sim, workdir, broker_url=f"mqtt://127.0.0.1:{broker.port}")
            site["rules"][0]["severity"] = "fire"  # a steady buzzer: any gap is the restart's
            path = workdir / "site.yaml"
            path.write_text(yaml.safe_dump(site, sort_keys=False))
            runner = SiteRunner(
                path,
                load_site(path, known_models=known_models()),
                digest_of(path.read_bytes()),
                pin_factory=pins,
                known_models=known_models(),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            topics = contract.Topics.of("district/v1", site["gateway"]["id"])
            acks: dict[str, float] = {}
            applied: dict[str, float] = {}
            try:
                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    await client.subscribe(topics.acks, qos=1)
                    await client.subscribe(topics.events, qos=1)

                    async def listen() -> None:
                        async for message in client.messages:
                            body = decode_payload(bytes(message.payload))
                            if message.topic.value.endswith("/acks"):
                                acks[body["command_id"]] = time.monotonic()
                            elif body.get("kind") == "config-applied":
                                applied[body["command_id"]] = time.monotonic()

                    listener = asyncio.create_task(listen())
                    # Subscribed to its commands (its status echoed back): a push sent sooner
                    # would reach no subscriber and be lost.
                    await _until(
                        lambda: runner.gateway is not None and reached_platform(runner.gateway),
                        30,
                        "gateway online",
                    )
                    sim.set("tcp", 1, "residual_current", 350.0)
                    await _until(lambda: pins.pin(BUZZER).state is True, 10, "buzzer")
                    figures: dict[str, list[float]] = {
                        "ack": [],
                        "applied": [],
                        "confirm": [],
                        "gap": [],
                    }
                    for trial in range(trials):
                        pushed = copy.deepcopy(site)
                        if trial % 2 == 0:
                            pushed["devices"][1]["id"] = "efm-kitchen-102"
                        cid = f"bench-{uuid.uuid4()}"
                        since = len(pins.pin(BUZZER).states) - 1
                        sent = time.monotonic()
                        await _push(client, topics, pushed, cid)
                        await _until(_has(applied, cid), 90, f"config-applied {trial}")
                        # Confirmed: the runner saw config-applied's PUBACK and dropped the
                        # push marker; only then does it take the next push.
                        await _until(_confirmed(runner, trial + 1), 30, f"confirmed {trial}")
                        figures["confirm"].append(time.monotonic() - sent)
                        figures["ack"].append((acks[cid] - sent) * 1000)
                        figures["applied"].append(applied[cid] - sent)
                        figures["gap"].append(
                            _off_longest(list(pins.pin(BUZZER).states), since) * 1000
                        )
                    listener.cancel()
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
    finally:
        broker.close()
    return {
        "push_ack_ms": round(statistics.median(figures["ack"]), 1),
        "push_applied_s": round(statistics.median(figures["applied"]), 2),
        "push_confirm_s": round(statistics.median(figures["confirm"]), 2),
        "push_buzzer_gap_ms": round(statistics.median(figures["gap"]), 1),
        "push_buzzer_gap_ms_max": round(max(figures["gap"]), 1),
    }


KEYS = (
    "push_ack_ms",
    "push_applied_s",
    "push_confirm_s",
    "push_buzzer_gap_ms",
    "push_buzzer_gap_ms_max",
    "command_verify_us",
    "command_verify_push_us",
)
#: A run of a few seconds that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"trials": 1}


def run(trials: int = 5) -> dict[str, float]:
    """The figures (see the module docstring)."""
    with tempfile.TemporaryDirectory() as folder:
        results = asyncio.run(_trials(Path(folder), trials))
    results.update(verify_figures())
    print(f"commands: {trials} pushes on the demo site; signature checks")
    for key, value in results.items():
        print(f"  {key:<26} {value}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure push-config on the demo site.")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.out.exists():
        results.update(json.loads(args.out.read_text()))
    results.update(run(args.trials))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out.name}")


if __name__ == "__main__":
    main()
