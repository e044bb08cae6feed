"""The running gateway's control socket: live status and a few on-site actions.

``edge run`` listens on a Unix socket (site file ``control.socket``; docs/control.md). A client
(``edge watch``, ``edge commission``) sends one JSON object a line and gets one JSON object a
line back. The server greets every client with its protocol version first.

The socket is never on the alarm path: the buzzer is driven inside the drivers' sink before
anything here runs, every write to a client has a deadline, a client that stops reading is
dropped, and at most :data:`MAX_CLIENTS` are served at once. Who may connect is decided by the
file's permissions (0660, the daemon's user and the ``edge-admin`` group).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from drivers import DeviceStatus, Reading
from edge import __version__
from edge.log import fields

if TYPE_CHECKING:
    from edge.annunciator import Annunciator
    from edge.buses import FieldDriver
    from edge.config.model import SiteConfig
    from edge.contract import EventKind
    from edge.rules import AlarmBook
    from edge.uplink import Uplink

__all__ = [
    "DEFAULT_SOCKET",
    "PROTOCOL",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "LiveReadings",
    "check_socket_owner",
]

log = logging.getLogger("edge.control")

#: The protocol's name and version, sent first to every client. A new field is no new
#: version; a field removed or changed in meaning is.
PROTOCOL: Final = "edge.control/1"
DEFAULT_SOCKET: Final = "/run/city-safety-edge/control.sock"
#: The group whose members may use the socket (read status, run the self-test).
ADMIN_GROUP: Final = "edge-admin"
#: Clients served at once; one more is told so and closed.
MAX_CLIENTS: Final = 8
#: Longest request line; a longer one closes the connection (a commissioning record is ~10 kB).
MAX_LINE: Final = 256 * 1024
#: How long an answer may wait for a client to read it before the client is dropped.
WRITE_TIMEOUT: Final = 2.0
#: A client that sends nothing for this long is closed.
IDLE_TIMEOUT: Final = 600.0
#: Longest buzzer, LED or relay drive a self-test request may ask for.
MAX_SELFTEST_SECONDS: Final = 10.0
#: Deepest transport buffer before the writer waits (and then times out): a client that never
#: reads costs the gateway this much memory at most.
WRITE_HIGH_WATER: Final = 64 * 1024
#: The connect test that tells a live socket from a stale file.
PROBE_TIMEOUT: Final = 1.0

SELFTEST_OUTPUTS: Final = ("buzzer", "led", "relay")


class ControlError(Exception):
    """A request the gateway refuses, or a socket a client must not use."""


@dataclass
class _DeviceLive:
    #: The last reading of each point (a reading is immutable: kept as it came, no copy).
    points: dict[str, Reading] = field(default_factory=dict)
    online: bool | None = None
    reason: str = ""
    since: float | None = None


class LiveReadings:
    """The last value of every point and the online state of every device, as the drivers
    handed them to the gateway. Updating it is one dict write: it sits after the alarm path."""

    def __init__(self) -> None:
        self.devices: dict[str, _DeviceLive] = {}

    def observe(self, sample: Reading | DeviceStatus) -> None:
        device = self.devices.get(sample.device_id)
        if device is None:
            device = self.devices[sample.device_id] = _DeviceLive()
        if isinstance(sample, DeviceStatus):
            device.online, device.reason, device.since = sample.online, sample.reason, sample.ts
            return
        device.points[sample.point] = sample
        if device.online is None:
            device.online = True

    def snapshot(self, device_id: str, now_mono: float) -> dict[str, Any]:
        device = self.devices.get(device_id)
        if device is None:
            return {"status": "waiting", "reason": "", "points": {}}
        status = "waiting" if device.online is None else "online" if device.online else "offline"
        return {
            "status": status,
            "reason": device.reason,
            "points": {
                point: {
                    "value": latest.value,
                    "unit": latest.unit,
                    "ts": latest.ts,
                    "age_s": round(max(0.0, now_mono - latest.mono), 3),
                    "quality": latest.quality,
                }
                for point, latest in sorted(device.points.items())
            },
        }


class Controlled(Protocol):
    """What the control socket reads and does of the running gateway (edge.gateway.Gateway)."""

    @property
    def config(self) -> SiteConfig: ...
    @property
    def config_digest(self) -> str: ...
    @property
    def boot_time(self) -> float: ...
    @property
    def live(self) -> LiveReadings: ...
    @property
    def annunciator(self) -> Annunciator: ...
    @property
    def alarms(self) -> AlarmBook: ...
    @property
    def uplink(self) -> Uplink | None: ...
    @property
    def buses(self) -> Mapping[str, FieldDriver]: ...

    def silence(self, source: str = "remote", alarm: tuple[str, str] | None = None) -> int: ...
    def report(self, kind: EventKind, **body: Any) -> None: ...


Action = Callable[[Controlled, Mapping[str, Any]], Awaitable[dict[str, Any]]]


async def _status(gateway: Controlled, params: Mapping[str, Any]) -> dict[str, Any]:
    from edge.buses import bus_health  # noqa: PLC0415 -- the client side needs no drivers

    config = gateway.config
    now_mono = time.monotonic()
    devices = []
    for device in config.devices:
        address = getattr(device, "address", None)
        devices.append(
            {
                "id": device.id,
                "model": device.model,
                "bus": getattr(device, "bus", None),
                "address": address,
                "location": device.location.model_dump(),
                **gateway.live.snapshot(device.id, now_mono),
            }
        )
    return {
        "gateway": config.gateway.id,
        "site": config.gateway.site.model_dump(),
        "version": __version__,
        "config_hash": gateway.config_digest,
        "uptime_s": round(time.time() - gateway.boot_time, 3),
        "buzzer": "on" if gateway.annunciator.sounding else "off",
        "uplink": gateway.uplink.state if gateway.uplink is not None else "waiting",
        "devices": devices,
        "alarms": [
            {
                "rule": rule,
                "device": device_id,
                "severity": alarm.latest.severity,
                "point": alarm.latest.point,
                "value": alarm.latest.value,
                "threshold": alarm.latest.threshold,
                "silenced": alarm.silenced,
            }
            for (rule, device_id), alarm in sorted(gateway.alarms.alarms.items())
        ],
        "buses": bus_health(gateway.buses),
        "selftest_running": gateway.annunciator.testing,
        "outputs": {name: getattr(config.outputs, name) is not None for name in SELFTEST_OUTPUTS},
    }


async def _selftest(gateway: Controlled, params: Mapping[str, Any]) -> dict[str, Any]:
    outputs = params.get("outputs", list(SELFTEST_OUTPUTS))
    if not isinstance(outputs, list) or not outputs or not set(outputs) <= set(SELFTEST_OUTPUTS):
        raise ControlError(f"outputs must be a non-empty list of {', '.join(SELFTEST_OUTPUTS)}")
    seconds = params.get("seconds", 2.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ControlError("seconds must be a number")
    if not 0 < seconds <= MAX_SELFTEST_SECONDS:
        raise ControlError(f"seconds must be above 0 and at most {MAX_SELFTEST_SECONDS:g}")
    absent = [name for name in outputs if getattr(gateway.config.outputs, name) is None]
    if absent:
        raise ControlError(f"this site has no {' and no '.join(absent)} (outputs in the site file)")
    if gateway.alarms.sounding():
        raise ControlError("an alarm is sounding: silence it before the self-test")
    if gateway.annunciator.testing:
        raise ControlError("a self-test is already running")
    done = await gateway.annunciator.self_test(seconds=float(seconds), outputs=tuple(outputs))
    return {"exercised": done}


async def _silence(gateway: Controlled, params: Mapping[str, Any]) -> dict[str, Any]:
    # Someone at the control socket is on site, like the one who presses the button.
    return {"silenced": gateway.silence("local")}


async def _scan(gateway: Controlled, params: Mapping[str, Any]) -> dict[str, Any]:
    """Which configured devices answer, as the running pollers see them; with ``addresses``,
    a sweep of an idle bus (one no device of the site file is on)."""
    from edge.buses import bus_health  # noqa: PLC0415

    if "addresses" in params:
        return await _sweep(gateway, params)
    health = bus_health(gateway.buses)
    now_mono = time.monotonic()
    buses: dict[str, Any] = {}
    for bus in gateway.config.buses:
        if params.get("bus") not in (None, bus.id):
            continue
        found = []
        for device in gateway.config.devices:
            if getattr(device, "bus", None) != bus.id:
                continue
            live = gateway.live.snapshot(device.id, now_mono)
            ages = [p["age_s"] for p in live["points"].values()]
            found.append(
                {
                    "device": device.id,
                    "address": getattr(device, "address", None),
                    "answers": live["status"] == "online",
                    "status": live["status"],
                    "last_answer_age_s": min(ages) if ages else None,
                }
            )
        buses[bus.id] = {
            "kind": bus.kind,
            "counters": health.get(bus.id, {}),
            "devices": found,
            "idle": not found,  # no device polled on it: it can be swept
        }
    if params.get("bus") is not None and not buses:
        raise ControlError(f"no bus {params['bus']!r} in the site file")
    return {"mode": "passive", "buses": buses}


#: At most one sweep at a time, over at most this many addresses (all of Modbus: 1-247).
MAX_SWEEP: Final = 247
_sweeping: set[str] = set()


async def _sweep(gateway: Controlled, params: Mapping[str, Any]) -> dict[str, Any]:
    """Probe ``addresses`` on the idle Modbus bus ``bus``. A bus a device is on is refused: a
    sweep would compete with its polls (stop the gateway and run ``edge scan`` for that)."""
    from drivers.modbus import RtuSettings, TcpSettings, known_models, load_model  # noqa: PLC0415
    from drivers.modbus.scan import scan  # noqa: PLC0415

    config = gateway.config
    bus = next((b for b in config.buses if b.id == params.get("bus")), None)
    if bus is None:
        raise ControlError(f"a sweep needs a bus of the site file, not {params.get('bus')!r}")
    addresses = params["addresses"]
    if (
        not isinstance(addresses, list)
        or not addresses
        or len(addresses) > MAX_SWEEP
        or not all(type(a) is int and 1 <= a <= MAX_SWEEP for a in addresses)
    ):
        raise ControlError(f"addresses must be a list of 1 to {MAX_SWEEP} Modbus addresses (1-247)")
    polled = [d.id for d in config.devices if d.bus == bus.id]
    if bus.kind == "modbus-rtu":
        polled += [
            d.id
            for other in config.buses
            if other.kind == "modbus-rtu" and other.port == bus.port and other.id != bus.id
            for d in config.devices
            if d.bus == other.id
        ]
    if polled:
        raise ControlError(
            f"the gateway polls bus {bus.id!r} ({', '.join(polled)}): a sweep needs the bus "
            "idle; stop the gateway and run `edge scan`"
        )
    settings: TcpSettings | RtuSettings
    if bus.kind == "modbus-tcp":
        settings = TcpSettings(bus.host, bus.port, bus.timeout)
    elif bus.kind == "modbus-rtu":
        settings = RtuSettings(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.timeout)
    else:
        raise ControlError(f"bus {bus.id!r} is {bus.kind}; only Modbus buses can be swept")
    if _sweeping:
        raise ControlError(f"a sweep of bus {next(iter(_sweeping))!r} is already running")
    _sweeping.add(bus.id)
    started = time.monotonic()
    try:
        found = await scan(settings, addresses, models=[load_model(m) for m in known_models()])
    except OSError as exc:
        raise ControlError(f"bus {bus.id!r}: {exc}") from None
    finally:
        _sweeping.discard(bus.id)
    log.info("bus swept", extra=fields(bus=bus.id, addresses=len(addresses), found=len(found)))
    return {
        "mode": "sweep",
        "bus": bus.id,
        "seconds": round(time.monotonic() - started, 3),
        "found": [
            {"address": f.address, "answer": f.answer, "models": list(f.models)} for f in found
        ],
    }


async def _commissioned(gateway: Controlled, params: Mapping[str, Any]) -> dict[str, Any]:
    record = params.get("record")
    if not isinstance(record, dict):
        raise ControlError("record must be an object")
    if record.get("gateway") != gateway.config.gateway.id:
        raise ControlError(
            f"the record is of gateway {record.get('gateway')!r}, not {gateway.config.gateway.id!r}"
        )
    try:
        gateway.report("commissioned", **record)
    except ValueError as exc:  # an envelope field in the record
        raise ControlError(str(exc)) from None
    log.warning("commissioned", extra=fields(by=str(record.get("by", ""))))
    return {"submitted": True}


ACTIONS: Final[dict[str, Action]] = {
    "status": _status,
    "selftest": _selftest,
    "silence": _silence,
    "scan": _scan,
    "commissioned": _commissioned,
}


def check_socket_owner(path: Path, *, owners: set[int] | None = None) -> None:
    """Refuse a control socket that is no socket, or that a user other than the gateway's
    (``edge``), root or this process's own owns: someone else's socket would be told the
    commissioning record and could fake every reading."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ControlError(f"{path}: no control socket (is `edge run` running?)") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path}: not a socket; refusing to use it")
    if owners is None:
        owners = {0, os.getuid()}
        with contextlib.suppress(KeyError):
            import pwd  # noqa: PLC0415

            owners.add(pwd.getpwnam("edge").pw_uid)
    if info.st_uid not in owners:
        raise ControlError(
            f"{path}: owned by uid {info.st_uid}, not by the gateway's user; refusing to use it"
        )


