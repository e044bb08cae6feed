"""push-config through a real Mosquitto into ``edge run``'s loop (edge/reload.py): a good
config is written and started with the alarms kept, a bad one is refused and changes nothing,
one that does not start is rolled back."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from drivers.modbus import known_models
from edge import contract, lastgood
from edge.atomic import digest_of
from edge.commands import MAX_COMMAND_BYTES
from edge.config import load_site
from edge.schemas import validate_message
from edge.site_runner import SiteRunner
from hil.simulator import Simulator
from tests.fixtures.broker import (
    Collector,
    Mosquitto,
    MosquittoFactory,
    TlsListener,
    free_port,
)
from tests.fixtures.certs import Authority
from tests.integration.site import simulated_site, site_for, write_site
from tests.integration.test_commands import ack_for, command, send, until

pytestmark = pytest.mark.integration


def events(platform: Collector, kind: str) -> list[dict[str, Any]]:
    found = [e for e in platform.on("/events") if e["kind"] == kind]
    for event in found:
        validate_message(event)  # every event the commands cause follows the contract
    return found


@asynccontextmanager
async def site_file(
    tmp_path: Path, broker: Mosquitto, **uplink: Any
) -> AsyncIterator[tuple[Simulator, Collector, dict[str, Any], Path]]:
    """The simulated site, its platform, its site file (``uplink`` settings added) on disk."""
    async with simulated_site(tmp_path, broker) as (sim, platform):
        site = site_for(sim, tmp_path, broker_url=broker.url)
        site["uplink"].update(uplink)
        yield sim, platform, site, write_site(tmp_path, site)


def assert_nothing_changed(
    path: Path, original: bytes, runner: SiteRunner, gateway: Any, platform: Collector
) -> None:
    """A refused push: the file as it was, no backup of it, the same gateway, nothing applied."""
    assert path.read_bytes() == original
    assert not path.with_name("site.yaml.previous").exists()
    assert runner.gateway is gateway
    assert events(platform, "config-applied") == []


@asynccontextmanager
async def running(
    path: Path, pins: Any, platform: Collector, *, settle: float = 1.5
) -> AsyncIterator[tuple[SiteRunner, asyncio.Event]]:
    digest = digest_of(await asyncio.to_thread(path.read_bytes))
    runner = SiteRunner(
        path,
        await asyncio.to_thread(load_site, path, known_models=known_models()),
        digest,
        pin_factory=pins,
        settle=settle,
        known_models=known_models(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await platform.wait_for(lambda c: len(c.on("/telemetry")) > 0, 15)
        yield runner, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_a_good_push_restarts_on_the_new_file_and_keeps_the_sounding_alarm(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pins = MockFactory()
    async with site_file(tmp_path, mosquitto) as (sim, platform, site, path):
        original = path.read_bytes()
        async with running(path, pins, platform) as (runner, _):
            first = runner.gateway
            assert first is not None
            old_hash = first.config_digest
            sim.set("tcp", 1, "residual_current", 350.0)
            await until(lambda: pins.pin(17).state is True, 5, "the buzzer")

            pushed = copy.deepcopy(site)
            pushed["devices"][1]["id"] = "efm-kitchen-102"
            # A device a critical rule judges goes: only the engineering key may do that.
            push = command("push-1", "push-config", {"site": pushed}, key="engineering")
            await send(mosquitto, push)
            ack = await ack_for(platform, "push-1")
            assert ack["result"] == "ok", ack
            new_hash = ack["data"]["config_hash"]
            assert new_hash != old_hash
            await platform.wait_for(lambda c: len(events(c, "config-applied")) == 1, 20)
            applied = events(platform, "config-applied")[0]
            assert (applied["command_id"], applied["config_hash"]) == ("push-1", new_hash)
            assert applied["previous_hash"] == old_hash
            gateway = runner.gateway
            assert gateway is not None
            assert gateway is not first
            assert gateway.config_digest == new_hash
            # The alarm came back from the state store and sounds on the new gateway.
            assert gateway.rules.active_alarms() == [
                ("residual-current-over-limit", "efm-shop-101")
            ]
            assert gateway.annunciator.sounding
            await until(lambda: pins.pin(17).state is True, 5, "the buzzer on the new gateway")
            # Whichever telemetry form the uplink sends: compact telemetry names points by the
            # aliases of the running config.
            aliases = contract.Aliases.of_site(gateway.config)

            def renamed_reports(c: Collector) -> bool:
                return any(
                    r["device"] == "efm-kitchen-102"
                    for m in c.on("/telemetry")
                    if m.get("aliases_id") in (None, aliases.table_id)
                    for r in contract.decode_telemetry(m, aliases)
                )

            await platform.wait_for(renamed_reports, 10)
            await send(mosquitto, command("g-1", "get-status", {}))
            assert (await ack_for(platform, "g-1"))["data"]["config_hash"] == new_hash
            assert path.with_name("site.yaml.previous").read_bytes() == original
            # Confirmed on the event's PUBACK, which the platform may see a moment earlier.
            pending = path.with_name("site.yaml.pending")
            await until(lambda: not pending.exists(), 10, "the push confirmed")
            assert runner.applied == 1
            kept = json.loads(path.with_name("site.yaml.last-good").read_bytes())
            assert kept["config_hash"] == new_hash
            assert kept["site_yaml"].encode() == path.read_bytes()
            assert yaml.safe_load(path.read_text())["devices"][1]["id"] == "efm-kitchen-102"

            # The platform repeating the push (its ack lost): no second restart.
            await send(
                mosquitto, command("push-1b", "push-config", {"site": pushed}, key="engineering")
            )
            again = await ack_for(platform, "push-1b")
            assert again["data"] == {"config_hash": new_hash, "unchanged": True}
            assert runner.gateway is gateway
            assert runner.applied == 1


async def test_a_bad_push_is_refused_with_field_paths_and_changes_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with site_file(tmp_path, mosquitto) as (_, platform, site, path):
        original = path.read_bytes()
        async with running(path, MockFactory(), platform) as (runner, _):
            gateway = runner.gateway
            unknown_key = copy.deepcopy(site)
            unknown_key["devices"][0]["gauge_lenght"] = 1.5
            bad_address = copy.deepcopy(site)
            bad_address["devices"][1]["address"] = 1  # the address of efm-shop-101 on lan
            other_id = copy.deepcopy(site)
            other_id["gateway"]["id"] = "gw-somebody-else"
            other_buffer = copy.deepcopy(site)
            other_buffer["buffer"]["path"] = str(tmp_path / "elsewhere.sqlite")
            text = path.read_text()
            cases: dict[str, tuple[dict[str, Any], str]] = {
                "key": ({"site": unknown_key}, "devices[0].gauge_lenght: unknown key"),
                "addr": ({"site": bad_address}, "devices[1].address"),
                "id": ({"site": other_id}, "gateway.id"),
                "buffer": ({"site": other_buffer}, "buffer.path"),
                "yaml": ({"site_yaml": text.replace("gateway:", "gateway: [", 1)}, "line "),
                "both": ({"site": site, "site_yaml": text}, "params"),
                "none": ({}, "params"),
            }
            for cid, (params, words) in cases.items():
                await send(mosquitto, command(cid, "push-config", params))
                ack = await ack_for(platform, cid)
                assert ack["result"] == "error", (cid, ack)
                assert words in ack["error"], (cid, ack["error"])
            huge = {"site_yaml": text + "#" * MAX_COMMAND_BYTES}
            await send(mosquitto, command("huge", "push-config", huge))
            # Too large to be read at all: the answer cannot name the command.
            assert "bytes, over" in (await ack_for(platform, None))["error"]
            # Refusals by the site checks are reported as events too, with every error.
            await platform.wait_for(lambda c: len(events(c, "config-rejected")) == 5, 5)
            rejected = {e["command_id"]: e for e in events(platform, "config-rejected")}
            assert rejected["key"]["errors"] == [
                "devices[0].gauge_lenght: unknown key 'gauge_lenght'; did you mean 'gauge_length'?"
            ]
            assert_nothing_changed(path, original, runner, gateway, platform)


async def test_a_push_beyond_operations_authority_is_refused_and_changes_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with site_file(tmp_path, mosquitto) as (_, platform, site, path):
        original = path.read_bytes()
        async with running(path, MockFactory(), platform) as (runner, _):
            gateway = runner.gateway
            elsewhere = copy.deepcopy(site)
            elsewhere["uplink"]["brokers"] = ["mqtt://198.51.100.7:1883"]
            no_rules = copy.deepcopy(site)
            no_rules["rules"] = []
            quiet = copy.deepcopy(site)
            quiet["outputs"]["buzzer"]["pin"] = 5
            open_door = copy.deepcopy(site)
            open_door["commands"]["insecure_unsigned_commands"] = True
            cases = {
                "move-uplink": (elsewhere, "uplink.brokers changed"),
                "no-rules": (no_rules, "rule residual-current-over-limit (critical) removed"),
                "other-buzzer": (quiet, "outputs changed"),
                "unsigned-ok": (open_door, "commands changed"),
            }
            for cid, (pushed, words) in cases.items():
                await send(mosquitto, command(cid, "push-config", {"site": pushed}))
                ack = await ack_for(platform, cid)
                assert ack["result"] == "error", (cid, ack)
                assert "needs the engineering key" in ack["error"]
                assert words in ack["error"], (cid, ack["error"])
            assert_nothing_changed(path, original, runner, gateway, platform)


async def test_a_push_that_does_not_start_is_rolled_back_to_the_running_config(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with site_file(tmp_path, mosquitto) as (_, platform, site, path):
        original = path.read_bytes()
        # The site's own mock pin factory (no shared one): the pushed file decides the pins.
        async with running(path, None, platform) as (runner, _):
            old_hash = digest_of(original)
            # Valid to check-config, but written for a board this one is not: building the
            # buzzer's pin factory fails.
            other_board = copy.deepcopy(site)
            other_board["outputs"]["pin_factory"] = "native"
            # Valid too, but a PIR on a GPIO bus with a factory this board lacks: the gateway
            # is built, and fails while starting its buses.
            pir_bus = copy.deepcopy(site)
            pir_bus["buses"].append({"id": "hall", "kind": "gpio", "pin_factory": "native"})
            pir_bus["devices"].append(
                {
                    "id": "pir-hall",
                    "model": "pir",
                    "bus": "hall",
                    "pin": 5,
                    "location": {
                        "building": "Block 3",
                        "floor": "1",
                        "room": "Hall",
                        "venue_type": "shop",
                    },
                }
            )
            for number, pushed in enumerate([other_board, pir_bus], start=1):
                cid = f"push-bad-{number}"
                # Other outputs: only the engineering key may push that.
                push = command(cid, "push-config", {"site": pushed}, key="engineering")
                await send(mosquitto, push)
                ack = await ack_for(platform, cid)
                assert ack["result"] == "ok", ack  # written; the outcome is an event

                def rolled_back(c: Collector, n: int = number) -> bool:
                    return len(events(c, "config-rolled-back")) == n

                await platform.wait_for(rolled_back, 20)
                back = events(platform, "config-rolled-back")[-1]
                assert back["command_id"] == cid
                assert back["config_hash"] == old_hash
                assert "did not start" in back["reason"]
                assert path.read_bytes() == original
                await until(lambda: runner.gateway is not None, 10, "the old config running")
                assert runner.gateway is not None
                assert runner.gateway.config_digest == old_hash
            assert runner.rolled_back == 2
            assert not path.with_name("site.yaml.pending").exists()
            assert "PinUnknownPi" in events(platform, "config-rolled-back")[0]["reason"]
            await send(mosquitto, command("g-1", "get-status", {}))
            status = await ack_for(platform, "g-1")
            assert status["data"]["config_hash"] == old_hash
            assert events(platform, "config-applied") == []
            json.dumps(status)  # the status is plain JSON


async def test_a_stop_before_the_pushed_config_proved_itself_puts_the_old_file_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with site_file(tmp_path, mosquitto) as (_, platform, site, path):
        original = path.read_bytes()
        async with running(path, MockFactory(), platform) as (runner, stop):
            pushed = copy.deepcopy(site)
            pushed["devices"][1]["id"] = "efm-kitchen-102"
            await send(
                mosquitto, command("push-2", "push-config", {"site": pushed}, key="engineering")
            )
            assert (await ack_for(platform, "push-2"))["result"] == "ok"
            # SIGTERM now: before the restart, or within the new config's settle time.
            stop.set()
        assert path.read_bytes() == original
        assert runner.applied == 0
        assert events(platform, "config-applied") == []


#: Renaming a device that a guarded rule judges is the engineering key's to push.
ENGINEERING = "engineering"


def push(cid: str, site: dict[str, Any]) -> bytes:
    return command(cid, "push-config", {"site": site}, key=ENGINEERING)


def acl_broker(factory: MosquittoFactory, tmp_path: Path) -> Mosquitto:
    """A broker that lets clients use the district's topics only, as a platform's broker
    confines each gateway: a wrong topic prefix is dropped, not delivered."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite district/v1/#\n")
    return factory(extra_config=[f"acl_file {acl}"])


