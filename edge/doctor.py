"""``edge doctor``: can this gateway run, and if not, what must the installer do?

Each check gives a level (``ok``, ``warn``, ``fail``), what it found, and for anything that is
not ok the fix in plain words. A ``fail`` means the gateway cannot do its job (no config, a
bus adapter missing, the broker refusing the credentials); a ``warn`` means it runs but
something needs attention (a certificate expiring next month, an unsynchronised clock).
The exit status is 0 when nothing failed, 1 otherwise; ``--json`` prints the same results
for fleet tools.

Doctor only reads: it never writes the outbox, never drives a pin and connects to the broker
under its own client id, so it is safe to run beside a running gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import grp
import importlib.util
import io
import json
import os
import pwd
import shutil
import sqlite3
import ssl
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import aiomqtt

from buffer.schema import SCHEMA_VERSION as OUTBOX_SCHEMA
from buffer.store import waiting_records
from drivers.modbus import known_models
from edge import contract, lastgood
from edge.annunciator import AUTO_PIN_FACTORIES, NO_BACKEND_FIX
from edge.certs import check_certificates, check_named_files
from edge.config import SiteConfig, report_config
from edge.config.model import Uplink as UplinkConfig
from edge.config.site_files import missing_files
from edge.uplink import PROTOCOLS as _PROTOCOLS
from edge.uplink import parse_broker_url
from edge.uplink import tls_context as uplink_tls_context
from edge.uplink.client import MqttClient, PublishRefused
from edge.uplink.connection import tls_files

__all__ = ["Check", "exit_status", "print_report", "run_checks"]

Level = Literal["ok", "warn", "fail"]

DEFAULT_CONFIG = Path("/etc/city-safety-edge/site.yaml")
#: The system user the installer creates; its access to devices is what matters.
DEFAULT_USER = "edge"
#: Below this the outbox cannot hold a day of a large site: the gateway is at risk.
DISK_FAIL_BYTES = 100 * 2**20
DISK_WARN_BYTES = 500 * 2**20
#: A TCP connect or an MQTT CONNACK that takes longer than this counts as unreachable.
NETWORK_TIMEOUT = 5.0
#: MQTT CONNACK return codes (3.1.1) that mean "wrong credentials", not "unreachable".
_AUTH_CODES = {4, 5, 134, 135}


@dataclass(frozen=True, slots=True)
class Check:
    """The result of one check."""

    name: str
    level: Level
    detail: str
    fix: str = ""


# -- helpers ---------------------------------------------------------------------------------


def _user(name: str | None) -> pwd.struct_passwd | None:
    if name is None:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _groups_of(user: pwd.struct_passwd) -> set[int]:
    gids = {user.pw_gid}
    for group in grp.getgrall():
        if user.pw_name in group.gr_mem:
            gids.add(group.gr_gid)
    return gids


def _can_read_write(path: Path, user: pwd.struct_passwd | None) -> bool:
    """Whether ``user`` (else the current process) may open ``path`` for reading and writing."""
    if user is None:
        return os.access(path, os.R_OK | os.W_OK)
    info = path.stat()
    if user.pw_uid == 0:
        return True
    if info.st_uid == user.pw_uid:
        need = stat.S_IRUSR | stat.S_IWUSR
    elif info.st_gid in _groups_of(user):
        need = stat.S_IRGRP | stat.S_IWGRP
    else:
        need = stat.S_IROTH | stat.S_IWOTH
    return info.st_mode & need == need


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


async def _tcp_reachable(host: str, port: int, seconds: float) -> str | None:
    """``None`` when a TCP connection opens, else why not."""
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {seconds:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


# -- the checks ------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, SiteConfig | None]:
    out = io.StringIO()
    status, config = report_config(str(path), out, known_models=known_models())
    lines = out.getvalue().strip().splitlines()
    if config is not None:
        # The summary comes last, after the warnings about the valid file, if any.
        summary = f"{path}: {lines[-1].removeprefix('ok: ')}"
        warnings = [line for line in lines[:-1] if ": warning: " in line]
        if warnings:
            return Check(
                "config",
                "warn",
                f"{summary}; " + "; ".join(warnings[:5]),
                f"each warning says what to change; `edge check-config {path}` lists them",
            ), config
        return Check("config", "ok", summary), config
    if status == 2:
        detail = lines[0] if lines else f"cannot read {path}"
        fix = f"copy the site file to {path} (or pass --config FILE)"
        if "permission" in detail.lower():
            # Installed site files are readable by the gateway's user only (mode 0600).
            fix = "run it as root: `sudo edge doctor`"
        return Check("config", "fail", detail, fix), None
    shown = lines[:-1][:5]
    more = len(lines) - 1 - len(shown)
    detail = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    return (
        Check(
            "config",
            "fail",
            detail,
            f"correct each line named above, then run `edge check-config {path}` until it says ok",
        ),
        None,
    )


def check_last_good(path: Path, config: SiteConfig | None) -> Check:
    """What ``edge run`` falls back on (edge/lastgood.py), and so what runs now when the site
    file is unusable: the last good config, or fault mode."""
    try:
        good = lastgood.load(path, known_models=known_models())
    except lastgood.LastGoodUnusable as exc:
        if config is not None:
            level: Level = "warn" if lastgood.path_for(path).exists() else "ok"
            fix = "" if level == "ok" else f"delete {lastgood.path_for(path)}; it is kept anew"
            return Check("last good config", level, str(exc), fix)
        return Check(
            "last good config",
            "fail",
            f"{exc}; the gateway runs in FAULT MODE: it sounds the fault pattern (three short "
            "beeps every 10 s), polls nothing and reports the problems above to the platform",
            "fix the site file (see the config check) or push a good one from the platform, "
            "then restart the service",
        )
    if config is not None:
        return Check("last good config", "ok", f"{good.digest} kept {good.saved} ({good.path})")
    return Check(
        "last good config",
        "warn",
        f"the site file is unusable, so the gateway runs the last good config {good.digest} "
        f"kept {good.saved}, not the site file",
        "fix the site file (see the config check) or push a good one, then restart the service",
    )


def check_site_files(config: SiteConfig) -> list[Check]:
    """The TLS files, command keys and modem port the site file names: on the gateway they
    must be there (``edge check-config`` only warns: it may run before they are made)."""
    return [
        Check(
            f"file {'.'.join(str(p) for p in missing.place)}",
            "fail",
            f"{missing.what.format(path=missing.path)} {missing.reason}",
            missing.hint,
        )
        for missing in missing_files(config)
        if missing.place[0] != "buses"  # serial ports: check_serial_ports, with the user's access
    ]


def check_serial_ports(config: SiteConfig, user: pwd.struct_passwd | None) -> list[Check]:
    checks: list[Check] = []
    for bus in config.buses:
        # By kind: the config may be the last good one, in its plain form (edge/config/plain.py).
        # Two comparisons, not `in`: mypy narrows the union of bus classes on these only.
        if bus.kind == "modbus-tcp" or bus.kind == "gpio":  # noqa: PLR1714
            continue
        name = f"serial {bus.id}"
        if "://" in bus.port:
            checks.append(Check(name, "ok", f"{bus.port} is a network URL (checked as a bus)"))
            continue
        path = Path(bus.port)
        if not path.exists():
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{path} does not exist",
                    "plug in the RS-485 adapter of this bus; `ls -l /dev/serial/by-id/` lists "
                    "the adapters that are plugged in: put that path in this bus's `port`",
                )
            )
            continue
        mode = path.stat().st_mode
        if not stat.S_ISCHR(mode):
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{path} is not a serial device",
                    "put the path of the serial adapter in this bus's `port` (/dev/ttyUSB0, "
                    "/dev/serial/by-id/...)",
                )
            )
            continue
        who = user.pw_name if user is not None else "this user"
        if not _can_read_write(path, user):
            group = _group_name(path.stat().st_gid)
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{path} exists but {who} may not open it (group {group})",
                    f"add the user to the device's group: `sudo usermod -aG {group} {who}`, "
                    "then restart the gateway",
                )
            )
            continue
        checks.append(Check(name, "ok", f"{path} present and accessible to {who}"))
    return checks


async def check_tcp_buses(config: SiteConfig, seconds: float) -> list[Check]:
    targets: list[tuple[str, str, int]] = []
    for bus in config.buses:
        if bus.kind == "modbus-tcp":
            targets.append((bus.id, bus.host, bus.port))
        elif bus.kind != "gpio" and bus.port.startswith("socket://"):
            parts = urlsplit(bus.port)
            if parts.hostname and parts.port:
                targets.append((bus.id, parts.hostname, parts.port))
    results = await asyncio.gather(*(_tcp_reachable(h, p, seconds) for _, h, p in targets))
    checks = []
    for (bus_id, host, port), error in zip(targets, results, strict=True):
        if error is None:
            checks.append(Check(f"bus {bus_id}", "ok", f"{host}:{port} accepts connections"))
        else:
            checks.append(
                Check(
                    f"bus {bus_id}",
                    "fail",
                    f"{host}:{port}: {error}",
                    "check the device's power and network cable, and that host and port in "
                    "this bus match the device's settings",
                )
            )
    return checks


def check_gpio(config: SiteConfig, user: pwd.struct_passwd | None, dev: Path) -> Check:
    factory = config.outputs.pin_factory or os.environ.get("GPIOZERO_PIN_FACTORY")
    pin = config.outputs.buzzer.pin
    if factory == "mock":
        return Check(
            "gpio",
            "warn",
            f"outputs.pin_factory is mock: the buzzer on GPIO {pin} will not sound",
            "remove `pin_factory: mock` from outputs on a real gateway",
        )
    chips = sorted(dev.glob("gpiochip*"))
    if not chips:
        return Check(
            "gpio",
            "fail",
            f"no GPIO chip in {dev}: the buzzer on GPIO {pin} cannot sound",
            "run the gateway on a Raspberry Pi (the GPIO driver comes with Raspberry Pi OS)",
        )
    who = user.pw_name if user is not None else "this user"
    denied = [chip for chip in chips if not _can_read_write(chip, user)]
    if len(denied) == len(chips):
        group = _group_name(chips[0].stat().st_gid)
        return Check(
            "gpio",
            "fail",
            f"{who} may not open {chips[0]} (group {group})",
            f"add the user to the group: `sudo usermod -aG {group} {who}`, then restart",
        )
    backend = gpio_backend(factory)
    if backend is None:
        wanted = factory or " or ".join(AUTO_PIN_FACTORIES)
        return Check(
            "gpio",
            "fail",
            f"no GPIO backend ({wanted}) can be loaded: the buzzer on GPIO {pin} cannot sound",
            NO_BACKEND_FIX,
        )
    return Check("gpio", "ok", f"{len(chips)} GPIO chip(s), {backend}; buzzer on GPIO {pin}")


#: The library each pin factory drives the pins through.
_BACKEND_LIBRARIES = {"lgpio": "lgpio", "rpigpio": "RPi.GPIO", "pigpio": "pigpio"}


def gpio_backend(factory: str | None) -> str | None:
    """The first backend the gateway would use (``factory``, else lgpio then RPi.GPIO) whose
    library is installed; None when none is. Only looked up, never opened: the running
    gateway holds the pins."""
    for name in (factory,) if factory else AUTO_PIN_FACTORIES:
        library = _BACKEND_LIBRARIES.get(name)
        if library is None:
            return name  # native needs no library
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(library) is not None:
                return name
    return None


def tls_context(certs: Path, uplink: UplinkConfig) -> ssl.SSLContext:
    """The TLS settings doctor uses, the gateway's own: the site file's (``uplink.ca_file``,
    ``cert_file``, ``key_file``) when it names any, else the folder's CA and client pair."""
    return uplink_tls_context(uplink, certs)


