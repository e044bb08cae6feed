"""HLK-LD2410 frames, sans-IO (no asyncio here). Little-endian throughout.

Data frames (radar -> host, every 50-100 ms)::

    F4 F3 F2 F1 | length u16 | type (0x02 basic, 0x01 engineering) | 0xAA | target state |
    moving distance u16 cm | moving energy | still distance u16 cm | still energy |
    detection distance u16 cm | [engineering data] | 0x55 | 0x00 | F8 F7 F6 F5

Command frames (host -> radar) and their ACKs (radar -> host)::

    FD FC FB FA | length u16 | command word u16 | value ... | 04 03 02 01

An ACK carries ``command | 0x0100`` and starts its value with a u16 status, 0 for success.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

from drivers.framing import FrameError

__all__ = [
    "CALIBRATED",
    "CALIBRATING",
    "CALIBRATION_FAILED",
    "DISABLE_ENGINEERING",
    "ENABLE_CONFIG",
    "END_CONFIG",
    "CommandFrame",
    "FrameError",
    "TargetFrame",
    "decode",
    "encode",
]

DATA_HEAD: Final = b"\xf4\xf3\xf2\xf1"
DATA_TAIL: Final = b"\xf8\xf7\xf6\xf5"
COMMAND_HEAD: Final = b"\xfd\xfc\xfb\xfa"
COMMAND_TAIL: Final = b"\x04\x03\x02\x01"
BASIC: Final = 0x02
ENGINEERING: Final = 0x01
#: Basic payload: type, 0xAA, 11 bytes of target data, 0x55, 0x00.
BASIC_LENGTH: Final = 0x0D
#: The longest payload the radar sends (engineering frames are 0x23); anything longer is a
#: misread length, not a frame to wait for.
MAX_PAYLOAD: Final = 64
ACK_BIT: Final = 0x0100
#: Target states of the background-noise calibration (firmware 2.44+): in progress, done, failed.
CALIBRATING: Final = 4
CALIBRATED: Final = 5
CALIBRATION_FAILED: Final = 6


@dataclass(frozen=True, slots=True)
class TargetFrame:
    """A data frame: what the radar sees. Distances in cm, energies 0-100.

    ``state``: 0 none, 1 moving, 2 still, 3 both; firmware 2.44 and later also report their
    background-noise calibration: 4 in progress, 5 done, 6 failed. ``engineering`` holds the raw
    engineering block (per-gate energies) of type 0x01 frames, empty for basic frames.
    """

    state: int
    moving_distance: int
    moving_energy: int
    still_distance: int
    still_energy: int
    detection_distance: int
    engineering: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.state <= CALIBRATION_FAILED:
            raise ValueError(f"target state {self.state} is not 0..{CALIBRATION_FAILED}")
        for name in ("moving_distance", "still_distance", "detection_distance"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise ValueError(f"{name} is not a u16")
        for name in ("moving_energy", "still_energy"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise ValueError(f"{name} is not a byte")
        if len(self.engineering) > MAX_PAYLOAD - BASIC_LENGTH:
            raise ValueError("engineering block too long")

    @property
    def calibrating(self) -> bool:
        """A calibration state (4-6): the frame says nothing about who is in the room."""
        return self.state >= CALIBRATING

    @property
    def presence(self) -> bool | None:
        """Someone is there, moving or still; None while the radar reports its calibration."""
        if self.calibrating:
            return None
        return self.state != 0


@dataclass(frozen=True, slots=True)
class CommandFrame:
    """A command (host -> radar) or its ACK (``command`` has bit 0x0100 set)."""

    command: int
    value: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.command <= 0xFFFF:
            raise ValueError("command is not a u16")
        if len(self.value) > MAX_PAYLOAD - 2:
            raise ValueError("command value too long")

    @property
    def is_ack(self) -> bool:
        return bool(self.command & ACK_BIT)

    @property
    def status(self) -> int | None:
        """An ACK's status (0 success); None for commands and truncated ACKs."""
        if not self.is_ack or len(self.value) < 2:
            return None
        return int.from_bytes(self.value[:2], "little")

    def ack(self, status: int = 0, extra: bytes = b"") -> CommandFrame:
        """The ACK a radar sends for this command."""
        return CommandFrame(self.command | ACK_BIT, struct.pack("<H", status) + extra)


