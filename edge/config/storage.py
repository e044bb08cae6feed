"""Storage policies in the site file and the device models, checked and resolved.

Each point of each device gets one :class:`edge.storage_policy.Policy`: the device's override
in the site file (``devices[].storage.<point>``), else the model's default (a model file's
``points[].storage``, or :data:`FIXED_DEFAULTS` for the UART and GPIO sensors), else ``all``.
``storage.policy: all`` in the site file stores every reading of every point, whatever the
models say. docs/config.md explains each default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.catalog import SERIAL_POINTS
from drivers.tilt import TILT_AXES, displacement_point
from edge.config.annotated import Duration
from edge.config.behaviour import storage_of
from edge.config.duration import format_duration
from edge.storage_policy import RING_LIMIT, Policy

__all__ = [
    "FIXED_DEFAULTS",
    "MAX_POST",
    "MAX_PRE",
    "AlarmWindow",
    "PointStorage",
    "StorageConfig",
    "check_storage",
    "check_storage_of_parts",
    "resolve_policies",
    "storage_of",
]

#: Longest ``pre`` part of an alarm window: the ring holds at most this much of every device.
MAX_PRE: Final = 600.0
#: Longest ``post`` part: past a quarter of an hour an investigator has the alarm's events.
MAX_POST: Final = 3600.0
#: Longest heartbeat a policy may have: a point is stored at least once a day.
MAX_HEARTBEAT: Final = 86_400.0
#: The heartbeat of a policy that names none: a flat point still shows it is alive.
DEFAULT_HEARTBEAT: Final = 900.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PointStorage(_Strict):
    """How one point is stored: ``all``, ``on-change``, ``deadband`` or ``swinging-door``
    (a bare name is enough for ``all`` and ``on-change``)."""

    policy: Literal["all", "on-change", "deadband", "swinging-door"]
    band: float | None = Field(
        default=None,
        ge=0,
        strict=True,
        description="Absolute band in the point's unit (deadband: 0 stores every change).",
    )
    band_percent: float | None = Field(
        default=None,
        ge=0,
        le=100,
        strict=True,
        description="Relative band, percent of the reading; the larger of the two bands holds.",
    )
    max_interval: Duration | None = Field(
        default=None,
        description=f"Heartbeat: store a reading at least this often (default "
        f"{format_duration(DEFAULT_HEARTBEAT)}; at most {format_duration(MAX_HEARTBEAT)}).",
    )
    min_interval: Duration = Field(
        default=0.0,
        description="Look at readings at most this often (0: every reading).",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"policy": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        banded = self.policy in ("deadband", "swinging-door")
        if not banded:
            given = [k for k in ("band", "band_percent") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} only apply to deadband and swinging-door, "
                    f"not {self.policy}"
                )
        elif self.band is None and self.band_percent is None:
            raise ValueError(f"{self.policy} needs band (in the point's unit) or band_percent")
        if self.policy == "swinging-door" and not self.band:
            raise ValueError(
                "swinging-door needs a band above 0 in the point's unit (band_percent may be "
                "added); a band of 0 stores every change: use on-change"
            )
        if self.max_interval is not None and not 0 < self.max_interval <= MAX_HEARTBEAT:
            raise ValueError(
                f"max_interval must be longer than 0s and at most "
                f"{format_duration(MAX_HEARTBEAT)} (got {format_duration(self.max_interval)})"
            )
        if self.min_interval < 0:
            raise ValueError("min_interval must not be negative")
        if self.policy == "all" and (self.max_interval is not None or self.min_interval):
            raise ValueError("all stores every reading: max_interval and min_interval do not apply")
        if self.min_interval and self.min_interval >= self.heartbeat:
            raise ValueError(
                f"min_interval ({format_duration(self.min_interval)}) must be shorter than the "
                f"heartbeat max_interval ({format_duration(self.heartbeat)})"
            )
        return self

    @property
    def heartbeat(self) -> float:
        return DEFAULT_HEARTBEAT if self.max_interval is None else self.max_interval

    def policy_for(self, poll: float | None = None) -> Policy:
        """The policy; a model's heartbeat shorter than the device's poll is raised to it."""
        if self.policy == "all":
            return Policy()
        heartbeat = self.heartbeat if poll is None else max(self.heartbeat, poll)
        return Policy(
            self.policy,
            band=self.band or 0.0,
            band_percent=self.band_percent or 0.0,
            max_interval=heartbeat,
            min_interval=self.min_interval,
        )


class AlarmWindow(_Strict):
    """Readings of an alarm's device kept at full rate around the alarm."""

    pre: Duration = Field(
        default=60.0,
        description=f"Seconds before the alarm, from memory (at most {format_duration(MAX_PRE)}).",
    )
    post: Duration = Field(
        default=120.0,
        description=f"Seconds after the alarm (at most {format_duration(MAX_POST)}).",
    )

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        for name, limit in (("pre", MAX_PRE), ("post", MAX_POST)):
            value = getattr(self, name)
            if not 0 <= value <= limit:
                raise ValueError(
                    f"{name} must be at least 0s and at most {format_duration(limit)} "
                    f"(got {format_duration(value) if value else '0s'})"
                )
        return self


