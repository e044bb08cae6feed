"""The site file, as typed objects.

One YAML file describes one gateway: who it is, where it is, what hangs on its buses, which
rules judge the readings, which pins sound the alarm, where the data goes and where it waits.
Everything is validated once, here, at the boundary; the rest of the gateway trusts these
objects. Unknown keys are errors (``extra="forbid"``) so a typo never silently disables a rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from drivers.ports import check_port
from edge.config.annotated import Duration, Size, as_written
from edge.config.behaviour import (
    AbnormalChecks,
    CompositeBehaviour,
    DerivedPointBehaviour,
    OverLimitChecks,
    PointRuleBehaviour,
    SiteBehaviour,
    SuddenChangeChecks,
    SustainedChecks,
    UnderLimitChecks,
    exactly_one,
)
from edge.config.duration import format_duration
from edge.config.storage import PointStorage, StorageConfig, resolve_policies
from edge.config.terms import (
    BCM_PINS,
    PHONE_NUMBER,
    PatternName,
    Severity,
)
from edge.config.thresholds import PATTERN as THRESHOLD_PATTERN
from edge.config.thresholds import THRESHOLD_KEYS, parse_quantity
from edge.storage_policy import Policy

Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Letters, digits, '-', '_' and '.', starting with a letter or digit.",
    ),
]


def _serial_port(value: str) -> str:
    check_port(value)  # PortError (a ValueError) names the allowed forms
    return value


#: A serial port: its form, and what it leads to if it exists already (drivers/ports.py).
SerialPortPath = Annotated[
    str,
    AfterValidator(_serial_port),
    Field(
        description="A serial port: /dev/ttyUSB0 (any /dev/tty<letters><digits>), "
        "/dev/serial0, /dev/serial/by-id/..., /dev/serial/by-path/..., /dev/pts/N, a link to "
        "one of these, or socket://host:port."
    ),
]


class Strict(BaseModel):
    # allow_inf_nan=False: YAML reads ".nan" and ".inf" as floats, and "raise_at: .nan" would
    # make a rule that never fires.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def validated_copy(self, update: dict[str, Any]) -> Self:
        """A copy with ``update`` (fields by name), validated as the site file is (the plain
        classes of edge/config/plain.py do the same without pydantic). ``ValueError`` as
        ``field: message``."""
        # As written: durations in words, which the model takes back (it refuses bare numbers).
        data = as_written(self)
        fields = type(self).model_fields
        for name, value in update.items():
            written = as_written(value) if isinstance(value, BaseModel) else value
            data[fields[name].alias or name] = written
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"{where + ': ' if where else ''}{message}") from None


class Location(Strict):
    """Where a device is, so the platform can place it on its map."""

    building: str
    floor: str
    room: str
    venue_type: Literal[
        "shop", "restaurant", "workshop", "residential", "rented-room", "office", "other"
    ]


class Site(Strict):
    name: str
    district: str = ""
    address: str = ""
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class Gateway(Strict):
    id: Identifier
    site: Site
    timezone: str = Field(
        default="UTC",
        description="IANA time zone of the site (e.g. Asia/Shanghai): calendar days and months "
        "of sustained rules start at its midnight.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Asia/Shanghai"
            ) from None
        return value


class ModbusTcpBus(Strict):
    id: Identifier
    kind: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    timeout: Duration = Field(default=1.0, gt=0, description="Per-request answer timeout.")


class ModbusRtuBus(Strict):
    id: Identifier
    kind: Literal["modbus-rtu"]
    port: SerialPortPath
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout: Duration = Field(default=0.3, gt=0, description="Per-request answer timeout.")


class SerialBus(Strict):
    """A UART sensor's port (WitMotion tilt module, LD2410 radar): one sensor per port."""

    id: Identifier
    kind: Literal["serial"]
    port: SerialPortPath
    baudrate: (
        Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 256000, 460800, 921600]
        | None
    ) = Field(default=None, description="Default: the model's (WitMotion 9600, LD2410 256000).")
    silence: Duration = Field(
        default=3.0, gt=0, description="No valid frame for this long marks the sensor offline."
    )


