"""Running scenarios: the rig up, the timeline played, every expectation judged.

A live scenario starts its own Mosquitto, one simulator per bus of the site, the reference
receiver (in this process) and the gateway as a real ``edge run`` process with gpiozero's mock
pins. The buzzer is observed through the gateway's ``buzzer on``/``buzzer off`` log lines and
their timestamps (taken right after the pin was driven); the LED through the alarm
transitions it follows (lit while any alarm is active); the platform through the receiver.

A replay scenario generates its readings (months of them) and runs them through the site's
rules with ``edge replay``'s engine, on the readings' own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import shutil
import sqlite3
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from drivers import Reading
from edge.commands import COMMANDS
from edge.config.model import ModbusRtuBus, ModbusTcpBus
from edge.contract import Topics
from edge.replay import replay
from edge.rules import Transition
from edge.signing import generate_key, load_private_key, sign_command
from hil.modem import ModemSimulator
from hil.rtu_line import RtuLine
from hil.scenario.model import Expectation, Scenario, SimDevice, Step
from hil.scenario.realrig import BuzzerReadback, Rig, RigConfigError
from hil.scenario.rig import (
    Arrival,
    Disk,
    GatewayProcess,
    LogLine,
    Mosquitto,
    ObservingReceiver,
    RigError,
    RigSkip,
    Sim,
    make_serial_sim,
    publish,
    receiving,
)
from hil.serial_sim import Ld2410Sim, SerialDeviceSim, WitMotionSim
from hil.simulator import Simulator, send_control

__all__ = ["Outcome", "ScenarioResult", "run_scenario"]

Status = Literal["passed", "failed", "skipped", "error"]
#: How long the rig may take to come up: every device reporting at the platform (generous: a
#: loaded 2-core CI machine starts a Python process slowly).
WARMUP_TIMEOUT = 30.0
#: How long the outbox may take to drain before the gateway is stopped at the end.
DRAIN_TIMEOUT = 15.0
#: How long a pushed command may take to be answered (it is answered before any restart).
ACK_WITHIN = 5.0


@dataclass
class Outcome:
    expectation: Expectation
    passed: bool
    detail: str
    #: Seconds measured (time to buzzer, to platform), when the expectation measures one.
    measured: float | None = None


@dataclass
class ScenarioResult:
    scenario: Scenario
    status: Status
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    reason: str = ""
    workdir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]


Say = Callable[[str], None]
#: Live narration: ``watch(who, text)`` for what the gateway logs and the platform receives.
Watch = Callable[[str, str], None]


async def run_scenario(
    scenario: Scenario,
    workdir: Path | None = None,
    *,
    say: Say = print,
    rig: Rig | None = None,
    watch: Watch | None = None,
) -> ScenarioResult:
    """Run one scenario; never raises for a failing rig or expectation (see ``status``)."""
    began = time.monotonic()
    temporary = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"scenario-{scenario.name}-"))
    else:
        # A scenario starts from nothing: no outbox, broker sessions or logs of a last run.
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if scenario.mode == "replay":
            result = run_replay(scenario, say)
        else:
            result = await LiveRun(scenario, workdir, say, rig, watch).run()
    except RigSkip as exc:
        result = ScenarioResult(scenario, "skipped", reason=str(exc))
    except (RigError, OSError, ValueError) as exc:
        result = ScenarioResult(scenario, "error", reason=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        # A fault of the runner itself: this scenario is an error with where it happened, and
        # the scenarios after it still run and are reported.
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result = ScenarioResult(
            scenario,
            "error",
            reason=f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})",
        )
    result.seconds = time.monotonic() - began
    result.workdir = workdir
    if temporary and result.status in ("passed", "skipped"):
        # A temporary folder is kept only when its logs explain a failure.
        shutil.rmtree(workdir, ignore_errors=True)
        result.workdir = None
    return result


# --------------------------------------------------------------------------------------------
# Live


def gateway_handles(command: str) -> bool:
    """Whether this gateway answers ``command`` (the downlink commands grow over releases)."""
    return command in COMMANDS


class LiveRun:
    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        say: Say,
        rig: Rig | None,
        watch: Watch | None = None,
    ) -> None:
        self.scenario = scenario
        self.watch = watch
        self.workdir = workdir
        self.say = say
        self.rig = rig
        self.random = random.Random(scenario.seed)
        self.sims: dict[str, Sim] = {}
        self.step_times: dict[str, float] = {}
        self.background: list[asyncio.Task[None]] = []
        self.disk: Disk | None = None
        self.broker = Mosquitto(workdir / "broker")
        self.receiver = ObservingReceiver(workdir / "platform.sqlite")
        self.gateway: GatewayProcess | None = None
        self.notes: list[str] = []
        self.acks_wanted: list[tuple[str, str, Step]] = []
        self.kills: list[float] = []
        self.bus_kinds = {bus.id: bus.kind for bus in scenario.site.buses}
        self.readback: BuzzerReadback | None = None
        #: The 4G modem, simulated when the site has one (SMS and calls).
        self.modem: ModemSimulator | None = None

    async def run(self) -> ScenarioResult:
        scenario = self.scenario
        if "push-config" in scenario.needs and not gateway_handles("push-config"):
            raise RigSkip("this gateway does not handle the push-config command yet")
        if self.rig is not None:
            self.check_rig()
        if "tmpfs" in scenario.needs:
            self.disk = Disk(self.workdir / "disk")
            self.disk.mount()
        try:
            return await self._run()
        finally:
            for task in self.background:
                task.cancel()
            await asyncio.gather(*self.background, return_exceptions=True)
            if self.gateway is not None:
                await self.gateway.stop()
            await self._stop_sims()
            self.broker.stop()
            self.receiver.close()
            if self.disk is not None:
                self.disk.unmount()
            if self.readback is not None:
                self.readback.close()

    def check_rig(self) -> None:
        """Skip what a real rig cannot play: line faults need the simulated line."""
        assert self.rig is not None
        for step in self.scenario.steps:
            if step.action in ("fault", "garbage") and step.args.get("kind") not in (
                "silent",
                "none",
            ):
                raise RigSkip(
                    f"step {step.label!r} ({step.action}) needs the simulated line; the real "
                    "rig's simulator can set values and silence units"
                )
        for device in self.scenario.devices:
            try:
                self.rig.sim_bus(device.bus, self.bus_kinds[device.bus])
            except RigConfigError as exc:
                raise RigSkip(str(exc)) from None
        if self.rig.readback_pin is not None:
            self.readback = BuzzerReadback(self.rig.readback_pin)

    async def _run(self) -> ScenarioResult:
        scenario = self.scenario
        await self._start_sims()
        site_path = self.workdir / "site.yaml"
        site = self.site_data()
        site_path.write_text(yaml.safe_dump(site, sort_keys=False))
        self.broker.start()
        prefix = f"{site['uplink'].get('topic_prefix', 'district/v1')}"
        self.topics = Topics.of(prefix, scenario.site.gateway.id)
        self.gateway = GatewayProcess(site_path, self.workdir / "gateway.log")
        self.gateway.mock_pins = self.readback is None
        if self.watch is not None:
            self.gateway.on_line = self._narrate_line
            self.receiver.on_arrival = self._narrate_arrival
        # The receiver says every reconnect attempt on stderr; during a broker outage that is
        # noise between the progress lines, so it goes to the scenario's folder instead.
        with (
            (self.workdir / "receiver.log").open("w") as receiver_log,
            contextlib.redirect_stderr(receiver_log),
        ):
            return await self._play(prefix)

    async def _play(self, prefix: str) -> ScenarioResult:
        scenario = self.scenario
        assert self.gateway is not None
        async with receiving(self.receiver, self.broker.url, prefix):
            await self.gateway.start()
            await self._warm_up()
            start = time.time()
            self.step_times["start"] = start
            self.say(f"  rig up: {len(self.sims)} simulated bus(es), broker :{self.broker.port}")
            for step in scenario.steps:
                await asyncio.sleep(max(0.0, start + step.at - time.time()))
                self.step_times[step.label] = time.time()
                self.say(f"  +{time.time() - start:5.1f}s {step.label}: {_describe_step(step)}")
                await self.perform(step)
            await asyncio.sleep(max(0.0, start + scenario.duration - time.time()))
            for task in self.background:
                task.cancel()
            if any(e.kind in ("nothing_lost", "no_gaps") for e in scenario.expectations):
                await self._drain()
            self.step_times["end"] = time.time()
            status = await self.gateway.stop()
            await asyncio.sleep(0.5)  # the last acks and the retained status
        if status not in (0, None):
            self.notes.append(f"the gateway exited with status {status} on SIGTERM")
        self.notes += [f"the reference receiver failed on {c}" for c in self.receiver.crashes]
        outcomes = [self.judge(e) for e in scenario.expectations]
        outcomes += await self._acks()
        if status not in (0, None):
            outcomes.append(
                Outcome(
                    Expectation("nothing_lost", 0),
                    False,
                    f"the gateway exited with status {status} when stopped (SIGTERM)",
                )
            )
        failed = any(not o.passed for o in outcomes)
        return ScenarioResult(
            scenario, "failed" if failed else "passed", outcomes, notes=self.notes
        )

    def _narrate_line(self, line: LogLine) -> None:
        assert self.watch is not None
        entry = line.entry
        msg, level = entry.get("msg", ""), entry.get("level", "")
        if msg.startswith(("alarm-", "device-", "buzzer", "config-", "call ", "sms ")) or level in (
            "error",
            "critical",
        ):
            extra = " ".join(
                f"{k}={v}"
                for k, v in entry.items()
                if k
                in ("rule", "device", "point", "value", "pattern", "severity", "error", "number")
            )
            self.watch("gateway", f"{msg.upper() if level != 'error' else msg} {extra}".strip())

    def _narrate_arrival(self, arrival: Arrival) -> None:
        assert self.watch is not None
        message = arrival.message
        if arrival.topic.endswith("/events"):
            detail = " ".join(
                f"{k}={message[k]}"
                for k in ("device", "point", "value", "rule", "priority", "seq")
                if k in message
            )
            self.watch("platform", f"EVENT {message.get('kind')} {detail}")
        elif arrival.topic.endswith("/acks"):
            self.watch("platform", f"ACK {message.get('result')} {message.get('error') or ''}")

    # -- the rig ----------------------------------------------------------------------------

    async def _start_sims(self) -> None:
        if self.rig is None and self.scenario.site.sms is not None:
            self.modem = ModemSimulator()
            for number, behaviour in self.scenario.phones.items():
                self.modem.script_call(number, behaviour)
            await self.modem.start()
        if self.rig is not None:
            # The second machine serves the devices; they start from the scenario's values.
            for device in self.scenario.devices:
                for point, value in device.values.items():
                    await self.set_value(device, point, value)
            return
        buses = {bus.id: bus for bus in self.scenario.site.buses}
        by_bus: dict[str, list[SimDevice]] = {}
        for device in self.scenario.devices:
            by_bus.setdefault(device.bus, []).append(device)
        for bus_id, devices in by_bus.items():
            bus = buses[bus_id]
            sim: Sim
            if isinstance(bus, ModbusTcpBus):
                sim = Simulator(
                    model=devices[0].model,
                    tcp=("127.0.0.1", 0),
                    tcp_devices=[d.address or 1 for d in devices],
                    seed=self.scenario.seed,
                )
                await sim.start()
            elif isinstance(bus, ModbusRtuBus):
                sim = RtuLine(
                    {d.address or 1: d.model for d in devices},
                    baudrate=bus.baudrate,
                    seed=self.scenario.seed,
                )
                await sim.start()
            else:
                sim = make_serial_sim(devices[0].sim, self.scenario.seed)
                await sim.start()
            self.sims[bus_id] = sim
            for device in devices:
                for point, value in device.values.items():
                    await self.set_value(device, point, value)

    async def _stop_sims(self) -> None:
        if self.modem is not None:
            await self.modem.close()
        for sim in self.sims.values():
            with contextlib.suppress(Exception):
                if isinstance(sim, RtuLine):
                    sim.stop()
                else:
                    await sim.stop()

    def site_data(self) -> dict[str, Any]:
        """The scenario's site pointed at this rig's simulators, broker and outbox."""
        site: dict[str, Any] = yaml.safe_load(yaml.safe_dump(self.scenario.site_data))
        for bus in site["buses"]:
            if self.rig is not None:
                break  # the rig file says where the buses are (adapt_site, below)
            sim = self.sims.get(bus["id"])
            if isinstance(sim, Simulator):
                bus["host"], bus["port"] = "127.0.0.1", sim.tcp_port
            elif isinstance(sim, RtuLine | SerialDeviceSim):
                bus["port"] = sim.path
            elif bus.get("kind") == "gpio":
                bus["pin_factory"] = "mock"
        uplink = site["uplink"]
        uplink["brokers"] = [self.broker.url]
        for key in ("ca_file", "cert_file", "key_file", "username", "password"):
            uplink.pop(key, None)
        outbox_dir = self.disk.mountpoint if self.disk is not None else self.workdir
        site["buffer"]["path"] = str(outbox_dir / "outbox.sqlite")
        site["outputs"]["pin_factory"] = "mock"
        if self.modem is not None and "sms" in site:
            site["sms"]["port"] = self.modem.url
        else:
            site.pop("sms", None)  # a real rig's modem would call real phones
        # The rig plays the platform: its own command keys, made for this run.
        commands = site.setdefault("commands", {})
        commands["keys"] = str(self._installed_keys())
        if self.rig is not None:
            self.rig.adapt_site(site)
        return site

    async def _warm_up(self) -> None:
        """Wait until every simulated device has a reading at the platform."""
        wanted = {d.id for d in self.scenario.devices}
        deadline = time.monotonic() + WARMUP_TIMEOUT
        while True:
            seen = {
                r.get("device")
                for a in self.receiver.arrivals
                if a.topic.endswith("/telemetry")
                for r in a.readings
            }
            if wanted <= seen:
                return
            assert self.gateway is not None
            if not self.gateway.running:
                code = self.gateway.process.returncode if self.gateway.process else None
                raise RigError(
                    f"the gateway exited with {code} while starting; see {self.gateway.log_path}"
                )
            if time.monotonic() > deadline:
                said = "; ".join(
                    line.entry.get("msg", "?")
                    for line in self.gateway.lines[-5:]
                    if line.entry.get("msg") != "status"
                )
                raise RigError(
                    f"no reading from {', '.join(sorted(wanted - seen))} at the platform within "
                    f"{WARMUP_TIMEOUT:g} s ({len(self.receiver.arrivals)} message(s) arrived; "
                    f"the gateway's last words: {said or 'none'}); see {self.gateway.log_path}"
                )
            self.receiver.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.receiver.arrived.wait()

    async def _drain(self) -> None:
        """Wait (bounded) until the gateway's status says it is online with no event waiting and
        at most one batch of readings (a site polled every 250 ms always has a few)."""
        assert self.gateway is not None
        if not self.gateway.running:
            return
        deadline = time.monotonic() + DRAIN_TIMEOUT
        count = len(self.gateway.lines)
        batch = self.scenario.site.uplink.batch_size
        while time.monotonic() < deadline:
            for line in self.gateway.lines[count:]:
                entry = line.entry
                if (
                    entry.get("msg") == "status"
                    and entry.get("outbox_events") == "0"
                    and int(entry.get("outbox_telemetry", "0") or 0) <= batch
                    and entry.get("uplink") == "online"
                ):
                    return
            count = len(self.gateway.lines)
            await asyncio.sleep(0.2)
        self.notes.append(f"the outbox did not drain within {DRAIN_TIMEOUT:g} s")

    # -- steps ------------------------------------------------------------------------------

    def device(self, device_id: str) -> SimDevice:
        return next(d for d in self.scenario.devices if d.id == device_id)

    async def remote(self, device: SimDevice, command: dict[str, Any]) -> None:
        """One command to the real rig's simulator (on the second machine)."""
        assert self.rig is not None
        bus = self.rig.sim_bus(device.bus, self.bus_kinds[device.bus])
        host, port = self.rig.control
        message = {**command, "bus": bus, "address": device.address or 1}
        try:
            async with asyncio.timeout(5):
                answer = await send_control(host, port, message)
        except (OSError, TimeoutError, ValueError) as exc:
            raise RigError(f"the rig's simulator at {host}:{port}: {exc or 'no answer'}") from exc
        if not answer.get("ok"):
            raise RigError(f"the rig's simulator refused {message}: {answer.get('error')}")

    async def set_value(self, device: SimDevice, point: str, value: float) -> None:
        if self.rig is not None:
            await self.remote(device, {"cmd": "set", "point": point, "value": value})
            return
        sim = self.sims[device.bus]
        if isinstance(sim, Simulator):
            sim.set("tcp", device.address or 1, point, value)
        elif isinstance(sim, RtuLine):
            sim.set(device.address or 1, point, value)
        elif isinstance(sim, WitMotionSim):
            angles = {"roll": sim.roll, "pitch": sim.pitch, "yaw": sim.yaw}
            if point == "temperature":
                sim.temperature = value
            else:
                angles[point] = value
                sim.set_angles(angles["roll"], angles["pitch"], angles["yaw"])
        elif isinstance(sim, Ld2410Sim):
            target = sim.target
            state = int(value) if point == "state" else target.state
            distance = int(value) if point == "distance" else target.detection_distance
            sim.set_target(state, distance, distance)

    async def set_fault(self, device: SimDevice, kind: str, delay: float = 0.0) -> None:
        if self.rig is not None:
            # The rig's simulator can only silence a unit (checked before the run).
            await self.remote(device, {"cmd": "silent", "on": kind == "silent"})
            return
        sim = self.sims[device.bus]
        if isinstance(sim, Simulator):
            sim.set_silent("tcp", device.address or 1, kind == "silent")
        elif isinstance(sim, RtuLine):
            sim.set_fault(device.address or 1, kind, delay=delay)  # type: ignore[arg-type]
        elif isinstance(sim, SerialDeviceSim):
            sim.set_fault(kind)  # type: ignore[arg-type]

    async def perform(self, step: Step) -> None:
        args = step.args
        action = step.action
        if action == "set":
            await self.set_value(self.device(args["device"]), args["point"], args["value"])
        elif action in ("ramp", "noise", "toggle"):
            self.background.append(asyncio.create_task(self._wave(step)))
        elif action == "fault":
            await self.set_fault(
                self.device(args["device"]), args["kind"], args.get("delay") or 0.0
            )
        elif action in ("silent", "back", "garbage"):
            kind = {"silent": "silent", "back": "none", "garbage": "garbage"}[action]
            await self.set_fault(self.device(args["device"]), kind)
        elif action == "broker":
            if args["what"] == "down":
                await asyncio.to_thread(self.broker.stop)
            else:
                await asyncio.to_thread(self.broker.start)
        elif action == "disk":
            assert self.disk is not None
            if args["what"] == "full":
                written = await asyncio.to_thread(self.disk.fill)
                self.say(f"         disk full after {written / 1024:.0f} KiB more")
            else:
                self.disk.free()
        elif action == "gateway":
            assert self.gateway is not None
            what = args["what"]
            if what == "kill":
                self.kills.append(time.time())
                await self.gateway.kill()
            elif what == "stop":
                await self.gateway.stop()
            elif what == "start":
                await self.gateway.start()
            else:
                if self.gateway.running:
                    await self.gateway.stop()
                await self.gateway.start()
        elif action == "push-config":
            command_id = f"scenario-{uuid.uuid4().hex[:12]}"
            command = {
                "schema": "edge.command/1",
                "command_id": command_id,
                "command": "push-config",
                "issued_at": datetime.now(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "params": {"site": self._pushed_site(args["site"])},
            }
            # The platform's engineer pushes a new site file: a scenario's push may change
            # rules of any severity, so it is signed with the engineering key.
            key, key_id = load_private_key(self._platform_key("engineering-scenario"))
            signed = sign_command(command, self.scenario.site.gateway.id, key, key_id)
            await publish(self.broker.url, self.topics.commands, signed)
            self.acks_wanted.append((command_id, args["expect"], step))

    def _platform_key(self, key_id: str) -> Path:
        """The private key ``key_id`` of this run's platform, made on first use."""
        folder = self.workdir / "platform-keys"
        private = folder / f"{key_id}.private.pem"
        if not private.exists():
            generate_key(folder, key_id)
        return private

    def _installed_keys(self) -> Path:
        """The gateway's command key folder, holding this run's public keys."""
        folder = self.workdir / "command-keys"
        folder.mkdir(parents=True, exist_ok=True)
        for key_id in ("operations-scenario", "engineering-scenario"):
            public = self._platform_key(key_id).with_name(f"{key_id}.pub")
            (folder / public.name).write_bytes(public.read_bytes())
        return folder

    def _pushed_site(self, site: dict[str, Any]) -> dict[str, Any]:
        """The pushed site pointed at this rig like the first one (ports, broker, outbox)."""
        current = self.site_data()
        pushed: dict[str, Any] = yaml.safe_load(yaml.safe_dump(site))
        ports = {b["id"]: b for b in current["buses"]}
        for bus in pushed.get("buses", []) if isinstance(pushed.get("buses"), list) else []:
            if isinstance(bus, dict) and bus.get("id") in ports:
                for key in ("host", "port", "pin_factory"):
                    if key in ports[bus["id"]]:
                        bus[key] = ports[bus["id"]][key]
        for section, keys in (
            ("uplink", ("brokers",)),
            ("buffer", ("path",)),
            ("commands", ("keys",)),
        ):
            if isinstance(pushed.get(section), dict):
                for key in keys:
                    pushed[section][key] = current[section][key]
        if isinstance(pushed.get("outputs"), dict):
            pushed["outputs"]["pin_factory"] = "mock"
        return pushed

    async def _wave(self, step: Step) -> None:
        args = step.args
        device = self.device(args["device"])
        point = args["point"]
        begin = time.monotonic()
        if step.action == "ramp":
            while True:
                share = min(1.0, (time.monotonic() - begin) / args["over"])
                await self.set_value(
                    device, point, args["from"] + (args["to"] - args["from"]) * share
                )
                if share >= 1.0:
                    return
                await asyncio.sleep(0.1)
        if step.action == "noise":
            while time.monotonic() - begin < args["for"]:
                offset = self.random.uniform(-args["amplitude"], args["amplitude"])
                await self.set_value(device, point, args["around"] + offset)
                await asyncio.sleep(args["every"])
            await self.set_value(device, point, args["around"])
            return
        index = 0
        while time.monotonic() - begin < args["for"]:
            await self.set_value(device, point, args["values"][index % len(args["values"])])
            index += 1
            await asyncio.sleep(args["every"])

    async def _acks(self) -> list[Outcome]:
        outcomes = []
        for command_id, wanted, step in self.acks_wanted:
            acks = [
                a
                for a in self.receiver.arrivals
                if a.topic.endswith("/acks") and a.message.get("command_id") == command_id
            ]
            expectation = Expectation(
                "event",
                step.line,
                match={"ack": wanted, "command": "push-config"},
                after=step.label,
                within=ACK_WITHIN,
            )
            if not acks:
                outcomes.append(Outcome(expectation, False, f"no ack for {step.label}"))
                continue
            result = acks[0].message.get("result")
            delay = acks[0].at - self.step_times[step.label]
            outcomes.append(
                Outcome(
                    expectation,
                    result == wanted and delay <= ACK_WITHIN,
                    f"ack {result} after {delay:.2f} s"
                    + (f": {acks[0].message.get('error')}" if acks[0].message.get("error") else ""),
                    delay,
                )
            )
        return outcomes

    # -- judging ----------------------------------------------------------------------------

    def time_of(self, label: str) -> float:
        return self.step_times.get(label, self.step_times.get("end", time.time()))

    def buzzer_changes(self) -> list[tuple[float, bool]]:
        if self.readback is not None:
            # The real pin, read back through the loopback wire.
            return self.readback.snapshot()
        assert self.gateway is not None
        return [
            (line.at, line.entry["msg"] == "buzzer on")
            for line in self.gateway.lines
            if line.entry.get("msg") in ("buzzer on", "buzzer off")
        ]

    def led_changes(self) -> list[tuple[float, bool]]:
        """The gateway's ``led on`` / ``led off`` lines (logged right after the pin is set)."""
        assert self.gateway is not None
        return [
            (line.at, line.entry["msg"] == "led on")
            for line in self.gateway.lines
            if line.entry.get("msg") in ("led on", "led off")
        ]

    def judge(self, e: Expectation) -> Outcome:
        if e.kind in ("buzzer", "led"):
            changes = self.buzzer_changes() if e.kind == "buzzer" else self.led_changes()
            return _judge_state(e, changes, self.time_of(e.after))
        if e.kind == "no_buzzer":
            begin, until = self.time_of(e.window[0]), self.time_of(e.window[1])
            changes = self.buzzer_changes()
            on_at_start = _state_at(changes, begin)
            ons = [at for at, on in changes if on and begin <= at <= until]
            if on_at_start or ons:
                when = "already on" if on_at_start else f"on at +{ons[0] - begin:.2f} s"
                return Outcome(e, False, f"the buzzer was {when}")
            return Outcome(e, True, "the buzzer stayed off")
        events = self.receiver.events()
        if e.kind == "event":
            since = self.time_of(e.after)
            after = [a for a in events if a.at >= since]
            hits = [a for a in after if _matches(a.message, e.match)]
            if not hits:
                kinds = ", ".join(str(a.message.get("kind")) for a in after[:8]) or "none"
                return Outcome(e, False, f"never arrived (events after {e.after}: {kinds})")
            delay = hits[0].at - since
            if e.first:
                # Sent after the step: a message the broker kept from before an outage and
                # delivers late was not sent first, it was sent earlier.
                first = next(
                    (
                        a
                        for a in self.receiver.arrivals
                        if a.at >= since
                        and a.topic.endswith(("/events", "/telemetry"))
                        and _sent_at(a.message) >= since
                    ),
                    None,
                )
                if first is not hits[0]:
                    what = first.topic.rsplit("/", 1)[-1] if first else "nothing"
                    return Outcome(
                        e, False, f"arrived after {delay:.2f} s but {what} came first", delay
                    )
            return Outcome(e, delay <= e.within, f"arrived {delay:.2f} s after {e.after}", delay)
        if e.kind == "reading":
            since = self.time_of(e.after)
            reading = next(
                (
                    a.at
                    for a in self.receiver.arrivals
                    if a.at >= since and a.topic.endswith("/telemetry")
                    for r in a.readings
                    if _matches(r, e.match)
                ),
                None,
            )
            if reading is None:
                return Outcome(e, False, f"no such reading arrived after {e.after}")
            delay = reading - since
            return Outcome(e, delay <= e.within, f"arrived {delay:.2f} s after {e.after}", delay)
        if e.kind == "no_event":
            begin, until = self.time_of(e.window[0]), self.time_of(e.window[1])
            hits = [a for a in events if begin <= a.at <= until and _matches(a.message, e.match)]
            if hits:
                return Outcome(
                    e, False, f"{len(hits)} arrived, first at +{hits[0].at - begin:.2f} s"
                )
            return Outcome(e, True, "none arrived")
        if e.kind == "count":
            n = sum(1 for a in events if _matches(a.message, e.match))
            return Outcome(e, _within_bounds(n, e), f"{n} arrived")
        summary = self.receiver.summary()
        gaps = {
            # The first few of each epoch say enough; a broken run can miss thousands.
            f"{gw}/{epoch[:8]}": missing[:10]
            for gw, g in summary.gateways.items()
            for epoch, missing in g.gaps.items()
            if missing
        }
        if not summary.gateways:
            return Outcome(e, False, "nothing arrived at the platform")
        if gaps:
            return Outcome(e, False, f"seqs missing at the platform: {gaps}")
        ranges = [
            f"{low}-{high}" for g in summary.gateways.values() for low, high in g.seq_range.values()
        ]
        if e.kind == "no_gaps":
            return Outcome(e, True, f"seqs {', '.join(ranges)} without a gap")
        return self._nothing_lost(e)

    def _nothing_lost(self, e: Expectation) -> Outcome:
        """Every seq the outbox ever committed is at the platform or still in the outbox
        (durable, sent at the next start); thinned or dropped ranges are announced."""
        path = Path(self.site_data()["buffer"]["path"])
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                pending = {
                    int(row[0])
                    for row in db.execute("SELECT seq FROM telemetry UNION SELECT seq FROM events")
                }
        except sqlite3.Error as exc:
            return Outcome(e, False, f"cannot read the outbox {path}: {exc}")
        epoch, last = str(meta.get("epoch", "")), int(meta.get("last_seq", 0))
        with contextlib.closing(sqlite3.connect(self.workdir / "platform.sqlite")) as db:
            arrived = {
                int(row[0])
                for row in db.execute(
                    "SELECT seq FROM readings WHERE epoch = ? UNION SELECT seq FROM events "
                    "WHERE epoch = ?",
                    (epoch, epoch),
                )
            }
            removed = []
            for (payload,) in db.execute(
                "SELECT payload FROM events WHERE epoch = ? "
                "AND kind IN ('buffer-thinned', 'buffer-dropped')",
                (epoch,),
            ):
                body = json.loads(payload)
                removed.append((int(body.get("seq_first", 0)), int(body.get("seq_last", -1))))
        missing = [
            seq
            for seq in range(1, last + 1)
            if seq not in arrived
            and seq not in pending
            and not any(a <= seq <= b for a, b in removed)
        ]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            return Outcome(e, False, f"{len(missing)} committed seq(s) lost: {shown}")
        return Outcome(
            e,
            True,
            f"all {last} committed seqs accounted for: {len(arrived)} at the platform, "
            f"{len(pending)} still in the outbox (sent at the next start)",
        )


def _sent_at(message: dict[str, Any]) -> float:
    """When the gateway sent a message (its ``sent_at``); +inf when unreadable, so an odd
    message counts as sent late rather than hiding behind the step."""
    try:
        return datetime.fromisoformat(str(message["sent_at"])).timestamp()
    except (KeyError, ValueError):
        return math.inf


def _state_at(changes: list[tuple[float, bool]], moment: float) -> bool:
    state = False
    for at, on in changes:
        if at > moment:
            break
        state = on
    return state


def _judge_state(e: Expectation, changes: list[tuple[float, bool]], since: float) -> Outcome:
    wanted = e.state == "on"
    if _state_at(changes, since) == wanted:
        return Outcome(e, True, f"already {e.state} at {e.after}", 0.0)
    reached = next((at for at, on in changes if at > since and on == wanted), None)
    if reached is None:
        return Outcome(e, False, f"never {e.state} after {e.after}")
    delay = reached - since
    return Outcome(e, delay <= e.within, f"{e.state} {delay * 1000:.0f} ms after {e.after}", delay)


def _matches(message: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, wanted in match.items():
        value: Any = message
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(wanted, bool) or not isinstance(wanted, int | float):
            if value != wanted and str(value) != str(wanted):
                return False
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isclose(value, wanted, abs_tol=1e-6)
        ):
            return False
    return True


def _within_bounds(n: int, e: Expectation) -> bool:
    return (
        (e.equals is None or n == e.equals)
        and (e.at_least is None or n >= e.at_least)
        and (e.at_most is None or n <= e.at_most)
    )


def _describe_step(step: Step) -> str:
    args = step.args
    if step.action in ("broker", "disk", "gateway"):
        return f"{step.action} {args['what']}"
    if step.action == "push-config":
        return f"push-config (expect {args['expect']})"
    detail = " ".join(f"{k}={v}" for k, v in args.items() if k not in ("device",))
    return f"{step.action} {args['device']} {detail}".rstrip()


# --------------------------------------------------------------------------------------------
# Replay (time-compressed)


def generate(scenario: Scenario) -> Iterator[Reading]:
    """Every series' readings, merged oldest first."""
    rng = random.Random(scenario.seed)
    streams = []
    for series in scenario.readings:
        count = int(series.span // series.every) + 1
        items = []
        for index in range(count):
            share = index / max(1, count - 1)
            if series.shape == "ramp":
                value = series.value + (series.to - series.value) * share
            elif series.shape == "noise":
                value = series.value + rng.uniform(-series.amplitude, series.amplitude)
            else:
                value = series.value
            items.append(
                (
                    series.start + index * series.every,
                    series.device,
                    series.point,
                    value,
                    series.unit,
                )
            )
        streams.append(items)
    merged = sorted((item for stream in streams for item in stream), key=lambda item: item[0])
    for ts, device, point, value, unit in merged:
        yield Reading(device_id=device, point=point, value=value, unit=unit, ts=ts, mono=ts)


def run_replay(scenario: Scenario, say: Say) -> ScenarioResult:
    transitions: list[Transition] = []
    summary = replay(scenario.site, iter(generate(scenario)), transitions.append)
    span_days = ((summary.last_ts or 0) - (summary.first_ts or 0)) / 86400
    say(
        f"  replayed {summary.readings:,} readings over {span_days:.0f} days in "
        f"{summary.seconds:.2f} s: {summary.transitions} transition(s)"
    )
    outcomes = []
    for e in scenario.expectations:
        hits = [
            t
            for t in transitions
            if _matches(
                {
                    "kind": t.kind,
                    "rule": t.rule_id,
                    "device": t.device_id,
                    "point": t.point,
                    "severity": t.severity,
                },
                e.match,
            )
        ]
        if e.kind == "no_transition":
            outcomes.append(
                Outcome(
                    e,
                    not hits,
                    f"{len(hits)} found" + (f", first {_when(hits[0].ts)}" if hits else ""),
                )
            )
            continue
        if not hits:
            outcomes.append(Outcome(e, False, f"none among {len(transitions)} transition(s)"))
            continue
        ok = e.not_before is None or hits[0].ts >= e.not_before
        has_bounds = any(b is not None for b in (e.equals, e.at_least, e.at_most))
        if has_bounds:
            ok = ok and _within_bounds(len(hits), e)
        outcomes.append(Outcome(e, ok, f"{len(hits)} found, first {_when(hits[0].ts)}"))
    failed = any(not o.passed for o in outcomes)
    result = ScenarioResult(scenario, "failed" if failed else "passed", outcomes)
    result.notes.append(
        f"{summary.readings:,} readings over {span_days:.0f} days replayed "
        f"in {summary.seconds:.2f} s"
    )
    return result


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