async def _try_broker(
    config: SiteConfig, url: str, certs: Path, seconds: float
) -> tuple[Check, Check | None]:
    """The connection check of one broker and, once connected, its delivery check."""
    broker = parse_broker_url(url)
    uplink = config.uplink
    who = f"as {uplink.username}" if uplink.username else "anonymously"
    # Its own client id: reusing the gateway's would disconnect a running gateway.
    identifier = f"{uplink.client_id or 'edge-' + config.gateway.id}-doctor"
    try:
        context = tls_context(certs, uplink) if broker.tls else None
    except (ssl.SSLError, OSError) as exc:
        where = "named in uplink" if uplink.ca_file or uplink.cert_file else f"in {certs}"
        return Check(
            f"broker {broker.display}",
            "fail",
            f"cannot load the TLS files {where}: {exc}",
            "see the certificate checks above",
        ), None
    client = MqttClient(
        broker.host,
        broker.port,
        protocol=_PROTOCOLS[uplink.protocol],
        identifier=identifier,
        username=uplink.username,
        password=uplink.password,
        timeout=seconds,
        tls_context=context,
    )
    connected = False
    try:
        async with asyncio.timeout(seconds + 1):
            await client.__aenter__()
        connected = True
        try:
            # The round trip of the delivery check has a timeout of its own.
            async with asyncio.timeout(2 * seconds + 1):
                delivery = await _check_delivery(client, config, broker.display, seconds)
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
    except aiomqtt.MqttCodeError as exc:
        text = str(exc).lower()
        refused = ("authori", "password", "user name")
        if (isinstance(exc.rc, int) and exc.rc in _AUTH_CODES) or any(w in text for w in refused):
            return Check(
                f"broker {broker.display}",
                "fail",
                f"refused the credentials ({who}): {exc}",
                "check uplink.username and uplink.password against what the district "
                "platform team issued for this gateway",
            ), None
        return Check(
            f"broker {broker.display}", "fail", f"refused the connection: {exc}", _NETWORK_FIX
        ), None
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        text = str(exc) or type(exc).__name__
        fix = _NETWORK_FIX
        if "certificate" in text.lower() or isinstance(exc, ssl.SSLError):
            fix = "check the certificates (below) and the clock; the broker refused TLS"
        if connected:
            # Connected, then lost (or timed out) during the delivery check.
            return Check(f"broker {broker.display}", "ok", f"connected {who}"), Check(
                f"delivery {broker.display}", "fail", f"no answer: {text}", _NETWORK_FIX
            )
        return Check(f"broker {broker.display}", "fail", f"not reachable: {text}", fix), None
    return Check(f"broker {broker.display}", "ok", f"connected {who}"), delivery


