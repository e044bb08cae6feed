"""What a scenario says, once its file has been read and checked (see docs/hil.md).

Every object keeps the line of the file it came from, so a failure in a report points at the
step or expectation that failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from edge.config.model import SiteConfig
from hil.modem import CallBehaviour

#: How the scenario runs: against the gateway as a process (live), or on recorded readings
#: through ``edge replay``'s engine on the readings' own clock (replay: months in seconds).
Mode: TypeAlias = Literal["live", "replay"]

#: Which simulator serves a device; inferred from the device's bus and model.
SimKind: TypeAlias = Literal["modbus-tcp", "rtu-line", "witmotion", "ld2410"]

#: Faults each simulator can inject (``none`` clears a fault).
FAULTS: Final[dict[str, tuple[str, ...]]] = {
    "modbus-tcp": ("none", "silent"),
    "rtu-line": ("none", "silent", "slow", "crc", "garbage", "exception", "stuck"),
    "witmotion": ("none", "silent", "checksum", "garbage", "wrong-baud", "flood"),
    "ld2410": ("none", "silent", "checksum", "garbage", "wrong-baud", "flood", "no-ack"),
}

#: Points the UART simulators take (Modbus simulators take their model's point names).
SERIAL_POINTS: Final[dict[str, tuple[str, ...]]] = {
    "witmotion": ("roll", "pitch", "yaw", "temperature"),
    "ld2410": ("state", "distance"),
}

ACTIONS: Final[tuple[str, ...]] = (
    "set",
    "ramp",
    "noise",
    "toggle",
    "fault",
    "garbage",
    "silent",
    "back",
    "broker",
    "disk",
    "gateway",
    "push-config",
)


@dataclass(frozen=True)
class SimDevice:
    """A site device and the simulator that serves it."""

    id: str
    sim: SimKind
    bus: str
    model: str
    address: int | None
    values: dict[str, float]
    line: int


@dataclass(frozen=True)
class Step:
    """One action at ``at`` seconds after the scenario starts."""

    at: float
    action: str
    #: The action's settings, checked by the loader (device ids exist, points are known ...).
    args: dict[str, Any]
    label: str
    line: int


ExpectKind: TypeAlias = Literal[
    "buzzer",
    "led",
    "event",
    "reading",
    "no_event",
    "no_buzzer",
    "count",
    "no_gaps",
    "nothing_lost",
    "transition",
    "no_transition",
]


@dataclass(frozen=True)
class Expectation:
    """One thing that must be true. ``after`` is a step label (``start``: the scenario's start);
    ``within`` is the bound in seconds; ``window`` is ``(from, until)`` in seconds after the
    start for the ``no_*`` kinds."""

    kind: ExpectKind
    line: int
    state: str = ""
    match: dict[str, Any] = field(default_factory=dict)
    after: str = "start"
    within: float = 0.0
    first: bool = False
    window: tuple[str, str] = ("start", "end")
    equals: int | None = None
    at_least: int | None = None
    at_most: int | None = None
    #: Replay: the transition's time must not be earlier than this (POSIX seconds).
    not_before: float | None = None

    def describe(self) -> str:
        """The expectation in a few words, for reports."""
        what = " ".join(f"{k}={v}" for k, v in self.match.items())
        if self.kind in ("buzzer", "led"):
            return f"{self.kind} {self.state} within {_ms(self.within)} of {self.after}"
        if self.kind == "event":
            first = " (first to arrive)" if self.first else ""
            return f"event {what} within {_s(self.within)} of {self.after}{first}"
        if self.kind == "reading":
            return f"reading {what} within {_s(self.within)} of {self.after}"
        if self.kind == "no_event":
            return f"no event {what} from {self.window[0]} until {self.window[1]}"
        if self.kind == "no_buzzer":
            return f"buzzer stays off from {self.window[0]} until {self.window[1]}"
        if self.kind == "count":
            bounds = [
                f"{name} {value}"
                for name, value in (
                    ("==", self.equals),
                    (">=", self.at_least),
                    ("<=", self.at_most),
                )
                if value is not None
            ]
            return f"count of {what or 'events'} {' and '.join(bounds)}"
        if self.kind == "transition":
            when = ""
            if self.not_before is not None:
                stamp = datetime.fromtimestamp(self.not_before, UTC).strftime("%Y-%m-%d %H:%M UTC")
                when = f" not before {stamp}"
            return f"transition {what}{when}"
        if self.kind == "no_transition":
            return f"no transition {what}"
        return self.kind.replace("_", " ")


@dataclass(frozen=True)
class ReadingSeries:
    """Replay input: one point of one device, a reading every ``every`` seconds for ``span``."""

    device: str
    point: str
    start: float
    every: float
    span: float
    shape: Literal["constant", "ramp", "noise"]
    value: float
    to: float
    amplitude: float
    unit: str
    line: int


@dataclass(frozen=True)
class Scenario:
    name: str
    proves: str
    path: Path
    mode: Mode
    site: SiteConfig
    #: The site as plain data, for the runner to point at its own simulators and broker.
    site_data: dict[str, Any]
    devices: list[SimDevice]
    steps: list[Step]
    expectations: list[Expectation]
    duration: float
    seed: int
    readings: list[ReadingSeries] = field(default_factory=list)
    #: What each number the site calls does on the simulated modem; the rest answer.
    phones: dict[str, CallBehaviour] = field(default_factory=dict)

    @property
    def needs(self) -> set[str]:
        """What the rig must offer: ``tmpfs`` for disk steps, ``push-config`` for config push."""
        needs = set()
        for step in self.steps:
            if step.action == "disk":
                needs.add("tmpfs")
            if step.action == "push-config":
                needs.add("push-config")
        return needs


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:g} s"
