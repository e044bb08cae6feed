"""The site file, as typed objects.

One YAML file describes one gateway: who it is, where it is, what hangs on its buses, which
rules judge the readings, which pins sound the alarm, where the data goes and where it waits.
Everything is validated once, here, at the boundary; the rest of the gateway trusts these
objects. Unknown keys are errors (``extra="forbid"``) so a typo never silently disables a rule.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.config.duration import Duration
from edge.config.size import Size

#: BCM numbers of the GPIOs on the Raspberry Pi 40-pin header.
BCM_PINS = range(2, 28)

Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Letters, digits, '-', '_' and '.', starting with a letter or digit.",
    ),
]


class Strict(BaseModel):
    # allow_inf_nan=False: YAML reads ".nan" and ".inf" as floats, and "raise_at: .nan" would
    # make a rule that never fires.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


class ModbusTcpBus(Strict):
    id: Identifier
    kind: Literal["modbus-tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    timeout: Duration = Field(default=1.0, gt=0, description="Per-request answer timeout.")


class ModbusRtuBus(Strict):
    id: Identifier
    kind: Literal["modbus-rtu"]
    port: str = Field(
        description="A serial port URL: a device path, a pty path or socket://host:port."
    )
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout: Duration = Field(default=0.3, gt=0, description="Per-request answer timeout.")


class SerialBus(Strict):
    """A UART sensor's port (WitMotion tilt module, LD2410 radar): one sensor per port."""

    id: Identifier
    kind: Literal["serial"]
    port: str = Field(
        description="A serial port URL: a device path, a pty path or socket://host:port."
    )
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


class OverLimitRule(Strict):
    """Raise when a point reaches ``raise_at``; clear when it falls below ``clear_below``.

    The gap between the two is the hysteresis that keeps a reading hovering at the limit from
    toggling the buzzer.
    """

    id: Identifier
    kind: Literal["over-limit"]
    point: Identifier
    devices: list[Identifier] | None = Field(
        default=None,
        description="Devices this rule judges; all devices with the point when absent.",
    )
    raise_at: float
    clear_below: float
    severity: Literal["critical", "major", "minor"] = "critical"

    @model_validator(mode="after")
    def _hysteresis(self) -> OverLimitRule:
        if self.clear_below > self.raise_at:
            raise ValueError("clear_below must not be above raise_at (hysteresis runs downwards)")
        return self


Rule = Annotated[OverLimitRule, Field(discriminator="kind")]


class Pin(Strict):
    pin: int = Field(
        ge=BCM_PINS.start, le=BCM_PINS.stop - 1, strict=True, description="BCM GPIO number (2-27)."
    )
    active_high: bool = True


class Outputs(Strict):
    pin_factory: Literal["mock", "lgpio", "rpigpio", "pigpio", "native"] | None = Field(
        default=None,
        description=(
            "gpiozero pin factory; when absent, GPIOZERO_PIN_FACTORY or gpiozero's default."
        ),
    )
    buzzer: Pin
    led: Pin | None = None

    @model_validator(mode="after")
    def _distinct_pins(self) -> Outputs:
        if self.led is not None and self.led.pin == self.buzzer.pin:
            raise ValueError(f"buzzer and led share GPIO {self.buzzer.pin}")
        return self


class Uplink(Strict):
    brokers: list[Annotated[str, Field(pattern=r"^mqtts?://[^/\s]+$")]] = Field(
        min_length=1,
        description="Broker URLs, tried in order: mqtt://host:port or mqtts://host:port.",
    )
    topic_prefix: str = Field(default="district/v1", pattern=r"^[^#+\s]+$")
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive: Duration = Field(default=30.0, ge=1)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    batch_interval: Duration = Field(
        default=1.0, description="How long telemetry may wait to fill a batch."
    )
    reconnect_max: Duration = Field(
        default=10.0, ge=0.5, description="Cap of the reconnect backoff (at least 500ms)."
    )


class BufferConfig(Strict):
    path: str = Field(description="SQLite file of the outbox; its folder is created when missing.")
    commit_interval: Duration = Field(
        default=0.05,
        ge=0,
        le=5.0,
        description="Longest time a record waits to be group-committed.",
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


class SiteConfig(Strict):
    """The whole site file."""

    gateway: Gateway
    buses: list[Bus] = Field(min_length=1)
    devices: list[Device] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    outputs: Outputs
    uplink: Uplink
    buffer: BufferConfig