class StorageConfig(_Strict):
    """What the outbox keeps of the polled readings (docs/config.md, "storage")."""

    policy: Literal["model", "all"] = Field(
        default="model",
        description="model: each point as its device's overrides, else its model, say; "
        "all: every reading of every point (as without storage policies).",
    )
    alarm_window: AlarmWindow = Field(default_factory=AlarmWindow)


#: Defaults of the UART and GPIO sensors, which have no model file (docs/config.md says why).
FIXED_DEFAULTS: Final[Mapping[str, Mapping[str, Mapping[str, Any]]]] = {
    "witmotion-uart": {
        axis: {"policy": "swinging-door", "band": 0.05, "max_interval": "15m"}
        for axis in ("roll", "pitch", "yaw")
    }
    | {
        displacement_point(axis): {"policy": "swinging-door", "band": 0.5, "max_interval": "15m"}
        for axis in TILT_AXES
    },
    "hlk-ld2410": {
        "presence": {"policy": "on-change", "max_interval": "15m"},
        "target_state": {"policy": "on-change", "max_interval": "15m"},
        "moving_distance": {"policy": "deadband", "band": 30, "max_interval": "15m"},
        "moving_energy": {"policy": "deadband", "band": 10, "max_interval": "15m"},
        "still_distance": {"policy": "deadband", "band": 30, "max_interval": "15m"},
        "still_energy": {"policy": "deadband", "band": 10, "max_interval": "15m"},
        "detection_distance": {"policy": "deadband", "band": 30, "max_interval": "15m"},
    },
    "pir": {"presence": {"policy": "on-change", "max_interval": "15m"}},
}

#: Ranges of the UART and GPIO sensors' points (a band larger than the range is a mistake).
_FIXED_RANGES: Final[Mapping[str, tuple[float, float]]] = {
    "roll": (-180.0, 180.0),
    "pitch": (-180.0, 180.0),
    "yaw": (-180.0, 180.0),
    "presence": (0.0, 1.0),
    "target_state": (0.0, 3.0),
    "moving_distance": (0.0, 65535.0),
    "still_distance": (0.0, 65535.0),
    "detection_distance": (0.0, 65535.0),
    "moving_energy": (0.0, 100.0),
    "still_energy": (0.0, 100.0),
}
#: Points whose values are states, not quantities: a line between two states means nothing.
_FIXED_STATES: Final = frozenset({"presence", "target_state"})


class _PointInfo:
    """What the checks need of one point: its range, whether it is a state, its default."""

    __slots__ = ("default", "range", "source", "state")

    def __init__(
        self,
        default: str | Mapping[str, Any] | None,
        source: str,
        range_: tuple[float, float] | None,
        *,
        state: bool,
    ) -> None:
        self.default = default
        self.source = source
        self.range = range_
        self.state = state


def _points(model: str, gauge: bool) -> dict[str, _PointInfo] | None:
    """The points a device of ``model`` reports; ``None`` for an unknown model."""
    if model in SERIAL_POINTS:
        defaults = FIXED_DEFAULTS.get(model, {})
        names = [point.name for point in SERIAL_POINTS[model]]
        if gauge:
            names += [displacement_point(axis) for axis in TILT_AXES]
        return {
            name: _PointInfo(
                defaults.get(name),
                f"the {model} driver",
                _FIXED_RANGES.get(name),
                state=name in _FIXED_STATES,
            )
            for name in names
        }
    from drivers.modbus.model import ModelError, load_model  # noqa: PLC0415

    try:
        loaded = load_model(model)
    except (ModelError, OSError):
        return None
    points: dict[str, _PointInfo] = {}
    for point in loaded.points:
        raw = point.storage
        default = dict(raw) if isinstance(raw, tuple) else raw
        points[point.name] = _PointInfo(
            default,
            f"model {model} (point {point.name})",
            _register_range(point.type, point.scale),
            state=bool(point.bits),
        )
        if gauge and point.name in TILT_AXES:
            points[displacement_point(point.name)] = _PointInfo(
                FIXED_DEFAULTS["witmotion-uart"][displacement_point(point.name)],
                f"model {model} (point {displacement_point(point.name)})",
                None,
                state=False,
            )
    return points


def _register_range(kind: str, scale: float) -> tuple[float, float] | None:
    raw = {
        "u16": (0, 0xFFFF),
        "i16": (-0x8000, 0x7FFF),
        "u32": (0, 0xFFFF_FFFF),
        "i32": (-0x8000_0000, 0x7FFF_FFFF),
    }.get(kind)
    if raw is None:
        return None  # f32: any float
    low, high = raw[0] * scale, raw[1] * scale
    return (min(low, high), max(low, high))


Report = Callable[[tuple[str | int, ...], str], None]


