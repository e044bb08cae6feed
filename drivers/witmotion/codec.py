"""WitMotion UART frames, sans-IO (no asyncio here).

Output frames are 11 bytes: ``0x55``, a type byte, four int16 little-endian fields, and the sum
of bytes 0..9 modulo 256. Angles (type 0x53) are ``int16 / 32768 x 180`` degrees; the fourth
field is the firmware version on newer modules and the temperature x 100 on older ones. Other
types (0x50 time, 0x51 acceleration, 0x52 angular rate, 0x54 magnetometer, 0x59 quaternion...)
are decoded as :class:`DataFrame` with their raw fields. Configuration goes the other way as
``FF AA reg LL HH``, without a checksum.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

from drivers.framing import FrameError

__all__ = [
    "ANGLE",
    "SAVE",
    "UNLOCK",
    "AngleFrame",
    "ConfigCommand",
    "DataFrame",
    "Frame",
    "FrameError",
    "decode",
    "decode_command",
    "encode",
]

HEADER: Final = 0x55
ANGLE: Final = 0x53
#: Types a WitMotion module sends (0x50 time ... 0x5F); anything else after 0x55 is noise.
TYPES: Final = range(0x50, 0x60)
LENGTH: Final = 11
_SCALE: Final = 180 / 32768
COMMAND_HEADER: Final = b"\xff\xaa"
#: Baud codes of register 0x04.
BAUD_CODES: Final[dict[int, int]] = {
    4800: 1,
    9600: 2,
    19200: 3,
    38400: 4,
    57600: 5,
    115200: 6,
    230400: 7,
    460800: 8,
    921600: 9,
}


def _int16(value: int, name: str) -> None:
    if not -0x8000 <= value <= 0x7FFF:
        raise ValueError(f"{name} {value} is not an int16")


def _raw_angle(degrees: float) -> int:
    raw = round(degrees / _SCALE)
    # +180 degrees is one step past int16; the module reports it as -180.
    return -0x8000 if raw == 0x8000 else raw


@dataclass(frozen=True, slots=True)
class AngleFrame:
    """Type 0x53: roll, pitch, yaw as raw int16 (see the ``*_deg`` properties), and the fourth
    field (version, or temperature x 100 on older modules)."""

    roll: int
    pitch: int
    yaw: int
    extra: int = 0

    def __post_init__(self) -> None:
        for name in ("roll", "pitch", "yaw", "extra"):
            _int16(getattr(self, name), name)

    @classmethod
    def from_degrees(
        cls, roll: float, pitch: float, yaw: float, temperature: float | None = None
    ) -> AngleFrame:
        """The frame a module sends for these angles (and temperature, older modules)."""
        for name, value in (("roll", roll), ("pitch", pitch), ("yaw", yaw)):
            if not -180 <= value <= 180:
                raise ValueError(f"{name} {value} is not in -180..180 degrees")
        extra = 0 if temperature is None else round(temperature * 100)
        return cls(_raw_angle(roll), _raw_angle(pitch), _raw_angle(yaw), extra)

    @property
    def roll_deg(self) -> float:
        return self.roll * _SCALE

    @property
    def pitch_deg(self) -> float:
        return self.pitch * _SCALE

    @property
    def yaw_deg(self) -> float:
        return self.yaw * _SCALE

    @property
    def temperature(self) -> float:
        """The fourth field read as temperature x 100 (meaningful on older modules only)."""
        return self.extra / 100


@dataclass(frozen=True, slots=True)
class DataFrame:
    """Any other output frame: its type and four raw int16 fields."""

    kind: int
    fields: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if self.kind not in TYPES or self.kind == ANGLE:
            raise ValueError(f"type 0x{self.kind:02X} is not a non-angle WitMotion frame type")
        for value in self.fields:
            _int16(value, "field")


@dataclass(frozen=True, slots=True)
class ConfigCommand:
    """``FF AA reg LL HH``: write ``value`` (u16) to configuration register ``register``."""

    register: int
    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.register <= 0xFF or not 0 <= self.value <= 0xFFFF:
            raise ValueError("register must be 0..255 and value 0..65535")


#: Unlock configuration writes, and save them (the module forgets unsaved settings).
UNLOCK: Final = ConfigCommand(0x69, 0xB588)
SAVE: Final = ConfigCommand(0x00, 0x0000)

Frame: TypeAlias = AngleFrame | DataFrame


def encode(frame: Frame | ConfigCommand) -> bytes:
    """The bytes of a frame (checksum included) or of a configuration command."""
    if isinstance(frame, ConfigCommand):
        return COMMAND_HEADER + struct.pack("<BH", frame.register, frame.value)
    if isinstance(frame, AngleFrame):
        body = struct.pack("<BB4h", HEADER, ANGLE, frame.roll, frame.pitch, frame.yaw, frame.extra)
    else:
        body = struct.pack("<BB4h", HEADER, frame.kind, *frame.fields)
    return body + bytes([sum(body) & 0xFF])


def decode(buffer: bytes) -> tuple[int, Frame | None]:
    """The frame at the start of ``buffer`` (see :mod:`drivers.framing` for the contract).

    Bytes before the next 0x55 are noise; a 0x55 followed by an unknown type or a wrong
    checksum is a :class:`FrameError` that skips just that byte, so a real frame starting
    inside the bad one is still found.
    """
    start = buffer.find(HEADER)
    if start < 0:
        return len(buffer), None
    if start > 0:
        return start, None
    if len(buffer) >= 2 and buffer[1] not in TYPES:
        raise FrameError(f"0x55 followed by unknown type 0x{buffer[1]:02X}")
    if len(buffer) < LENGTH:
        return 0, None
    frame = buffer[:LENGTH]
    if sum(frame[:10]) & 0xFF != frame[10]:
        raise FrameError(
            f"checksum error in a type 0x{frame[1]:02X} frame "
            f"(sum {sum(frame[:10]) & 0xFF:02X}, frame says {frame[10]:02X})"
        )
    kind = frame[1]
    fields = struct.unpack("<4h", frame[2:10])
    if kind == ANGLE:
        return LENGTH, AngleFrame(*fields)
    return LENGTH, DataFrame(kind, fields)


def decode_command(buffer: bytes) -> tuple[int, ConfigCommand | None]:
    """A module's view: the configuration command at the start of ``buffer``."""
    start = buffer.find(COMMAND_HEADER)
    if start < 0:
        # Keep a trailing 0xFF: it may be the first half of the next header.
        keep = 1 if buffer.endswith(b"\xff") else 0
        return len(buffer) - keep, None
    if start > 0:
        return start, None
    if len(buffer) < 5:
        return 0, None
    register, value = struct.unpack("<BH", buffer[2:5])
    return 5, ConfigCommand(register, value)