#: How the delivery check's message says what it is (the platform may ignore it).
PROBE_FIELD = "doctor_probe"


async def _check_delivery(
    client: MqttClient, config: SiteConfig, broker: str, seconds: float
) -> Check:
    """Publish a health message to the gateway's own health topic (QoS 1, not retained) and
    read it back: proof that the broker takes this gateway's messages.

    Over MQTT 5 a refusing PUBACK (an ACL, a quota) says it at once. Over MQTT 3.1.1
    Mosquitto acks a publish its ACL denies like any other, and the gateway would delete the
    rows: only reading the message back tells. The ACL must let the gateway read its own
    health topic (docs/deploy.md).
    """
    name = f"delivery {broker}"
    uplink = config.uplink
    topic = contract.health_topic(uplink.topic_prefix, config.gateway.id)
    probe = uuid.uuid4().hex
    payload = contract.health_message(
        config.gateway.id,
        _buffer_epoch(Path(config.buffer.path)) or "doctor",
        {
            "uptime_s": 0.0,
            "buffer_rows": 0,
            "oldest_unsent_age_s": None,
            "bus_errors": {},
            PROBE_FIELD: probe,
        },
        clock_synced=False,
    )
    acl_fix = (
        f"let this gateway's user write "
        f"{contract.gateway_filter(uplink.topic_prefix, config.gateway.id)} (its own "
        "topics) and read its health topic on the broker: see the per-gateway ACL in "
        "docs/deploy.md"
    )
    subscribed = True
    try:
        granted = await client.subscribe(topic, qos=1)
        subscribed = all(not getattr(g, "is_failure", False) and g != 0x80 for g in granted)
        await client.publish(topic, payload, qos=1)
    except PublishRefused as exc:
        return Check(
            name,
            "fail",
            f"the broker refuses this gateway's messages: {exc.refusal.describe()} on {topic}; "
            "the gateway keeps its rows but delivers nothing",
            acl_fix,
        )
    if not subscribed:
        if uplink.protocol == "5":
            return Check(name, "ok", f"the broker accepted a message on {topic} (PUBACK)")
        return Check(
            name,
            "warn",
            f"cannot read {topic} back (subscription refused): over MQTT 3.1.1 a message the "
            "broker's ACL denies is acknowledged all the same, so delivery is unproven",
            f'set uplink.protocol: "5", or {acl_fix}',
        )
    try:
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                if isinstance(message.payload, bytes) and probe.encode() in message.payload:
                    return Check(name, "ok", f"a health message went to {topic} and came back")
    except TimeoutError:
        pass
    silent = " (MQTT 3.1.1 cannot say so: every row sent would be lost)"
    return Check(
        name,
        "fail",
        f"the broker acknowledged a message on {topic} but it never came back within "
        f"{seconds:g} s: its ACL may be dropping this gateway's messages"
        + (silent if uplink.protocol != "5" else ""),
        acl_fix,
    )