async def test_a_push_that_cannot_reach_the_platform_is_rolled_back_and_says_why(
    tmp_path: Path, mosquitto_factory: MosquittoFactory
) -> None:
    broker = acl_broker(mosquitto_factory, tmp_path)
    guarded = mosquitto_factory(users={"gw-demo-0001": "right-password"})
    authority = Authority(tmp_path / "pki")
    cert, key = authority.issue("server", "broker.test", ip="127.0.0.1")
    tls = mosquitto_factory(tls=TlsListener(authority.cert_path, cert, key))
    stranger = Authority(tmp_path / "stranger", name="Somebody Else's CA")
    async with site_file(tmp_path, broker, push_confirm_within="6s") as (_, platform, site, path):
        original = path.read_bytes()
        old_hash = digest_of(original)
        unreachable = f"mqtt://127.0.0.1:{free_port()}"
        cases: dict[str, tuple[dict[str, Any], str]] = {
            "broker": ({"brokers": [unreachable]}, f"via {unreachable}: "),
            "password": (
                {"brokers": [guarded.url], "username": "gw-demo-0001", "password": "wrong"},
                f"did not reach the platform within 6 s via {guarded.url}: [code:135] Not auth",
            ),
            "ca": (
                {"brokers": [tls.url], "ca_file": str(stranger.cert_path)},
                f"via {tls.url}: [SSL: CERTIFICATE_VERIFY_FAILED]",
            ),
            # MQTT 5: the broker refuses the messages (PUBACK reason code).
            "prefix": ({"topic_prefix": "distirct/v1"}, "refuses messages on distirct/v1/"),
            # MQTT 3.1.1: the broker acknowledges and drops them; only the echo can tell.
            "prefix-3.1.1": (
                {"topic_prefix": "distirct/v1", "protocol": "3.1.1"},
                "its own status never came back within 6 s: the broker does not let it use "
                "topic prefix 'distirct/v1'",
            ),
        }
        async with running(path, MockFactory(), platform) as (runner, _):
            for number, (cid, (changes, words)) in enumerate(cases.items(), start=1):
                pushed = copy.deepcopy(site)
                pushed["uplink"].update(changes)
                # The uplink's identity changes: the engineering key's to push.
                params = {"site": pushed}
                await send(broker, command(cid, "push-config", params, key="engineering"))
                ack = await ack_for(platform, cid)
                assert ack["result"] == "ok", ack
                assert ack["data"]["confirm_within_s"] == 6.0

                def rolled_back(c: Collector, n: int = number) -> bool:
                    return len(events(c, "config-rolled-back")) == n

                # Sent by the previous config, once it is back online.
                await platform.wait_for(rolled_back, 30)
                back = events(platform, "config-rolled-back")[-1]
                assert back["command_id"] == cid
                assert back["config_hash"] == old_hash
                assert back["rejected_hash"] == ack["data"]["config_hash"]
                assert words in back["reason"], (cid, back["reason"])
                assert path.read_bytes() == original
                assert not path.with_name("site.yaml.pending").exists()
                await until(lambda: runner.gateway is not None, 10, "the old config running")
            assert runner.rolled_back == len(cases)
            assert runner.applied == 0
            # No config-applied of a push that was never confirmed reached the platform, nor
            # went out later with the previous config.
            assert events(platform, "config-applied") == []
            await send(broker, command("g-1", "get-status", {}))
            assert (await ack_for(platform, "g-1"))["data"]["config_hash"] == old_hash