class GpioBus(Strict):
    """The gateway's own GPIO header, for PIR motion sensors (each device names its pin)."""

    id: Identifier
    kind: Literal["gpio"]
    pin_factory: Literal["mock", "lgpio", "rpigpio", "pigpio", "native"] | None = Field(
        default=None,
        description="gpiozero pin factory; when absent, the outputs' one, else gpiozero's default.",
    )


Bus = Annotated[ModbusTcpBus | ModbusRtuBus | SerialBus | GpioBus, Field(discriminator="kind")]


class Device(Strict):
    id: Identifier
    model: Identifier = Field(description="A device model file name, e.g. 'efm-ref'.")
    bus: Identifier
    # strict: YAML's `true` must not become unit 1.
    address: int | None = Field(
        default=None,
        ge=1,
        le=247,
        strict=True,
        description="Modbus unit (slave) address; Modbus devices only, and required there.",
    )
    poll_interval: Duration = Field(
        default=1.0,
        gt=0,
        description="Modbus: seconds between polls. UART sensors: between reports of the "
        "latest frame (presence changes are reported at once).",
    )
    fast_interval: Duration | None = Field(
        default=None,
        gt=0,
        description="Modbus: also read the model's alarm-critical points this often.",
    )
    gauge_length: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Tilt sensors: metres over which roll and pitch become a displacement in mm.",
    )
    pin: int | None = Field(
        default=None,
        ge=BCM_PINS.start,
        le=BCM_PINS.stop - 1,
        strict=True,
        description="GPIO sensors (PIR): BCM GPIO number (2-27).",
    )
    location: Location
    storage: dict[Identifier, PointStorage] | None = Field(
        default=None,
        description="Storage policy per point, over the model's defaults (docs/config.md).",
    )


#: A threshold in the point's unit. ``strict``: YAML's ``true`` must not become 1.
#: A string with a unit ("300 mA", "0.4 cm") is converted to the point's unit by the loader
#: (edge/config/thresholds.py); the schema takes both forms.
Threshold = Annotated[
    float,
    Field(strict=True),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": THRESHOLD_PATTERN, "examples": ["300 mA", "4 mm"]},
            ]
        }
    ),
]

#: Longest window a rule keeps every reading of: at a 1 s poll, a day is 86 400 readings.
MAX_READING_WINDOW = 86_400.0
#: Longest baseline an ``abnormal`` rule learns from (the readings are capped separately).
MAX_BASELINE = 90 * 86_400.0


def _span(limit: float, *, zero: bool = False) -> AfterValidator:
    """A duration check that speaks in durations, not in seconds."""

    def check(seconds: float) -> float:
        if seconds > limit or (seconds <= 0 and not zero):
            low = "at least 0s" if zero else "longer than 0s"
            raise ValueError(
                f"must be {low} and at most {format_duration(limit)} "
                f"(got {format_duration(seconds) if seconds else '0s'})"
            )
        return seconds

    return AfterValidator(check)


#: How long a rule may keep every reading (sudden change, debounce): up to a day.
ReadingWindow = Annotated[Duration, _span(MAX_READING_WINDOW)]
#: Baselines, faults and offline times: up to 90 days.
LongSpan = Annotated[Duration, _span(MAX_BASELINE)]
#: The same, where 0s means "at once".
LongSpanOrNow = Annotated[Duration, _span(MAX_BASELINE, zero=True)]
#: A sustained condition on raw readings: its state is one start time, so any length up to
#: two years is fine.
RawRun = Annotated[Duration, _span(731 * 86_400.0)]


class Debounce(Strict):
    """How long a condition must hold before an alarm is raised: a number of consecutive
    readings, or a duration from the first reading that met it."""

    readings: int | None = Field(default=None, ge=1, le=10_000, strict=True)
    duration: ReadingWindow | None = None

    @model_validator(mode="after")
    def _one(self) -> Debounce:
        exactly_one(self, ("readings", "duration"))
        return self


class Escalation(Strict):
    """A second, worse level of a raised limit alarm (a new, worse alarm re-sounds)."""

    at: Threshold
    severity: Severity = "fire"


#: Keys a per-device override may not change: they decide what the rule is about.
_NOT_OVERRIDABLE = frozenset({"id", "kind", "point", "devices", "models", "overrides", "unit"})