def _buffer_epoch(buffer: Path) -> str | None:
    """The outbox's epoch, read-only, when the file exists (a health message carries it)."""
    if not buffer.is_file():
        return None
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=2)
        ) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


_NETWORK_FIX = (
    "check the gateway's network (cable or SIM), that the broker's host name resolves, and "
    "that the firewall lets the port through"
)


async def check_brokers(config: SiteConfig, certs: Path, seconds: float) -> list[Check]:
    results = await asyncio.gather(
        *(_try_broker(config, url, certs, seconds) for url in config.uplink.brokers)
    )
    connects = [connect for connect, _ in results]
    deliveries = [delivery for _, delivery in results if delivery is not None]
    checks: list[Check] = []
    for group in (connects, deliveries):
        # One broker is enough to run: the others are fallbacks.
        fallback = any(c.level == "ok" for c in group)
        checks += [
            c if c.level == "ok" or not fallback else Check(c.name, "warn", c.detail, c.fix)
            for c in group
        ]
    return checks


def check_certs(certs: Path, config: SiteConfig | None, now: dt.datetime | None) -> list[Check]:
    """The TLS files the gateway loads (edge.uplink.tls_files), and which ones those are: the
    site file's when it names any, else the folder's."""
    uplink = None if config is None else config.uplink
    named = uplink is not None and bool(uplink.ca_file or uplink.cert_file)
    if uplink is not None and named:
        findings = check_named_files(uplink.ca_file, uplink.cert_file, uplink.key_file, now)
    else:
        findings = check_certificates(certs, now)
    checks = [Check(f"certificate {f.file}", f.level, f.detail, f.fix) for f in findings]
    if uplink is not None and any(u.startswith("mqtts://") for u in uplink.brokers):
        ca_file, cert_file, key_file = tls_files(uplink, certs)
        ca = ca_file or "the system's certificate authorities"
        client = f"client {cert_file} with {key_file}" if cert_file else "no client certificate"
        source = "named in uplink" if named else f"from {certs}"
        if named and certs.is_dir() and any(certs.iterdir()):
            source += f"; the files in {certs} are not used"
        checks.append(Check("certificates", "ok", f"TLS uses {ca}, {client} ({source})"))
    return checks