async def test_a_second_push_while_the_first_is_being_confirmed_is_refused(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # A settle time long enough to push again while the new gateway is online but not yet
    # confirmed.
    async with (
        site_file(tmp_path, mosquitto) as (_, platform, site, path),
        running(path, MockFactory(), platform, settle=8) as (runner, _),
    ):
        first = copy.deepcopy(site)
        first["devices"][1]["id"] = "efm-kitchen-102"
        second = copy.deepcopy(site)
        second["devices"][1]["id"] = "efm-kitchen-103"
        await send(mosquitto, command("push-a", "push-config", {"site": first}, key=ENGINEERING))
        # The gateway being replaced refuses too, from the write until it stops.
        await send(mosquitto, command("push-b", "push-config", {"site": second}, key=ENGINEERING))
        first_ack = await ack_for(platform, "push-a")
        assert first_ack["result"] == "ok", first_ack
        new_hash = first_ack["data"]["config_hash"]
        refused = await ack_for(platform, "push-b")
        assert refused["result"] == "error"
        assert "still being confirmed" in refused["error"]

        def new_gateway_online(c: Collector) -> bool:
            return any(
                s["state"] == "online" and s["config_hash"] == new_hash for s in c.on("/status")
            )

        await platform.wait_for(new_gateway_online, 20)
        assert runner.gateway is not None
        assert runner.gateway.confirming
        await send(mosquitto, command("push-c", "push-config", {"site": second}, key=ENGINEERING))
        refused = await ack_for(platform, "push-c")
        assert refused["result"] == "error", refused
        assert "still being confirmed" in refused["error"]
        await platform.wait_for(lambda c: len(events(c, "config-applied")) == 1, 30)
        assert events(platform, "config-applied")[0]["command_id"] == "push-a"
        pending = path.with_name("site.yaml.pending")
        await until(lambda: not pending.exists(), 10, "the push confirmed")
        assert yaml.safe_load(path.read_text())["devices"][1]["id"] == "efm-kitchen-102"
        # Once confirmed, the next push is taken.
        await send(mosquitto, command("push-d", "push-config", {"site": second}, key=ENGINEERING))
        assert (await ack_for(platform, "push-d"))["result"] == "ok"


async def test_a_push_repairs_an_unusable_site_file_even_with_the_config_already_running(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with site_file(tmp_path, mosquitto) as (_, platform, _site, path):
        good = path.read_text()
        good_hash = lastgood.save(path, path.read_bytes())
        path.write_text("gateway: [\n")  # what edge run found at start
        runner = SiteRunner(
            path,
            lastgood.load(path, known_models=known_models()).config,
            good_hash,
            pin_factory=MockFactory(),
            settle=1.5,
            known_models=known_models(),
            site_problems=["site.yaml:2:1: YAML syntax error"],
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            await platform.wait_for(lambda c: len(events(c, "config-invalid")) == 1, 20)
            invalid = events(platform, "config-invalid")[0]
            assert invalid["running"] == "last-good"
            assert invalid["config_hash"] == good_hash
            # The platform pushes the very config that runs: not "unchanged", the file is
            # written, proved and kept.
            await send(mosquitto, command("fix-1", "push-config", {"site_yaml": good}))
            ack = await ack_for(platform, "fix-1")
            assert ack["result"] == "ok", ack
            assert ack["data"]["restarting"] is True
            await platform.wait_for(lambda c: len(events(c, "config-applied")) == 1, 30)
            await until(lambda: runner.applied == 1, 10, "the push confirmed")
            assert path.read_text() == good
            assert not runner.from_last_good
            await send(mosquitto, command("fix-2", "push-config", {"site_yaml": good}))
            assert (await ack_for(platform, "fix-2"))["data"]["unchanged"] is True
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