class _PointRule(PointRuleBehaviour, Strict):
    """Settings shared by the rules that judge one point of each device they apply to."""

    id: Identifier
    point: Identifier = Field(
        description="The point, as named by the device model or a derived point."
    )
    devices: list[Identifier] | None = Field(
        default=None,
        description="Devices this rule judges; all devices with the point when absent.",
    )
    models: list[Identifier] | None = Field(
        default=None,
        description="Only devices of these models (combined with devices when both are given).",
    )
    unit: str | None = Field(
        default=None,
        description="Unit of the thresholds; check-config refuses it when the point has another.",
    )
    severity: Severity = "critical"
    overrides: dict[Identifier, dict[str, Any]] | None = Field(
        default=None,
        description="Per-device settings that replace the rule's own, by device id.",
    )
    latch: bool = Field(
        default=False,
        description="Latching alarm: once raised it stays raised, after its condition has gone, "
        "until the silence button or a silence command clears it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _thresholds_with_units(cls, data: Any) -> Any:
        """``raise_at: "300 mA"`` is ``raise_at: 300`` with ``unit: mA``; every threshold of one
        rule must be in one unit."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        units = {data["unit"]} if isinstance(data.get("unit"), str) else set()
        holders: list[tuple[dict[str, Any], str]] = [(data, key) for key in _THRESHOLD_KEYS]
        if isinstance(data.get("escalate"), dict):
            data["escalate"] = dict(data["escalate"])
            holders.append((data["escalate"], "at"))
        for holder, key in holders:
            parsed = _quantity(holder.get(key))
            if parsed is not None:
                holder[key], unit = parsed
                if unit:
                    units.add(unit)
        if len(units) > 1:
            raise ValueError(f"thresholds of one rule must share one unit (found {sorted(units)})")
        if units:
            data["unit"] = units.pop()
        return data

    @model_validator(mode="after")
    def _valid_overrides(self) -> Self:
        for device, changes in (self.overrides or {}).items():
            refused = sorted(set(changes) & _NOT_OVERRIDABLE)
            if refused:
                raise ValueError(f"overrides.{device}: {', '.join(refused)} cannot be overridden")
            try:
                self.for_device(device)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                message = first["msg"].removeprefix("Value error, ")
                raise ValueError(
                    f"overrides.{device}{'.' + where if where else ''}: {message}"
                ) from None
        return self

    def _validated_override(self, changes: dict[str, Any]) -> Self:
        # As written: durations in words, which the model takes back (it refuses bare numbers).
        written = as_written(self)
        written.pop("overrides", None)
        return type(self).model_validate({**written, **changes})


#: Threshold keys that may be written with a unit ("300 mA"); escalate.at too.
_THRESHOLD_KEYS = THRESHOLD_KEYS


def _quantity(value: Any) -> tuple[float, str] | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_quantity(value)
    except ValueError:
        # Left as written: the field itself then refuses it, at its own line.
        return None


class OverLimitRule(OverLimitChecks, _PointRule):
    """Raise when a point reaches ``raise_at``; clear when it falls below ``clear_below``.

    The gap between the two is the hysteresis that keeps a reading hovering at the limit from
    toggling the buzzer.
    """

    kind: Literal["over-limit"]
    raise_at: Threshold
    clear_below: Threshold
    debounce: Debounce | None = None
    escalate: Escalation | None = None
    compare: Literal["at-least", "more-than"] = Field(
        default="at-least",
        description="at-least: raised at raise_at, cleared below clear_below; more-than: raised "
        "above raise_at, cleared at or below clear_below.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> OverLimitRule:
        self.check()
        return self


class UnderLimitRule(UnderLimitChecks, _PointRule):
    """Raise when a point falls to ``raise_at`` or below; clear when it rises above
    ``clear_above``."""

    kind: Literal["under-limit"]
    raise_at: Threshold
    clear_above: Threshold
    debounce: Debounce | None = None
    escalate: Escalation | None = None
    compare: Literal["at-most", "less-than"] = Field(
        default="at-most",
        description="at-most: raised at raise_at, cleared above clear_above; less-than: raised "
        "below raise_at, cleared at or above clear_above.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> UnderLimitRule:
        self.check()
        return self


class SuddenChangeRule(SuddenChangeChecks, _PointRule):
    """Raise when a reading differs from one of the last ``window`` by ``change`` (in the
    point's unit) or by ``change_percent``."""

    kind: Literal["sudden-change"]
    change: Threshold | None = Field(default=None, gt=0)
    change_percent: float | None = Field(default=None, gt=0, strict=True)
    window: ReadingWindow
    direction: Literal["rise", "fall", "either"] = "either"
    compare: Literal["at-least", "more-than"] = Field(
        default="at-least",
        description="at-least: a change of exactly change (or change_percent) raises; "
        "more-than: only a bigger one.",
    )

    @model_validator(mode="after")
    def _one_size(self) -> SuddenChangeRule:
        self.check()
        return self


class AbnormalRule(AbnormalChecks, _PointRule):
    """Raise when a reading strays from the point's learned baseline (median and
    interquartile range of recent readings) by more than ``sensitivity`` robust deviations."""

    kind: Literal["abnormal"]
    sensitivity: float = Field(default=6.0, gt=0, le=100, strict=True)
    baseline: LongSpan = 7 * 86_400.0
    learning: LongSpanOrNow = 86_400.0
    min_samples: int = Field(default=30, ge=5, strict=True)
    max_samples: int = Field(default=1000, ge=5, le=10_000, strict=True)
    min_deviation: Threshold = Field(default=0.0, ge=0)
    clear_ratio: float = Field(default=0.8, gt=0, le=1, strict=True)
    seasonal: Literal["none", "daily"] = Field(
        default="none",
        description="daily: one baseline per hour of the local day, for points that swing "
        "every day (structures, temperatures).",
    )

    @model_validator(mode="after")
    def _samples(self) -> AbnormalRule:
        self.check()
        return self


class SustainedRule(SustainedChecks, _PointRule):
    """Raise when a condition has held throughout a period: of raw readings (``duration``),
    or of calendar hours, days or months judged on each bucket's aggregate."""

    kind: Literal["sustained"]
    above: Threshold | None = None
    below: Threshold | None = None
    aggregate: Literal["mean", "min", "max"] = "mean"
    duration: RawRun | None = None
    hours: int | None = Field(default=None, ge=1, le=24 * 31, strict=True)
    days: int | None = Field(default=None, ge=1, le=731, strict=True)
    months: int | None = Field(default=None, ge=1, le=24, strict=True)
    for_: Annotated[Duration, _span(731 * 86_400.0)] | None = Field(
        default=None,
        alias="for",
        description="A rolling window of whole days (60d): raised at the end of a day when "
        "every day of the window passed.",
    )
    missing: Literal["break", "ignore"] = Field(
        default="break",
        description="A calendar bucket without a good reading breaks the run, or is skipped.",
    )

    # ``for`` is a Python keyword: the field is ``for_``, the site file says ``for``.
    model_config = ConfigDict(**Strict.model_config, validate_by_name=True)

    @model_validator(mode="after")
    def _one_period(self) -> SustainedRule:
        self.check()
        return self


class AlarmBitsRule(_PointRule):
    """Raise while the device reports any of ``bits`` set in a status point."""

    kind: Literal["alarm-bits"]
    bits: list[Annotated[int, Field(ge=0, le=15, strict=True)] | Identifier] | None = Field(
        default=None,
        description="Bit numbers (0 = least significant) or bit names; all bits when absent.",
    )


class SensorFaultRule(_PointRule):
    """Raise a fault when a point is stuck at one value or has no good reading for too long."""

    kind: Literal["sensor-fault"]
    severity: Severity = "minor"
    stuck_for: LongSpan | None = None
    stuck_tolerance: Threshold = Field(default=0.0, ge=0)
    missing_for: LongSpan | None = None

    @model_validator(mode="after")
    def _something(self) -> SensorFaultRule:
        if self.stuck_for is None and self.missing_for is None:
            raise ValueError("give stuck_for, missing_for or both")
        return self


class DeviceOfflineRule(Strict):
    """Raise when a device has been offline (the driver says so) or silent for too long."""

    id: Identifier
    kind: Literal["device-offline"]
    devices: list[Identifier] | None = None
    models: list[Identifier] | None = None
    severity: Severity = "minor"
    after: LongSpanOrNow = Field(default=0.0, description="How long offline before raising.")
    silent_for: LongSpan | None = Field(
        default=None, description="Also raise when no reading at all arrived for this long."
    )


class CompositeTerm(Strict):
    rule: Identifier
    devices: list[Identifier] | None = None


class CompositeRule(CompositeBehaviour, Strict):
    """Raise while all (``all``) or any (``any``) of other rules' alarms are active."""

    id: Identifier
    kind: Literal["composite"]
    all: list[Identifier | CompositeTerm] | None = Field(default=None, min_length=1)
    any: list[Identifier | CompositeTerm] | None = Field(default=None, min_length=1)
    severity: Severity = "fire"

    @model_validator(mode="after")
    def _one(self) -> CompositeRule:
        self.check()
        return self


Rule = Annotated[
    OverLimitRule
    | UnderLimitRule
    | SuddenChangeRule
    | AbnormalRule
    | SustainedRule
    | AlarmBitsRule
    | SensorFaultRule
    | DeviceOfflineRule
    | CompositeRule,
    Field(discriminator="kind"),
]
PointRule = (
    OverLimitRule
    | UnderLimitRule
    | SuddenChangeRule
    | AbnormalRule
    | SustainedRule
    | AlarmBitsRule
    | SensorFaultRule
)


class DerivedPoint(DerivedPointBehaviour, Strict):
    """A point computed from another point of the same device, judged like any other.

    ``displacement``: ``gauge_length x tan(source in degrees)``, in the gauge length's unit
    (mm); ``linear``: ``scale x source + offset``.
    """

    name: Identifier
    kind: Literal["displacement", "linear"]
    source: Identifier
    devices: list[Identifier] | None = None
    models: list[Identifier] | None = None
    unit: str = ""
    gauge_length: float | None = Field(
        default=None, gt=0, strict=True, description="Gauge length (displacement), e.g. in mm."
    )
    gauge_lengths: dict[Identifier, Annotated[float, Field(gt=0, strict=True)]] | None = Field(
        default=None, description="Per-device gauge lengths, by device id."
    )
    scale: float = Field(default=1.0, strict=True)
    offset: float = Field(default=0.0, strict=True)

    @model_validator(mode="after")
    def _gauge(self) -> DerivedPoint:
        if self.kind == "displacement" and self.gauge_length is None and not self.gauge_lengths:
            raise ValueError("a displacement needs gauge_length (or gauge_lengths per device)")
        if self.name == self.source:
            raise ValueError("a derived point cannot have the name of its source")
        return self


class Pin(Strict):
    pin: int = Field(
        ge=BCM_PINS.start, le=BCM_PINS.stop - 1, strict=True, description="BCM GPIO number (2-27)."
    )
    active_high: bool = True


class Patterns(Strict):
    """The buzzer pattern of each severity (see docs/rules.md for their timing)."""

    fire: PatternName = "continuous"
    critical: PatternName = "pulsed"
    major: PatternName = "pulsed"
    minor: PatternName = "chirp"


class Relay(Pin):
    severity: Severity = Field(
        default="fire",
        description="The relay closes while an alarm at least this severe is active.",
    )


class SilenceButton(Strict):
    pin: int = Field(
        ge=BCM_PINS.start, le=BCM_PINS.stop - 1, strict=True, description="BCM GPIO number (2-27)."
    )
    pull_up: bool = Field(
        default=True, description="True: the button connects the pin to ground when pressed."
    )


class Outputs(Strict):
    pin_factory: Literal["mock", "lgpio", "rpigpio", "pigpio", "native"] | None = Field(
        default=None,
        description=(
            "gpiozero pin factory; when absent, GPIOZERO_PIN_FACTORY or gpiozero's default."
        ),
    )
    buzzer: Pin
    led: Pin | None = None
    relay: Relay | None = Field(default=None, description="An optional relay; none by default.")
    silence_button: SilenceButton | None = None
    patterns: Patterns = Field(default_factory=Patterns)
    rearm_after: Duration = Field(
        default=600.0,
        gt=0,
        le=86_400.0,
        description="A silenced alarm that is still active sounds again after this long.",
    )

    @model_validator(mode="after")
    def _distinct_pins(self) -> Outputs:
        used: dict[int, str] = {}
        for name in ("buzzer", "led", "relay", "silence_button"):
            pin = getattr(self, name)
            if pin is None:
                continue
            if pin.pin in used:
                raise ValueError(f"{used[pin.pin]} and {name} share GPIO {pin.pin}")
            used[pin.pin] = name
        return self


class Evidence(Strict):
    """One source of occupancy evidence: a radar, a PIR or an electrical load point."""

    device: Identifier
    point: Identifier
    kind: Literal["radar", "pir", "load"]
    above: Threshold = Field(
        default=0.0, description="The reading is evidence of presence when above this."
    )
    hold: Duration | None = Field(
        default=None,
        gt=0,
        le=86_400.0,
        description="Presence lasts this long after the last positive reading "
        "(default radar 30s, pir 5m, load 10m).",
    )
    stale_after: Duration | None = Field(
        default=None,
        gt=0,
        le=86_400.0,
        description="Without a reading for this long the source says nothing "
        "(default radar and load 2m; a PIR reports only changes and never goes stale).",
    )


class Zone(Strict):
    """A room: the devices whose alarms belong to it and the evidence of people in it."""

    id: Identifier
    name: str = ""
    devices: list[Identifier] = Field(
        default_factory=list, description="Devices in the room (smoke detectors, monitors)."
    )
    evidence: list[Evidence] = Field(min_length=1)


def _phone_number(value: str) -> str:
    if not PHONE_NUMBER.fullmatch(value):
        raise ValueError(f"not a phone number: {value!r} (+ then 3-20 digits 0-9)")
    return value


PhoneNumber = Annotated[str, AfterValidator(_phone_number)]


class Calls(Strict):
    """Alarm phone calls through the SMS modem: ring (or speak) until someone answers."""

    numbers: list[PhoneNumber] = Field(
        min_length=1, description="Called one after the other until one answers."
    )
    severity: Severity = Field(default="fire", description="Call for alarms at least this severe.")
    ring_time: Duration = Field(
        default=45.0, ge=1.0, le=120.0, description="How long one number rings before the next."
    )
    speak: bool = Field(
        default=False,
        description="Read the alarm aloud with the modem's text-to-speech (SIM7600 AT+CTTS) "
        "once answered; otherwise ring only.",
    )
    rounds: int = Field(default=1, ge=1, le=5, strict=True)
    min_interval: Duration = Field(
        default=300.0,
        ge=0,
        le=86_400.0,
        description="At most one round of calls per rule and device within this time.",
    )
    max_per_hour: int = Field(default=10, ge=1, le=100, strict=True)
    only_when_offline: bool = False


class Sms(Strict):
    """Alarm SMS through a 4G modem (AT commands, PDU mode, UCS2 text)."""

    port: SerialPortPath
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 115200
    numbers: list[PhoneNumber] = Field(min_length=1)
    severity: Severity = Field(
        default="critical", description="Send for alarms at least this severe."
    )
    min_interval: Duration = Field(
        default=300.0,
        ge=0,
        le=86_400.0,
        description="At most one SMS per number per rule and device within this time.",
    )
    max_per_hour: int = Field(default=20, ge=1, le=1000, strict=True)
    timeout: Duration = Field(default=60.0, gt=0, le=300.0)
    only_when_offline: bool = Field(
        default=False,
        description="Send only while the uplink is not connected (the platform sends the "
        "messages otherwise).",
    )
    calls: Calls | None = Field(
        default=None, description="Phone calls through the same modem (docs/rules.md)."
    )


class Uplink(Strict):
    brokers: list[Annotated[str, Field(pattern=r"^mqtts?://[^/\s]+$")]] = Field(
        min_length=1,
        description="Broker URLs, tried in order: mqtt://host:port or mqtts://host:port.",
    )
    topic_prefix: str = Field(default="district/v1", pattern=r"^[^#+\s]+$")
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    # The defaults are for a metered 4G link (docs/config.md, "What goes over the link"): the
    # readings a storage policy keeps wait up to 5 minutes for their batch, deflated; events
    # never wait. Without other traffic in 10 minutes there is no keepalive ping to pay for.
    keepalive: Duration = Field(
        default=600.0,
        ge=1,
        # MQTT carries it as a 16-bit number of seconds.
        le=65_535.0,
        description="MQTT keepalive: a ping after this long without traffic; the broker "
        "declares the gateway gone (its will: offline) after 1.5 times this.",
    )
    batch_size: int = Field(
        default=1000, ge=1, le=10_000, description="Most readings in one telemetry message."
    )
    batch_interval: Duration = Field(
        default=300.0,
        # Longer, and the platform's view of a point lags its heartbeat by more than it
        # gains: at 5 minutes the envelope is already a small share of a message.
        le=3600.0,
        description="How long telemetry may wait to fill a batch, at most 1h (events never wait).",
    )
    reconnect_max: Duration = Field(
        default=10.0, ge=0.5, description="Cap of the reconnect backoff (at least 500ms)."
    )
    command_ttl: Duration = Field(
        default=300.0,
        gt=0,
        # A signed command is a bearer token until it expires; an hour bounds how long a
        # captured one may be replayed at a gateway that has forgotten it.
        le=3600.0,
        description="Commands from the platform issued longer ago than this are refused "
        "(at most 1h).",
    )
    protocol: Literal["3.1.1", "5"] = Field(
        # 5: a PUBACK says whether the broker took the message (3.1.1 acks a refused one too).
        default="5",
        description="MQTT protocol version spoken to the brokers; only with 5 does the broker "
        "say when it refuses a message (ACL, quota).",
    )
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the certificate authorities that may sign the brokers' "
        "certificates (mqtts:// only); without it, the system's.",
    )
    cert_file: str | None = Field(
        default=None, description="The gateway's client certificate (PEM), for mutual TLS."
    )
    key_file: str | None = Field(
        default=None, description="The private key (PEM) of cert_file, for mutual TLS."
    )
    inflight: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Most QoS 1 messages awaiting the broker's PUBACK at once.",
    )
    backfill_messages_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Most backfill (backlog) messages per second; none: no limit. Events and "
        "live telemetry are never limited.",
    )
    backfill_bytes_per_s: Size | None = Field(
        default=None,
        ge=1024,
        description="Most backfill payload bytes per second, e.g. '16KiB' for a metered link; "
        "none: no limit. Events and live telemetry are never limited.",
    )
    max_message_bytes: Size = Field(
        default=256 * 2**10,
        ge=1024,
        # Larger messages gain nothing per reading and hold more rows per PUBACK; a platform
        # may refuse them (the reference receiver takes up to 1 MiB).
        le=2**20,
        description="Largest payload of one message (1KiB to 1MiB); larger telemetry batches "
        "are split.",
    )
    compression: Literal["none", "deflate"] = Field(
        default="deflate",
        description="deflate: telemetry payloads are zlib-compressed; none: plain JSON.",
    )
    telemetry_encoding: Literal["columnar", "verbose"] = Field(
        default="columnar",
        description="columnar: the compact telemetry form with metric aliases (when the "
        "gateway announces them); verbose: every reading with its device, point and unit.",
    )
    health_interval: Duration = Field(
        default=900.0, ge=1, le=86_400.0, description="How often the health message is published."
    )
    push_confirm_within: Duration = Field(
        default=60.0,
        ge=5,
        le=3600.0,
        description="A pushed config must reach the platform within this time (its "
        "config-applied event acknowledged), else the running one is put back.",
    )

    @model_validator(mode="after")
    def _tls_and_login(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file go together: mutual TLS needs the certificate and its key"
            )
        tls_files = [f for f in ("ca_file", "cert_file", "key_file") if getattr(self, f)]
        if tls_files and not any(url.startswith("mqtts://") for url in self.brokers):
            raise ValueError(
                f"{', '.join(tls_files)} set but no broker URL is mqtts://: the files would "
                "never be used"
            )
        if self.password is not None and self.username is None:
            raise ValueError("password without username: MQTT sends a password only with a user")
        return self