def _probe(path: Path) -> bool:
    """Whether something answers on the socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def prepare_socket_path(path: Path) -> None:
    """Make the socket's folder, and remove a stale socket a crashed gateway left there.

    Refuses (:class:`ControlError`) a path that is not a socket (a file, a symlink someone
    planted), a socket another user owns, and a live socket: another gateway is running.
    """
    if len(os.fsencode(path)) >= 104:  # sun_path is 108 bytes on Linux, 104 on the BSDs
        raise ControlError(f"{path}: longer than a Unix socket path may be (103 bytes)")
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path}: exists and is not a socket; remove it or choose another path")
    if info.st_uid != os.getuid():
        raise ControlError(f"{path}: a socket of uid {info.st_uid}; remove it or choose another")
    if _probe(path):
        raise ControlError(f"{path}: another gateway answers on it")
    path.unlink()
    log.warning("stale control socket removed", extra=fields(path=str(path)))


class ControlServer:
    """Serve :data:`ACTIONS` of ``gateway`` on the Unix socket at ``path``."""

    def __init__(self, gateway: Controlled, path: str | Path, *, group: str | None = ADMIN_GROUP):
        self.gateway = gateway
        self.path = Path(path)
        self.group = group
        self.clients = 0
        self.dropped = 0
        self.ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def serve(self) -> None:
        """Listen until cancelled. A path that cannot be used is logged once and the gateway
        goes on without a control socket: the alarms do not need it."""
        try:
            prepare_socket_path(self.path)
            server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE)
        except (ControlError, OSError) as exc:
            log.error("control socket not available", extra=fields(error=str(exc)))
            await asyncio.Event().wait()  # nothing to retry until the site file changes
            return
        try:
            self._set_permissions()
            self.ready.set()
            log.info("control socket listening", extra=fields(path=str(self.path)))
            async with server:
                await server.serve_forever()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(OSError):
                if self.path.is_socket():
                    self.path.unlink()

    def _set_permissions(self) -> None:
        os.chmod(self.path, 0o660)
        if self.group is None:
            return
        try:
            gid = grp.getgrnam(self.group).gr_gid
            os.chown(self.path, -1, gid)
        except (KeyError, OSError) as exc:
            # Without the group only the gateway's own user (and root) may connect.
            log.info(
                "control socket kept to its owner", extra=fields(group=self.group, why=str(exc))
            )

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        try:
            if self.clients >= MAX_CLIENTS:
                await self._send(writer, {"v": 1, "ok": False, "error": "too many clients"})
                return
            self.clients += 1
            try:
                await self._conversation(reader, writer)
            finally:
                self.clients -= 1
        except (TimeoutError, ConnectionError, ValueError) as exc:
            # A client that does not read, vanishes or sends a line beyond MAX_LINE.
            self.dropped += 1
            log.info("control client dropped", extra=fields(why=repr(exc)))
        finally:
            writer.transport.abort() if writer.transport.get_write_buffer_size() else writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _conversation(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._send(
            writer,
            {
                "protocol": PROTOCOL,
                "gateway": self.gateway.config.gateway.id,
                "version": __version__,
                "actions": sorted(ACTIONS),
            },
        )
        while True:
            async with asyncio.timeout(IDLE_TIMEOUT):
                line = await reader.readline()
            if not line:
                return
            await self._send(writer, await self._answer(line))

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"v": 1, "ok": False, "error": "not a JSON line"}
        if not isinstance(request, dict):
            return {"v": 1, "ok": False, "error": "a request is a JSON object"}
        answer: dict[str, Any] = {"v": 1, "id": request.get("id")}
        if request.get("v", 1) != 1:
            return {**answer, "ok": False, "error": f"protocol version {request.get('v')!r}"}
        action = ACTIONS.get(str(request.get("action")))
        params = request.get("params", {})
        if action is None or not isinstance(params, dict):
            what = f"unknown action {request.get('action')!r}; expected one of {sorted(ACTIONS)}"
            return {**answer, "ok": False, "error": what if action is None else "bad params"}
        try:
            return {**answer, "ok": True, "result": await action(self.gateway, params)}
        except ControlError as exc:
            return {**answer, "ok": False, "error": str(exc)}
        except Exception as exc:  # a bug here must not end the gateway or the connection
            log.exception("control action failed", extra=fields(action=request.get("action")))
            return {**answer, "ok": False, "error": f"internal error: {exc!r}"}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()


class ControlClient:
    """One connection to a gateway's control socket (``edge watch``, ``edge commission``)."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.hello: dict[str, Any] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0

    async def connect(self) -> dict[str, Any]:
        check_socket_owner(self.path)
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.path, limit=16 * 2**20
                )
                self.hello = json.loads(await self._reader.readline() or b"null") or {}
        except (OSError, TimeoutError, ValueError) as exc:
            await self.close()
            raise ControlError(f"{self.path}: the gateway does not answer ({exc!r})") from None
        if self.hello.get("protocol") != PROTOCOL:
            error = self.hello.get("error") or f"protocol {self.hello.get('protocol')!r}"
            await self.close()
            raise ControlError(f"{self.path}: {error}, not {PROTOCOL}")
        return self.hello

    async def request(
        self, action: str, params: Mapping[str, Any] | None = None, *, within: float | None = None
    ) -> dict[str, Any]:
        """The result of ``action``; :class:`ControlError` with the gateway's reason if refused."""
        async with self._lock:
            if self._writer is None or self._reader is None:
                await self.connect()
            writer, reader = self._writer, self._reader
            if writer is None or reader is None:
                raise ControlError(f"{self.path}: not connected")
            self._next_id += 1
            request = {"v": 1, "id": self._next_id, "action": action, "params": dict(params or {})}
            try:
                async with asyncio.timeout(within or self.timeout):
                    writer.write(json.dumps(request).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
            except (OSError, TimeoutError) as exc:
                await self.close()
                raise ControlError(f"{self.path}: connection lost ({exc!r})") from None
            if not line:
                await self.close()
                raise ControlError(f"{self.path}: the gateway closed the connection")
            answer: dict[str, Any] = json.loads(line)
            if not answer.get("ok"):
                raise ControlError(str(answer.get("error")))
            result: dict[str, Any] = answer["result"]
            return result

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
