"""Simulated electrical fire monitors on Modbus TCP and Modbus RTU, with a control channel.

The simulator serves the register map of a device model (``efm-ref`` by default) through
pymodbus servers, encoding its values with :func:`drivers.modbus.model.encode`, so the gateway
and the simulator share one map:

- Modbus TCP on ``--tcp HOST:PORT``, one unit per ``--tcp-devices`` address;
- Modbus RTU on a pseudo-terminal, linked at ``--rtu-link PATH`` for the gateway to open like a
  serial port (two ptys bridged back to back, see :mod:`hil.pty_bridge`);
- optionally the same RTU line as RTU frames over TCP (``--rtu-tcp``), as a ser2net would.

Tests drive it in-process (:class:`Simulator`); other processes use the line-based JSON control
channel (``--control``, :func:`send_control`). docs/devices/efm-ref.md describes both.

Run ``python -m hil.simulator serve --help`` for the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, cast, get_args

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.model import DeviceModel, decode, encode, load_model, read_plan
from hil.pty_bridge import PtyBridge
from hil.pymodbus_log import throttle_pymodbus_log

__all__ = ["BusName", "Simulator", "main", "send_control"]

log = logging.getLogger(__name__)

BusName: TypeAlias = Literal["tcp", "rtu"]
BUS_NAMES: Final[tuple[str, ...]] = get_args(BusName)

#: Where the unit address sits in a response frame: RTU starts with it, a Modbus TCP frame
#: has it after the 6-byte MBAP prefix (transaction id, protocol id, length).
_UNIT_OFFSET: Final[dict[FramerType, int]] = {FramerType.RTU: 0, FramerType.SOCKET: 6}
#: Function codes that write registers.
_WRITE_FUNCTIONS: Final = frozenset({6, 16, 23})
_CONTROL_LINE_LIMIT: Final = 64 * 1024
#: Seconds the command-line client waits for the simulator's answer.
CLIENT_TIMEOUT: Final = 5.0


@dataclass(slots=True)
class _Unit:
    """One simulated device: its values, and whether it answers."""

    address: int
    values: dict[str, float]
    silent: bool = False
    #: Requests that reached the unit (answered or not).
    requests: int = 0


class Simulator:
    """Serves simulated devices until stopped. Use ``async with Simulator(...) as sim:``.

    ``tcp``, ``rtu_tcp`` and ``control`` are ``(host, port)`` to listen on (port 0 picks a free
    port; read it back from :attr:`tcp_port` and friends). ``rtu_link`` is the path where the
    RTU pseudo-terminal is linked. Device values start at the model's typical values; ``noise``
    (e.g. 0.01 for +-1 %) varies measurements on every read, and is off by default so tests
    read exactly what they set.
    """

    def __init__(
        self,
        *,
        model: str | DeviceModel = "efm-ref",
        tcp: tuple[str, int] | None = None,
        tcp_devices: Sequence[int] = (1,),
        rtu_link: str | os.PathLike[str] | None = None,
        rtu_devices: Sequence[int] = (1,),
        rtu_baudrate: int = 9600,
        rtu_tcp: tuple[str, int] | None = None,
        control: tuple[str, int] | None = None,
        noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.model = load_model(model) if isinstance(model, str) else model
        if not 0 <= noise < 1:
            raise ValueError(f"noise is a fraction in [0, 1), not {noise}")
        self._tcp = tcp
        self._rtu_link = Path(rtu_link) if rtu_link is not None else None
        self._rtu_tcp = rtu_tcp
        self._rtu_baudrate = rtu_baudrate
        self._control = control
        self._noise = noise
        self._random = random.Random(seed)
        self._lines: dict[BusName, dict[int, _Unit]] = {}
        if tcp is not None:
            self._lines["tcp"] = self._units(tcp_devices, 0, 255)
        if self._rtu_link is not None or rtu_tcp is not None:
            self._lines["rtu"] = self._units(rtu_devices, 1, 247)
        if not self._lines:
            raise ValueError("nothing to serve: give tcp, rtu_link or rtu_tcp")
        self._servers: list[ModbusBaseServer] = []
        self._bridge: PtyBridge | None = None
        self._control_server: asyncio.Server | None = None
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._linked_to: str | None = None
        self._ports: dict[str, int] = {}

    def _units(self, addresses: Sequence[int], lowest: int, highest: int) -> dict[int, _Unit]:
        units: dict[int, _Unit] = {}
        for address in addresses:
            if isinstance(address, bool) or not isinstance(address, int):
                raise ValueError(f"unit address {address!r} is not an integer")
            if not lowest <= address <= highest or address in units:
                raise ValueError(f"unit address {address} is out of range or repeated")
            typical = {point.name: point.typical for point in self.model.points}
            units[address] = _Unit(address, typical)
        if not units:
            raise ValueError("a bus needs at least one unit address")
        return units

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the ports and start serving; on failure, close what was opened and raise."""
        throttle_pymodbus_log()
        try:
            if self._tcp is not None:
                server = ModbusTcpServer(
                    self._context("tcp"),
                    address=self._tcp,
                    trace_packet=self._silencer("tcp", FramerType.SOCKET),
                )
                self._ports["tcp"] = await self._listen(server, "modbus-tcp", self._tcp)
            if self._rtu_link is not None:
                self._bridge = PtyBridge()
                await self._bridge.start()
                serial = ModbusSerialServer(
                    self._context("rtu"),
                    framer=FramerType.RTU,
                    port=self._bridge.server_path,
                    baudrate=self._rtu_baudrate,
                    trace_packet=self._silencer("rtu", FramerType.RTU),
                )
                await self._listen(serial, "modbus-rtu", None)
                self._link(self._rtu_link, self._bridge.client_path)
            if self._rtu_tcp is not None:
                server = ModbusTcpServer(
                    self._context("rtu"),
                    framer=FramerType.RTU,
                    address=self._rtu_tcp,
                    trace_packet=self._silencer("rtu", FramerType.RTU),
                )
                self._ports["rtu_tcp"] = await self._listen(server, "rtu-over-tcp", self._rtu_tcp)
            if self._control is not None:
                host, port = self._control
                self._control_server = await asyncio.start_server(
                    self._control_client, host, port, limit=_CONTROL_LINE_LIMIT
                )
                self._ports["control"] = self._control_server.sockets[0].getsockname()[1]
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop serving, close the ports and remove the RTU link. Safe to call twice."""
        if self._control_server is not None:
            self._control_server.close()
            for task in list(self._control_tasks):
                task.cancel()
            await asyncio.gather(*self._control_tasks, return_exceptions=True)
            await self._control_server.wait_closed()
            self._control_server = None
        servers, self._servers = self._servers, []
        for server in servers:
            # pymodbus leaves shutdown() unannotated.
            await server.shutdown()  # type: ignore[no-untyped-call]
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        self._unlink()
        self._ports.clear()
        # Let the transports finish closing before the loop may end.
        await asyncio.sleep(0)

    async def _listen(
        self, server: ModbusBaseServer, what: str, address: tuple[str, int] | None
    ) -> int:
        self._servers.append(server)
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            where = f" on {address[0]}:{address[1]}" if address else ""
            raise OSError(f"cannot start the {what} server{where}") from None
        listener = server.transport
        if isinstance(listener, asyncio.Server):
            return int(listener.sockets[0].getsockname()[1])
        return 0

    def _link(self, link: Path, target: str) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            # A link left by a simulator that did not stop cleanly.
            link.unlink()
        elif link.exists():
            raise FileExistsError(f"{link} exists and is not a symbolic link; not replacing it")
        link.symlink_to(target)
        self._linked_to = target

    def _unlink(self) -> None:
        link, target, self._linked_to = self._rtu_link, self._linked_to, None
        if link is None or target is None:
            return
        # Only remove the link if it is still ours: another simulator may have replaced it.
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link) == target:
                link.unlink()

    # ----------------------------------------------------------------------------------------
    # What the servers see

    def _context(self, line: BusName) -> list[SimDevice]:
        """One SimDevice per unit, plus the catch-all unit 0 for addresses nobody serves."""
        devices = [
            # pymodbus answers addresses it has no SimDevice for from unit 0 (and without one
            # it fails with a KeyError and answers "device failure"); the silencer drops those
            # answers, so an unknown address gets no answer at all, as on a real line.
            SimDevice(0, simdata=[SimData(0, datatype=DataType.REGISTERS)]),
        ]
        for address, unit in self._lines[line].items():
            image = encode(self.model, unit.values)
            simdata = [
                SimData(
                    point.address,
                    values=[image[point.address + offset] for offset in range(point.size)],
                    datatype=DataType.REGISTERS,
                    readonly=point.access == "r",
                )
                for point in self.model.points
            ]
            simdata += self._gap_fillers()
            action = functools.partial(self._on_request, line, address)
            devices.append(SimDevice(address, simdata=simdata, action=action))
        return devices

    def _gap_fillers(self) -> list[SimData]:
        """Zero registers between points that the poller reads through (the model's
        ``max_gap``), so a read plan that spans them is answered as the product would."""
        mapped = {
            point.address + offset for point in self.model.points for offset in range(point.size)
        }
        fillers: list[SimData] = []
        for start, count in read_plan(self.model):
            gap = [a for a in range(start, start + count) if a not in mapped]
            for first in gap:
                fillers.append(
                    SimData(first, values=[0], datatype=DataType.REGISTERS, readonly=True)
                )
        return fillers

    def _silencer(self, line: BusName, framer: FramerType) -> Callable[[bool, bytes], bytes]:
        """A pymodbus ``trace_packet`` hook that swallows answers of silent or unknown units.

        pymodbus has no "do not answer" switch for a unit it serves; the trace hook may rewrite
        every outgoing frame, and an empty frame puts nothing on the wire.
        """
        units = self._lines[line]
        offset = _UNIT_OFFSET[framer]

        def trace(sending: bool, packet: bytes) -> bytes:
            if sending and len(packet) > offset:
                unit = units.get(packet[offset])
                if unit is None or unit.silent:
                    return b""
            return packet

        return trace

    async def _on_request(  # noqa: PLR0917 (pymodbus calls SimDevice actions positionally)
        self,
        line: BusName,
        address: int,
        function_code: int,
        start_address: int,
        request_address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus SimDevice action: refresh the unit's registers before each access."""
        unit = self._lines[line][address]
        unit.requests += 1
        if function_code != self.model.function_code and function_code not in _WRITE_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        image = encode(self.model, self._served_values(unit, noisy=True))
        for register_address, register in image.items():
            registers[register_address - start_address] = register
        if set_values is not None:
            # The master wrote settings: take them into the unit's values, so they stick.
            written = dict(image)
            for offset, value in enumerate(set_values):
                written[request_address + offset] = int(value)
            first = min(point.address for point in self.model.points)
            last = max(point.end for point in self.model.points)
            span = [written.get(register_address, 0) for register_address in range(first, last)]
            decoded = decode(self.model, first, span)
            end = request_address + len(set_values)
            for point in self.model.points:
                if point.access == "rw" and point.address < end and point.end > request_address:
                    unit.values[point.name] = decoded[point.name]
        return None

    def _served_values(self, unit: _Unit, *, noisy: bool) -> dict[str, float]:
        values = dict(unit.values)
        if noisy and self._noise:
            for point in self.model.points:
                if point.access == "r" and point.unit and not point.bits:
                    factor = 1 + self._random.uniform(-self._noise, self._noise)
                    value = values[point.name] * factor
                    with contextlib.suppress(ValueError):
                        encode(self.model, {point.name: value})
                        values[point.name] = value
        self._derive_alarm_bits(values)
        return values

    def _derive_alarm_bits(self, values: dict[str, float]) -> None:
        """Bits 0 and 1 of efm-ref's alarm_bits follow the setpoints, as the device's do."""
        model = self.model
        if not model.has_point("alarm_bits"):
            return
        bit_names = dict(model.point("alarm_bits").bits)
        bits = int(values["alarm_bits"])
        if bit_names.get(0) == "residual_current" and "residual_setpoint" in values:
            bits &= ~0b01
            if values.get("residual_current", 0.0) >= values["residual_setpoint"]:
                bits |= 0b01
        if bit_names.get(1) == "over_temperature" and "temperature_setpoint" in values:
            bits &= ~0b10
            temperatures = [
                values[name]
                for name in values
                if name.startswith("temperature_") and name != "temperature_setpoint"
            ]
            if any(t >= values["temperature_setpoint"] for t in temperatures):
                bits |= 0b10
        values["alarm_bits"] = float(bits)

    # ----------------------------------------------------------------------------------------
    # In-process API

    @property
    def tcp_port(self) -> int:
        """The Modbus TCP port actually bound (useful with port 0)."""
        return self._port("tcp")

    @property
    def rtu_tcp_port(self) -> int:
        """The RTU-over-TCP port actually bound."""
        return self._port("rtu_tcp")

    @property
    def control_port(self) -> int:
        """The control channel's port actually bound."""
        return self._port("control")

    @property
    def rtu_link(self) -> Path | None:
        """Where the RTU pseudo-terminal is linked (the port the gateway opens)."""
        return self._rtu_link

    @property
    def rtu_device(self) -> str:
        """The pseudo-terminal behind :attr:`rtu_link` (empty when not serving RTU)."""
        return self._bridge.client_path if self._bridge is not None else ""

    def _port(self, name: str) -> int:
        try:
            return self._ports[name]
        except KeyError:
            raise RuntimeError(f"the simulator is not serving {name} (or not started)") from None

    def set(self, bus: str, address: int, point: str, value: float) -> None:
        """Give ``point`` of the unit at ``address`` on ``bus`` a new value (from the next read).

        Raises ``ValueError`` for an unknown bus, unit or point, or a value the register
        cannot hold.
        """
        unit = self._unit(bus, address)
        encode(self.model, {point: value})  # raises ValueError before anything changes
        unit.values[point] = float(value)

    def get(self, bus: str, address: int, point: str) -> float:
        """The value ``point`` is served with (without noise)."""
        self.model.point(point)
        return self._served_values(self._unit(bus, address), noisy=False)[point]

    def values(self, bus: str, address: int) -> dict[str, float]:
        """All values of a unit as served (without noise)."""
        return self._served_values(self._unit(bus, address), noisy=False)

    def set_silent(self, bus: str, address: int, silent: bool) -> None:
        """Make a unit stop answering (``True``) or answer again (``False``)."""
        self._unit(bus, address).silent = bool(silent)

    def is_silent(self, bus: str, address: int) -> bool:
        """Whether the unit is silenced."""
        return self._unit(bus, address).silent

    def requests(self, bus: str, address: int) -> int:
        """How many requests reached the unit so far, answered or not."""
        return self._unit(bus, address).requests

    def describe(self) -> str:
        """One line saying what is served where."""
        parts = []
        if self._tcp is not None and "tcp" in self._ports:
            parts.append(
                f"modbus-tcp {self._tcp[0]}:{self._ports['tcp']} units {_units(self._lines['tcp'])}"
            )
        if self._bridge is not None and self._rtu_link is not None:
            parts.append(
                f"modbus-rtu {self._rtu_link} ({self._bridge.client_path}, "
                f"{self._rtu_baudrate} baud) units {_units(self._lines['rtu'])}"
            )
        if self._rtu_tcp is not None and "rtu_tcp" in self._ports:
            parts.append(
                f"rtu-over-tcp {self._rtu_tcp[0]}:{self._ports['rtu_tcp']} "
                f"units {_units(self._lines['rtu'])}"
            )
        if self._control is not None and "control" in self._ports:
            parts.append(f"control {self._control[0]}:{self._ports['control']}")
        return f"simulating {self.model.name}: " + "; ".join(parts)

    def _unit(self, bus: str, address: int) -> _Unit:
        if bus not in BUS_NAMES:
            raise ValueError(f"unknown bus {bus!r} (buses: {', '.join(BUS_NAMES)})")
        units = self._lines.get(cast(BusName, bus))
        if units is None:
            raise ValueError(f"the simulator serves no {bus} bus")
        if isinstance(address, bool) or not isinstance(address, int) or address not in units:
            raise ValueError(
                f"no device at address {address!r} on the {bus} bus (served: {_units(units)})"
            )
        return units[address]

    # ----------------------------------------------------------------------------------------
    # Control channel

    def handle_command(self, message: object) -> dict[str, Any]:
        """Carry out one control command; the answer always has ``ok``, never raises."""
        try:
            return self._command(message)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}

    def _command(self, message: object) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise ValueError("a command is a JSON object")
        command = message.get("cmd")
        if command == "list":
            return {
                "ok": True,
                "model": self.model.name,
                "buses": {bus: sorted(units) for bus, units in self._lines.items()},
            }
        if command not in ("set", "silent", "get"):
            raise ValueError(f"unknown cmd {command!r} (commands: set, silent, get, list)")
        bus = _field(message, "bus", str)
        address = _field(message, "address", int)
        if command == "set":
            value = _field(message, "value", float)
            self.set(bus, address, _field(message, "point", str), value)
            return {"ok": True}
        if command == "silent":
            self.set_silent(bus, address, _field(message, "on", bool))
            return {"ok": True}
        if "point" in message:
            return {"ok": True, "value": self.get(bus, address, _field(message, "point", str))}
        return {
            "ok": True,
            "values": self.values(bus, address),
            "silent": self.is_silent(bus, address),
            "requests": self.requests(bus, address),
        }

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._control_tasks.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    # Over the line limit: answer, then hang up (the stream is out of step).
                    await _answer(writer, {"ok": False, "error": "command line too long"})
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    answer: dict[str, Any] = {"ok": False, "error": f"bad JSON: {exc}"}
                else:
                    answer = self.handle_command(message)
                await _answer(writer, answer)
        except ConnectionError:
            pass
        finally:
            if task is not None:
                self._control_tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _answer(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
    writer.write(json.dumps(answer).encode() + b"\n")
    await writer.drain()


def _field(message: dict[str, Any], name: str, kind: type) -> Any:
    """``message[name]`` checked against ``kind`` (bool is not a number, int is a float)."""
    if name not in message:
        raise ValueError(f"{name} is missing")
    value = message[name]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{name} must be {_KIND_NAMES.get(kind, kind.__name__)}, not {value!r}")
    return float(value) if kind is float else value


_KIND_NAMES: Final[dict[type, str]] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _units(units: dict[int, _Unit]) -> str:
    return ",".join(str(address) for address in sorted(units))


async def send_control(host: str, port: int, message: dict[str, Any]) -> dict[str, Any]:
    """Send one command to a simulator's control channel and return its answer.

    Raises ``OSError`` if the simulator cannot be reached and ``ValueError`` if the answer is
    not a JSON object. It waits as long as the simulator takes; bound it with
    ``asyncio.timeout`` where that matters.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise ConnectionError(f"the simulator at {host}:{port} closed without answering")
    answer = json.loads(line)
    if not isinstance(answer, dict):
        raise ValueError(f"the simulator answered {answer!r}, not a JSON object")
    return answer


# --------------------------------------------------------------------------------------------
# Command line


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _addresses(text: str) -> list[int]:
    try:
        addresses = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected addresses like 1,2,3, got {text!r}") from None
    if not addresses:
        raise argparse.ArgumentTypeError("expected at least one address")
    return addresses


def _assignment(text: str) -> tuple[str, float]:
    point, sep, value = text.partition("=")
    try:
        if not sep or not point:
            raise ValueError
        return point, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected POINT=VALUE, got {text!r}") from None


def _on_off(text: str) -> bool:
    if text in ("on", "off"):
        return text == "on"
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hil.simulator",
        description="Simulated electrical fire monitors on Modbus TCP and RTU.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve simulated devices until SIGINT/SIGTERM")
    serve.add_argument("--model", default="efm-ref", help="device model (default: efm-ref)")
    serve.add_argument("--tcp", type=_host_port, metavar="HOST:PORT", help="Modbus TCP listen")
    serve.add_argument("--tcp-devices", type=_addresses, default=[1], metavar="1,2")
    serve.add_argument("--rtu-link", metavar="PATH", help="link the RTU pseudo-terminal here")
    serve.add_argument("--rtu-devices", type=_addresses, default=[1], metavar="1,2")
    serve.add_argument("--rtu-baudrate", type=int, default=9600)
    serve.add_argument(
        "--rtu-tcp", type=_host_port, metavar="HOST:PORT", help="the RTU line over TCP"
    )
    serve.add_argument("--control", type=_host_port, metavar="HOST:PORT")
    serve.add_argument("--noise", type=float, default=0.0, help="e.g. 0.01 for +-1 %%")
    serve.add_argument("--seed", type=int)
    serve.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--control", type=_host_port, metavar="HOST:PORT", required=True)
        sub.add_argument("--bus", choices=BUS_NAMES, required=True)
        sub.add_argument("--address", type=int, required=True)
        return sub

    client("set", "set point values").add_argument(
        "assignments", type=_assignment, nargs="+", metavar="POINT=VALUE"
    )
    client("silent", "make a device stop answering, or answer again").add_argument(
        "state", type=_on_off, metavar="on|off"
    )
    client("get", "print a device's values as JSON").add_argument(
        "point", nargs="?", help="one point (default: all)"
    )
    return parser


async def _serve(args: argparse.Namespace) -> int:
    if args.tcp is None and args.rtu_link is None and args.rtu_tcp is None:
        print("simulator: nothing to serve; give --tcp, --rtu-link or --rtu-tcp", file=sys.stderr)
        return 2
    try:
        simulator = Simulator(
            model=args.model,
            tcp=args.tcp,
            tcp_devices=args.tcp_devices,
            rtu_link=args.rtu_link,
            rtu_devices=args.rtu_devices,
            rtu_baudrate=args.rtu_baudrate,
            rtu_tcp=args.rtu_tcp,
            control=args.control,
            noise=args.noise,
            seed=args.seed,
        )
        await simulator.start()
    except (OSError, ValueError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(simulator.describe(), flush=True)
        await stop.wait()
    finally:
        await simulator.stop()
    return 0


async def _client(args: argparse.Namespace) -> int:
    host, port = args.control
    base = {"bus": args.bus, "address": args.address}
    if args.command == "set":
        messages = [
            {"cmd": "set", **base, "point": point, "value": value}
            for point, value in args.assignments
        ]
    elif args.command == "silent":
        messages = [{"cmd": "silent", **base, "on": args.state}]
    else:
        point = {"point": args.point} if args.point else {}
        messages = [{"cmd": "get", **base, **point}]
    for message in messages:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                answer = await send_control(host, port, message)
        except (OSError, TimeoutError, ValueError) as exc:
            print(f"simulator control {host}:{port}: {exc or type(exc).__name__}", file=sys.stderr)
            return 1
        if not answer.get("ok"):
            print(f"simulator: {answer.get('error', answer)}", file=sys.stderr)
            return 1
        if args.command == "get":
            answer.pop("ok")
            print(json.dumps(answer))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hil.simulator``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return asyncio.run(_serve(args))
    return asyncio.run(_client(args))


if __name__ == "__main__":
    sys.exit(main())