def check_clock() -> Check:
    binary = shutil.which("timedatectl")
    answer = ""
    if binary is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [binary, "show", "-p", "NTPSynchronized", "--value"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            answer = result.stdout.strip() if result.returncode == 0 else ""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if answer == "yes":
        return Check("clock", "ok", f"synchronised ({now})")
    if answer == "no":
        return Check(
            "clock",
            "warn",
            f"not synchronised ({now}): timestamps and certificate checks may be wrong",
            "connect the gateway to the network; check `timedatectl timesync-status` and that "
            "the firewall lets NTP (UDP 123) through",
        )
    return Check(
        "clock",
        "warn",
        f"unknown: timedatectl cannot tell ({now})",
        "compare the time above with a phone; when it is off, check that systemd-timesyncd "
        "runs (`systemctl status systemd-timesyncd`)",
    )


def _existing_parent(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path("/")


def check_disk(buffer: Path) -> Check:
    folder = _existing_parent(buffer.parent)
    usage = shutil.disk_usage(folder)
    free_mb = usage.free / 2**20
    detail = f"{free_mb:.0f} MiB free of {usage.total / 2**20:.0f} MiB on {folder}"
    fix = (
        "free space on the SD card (old logs: `sudo journalctl --vacuum-size=50M`) "
        "or use a larger card"
    )
    if usage.free < DISK_FAIL_BYTES:
        return Check("disk", "fail", detail, fix)
    if usage.free < DISK_WARN_BYTES or usage.free < usage.total / 10:
        return Check("disk", "warn", detail, fix)
    return Check("disk", "ok", detail)


def check_buffer(buffer: Path, user: pwd.struct_passwd | None) -> Check:
    folder = _existing_parent(buffer.parent)
    who = user.pw_name if user is not None else "this user"
    if not buffer.exists():
        if folder != buffer.parent:
            return Check(
                "buffer",
                "ok",
                f"{buffer} not created yet; the gateway creates {buffer.parent} at first start",
            )
        return Check("buffer", "ok", f"{buffer} not created yet (the gateway creates it)")
    waiting = ""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=2)
        ) as conn:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if verdict == "ok" and version == OUTBOX_SCHEMA:
                # The count `edge buffer stats` shows, by the same function.
                depth = waiting_records(conn)
                waiting = (
                    f", {sum(depth.values())} records waiting to be sent "
                    f"({depth['event']} events, {depth['telemetry']} readings)"
                )
            elif verdict == "ok":
                waiting = (
                    f" (schema {version}: the gateway migrates it to {OUTBOX_SCHEMA} at start)"
                )
    except sqlite3.Error as exc:
        verdict = str(exc)
    if verdict != "ok":
        return Check(
            "buffer",
            "fail",
            f"{buffer} is damaged: {verdict}",
            f"stop the gateway, move {buffer.name} aside (keep it for the platform team), start "
            "the gateway again: it creates a new, empty buffer",
        )
    if user is not None and not _can_read_write(buffer, user):
        return Check(
            "buffer",
            "fail",
            f"{who} may not write {buffer}",
            f"give the file back to the gateway's user: `sudo chown {who}: {buffer}`",
        )
    return Check("buffer", "ok", f"{buffer} healthy{waiting}")