class CommandPolicy(Strict):
    """Who may command this gateway and how far (docs/commands.md)."""

    keys: str | None = Field(
        default=None,
        description="Folder of the platform's command public keys, operations-NAME.pub and "
        "engineering-NAME.pub (usually the certificates' folder). Without keys every command "
        "is refused; telemetry and alarms run as usual.",
    )
    insecure_unsigned_commands: bool = Field(
        default=False,
        description="DEMO ONLY: also run unsigned commands (with operations authority). "
        "Anybody who can publish to the commands topic then commands the gateway.",
    )
    max_clock_skew: Duration = Field(
        default=60.0,
        ge=0,
        le=600.0,
        description="A command issued further in the future than this is refused.",
    )
    max_per_minute: int = Field(
        default=30,
        ge=1,
        le=600,
        strict=True,
        description="Most commands answered per minute (a burst of this many, then this rate); "
        "the rest get an error ack.",
    )
    threshold_factor: float = Field(
        default=4.0,
        gt=1,
        le=100,
        description="set-threshold stays within this factor of the site file's value "
        "(between value/factor and value*factor).",
    )


class BufferConfig(Strict):
    path: str = Field(description="SQLite file of the outbox; its folder is created when missing.")
    commit_interval: Duration = Field(
        # A commit rewrites whole pages: at the few readings a second a storage policy keeps,
        # one every 2 s writes a fifteenth of the card that one every 50 ms did
        # (docs/benchmarks.md, "Storage policies"). Events never wait for it.
        default=2.0,
        ge=0,
        le=5.0,
        description="Longest time a reading waits to be group-committed (a kill -9 loses at "
        "most this much of them); an event is committed at once, with the readings before it.",
    )
    sync_interval: Duration = Field(
        # A synced commit cleans the blocks the next one dirties again; a commit of readings
        # left to the page cache costs the card only its new WAL bytes (docs/buffer.md, "The
        # durability contract"). Alarms and their full-rate windows are synced at once.
        default=30.0,
        ge=0,
        le=600.0,
        description="Longest time a committed reading waits to be synced to the card (a power "
        "cut loses at most this much of them, a kill -9 none); events, the readings of an "
        "alarm's window and rule state are synced at once. 0: every commit is synced.",
    )
    max_size: Size = Field(
        default=2 * 2**30,
        ge=2**20,
        description="Most live data the outbox keeps on disk; beyond it the oldest telemetry "
        "is thinned, then dropped (events never).",
    )
    min_free_disk: Size = Field(
        default=256 * 2**20,
        ge=0,
        description="Free space to leave on the outbox's file system; below it the oldest "
        "telemetry is thinned, then dropped (events never).",
    )
    thin_window: Duration = Field(
        default=60.0,
        gt=0,
        le=86_400.0,
        description="Thinning keeps the min, max and last reading of each point per window.",
    )

    @model_validator(mode="after")
    def _sync_not_within_a_window(self) -> Self:
        if 0 < self.sync_interval < self.commit_interval:
            raise ValueError(
                f"sync_interval ({format_duration(self.sync_interval)}) is shorter than "
                f"commit_interval ({format_duration(self.commit_interval)}): every commit would "
                "be synced; say 0s for that, or at least the commit interval"
            )
        return self


class ControlConfig(Strict):
    """The running gateway's control socket (edge watch, edge commission; docs/control.md)."""

    socket: str | None = Field(
        default="/run/city-safety-edge/control.sock",
        description="Unix socket of the live view and on-site actions; null: none.",
    )
    group: str | None = Field(
        default="edge-admin",
        description="Group allowed to use the socket besides the gateway's user (when it exists).",
    )


class SiteConfig(SiteBehaviour, Strict):
    """The whole site file."""

    gateway: Gateway
    buses: list[Bus] = Field(min_length=1)
    devices: list[Device] = Field(min_length=1)
    derived_points: list[DerivedPoint] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    zones: list[Zone] = Field(default_factory=list)
    outputs: Outputs
    sms: Sms | None = None
    uplink: Uplink
    commands: CommandPolicy = Field(default_factory=CommandPolicy)
    buffer: BufferConfig
    storage: StorageConfig = Field(default_factory=StorageConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)

    def _resolved_policies(self) -> dict[tuple[str, str], Policy]:
        return resolve_policies(self)
