"""The demo: a whole simulated site on this machine, narrated live.

Starts a local broker, the device simulator and the gateway (``edge run``) as separate
processes, subscribes where the platform would with the reference receiver (``hil.receiver``:
every message validated, de-duplicated, checked for gaps and stored), injects faults on a
timeline and prints what each part sees. Ctrl-C (or ``DEMO_SECONDS``) stops everything it
started. With ``DEMO_SECONDS=N`` the exit status says whether the injected alarm reached the
platform.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import yaml

from drivers.yamlpos import read_yaml
from edge.config import load_site
from edge.config.model import ModbusRtuBus, ModbusTcpBus, SiteConfig
from edge.contract import (
    SCHEMA_COMMAND,
    ContractError,
    Topics,
    decode_payload,
    gateway_filter,
    iso_utc,
)
from edge.log import parse_logfmt
from edge.signing import PRIVATE_KEY_SUFFIX, PUBLIC_KEY_SUFFIX, generate_key
from hil.broker import LocalBroker, port_is_free, wait_for_port
from hil.receiver import Receiver
from hil.signer import build_command
from hil.simulator import send_control

CONTROL_PORT = 15021
#: The demo platform's signing keys (made on first run, kept under var/demo/platform-keys).
DEMO_KEYS = ("operations-demo", "engineering-demo")
#: Seconds the demo's telemetry waits for its batch at most: the site's default (5 minutes,
#: for a metered link) would show no reading in a short demo.
WATCH_BATCH_INTERVAL = 2.0


@dataclass
class Injection:
    at: float
    bus: str
    address: int
    command: dict[str, Any]
    says: str
    #: The event this step must bring to the platform: (kind, device).
    brings: tuple[str, str] | None = None


#: Seconds the last step of the story needs to show at the platform: a device answering again
#: is polled at its next retry (the retries of a silent device back off: 6 s measured after 10
#: s of silence) and its device-online sent with the next batch; one going silent is declared
#: offline after its missed polls (about 2 s). Generous, for a loaded machine.
STORY_TAIL = 12.0


@dataclass
class Narrator:
    started: float = field(default_factory=time.monotonic)

    def say(self, who: str, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {who:<9} {text}", flush=True)


def sim_bus_of(config: SiteConfig) -> dict[str, tuple[str, int]]:
    """Device id -> (simulator bus, unit address)."""
    kinds = {b.id: ("tcp" if isinstance(b, ModbusTcpBus) else "rtu") for b in config.buses}
    # Only Modbus devices have an address; the demo site has no others.
    return {d.id: (kinds[d.bus], d.address) for d in config.devices if d.address is not None}


def timeline(config: SiteConfig, seconds: float | None) -> list[Injection]:
    """The story: two alarms that overlap and clear one after the other (the buzzer goes off
    only with the last), then a monitor that stops answering and comes back."""
    where = sim_bus_of(config)
    devices = [d.id for d in config.devices]
    first = devices[0]
    rtu = next((d for d in devices if where[d][0] == "rtu"), devices[-1])
    other = next((d for d in devices if d not in (first, rtu)), None)
    # Keep the first injection early enough that a short unattended run still sees it arrive.
    t0 = 5.0 if seconds is None else min(5.0, max(2.0, seconds / 4))
    steps = [
        Injection(
            t0,
            *where[first],
            {"cmd": "set", "point": "residual_current", "value": 350},
            f"{first}: residual current 120 -> 350 mA (limit 300 mA)",
            ("alarm-raised", first),
        ),
        Injection(
            t0 + 5,
            *where[rtu],
            {"cmd": "set", "point": "temperature_1", "value": 78},
            f"{rtu}: cable temperature 32 -> 78 C (limit 70 C)",
            ("alarm-raised", rtu),
        ),
        Injection(
            t0 + 10,
            *where[first],
            {"cmd": "set", "point": "residual_current", "value": 150},
            f"{first}: residual current back to 150 mA",
            ("alarm-cleared", first),
        ),
        Injection(
            t0 + 14,
            *where[rtu],
            {"cmd": "set", "point": "temperature_1", "value": 40},
            f"{rtu}: cable temperature back to 40 C",
            ("alarm-cleared", rtu),
        ),
    ]
    if other is not None:
        steps += [
            Injection(
                t0 + 18,
                *where[other],
                {"cmd": "silent", "on": True},
                f"{other}: stops answering",
                ("device-offline", other),
            ),
            Injection(
                t0 + 24,
                *where[other],
                {"cmd": "silent", "on": False},
                f"{other}: answers again",
                ("device-online", other),
            ),
        ]
    return steps


def story_seconds(config: SiteConfig) -> float:
    """How long an unattended run (``DEMO_SECONDS``) must last to show the whole story."""
    return max(step.at for step in timeline(config, None)) + STORY_TAIL


class Demo:
    def __init__(self, config_path: str, seconds: float | None) -> None:
        self.config_path = config_path
        self.config = load_site(config_path)
        self.seconds = seconds
        narrator = Narrator()
        self.say = narrator.say
        self.narrator_started = narrator.started
        self.processes: list[asyncio.subprocess.Process] = []
        self.alarm_at_platform: set[str] = set()
        self.first_device = self.config.devices[0].id
        self.last_readings: dict[str, dict[str, float]] = {}
        #: Alarms the gateway has raised and not cleared, as its log says: (rule, device).
        self.active: set[tuple[str, str]] = set()
        #: Devices the platform was told are offline, and when (narration seconds).
        self.offline: dict[str, float] = {}
        #: (kind, device) of every event that reached the platform.
        self.events_at_platform: set[tuple[str, str]] = set()
        self.counters_explained = False
        self.last_summary = ""
        #: Set by Ctrl-C or SIGTERM: the demo stops everything it started, then exits.
        self.interrupted = asyncio.Event()
        self.summary_at = 0.0
        #: The demo platform's operations key, once installed.
        self.signing_key: Path | None = None
        self.first_alarm_arrived = asyncio.Event()
        #: The platform: the reference receiver, storing next to the gateway's outbox.
        platform_db = Path(self.config.buffer.path).parent / "platform.sqlite"
        platform_db.parent.mkdir(parents=True, exist_ok=True)
        platform_db.unlink(missing_ok=True)
        self.receiver = Receiver(platform_db)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.interrupted.set)
        uplink = urlsplit(self.config.uplink.brokers[0])
        host, port = uplink.hostname or "127.0.0.1", uplink.port or 1883
        broker = LocalBroker(host, port)
        for path in Path(self.config.buffer.path).parent.glob(
            Path(self.config.buffer.path).name + "*"
        ):
            path.unlink()  # the demo starts from an empty outbox every time
        try:
            broker.start()
            self.say("broker", f"{broker.kind} on {host}:{port}")
            uplink_changes: dict[str, str] = {}
            if self.config.uplink.batch_interval > WATCH_BATCH_INTERVAL:
                # A site waits minutes to fill a telemetry batch (a metered link pays per
                # message); a demo is watched: its readings go every few seconds.
                uplink_changes["batch_interval"] = f"{WATCH_BATCH_INTERVAL:g}s"
            if broker.kind != "mosquitto" and self.config.uplink.protocol == "5":
                self.say("demo", "the embedded broker speaks MQTT 3.1.1 only")
                uplink_changes["protocol"] = "3.1.1"
            if uplink_changes:
                self.config_path = self.site_copy(uplink_changes)
            await self.start_simulator()
            self.signing_key = self.install_command_keys()
            await self.start_gateway()
            return await self.watch(host, port)
        finally:
            await self.stop_all()
            broker.close()
            self.say("demo", "everything stopped")

    def site_copy(self, uplink_changes: dict[str, str]) -> str:
        """A copy of the site file with ``uplink_changes``, beside the outbox (so relative
        paths keep their meaning)."""
        # Read as the gateway reads it (keys as written), so the copy says the same thing.
        site = read_yaml(self.config_path).data
        site["uplink"].update(uplink_changes)
        copy = Path(self.config.buffer.path).parent / "site-demo.yaml"
        copy.write_text(yaml.safe_dump(site, sort_keys=False))
        changed = ", ".join(f"{k}: {v}" for k, v in uplink_changes.items())
        self.say("demo", f"running {copy} (the site file with uplink {changed})")
        return str(copy)

    def install_command_keys(self) -> Path | None:
        """The demo platform's key pairs (made once), their public keys installed where the
        site file's ``commands.keys`` says; the operations key to sign with."""
        if self.config.commands.keys is None:
            return None
        platform_keys = Path(self.config.buffer.path).parent / "platform-keys"
        installed = Path(self.config.commands.keys)
        installed.mkdir(parents=True, exist_ok=True)
        for key_id in DEMO_KEYS:
            if not (platform_keys / f"{key_id}{PRIVATE_KEY_SUFFIX}").exists():
                generate_key(platform_keys, key_id)
            public = f"{key_id}{PUBLIC_KEY_SUFFIX}"
            (installed / public).write_bytes((platform_keys / public).read_bytes())
        self.say("platform", f"command keys {', '.join(DEMO_KEYS)} installed in {installed}")
        return platform_keys / f"{DEMO_KEYS[0]}{PRIVATE_KEY_SUFFIX}"

    async def send_commands(self, client: aiomqtt.Client, topics: Topics) -> None:
        """Once the first alarm has reached the platform: the attack a broker login allows
        (an unsigned threshold of 1e308), refused, then a signed get-status, answered."""
        if self.signing_key is None:
            return
        await self.first_alarm_arrived.wait()
        rule = self.config.rules[0].id if self.config.rules else "none"
        attack = {
            "schema": SCHEMA_COMMAND,
            "command_id": "demo-attack",
            "command": "set-threshold",
            "issued_at": iso_utc(time.time()),
            "params": {"rule": rule, "threshold": 1e308},
        }
        self.say("intruder", f"UNSIGNED set-threshold {rule} 1e308 (a broker login is enough)")
        await client.publish(topics.commands, json.dumps(attack), qos=1)
        status = build_command(
            self.config.gateway.id, "get-status", {}, self.signing_key, command_id="demo-status"
        )
        self.say("platform", f"get-status signed with {status['signature']['key']}")
        await client.publish(topics.commands, json.dumps(status), qos=1)

    async def start_simulator(self) -> None:
        tcp = next((b for b in self.config.buses if isinstance(b, ModbusTcpBus)), None)
        rtu = next((b for b in self.config.buses if isinstance(b, ModbusRtuBus)), None)
        args = [
            sys.executable,
            "-m",
            "hil.simulator",
            "serve",
            "--control",
            f"127.0.0.1:{CONTROL_PORT}",
        ]
        if not port_is_free("127.0.0.1", CONTROL_PORT):
            raise RuntimeError(f"port 127.0.0.1:{CONTROL_PORT} is busy; stop what uses it first")
        for bus, flag in ((tcp, "--tcp"), (rtu, "--rtu")):
            if bus is None:
                continue
            units = ",".join(str(d.address) for d in self.config.devices if d.bus == bus.id)
            if isinstance(bus, ModbusTcpBus):
                args += [flag, f"{bus.host}:{bus.port}", "--tcp-devices", units]
            else:
                args += ["--rtu-link", bus.port, "--rtu-devices", units]
        self.processes.append(await asyncio.create_subprocess_exec(*args, start_new_session=True))
        await asyncio.to_thread(wait_for_port, "127.0.0.1", CONTROL_PORT)
        self.say("simulator", f"{len(self.config.devices)} electrical fire monitors (TCP and RTU)")

    async def start_gateway(self) -> None:
        gateway = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "run",
            "--config",
            self.config_path,
            "--status-every",
            "2s",
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.processes.append(gateway)
        assert gateway.stderr is not None
        asyncio.get_running_loop().create_task(self.follow_gateway(gateway.stderr))
        self.say("gateway", f"edge run --config {self.config_path}")

    async def follow_gateway(self, stream: asyncio.StreamReader) -> None:
        log_path = Path(self.config.buffer.path).parent / "gateway.log"
        # The gateway drives the pins before it logs the transitions, so the buzzer's "off"
        # comes just before the last alarm's "cleared": it is held until those lines are told.
        held: str | None = None
        with log_path.open("w") as log_file:
            while True:
                try:
                    raw = await (
                        asyncio.wait_for(stream.readline(), 0.3) if held else stream.readline()
                    )
                except TimeoutError:
                    self.say("gateway", held or "")
                    held = None
                    continue
                line = raw.decode(errors="replace")
                if not line:
                    break
                log_file.write(line)
                log_file.flush()
                entry = parse_logfmt(line)
                msg = entry.get("msg", "")
                if held and msg not in ("alarm-cleared", "led off"):
                    self.say("gateway", held)
                    held = None
                if msg == "buzzer off":
                    held = f"BUZZER OFF {_fields(entry)}: the last active alarm has cleared"
                    continue
                self.narrate_gateway(entry, line)
            if held:
                self.say("gateway", held)

    def narrate_gateway(self, entry: dict[str, Any], line: str) -> None:
        msg, level = entry.get("msg", ""), entry.get("level", "")
        if msg == "status":
            if not self.counters_explained:
                self.counters_explained = True
                self.say(
                    "gateway",
                    "status every 2 s: active_alarms = alarms raised and not yet cleared; "
                    "outbox = events and readings stored on disk and not yet acknowledged by "
                    "the broker (a batch or two in flight while the uplink keeps up, growing "
                    "while it cannot); uplink = its connection to the broker",
                )
            self.say(
                "gateway",
                "buzzer={buzzer} active_alarms={active_alarms} "
                "outbox(events={outbox_events} telemetry={outbox_telemetry}) "
                "uplink={uplink}".format_map(_Missing(entry)),
            )
        elif msg.startswith(("alarm-", "device-", "buzzer")):
            self.say("gateway", f"{msg.upper()} {_fields(entry)}")
            key = (str(entry.get("rule", "")), str(entry.get("device", "")))
            if msg == "alarm-raised":
                self.active.add(key)
            elif msg == "alarm-cleared":
                self.active.discard(key)
                if self.active:
                    still = ", ".join(f"{rule} on {device}" for rule, device in sorted(self.active))
                    self.say(
                        "gateway",
                        f"buzzer stays on: {len(self.active)} alarm(s) still active ({still})",
                    )
        elif level in ("error", "critical") or msg in ("gateway starting", "gateway stopped"):
            self.say("gateway", line.strip())

    async def watch(self, host: str, port: int) -> int:
        topics = Topics.of(self.config.uplink.topic_prefix, self.config.gateway.id)
        everything = gateway_filter(self.config.uplink.topic_prefix, self.config.gateway.id)
        steps = timeline(self.config, self.seconds)
        if self.seconds is not None and self.seconds < story_seconds(self.config):
            self.say(
                "demo",
                f"DEMO_SECONDS={self.seconds:g} ends before the whole story "
                f"({story_seconds(self.config):g} s): its last steps are cut off",
            )
        begin = time.monotonic()
        async with aiomqtt.Client(host, port, identifier="demo-platform") as client:
            await client.subscribe(everything, qos=1)
            self.say("platform", f"subscribed to {everything}")
            tasks = {
                asyncio.create_task(self.inject(steps, begin)),
                asyncio.create_task(self.read(client)),
                asyncio.create_task(self.interrupted.wait()),
            }
            commands = asyncio.create_task(self.send_commands(client, topics))
            try:
                await asyncio.wait(tasks, timeout=self.seconds, return_when="FIRST_COMPLETED")
            finally:
                for task in (*tasks, commands):
                    task.cancel()
                await asyncio.gather(*tasks, commands, return_exceptions=True)
        self.say(
            "platform",
            "the receiver's counts: received = messages off the broker; kept = stored once; "
            "duplicates = copies resent after a lost ack, recognised by message id; rejected "
            "= failing the contract's schemas; undecoded = not even JSON; missing = seqs "
            "between the first and the last not (yet) arrived",
        )
        for line in self.receiver.summary().text().splitlines():
            self.say("platform", line)
        self.receiver.close()
        reached = self.first_device in self.alarm_at_platform
        self.say("demo", f"injected alarm reached the platform: {'yes' if reached else 'NO'}")
        told = self.story_told(steps)
        return 0 if self.seconds is None or (reached and told) else 1

    def story_told(self, steps: list[Injection]) -> bool:
        """Whether every event of the story a run this long must show reached the platform."""
        played = [step for step in steps if self.fits(step, steps)]
        due = [step.brings for step in played if step.brings is not None]
        arrived = self.events_at_platform
        missing = [f"{kind} {device}" for kind, device in due if (kind, device) not in arrived]
        cut = len(steps) - len(played)
        note = f"; {cut} later step(s) not played: DEMO_SECONDS ends first" if cut else ""
        said = f"missing: {', '.join(missing)}" if missing else "all arrived"
        self.say("demo", f"the story at the platform: {len(due)} event(s) due, {said}{note}")
        return not missing

    async def read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.on_platform_message(str(message.topic), message.payload)

    def fits(self, step: Injection, steps: list[Injection]) -> bool:
        """Whether the run lasts long enough to show what ``step`` brings; the first alarm
        is always played (it is what a short run checks)."""
        return self.seconds is None or step is steps[0] or step.at + STORY_TAIL <= self.seconds

    async def inject(self, steps: list[Injection], begin: float) -> None:
        # A step that cannot show its result before the end is not played: an event sent just
        # as the run stops would reach the platform ahead of the readings before it.
        for step in [s for s in steps if self.fits(s, steps)]:
            await asyncio.sleep(max(0.0, begin + step.at - time.monotonic()))
            reply = await send_control(
                "127.0.0.1",
                CONTROL_PORT,
                {**step.command, "bus": step.bus, "address": step.address},
            )
            self.say("inject", step.says + ("" if reply.get("ok") else f" FAILED: {reply}"))
        self.say("demo", "timeline done; the site keeps running until Ctrl-C")
        await self.interrupted.wait()

    def on_platform_message(self, topic: str, payload: Any) -> None:
        raw = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
        verdict = self.receiver.handle(topic, raw)
        if verdict.startswith(("rejected", "ignored")):
            if verdict.startswith("rejected"):
                self.say("platform", f"REJECTED {topic}: {verdict}")
            return
        message = decode_payload(raw)  # the receiver has just decoded it: cannot fail here
        if topic.endswith("/events"):
            kind = message.get("kind", "?")
            device = str(message.get("device", ""))
            self.events_at_platform.add((kind, device))
            if kind == "device-offline":
                self.offline[device] = time.monotonic() - self.narrator_started
            elif kind == "device-online":
                self.offline.pop(device, None)
            if kind == "alarm-raised":
                self.alarm_at_platform.add(message.get("device", ""))
                if self.first_device in self.alarm_at_platform:
                    self.first_alarm_arrived.set()
            detail = " ".join(
                f"{k}={message[k]}"
                for k in ("device", "point", "value", "rule", "seq")
                if k in message
            )
            self.say("platform", f"EVENT {kind} {detail}")
        elif topic.endswith("/status"):
            self.say("platform", f"status {message.get('state')}")
        elif topic.endswith("/acks"):
            data = message.get("data") or {}
            if message.get("error"):
                said = message["error"]
            elif "buzzer" in data:  # get-status: what the platform would show
                said = f"buzzer={data['buzzer']} active_alarms={len(data['active_alarms'])}"
            else:
                said = json.dumps(data)[:200]
            self.say("platform", f"ACK {message.get('command_id')} {message.get('result')}: {said}")
        elif topic.endswith("/telemetry"):
            try:
                # Compact telemetry names its points by alias; the receiver knows the table.
                readings = self.receiver.readings_of(message)
            except (ContractError, LookupError):
                self.say("platform", f"telemetry waiting for its metadata ({verdict})")
                return
            for reading in readings:
                self.last_readings.setdefault(reading["device"], {})[reading["point"]] = reading[
                    "value"
                ]
            summary = "  ".join(
                self.describe_device(device, p) for device, p in sorted(self.last_readings.items())
            )
            # Readings arrive every second; say them when they change, else every 10 s.
            now = time.monotonic()
            if summary != self.last_summary or now - self.summary_at >= 10:
                self.last_summary, self.summary_at = summary, now
                self.say("platform", f"telemetry x{len(readings)}  {summary}")

    def describe_device(self, device: str, points: dict[str, float]) -> str:
        values = f"{points.get('residual_current', '?')} mA {points.get('temperature_1', '?')} C"
        since = self.offline.get(device)
        if since is None:
            return f"{device}: {values}"
        # Its last readings, not current ones: the device has said nothing since.
        return f"{device}: OFFLINE since {since:.1f}s, stale {values}"

    async def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 6)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def _fields(entry: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v}" for k, v in entry.items() if k not in ("ts", "level", "logger", "msg")
    )


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def run_scenario_live(path: str) -> int:
    """Play one HIL scenario (hil/scenarios/, docs/hil.md), narrated like the demo: what the
    gateway logs and the platform receives, second by second, then the verdict."""
    # Imported here: the plain demo needs none of the scenario machinery.
    from hil.scenario import ScenarioError, load_scenario, run_scenario  # noqa: PLC0415
    from hil.scenario.report import text_report  # noqa: PLC0415

    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        print("\n".join(exc.issues), file=sys.stderr)
        return 2
    narrator = Narrator()
    narrator.say("scenario", f"{scenario.name}: {scenario.proves}")
    workdir = Path("var") / "demo" / "scenario" / scenario.name
    result = asyncio.run(
        run_scenario(
            scenario,
            workdir,
            say=lambda text: narrator.say("scenario", text.strip()),
            watch=narrator.say,
        )
    )
    print(text_report([result], result.seconds), end="")
    print(f"gateway log and databases: {workdir}")
    return 0 if result.status in ("passed", "skipped") else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a simulated site end to end.")
    parser.add_argument("--config", default="config/example-site.yaml")
    parser.add_argument(
        "--scenario",
        default=os.environ.get("SCENARIO") or None,
        metavar="FILE",
        help="play a HIL scenario live instead (also: SCENARIO=FILE make demo)",
    )
    args = parser.parse_args()
    if args.scenario:
        return run_scenario_live(args.scenario)
    seconds = float(os.environ["DEMO_SECONDS"]) if os.environ.get("DEMO_SECONDS") else None
    demo = Demo(args.config, seconds)
    Path(demo.config.buffer.path).parent.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(demo.run())
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"demo: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