# -- running them ----------------------------------------------------------------------------


async def run_checks(
    config_path: Path,
    *,
    certs: Path | None = None,
    user: str | None = DEFAULT_USER,
    seconds: float = NETWORK_TIMEOUT,
    dev: Path = Path("/dev"),
    now: dt.datetime | None = None,
) -> list[Check]:
    """Every check, in the order an installer fixes things."""
    account = _user(user)
    certs = certs if certs is not None else config_path.parent / "certs"
    config_check, config = check_config(config_path)
    checks = [config_check]
    checks += _guarded("last good config", lambda: [check_last_good(config_path, config)])
    if config is None:
        # What runs instead is what must work: the rest is checked against the last good one.
        with contextlib.suppress(lastgood.LastGoodUnusable, OSError):
            config = lastgood.load(config_path, known_models=known_models()).config
    if config is None:
        checks += _guarded("certificates", lambda: check_certs(certs, None, now))
        checks += _guarded("clock", lambda: [check_clock()])
        return checks
    buffer = Path(config.buffer.path)
    checks += _guarded("serial", lambda: check_serial_ports(config, account))
    checks += _guarded("files", lambda: check_site_files(config))
    checks += await check_tcp_buses(config, seconds)
    checks += _guarded("gpio", lambda: [check_gpio(config, account, dev)])
    checks += _guarded("certificates", lambda: check_certs(certs, config, now))
    checks += await check_brokers(config, certs, seconds)
    checks += _guarded("clock", lambda: [check_clock()])
    checks += _guarded("disk", lambda: [check_disk(buffer)])
    checks += _guarded("buffer", lambda: [check_buffer(buffer, account)])
    return checks