#: Start-up sequence: configuration mode on, engineering mode off (basic frames are all the
#: gateway needs, and a third the bytes), configuration mode off.
ENABLE_CONFIG: Final = CommandFrame(0x00FF, b"\x01\x00")
DISABLE_ENGINEERING: Final = CommandFrame(0x0063)
END_CONFIG: Final = CommandFrame(0x00FE)

Frame: TypeAlias = TargetFrame | CommandFrame


def encode(frame: Frame) -> bytes:
    """The bytes of a data or command frame."""
    if isinstance(frame, CommandFrame):
        payload = struct.pack("<H", frame.command) + frame.value
        return COMMAND_HEAD + struct.pack("<H", len(payload)) + payload + COMMAND_TAIL
    kind = ENGINEERING if frame.engineering else BASIC
    payload = (
        struct.pack(
            "<BBBHBHBH",
            kind,
            0xAA,
            frame.state,
            frame.moving_distance,
            frame.moving_energy,
            frame.still_distance,
            frame.still_energy,
            frame.detection_distance,
        )
        + frame.engineering
        + b"\x55\x00"
    )
    return DATA_HEAD + struct.pack("<H", len(payload)) + payload + DATA_TAIL


def _next_head(buffer: bytes) -> int:
    """Where the next frame could start: a full header, or a header's first bytes at the end."""
    candidates = [i for i in (buffer.find(DATA_HEAD), buffer.find(COMMAND_HEAD)) if i >= 0]
    if candidates:
        return min(candidates)
    for keep in (3, 2, 1):
        tail = buffer[-keep:]
        if len(buffer) >= keep and (DATA_HEAD.startswith(tail) or COMMAND_HEAD.startswith(tail)):
            return len(buffer) - keep
    return len(buffer)


def decode(buffer: bytes) -> tuple[int, Frame | None]:
    """The frame at the start of ``buffer`` (see :mod:`drivers.framing` for the contract).

    Noise before a header is skipped; a header with an impossible length, a wrong tail or a
    malformed payload is a :class:`FrameError` that skips the header's first byte.
    """
    start = _next_head(buffer)
    if start > 0:
        return start, None
    if len(buffer) < 6:
        return 0, None
    is_data = buffer.startswith(DATA_HEAD)
    (length,) = struct.unpack("<H", buffer[4:6])
    if length > MAX_PAYLOAD or length < 2:
        raise FrameError(f"frame length {length} is impossible (max {MAX_PAYLOAD})")
    total = 4 + 2 + length + 4
    if len(buffer) < total:
        return 0, None
    payload = buffer[6 : 6 + length]
    tail = buffer[6 + length : total]
    if tail != (DATA_TAIL if is_data else COMMAND_TAIL):
        raise FrameError(f"bad frame tail {tail.hex(' ')}")
    if not is_data:
        (command,) = struct.unpack("<H", payload[:2])
        return total, CommandFrame(command, payload[2:])
    return total, _target(payload)


def _target(payload: bytes) -> TargetFrame:
    kind = payload[0]
    if kind not in (BASIC, ENGINEERING):
        raise FrameError(f"unknown data frame type 0x{kind:02X}")
    if len(payload) < BASIC_LENGTH or (kind == BASIC and len(payload) != BASIC_LENGTH):
        raise FrameError(f"data frame type 0x{kind:02X} with length {len(payload)}")
    if payload[1] != 0xAA or payload[-2:] != b"\x55\x00":
        raise FrameError("data frame without its 0xAA head or 0x55 0x00 end")
    state, moving, moving_energy, still, still_energy, detection = struct.unpack(
        "<BHBHBH", payload[2:11]
    )
    engineering = payload[11:-2]
    if kind == ENGINEERING and not engineering:
        raise FrameError("engineering frame without engineering data")
    try:
        return TargetFrame(
            state, moving, moving_energy, still, still_energy, detection, engineering
        )
    except ValueError as exc:
        raise FrameError(f"bad data frame: {exc}") from None
