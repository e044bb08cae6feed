"""Real-rig mode: the same scenarios against real adapters and a real buzzer pin.

A rig file (``--rig FILE`` or ``EDGE_RIG=FILE``) says how the gateway under test reaches the
devices and how the runner sees its buzzer (docs/hil.md has the wiring):

.. code-block:: yaml

    ports:                      # site bus id -> the rig's USB-RS485 adapter (or socket://)
      rs485-1: /dev/ttyUSB0
    tcp:                        # site bus id -> simulators on a second machine
      lan: 192.168.10.2:15020
    control: 192.168.10.2:15021 # that machine's simulator control channel
    buzzer:
      output_pin: 17            # BCM pin the gateway drives (outputs.buzzer.pin)
      readback_pin: 22          # BCM input wired to it through the loopback wire
      pin_factory: lgpio

The devices are served by ``python -m hil.simulator serve`` on the second machine (Modbus TCP,
and the RS-485 line as RTU over TCP or through its own adapter); the runner drives them through
that simulator's control channel, so the steps a real rig can play are ``set`` (and ``ramp``,
``noise``, ``toggle``), ``silent``/``back``, broker, disk, gateway and push-config steps.
Without ``readback_pin`` the buzzer is observed through the gateway's log, as on the simulated
rig (for checking a rig file before the loopback wire is in place).

With no rig configured the real-rig tests are skipped with the reason.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.yamlpos import YamlError, read_yaml

__all__ = ["BuzzerReadback", "Rig", "RigConfigError", "load_rig", "rig_from_env"]

_BCM = range(2, 28)


class RigConfigError(Exception):
    """The rig file is wrong or missing; the message names the file and key."""


@dataclass(frozen=True)
class Rig:
    path: Path
    ports: dict[str, str]
    tcp: dict[str, tuple[str, int]]
    control: tuple[str, int]
    output_pin: int
    readback_pin: int | None
    pin_factory: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def adapt_site(self, site: dict[str, Any]) -> None:
        """Point the site's buses at the rig's adapters and its buzzer at the output pin."""
        for bus in site.get("buses", []):
            bus_id = bus.get("id")
            if bus_id in self.ports:
                bus["port"] = self.ports[bus_id]
            if bus_id in self.tcp:
                bus["host"], bus["port"] = self.tcp[bus_id]
        outputs = site.setdefault("outputs", {})
        if self.readback_pin is not None:
            # Real pins: the gateway drives the buzzer pin the loopback wire reads back.
            outputs["pin_factory"] = self.pin_factory
            if outputs["pin_factory"] is None:
                outputs.pop("pin_factory")
        outputs.setdefault("buzzer", {})["pin"] = self.output_pin

    def sim_bus(self, bus_id: str, kind: str) -> str:
        """The remote simulator's bus name (``tcp`` or ``rtu``) serving a site bus."""
        if kind == "modbus-tcp":
            return "tcp"
        if kind == "modbus-rtu":
            return "rtu"
        raise RigConfigError(
            f"{self.path}: bus {bus_id!r} ({kind}): the rig's simulator serves Modbus buses only"
        )


def _host_port(text: Any, where: str) -> tuple[str, int]:
    if isinstance(text, str):
        host, _, port = text.rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return host, int(port)
    raise RigConfigError(f"{where}: expected HOST:PORT, got {text!r}")


def _pin(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _BCM:
        raise RigConfigError(f"{where}: a BCM GPIO number 2-27, not {value!r}")
    return value


def load_rig(path: str | os.PathLike[str]) -> Rig:
    """Read a rig file; :class:`RigConfigError` names what is wrong."""
    name = os.fspath(path)
    try:
        doc = read_yaml(path)
    except (OSError, YamlError) as exc:
        raise RigConfigError(f"{name}: cannot read the rig file: {exc}") from None
    if doc.issues:
        raise RigConfigError(f"cannot read the rig file: {doc.issues[0]}")
    data = doc.data
    if not isinstance(data, dict):
        raise RigConfigError(f"{name}: a rig file is a mapping (ports, tcp, control, buzzer)")
    unknown = set(data) - {"ports", "tcp", "control", "buzzer"}
    if unknown:
        raise RigConfigError(f"{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    ports = data.get("ports") or {}
    tcp = data.get("tcp") or {}
    if not isinstance(ports, dict) or not all(isinstance(v, str) for v in ports.values()):
        raise RigConfigError(f"{name}: ports: a mapping of bus id -> serial port")
    if not isinstance(tcp, dict):
        raise RigConfigError(f"{name}: tcp: a mapping of bus id -> HOST:PORT")
    control = data.get("control")
    buzzer = data.get("buzzer")
    if not isinstance(buzzer, dict):
        raise RigConfigError(f"{name}: buzzer: output_pin (and readback_pin) are required")
    factory = buzzer.get("pin_factory")
    if factory is not None and factory not in ("lgpio", "rpigpio", "pigpio", "native"):
        raise RigConfigError(f"{name}: buzzer.pin_factory: lgpio, rpigpio, pigpio or native")
    unknown = set(buzzer) - {"output_pin", "readback_pin", "pin_factory"}
    if unknown:
        raise RigConfigError(
            f"{name}: buzzer: unknown key(s) {', '.join(sorted(map(str, unknown)))}"
        )
    if control is None:
        raise RigConfigError(
            f"{name}: control: HOST:PORT of the simulator's control channel is required"
        )
    readback = buzzer.get("readback_pin")
    return Rig(
        path=Path(path),
        ports={str(k): v for k, v in ports.items()},
        tcp={str(k): _host_port(v, f"{name}: tcp.{k}") for k, v in tcp.items()},
        control=_host_port(control, f"{name}: control"),
        output_pin=_pin(buzzer.get("output_pin"), f"{name}: buzzer.output_pin"),
        readback_pin=None if readback is None else _pin(readback, f"{name}: buzzer.readback_pin"),
        pin_factory=factory,
    )


def rig_from_env() -> Rig | None:
    """The rig named by ``EDGE_RIG``, or ``None`` when no rig is configured."""
    path = os.environ.get("EDGE_RIG")
    return load_rig(path) if path else None


class BuzzerReadback:
    """The buzzer output read back through the loopback wire: every edge with its time."""

    def __init__(self, pin: int, pin_factory: Any = None) -> None:
        # Imported here: gpiozero picks a pin factory at import on some versions.
        from gpiozero import DigitalInputDevice  # noqa: PLC0415

        self._lock = threading.Lock()
        self.changes: list[tuple[float, bool]] = []
        self._input = DigitalInputDevice(pin, pull_up=False, pin_factory=pin_factory)
        # gpiozero calls these from its own thread; the lock keeps the list whole.
        self._input.when_activated = lambda: self._note(True)
        self._input.when_deactivated = lambda: self._note(False)

    def _note(self, on: bool) -> None:
        with self._lock:
            self.changes.append((time.time(), on))

    def snapshot(self) -> list[tuple[float, bool]]:
        with self._lock:
            return list(self.changes)

    def close(self) -> None:
        self._input.close()