def _guarded(name: str, check: Callable[[], list[Check]]) -> list[Check]:
    """A check that could not even look (a folder it may not enter) is a failed check with
    the reason, never a traceback that hides every other result."""
    try:
        return check()
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        fix = "run it as root: `sudo edge doctor`" if isinstance(exc, PermissionError) else ""
        return [Check(name, "fail", f"cannot check{where}: {exc.strerror or exc}", fix)]


def exit_status(checks: Iterable[Check]) -> int:
    """0 when the gateway can run (warnings allowed), 1 when any check failed."""
    return 1 if any(c.level == "fail" for c in checks) else 0


def print_report(checks: Sequence[Check], out: TextIO, *, as_json: bool = False) -> None:
    if as_json:
        json.dump(
            {"can_run": exit_status(checks) == 0, "checks": [asdict(c) for c in checks]},
            out,
            indent=2,
        )
        out.write("\n")
        return
    width = max(len(c.name) for c in checks)
    for check in checks:
        label = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}[check.level]
        out.write(f"{label:<5} {check.name:<{width}}  {check.detail}\n")
        if check.fix and check.level != "ok":
            out.write(f"{'':<5} {'':<{width}}  fix: {check.fix}\n")
    failed = sum(c.level == "fail" for c in checks)
    warned = sum(c.level == "warn" for c in checks)
    verdict = "the gateway can run" if not failed else "the gateway cannot run until fixed"
    out.write(f"{failed} failed, {warned} warnings: {verdict}\n")


def main(
    config: Path,
    out: TextIO,
    *,
    certs: Path | None = None,
    user: str | None = DEFAULT_USER,
    timeout: float = NETWORK_TIMEOUT,
    as_json: bool = False,
) -> int:
    checks = asyncio.run(run_checks(config, certs=certs, user=user, seconds=timeout))
    print_report(checks, out, as_json=as_json)
    return exit_status(checks)


def add_parser(commands: Any) -> None:
    """The ``edge doctor`` subcommand (``commands`` is argparse's subparsers object)."""
    doctor = commands.add_parser(
        "doctor", help="check that this gateway can run, and say how to fix what is wrong"
    )
    doctor.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the site file (default {DEFAULT_CONFIG})",
    )
    doctor.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help="the TLS files (default: certs/ beside the site file)",
    )
    doctor.add_argument(
        "--user",
        default=DEFAULT_USER,
        help=f"the account the gateway runs as, for access checks (default {DEFAULT_USER})",
    )
    doctor.add_argument(
        "--timeout", type=float, default=NETWORK_TIMEOUT, metavar="SECONDS", help="network checks"
    )
    doctor.add_argument("--json", action="store_true", help="print the results as JSON")


def command(args: argparse.Namespace) -> int:
    """Run ``edge doctor`` with parsed arguments."""
    return main(
        args.config,
        sys.stdout,
        certs=args.certs,
        user=args.user,
        timeout=args.timeout,
        as_json=args.json,
    )