def resolve_policies(config: Any, report: Report | None = None) -> dict[tuple[str, str], Policy]:
    """Every (device, point) of ``config`` (a :class:`edge.config.SiteConfig`) with its policy.

    Problems go to ``report(loc, message)``, ``loc`` the place in the site file to blame; a
    point with a problem is stored with ``all`` (nothing is lost while it is fixed).
    """

    return _resolve(enumerate(config.devices), config.storage, report)


def _resolve(
    devices: Iterable[tuple[int, Any]], storage: StorageConfig, report: Report | None
) -> dict[tuple[str, str], Policy]:
    """:func:`resolve_policies` over ``(index in the site file, device)`` pairs."""

    def problem(loc: tuple[str | int, ...], message: str) -> None:
        if report is not None:
            report(loc, message)

    policies: dict[tuple[str, str], Policy] = {}
    window = storage.alarm_window
    for index, device in devices:
        here: tuple[str | int, ...] = ("devices", index)
        points = _points(device.model, device.gauge_length is not None)
        overrides: Mapping[str, PointStorage] = device.storage or {}
        if points is None:
            continue  # an unknown model is reported on its own
        for name in overrides:
            if name not in points:
                problem(
                    (*here, "storage", name),
                    f"model {device.model} has no point {name!r} (its points: {', '.join(points)})",
                )
        poll = min(device.poll_interval, device.fast_interval or device.poll_interval)
        if window.pre and math.ceil(window.pre / poll) * len(points) > RING_LIMIT:
            problem(
                ("storage", "alarm_window", "pre"),
                f"device {device.id} reports {len(points)} points every "
                f"{format_duration(poll)}: {format_duration(window.pre)} of them is over the "
                f"{RING_LIMIT} readings a device may hold in memory; shorten pre or poll slower",
            )
        for name, info in points.items():
            override = overrides.get(name)
            spec: PointStorage | None = override
            blame: tuple[str | int, ...] = (*here, "storage", name)
            if spec is None and info.default is not None:
                blame = (*here, "model")
                try:
                    spec = PointStorage.model_validate(info.default)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    where = ".".join(str(p) for p in error["loc"])
                    problem(
                        blame,
                        f"{info.source}: storage{'.' + where if where else ''}: "
                        f"{error['msg'].removeprefix('Value error, ')}",
                    )
                    continue
            if spec is None or storage.policy == "all":
                policies[(device.id, name)] = Policy()
                continue
            if not _fits(
                spec,
                info,
                name=name,
                device=device,
                explicit=override is not None,
                blame=blame,
                problem=problem,
            ):
                policies[(device.id, name)] = Policy()
                continue
            policies[(device.id, name)] = spec.policy_for(poll if override is None else None)
    return policies


def _fits(
    spec: PointStorage,
    info: _PointInfo,
    *,
    name: str,
    device: Any,
    explicit: bool,
    blame: tuple[str | int, ...],
    problem: Report,
) -> bool:
    source = "" if explicit else f"{info.source}: "
    if spec.policy in ("swinging-door", "deadband") and info.state:
        why = (
            "a line between two states means nothing"
            if spec.policy == "swinging-door"
            # States are whole numbers: a band of 1 or a percentage would hide a change.
            else "a band would hide changes of state (every one matters)"
        )
        problem(
            (*blame, "policy") if explicit else blame,
            f"{source}{name} is a state (bits or an enumeration), not a quantity: {why}; "
            "use on-change",
        )
        return False
    if info.range is not None and spec.band is not None:
        low, high = info.range
        if spec.band > high - low:
            problem(
                (*blame, "band") if explicit else blame,
                f"{source}band {spec.band:g} is larger than the whole range of {name} "
                f"({low:g}..{high:g}): nothing would ever be stored but the heartbeat",
            )
            return False
    if explicit and spec.policy != "all" and spec.heartbeat < device.poll_interval:
        problem(
            (*blame, "max_interval"),
            f"the heartbeat {format_duration(spec.heartbeat)} is shorter than the device's "
            f"poll_interval {format_duration(device.poll_interval)}: a reading cannot be stored "
            "more often than it is polled",
        )
        return False
    return True


def check_storage(config: Any, report: Report) -> None:
    """Report every storage problem of ``config`` (a validated ``SiteConfig``)."""
    resolve_policies(config, report)


def check_storage_of_parts(
    data: Mapping[str, Any], report: Report, *, device: Callable[[Any], Any]
) -> None:
    """The same for a site file that did not validate as a whole: the devices that validate on
    their own are checked, so one run of check-config still names every mistake. ``device``
    validates one entry of ``devices`` (the site model's, which imports this module), raising
    ``ValidationError``."""
    devices: list[tuple[int, Any]] = []
    entries = data.get("devices")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        try:
            devices.append((index, device(entry)))
        except ValidationError:
            continue  # its own errors are reported
    try:
        storage = StorageConfig.model_validate(data.get("storage") or {})
    except ValidationError:
        storage = StorageConfig()
    _resolve(devices, storage, report)
